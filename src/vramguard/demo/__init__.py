"""A small inference service with the classic leaks, bundled for ``vramguard demo``."""
