"""Reading memory: the only modules that touch torch's allocator, gc, /proc or the clock."""
