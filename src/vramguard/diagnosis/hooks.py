"""Hook retention: a module hook that keeps what the path holds.

Looks in the hook dicts of every ``nn.Module`` on the reference path (all modules when no path
was found) and in torch's global hook registries. A hook is the culprit when it references an
object on the path (closure, default, bound ``self``, a global it names) or when it is a plain
function that stores into its module argument (``module.saved = output``): its code names the
attribute that follows the module on the path.
"""

from __future__ import annotations

import gc
import itertools
import os
import types
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from vramguard.diagnosis.snapshot import pause

__all__ = ["find_hook", "hook_name", "module_instances"]

_HOOK_DICTS = {"_forward_hooks": "forward", "_forward_pre_hooks": "forward_pre",
               "_backward_hooks": "full_backward", "_backward_pre_hooks": "full_backward_pre"}
_GLOBAL_HOOKS = {"_global_forward_hooks": "forward", "_global_forward_pre_hooks": "forward_pre",
                 "_global_backward_hooks": "full_backward",
                 "_global_backward_pre_hooks": "full_backward_pre"}


_SLICE = 1 << 15  # objects filtered per C-level call: ~1 ms each, then other threads may run


def module_instances() -> list[Any]:
    """Every live ``nn.Module``: one listing of the heap, filtered by type in slices.

    Not ``gc.get_referrers(*module_classes)``: that is one C call that compares every referent
    of every object with each of the ~400 Module classes torch defines, and it held the GIL for
    150 ms (250k objects) to 360 ms (1.2M) in a web server, stalling every request meanwhile
    (``bench/web_diagnosis_latency.py --stalls``). The listing holds it ~30 ms at 1.2M objects;
    the filter runs in slices, with a pause between them for the other threads.
    """
    import torch

    classes, todo = [], [torch.nn.Module]
    while todo:
        cls = todo.pop()
        classes.append(cls)
        todo.extend(cls.__subclasses__())
    wanted = set(classes).__contains__
    found = gc.get_objects()
    try:
        modules: list[Any] = []
        for start in range(0, len(found), _SLICE):
            chunk = found[start:start + _SLICE]
            modules.extend(itertools.compress(chunk, map(wanted, map(type, chunk))))
            del chunk
            pause()
        return modules
    finally:
        del found


def _hook_references(hook: Any) -> Iterator[Any]:
    function = hook
    if isinstance(hook, types.MethodType):
        yield hook.__self__
        yield from getattr(hook.__self__, "__dict__", {}).values()
        function = hook.__func__
    elif isinstance(hook, types.FunctionType):
        pass
    else:
        yield from getattr(hook, "__dict__", {}).values()
        function = type(hook).__call__ if callable(hook) else None
    if not isinstance(function, types.FunctionType):
        return
    yield from (cell.cell_contents for cell in function.__closure__ or ()
                if cell.cell_contents is not None)
    yield from function.__defaults__ or ()
    globals_ = function.__globals__
    yield from (globals_[name] for name in function.__code__.co_names if name in globals_)


def _stores_into(hook: Any, attribute: str | None) -> bool:
    """A plain function hook whose code touches ``module.<attribute>`` of its first argument."""
    function = hook.__func__ if isinstance(hook, types.MethodType) else hook
    if attribute is None or not isinstance(function, types.FunctionType):
        return False
    code = function.__code__
    return code.co_argcount > 0 and attribute in code.co_names


def hook_name(hook: Any) -> str:
    """``save()``, ``<lambda> at app.py:12`` or ``Recorder instance``."""
    if isinstance(hook, types.FunctionType):
        code = hook.__code__
        if hook.__name__ == "<lambda>":
            return f"<lambda> at {os.path.basename(code.co_filename)}:{code.co_firstlineno}"
        return f"{hook.__qualname__}()"
    if isinstance(hook, types.MethodType):
        return f"{hook.__qualname__}()"
    return f"{type(hook).__qualname__} instance"


def _hooks(module: Any) -> Iterable[tuple[Any, str]]:
    for attr, kind in _HOOK_DICTS.items():
        for hook in list(getattr(module, attr, {}).values()):
            yield hook, kind


def _global_hooks() -> Iterable[tuple[Any, str]]:
    import torch.nn.modules.module as registry

    for attr, kind in _GLOBAL_HOOKS.items():
        for hook in list(getattr(registry, attr, {}).values()):
            yield hook, kind


def find_hook(chain: Sequence[Any] | None, name_module: Callable[[Any, int | None], str],
              modules: Sequence[Any] | None = None) -> tuple[str, str, str] | None:
    """(module path, hook name, hook kind) of a hook that keeps what ``chain`` holds.

    ``chain``: a snapshot chain (root container first, tensor last). Modules on the chain are
    checked first (including hooks that store into their module argument), then every live
    module and torch's global registries for a hook that references an object on the chain.
    ``name_module(module, index)`` names a module (``model.1``; ``index``: its place in the chain,
    None when it is not on it). ``modules``: the live modules, when the caller has them.
    """
    if not chain:
        return None
    import torch

    wanted = {id(obj) for obj in chain[1:]}
    for index, obj in enumerate(chain):
        if not isinstance(obj, torch.nn.Module):
            continue
        after = chain[index + 1] if index + 1 < len(chain) else None
        if isinstance(after, dict) and index + 2 < len(chain) and after is vars(obj):
            after = chain[index + 2]  # the module's __dict__ -> the attribute's value
        attribute = _attribute_name(obj, after)
        for hook, kind in _hooks(obj):
            if _stores_into(hook, attribute) or any(id(r) in wanted for r in _hook_references(hook)):
                return name_module(obj, index), hook_name(hook), kind
    everything = list(module_instances() if modules is None else modules)
    try:
        for module in everything:
            for hook, kind in _hooks(module):
                if any(id(r) in wanted for r in _hook_references(hook)):
                    return name_module(module, None), hook_name(hook), kind
    finally:
        everything.clear()
    for hook, kind in _global_hooks():
        if any(id(r) in wanted for r in _hook_references(hook)):
            return "every module (a global hook)", hook_name(hook), kind
    return None


def _attribute_name(module: Any, child: Any) -> str | None:
    if child is None:
        return None
    for name, value in list(vars(module).items()):
        if value is child:
            return str(name)
    return None
