"""Reference paths as values: a named root, container steps, and how they read to a person.

Pure: formats paths like ``results (global list in module app) -> [137] -> Tensor(8, 10)`` and
is tested with plain values. ``paths.PathFinder`` does the gc walking that produces them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from vramguard.diagnosis.causes import RootKind

_ROOT_WORDS = {
    RootKind.MODULE_GLOBAL: "global",
    RootKind.CLASS_ATTRIBUTE: "class attribute",
    RootKind.FUNCTION_DEFAULT: "default argument",
    RootKind.CLOSURE: "closure variable",
    RootKind.THREAD_FRAME: "local",
}


@dataclass(frozen=True, slots=True)
class Root:
    """A named root: ``name`` is what the user typed (``results``, ``Service.cache``, ``cache``)."""

    kind: RootKind
    name: str
    type_name: str
    where: str  # module name, function name or thread name

    @property
    def variable(self) -> str:
        """The bare variable name (``cache`` for ``Service.cache``)."""
        return self.name.rsplit(".", 1)[-1]

    def __str__(self) -> str:
        if self.kind is RootKind.MODULE_GLOBAL:
            return f"{self.name} (global {self.type_name} in module {self.where})"
        if self.kind is RootKind.CLASS_ATTRIBUTE:
            return f"{self.name} (class attribute, {self.type_name}, in module {self.where})"
        if self.kind is RootKind.THREAD_FRAME:
            return f"{self.name} (local {self.type_name} in {self.where})"
        return f"{self.name} ({_ROOT_WORDS[self.kind]} of {self.where}(), {self.type_name})"


@dataclass(frozen=True, slots=True)
class Step:
    """One edge of a path, from a container to what it holds.

    ``kind``: ``index`` (``[137]``), ``key`` (``['user-5']``), ``attr`` (``.outputs``),
    ``closure``/``default`` (a function's closure variable or default argument), ``local`` (a
    local variable of a finished frame, kept by a traceback), ``graph`` (saved
    by the ``grad_fn`` graph of the tensor before), ``object`` (held by an object of a type).
    """

    kind: str
    label: str

    def __str__(self) -> str:
        if self.kind == "index":
            return f"[{self.label}]"
        if self.kind == "key":
            return f"[{self.label}]"
        if self.kind == "attr":
            return f".{self.label}"
        if self.kind == "closure":
            return f"closure `{self.label}`"
        if self.kind == "default":
            return f"default `{self.label}`"
        if self.kind == "local":
            return f"local `{self.label}`"
        if self.kind == "graph":
            return f".grad_fn graph (saved by {self.label})"
        return f"({self.label})"


def _compact(steps: Iterable[Step]) -> list[Step]:
    """``._modules['1']`` reads ``.1``: nn.Module children as the user names them."""
    out: list[Step] = []
    for step in steps:
        if out and out[-1] == Step("attr", "_modules") and step.kind == "key":
            out[-1] = Step("attr", step.label.strip("'\""))
        else:
            out.append(step)
    return out


@dataclass(frozen=True, slots=True)
class ReferencePath:
    """From a named root through container steps to the tensor (``target``: its description)."""

    root: Root
    steps: tuple[Step, ...]
    target: str

    @property
    def direct(self) -> bool:
        """The tensor sits in the root's own object (only index/key steps, or none)."""
        return all(s.kind in ("index", "key") for s in self.steps)

    @property
    def variable(self) -> str:
        """The name of the container that grows: the named step (attribute, closure variable,
        default argument) or root just before the last ``[i]``/``['k']`` step."""
        steps = [s for s in self.steps if s.kind != "graph"]
        last = max((i for i, s in enumerate(steps) if s.kind in ("index", "key")), default=None)
        if last is None:
            return self.root.name
        named = [s for s in steps[:last] if s.kind in ("attr", "closure", "default", "local")]
        return named[-1].label if named else self.root.name

    @property
    def dotted(self) -> str:
        """The root and its attribute steps, Python-like: ``model.1`` for a submodule."""
        return self.root.name + "".join(str(s) for s in _compact(self.steps))

    def __str__(self) -> str:
        parts = [str(self.root), *(str(s) for s in _compact(self.steps)), self.target]
        return " -> ".join(parts)
