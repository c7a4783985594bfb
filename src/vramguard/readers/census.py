"""A census of live tensors: exact bytes per storage, including tensors only autograd graphs hold.

``gc`` sees tensors that Python objects reference, but activations saved for backward live inside
C++ autograd nodes: the census walks the ``grad_fn`` graph of every live tensor and reads the saved
tensors of each node. Each storage counts once (views, ``.detach()`` aliases and saved copies of a
live tensor share it).

Cost: one C-level gc pass that finds the instances of the Tensor classes (``gc.get_referrers`` of
the classes; see ``_tensors_by_type``), so Python code runs only for tensors, not for every object.
The census holds strong references only while it runs and drops them in ``finally``.
"""

from __future__ import annotations

import gc
import itertools
import operator
import sys
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from vramguard._torch import require_torch


@dataclass(frozen=True, slots=True, order=True)
class TensorGroup:
    """What tensors are grouped by when we look for the ones that grow."""

    device: str
    dtype: str
    shape: tuple[int, ...]
    requires_grad: bool
    grad_fn: str | None
    in_graph: bool = False  # held only by an autograd graph (a saved tensor), not by Python

    def __str__(self) -> str:
        shape = "x".join(map(str, self.shape)) or "scalar"
        where = f", saved by {self.grad_fn}" if self.in_graph else (
            f", grad_fn={self.grad_fn}" if self.grad_fn else "")
        grad = ", requires_grad" if self.requires_grad and not self.in_graph else ""
        return f"Tensor({shape}, {self.dtype}, {self.device}{grad}{where})"


@dataclass(frozen=True, slots=True)
class GroupStats:
    """How many tensors of a group are alive and the bytes of the storages they own."""

    count: int
    bytes: int


@dataclass(frozen=True, slots=True)
class Census:
    """Live tensor memory at one moment; plain values only, no references to tensors."""

    total_bytes: int
    graph_bytes: int  # part of total_bytes reachable only through autograd graphs
    tensor_count: int
    storage_count: int
    groups: Mapping[TensorGroup, GroupStats] = field(repr=False)
    duration_s: float = 0.0
    grouped: bool = True  # False: bytes only, ``groups`` left empty

    def bytes_on(self, device: str) -> int:
        """Bytes of groups on ``device`` ("cpu", "cuda:0", ...)."""
        return sum(s.bytes for g, s in self.groups.items() if g.device == device)


class _TensorTypes(dict[type, bool]):
    """type -> is it a Tensor subclass; filled lazily, so the filter stays in C for known types."""

    def __init__(self, tensor_type: type) -> None:
        super().__init__()
        self._tensor_type = tensor_type

    def __missing__(self, key: type) -> bool:
        value = issubclass(key, self._tensor_type)
        self[key] = value
        return value


_REFERRERS_WORK: dict[int, bool] = {}  # id(torch.Tensor) -> does gc.get_referrers find tensors
_SAVED_PREFIX = "_saved_"
_FULL_PASS_EVERY = 16
_DTYPE = operator.attrgetter("dtype")
_SHAPE = operator.attrgetter("shape")
_REQUIRES_GRAD = operator.attrgetter("requires_grad")
_GRAD_FN = operator.attrgetter("grad_fn")


class CensusTaker:
    """Takes censuses; keeps only per-type caches between calls, never objects."""

    def __init__(self) -> None:
        self._torch = require_torch()
        self._tensor_types = _TensorTypes(self._torch.Tensor)
        self._saved_attrs: dict[type, tuple[str, ...]] = {}
        self._referrers_work: bool | None = None
        self._always = {self._torch.Tensor, self._torch.nn.Parameter}
        self._quiet: dict[type, int] = {}
        self._since_full = _FULL_PASS_EVERY

    def live_tensors(self, objects: Iterable[Any] | None = None) -> list[Any]:
        """Tensors among ``objects`` (default: every live tensor gc can see)."""
        if objects is None and self._referrers_work is not False:
            tensors = self._tensors_by_type()
            if self._referrers_work:
                return tensors
            del tensors  # the check failed: this build's gc does not find tensors by type
        objs = gc.get_objects() if objects is None else objects
        try:
            return list(itertools.compress(objs, map(self._tensor_types.__getitem__, map(type, objs))))
        finally:
            del objs  # the heap listing must not outlive the call

    def _tensor_classes(self) -> list[type]:
        classes, stack = [], [self._torch.Tensor]
        while stack:
            cls = stack.pop()
            classes.append(cls)
            stack.extend(cls.__subclasses__())
        return classes

    def _tensors_by_type(self) -> list[Any]:
        # Instances of heap types visit their type during gc traversal, so asking gc for the
        # referrers of the Tensor classes finds every tensor in one C-level pass (~1.2x a bare
        # gc.get_objects()); filtering a million-object listing in Python costs 2-3x more.
        classes = self._tensor_classes()
        scan = self._classes_to_scan(classes)
        wanted = set(scan)
        probe = self._probe()
        found = gc.get_referrers(*scan)
        try:
            tensors = list(itertools.compress(found, map(wanted.__contains__, map(type, found))))
        finally:
            del found, wanted  # before re-baselining: the set holds a reference to each class
        if probe is not None:
            self._referrers_work = _REFERRERS_WORK[id(self._torch.Tensor)] = any(
                t is probe for t in tensors)
            tensors = [t for t in tensors if t is not probe]
            del probe
        if len(scan) == len(classes):
            self._rebaseline(classes, tensors)
        return tensors

    def _probe(self) -> Any:
        # Whether gc finds tensors by type is checked once per process (the answer is shared by
        # every taker), against a fresh tensor that the first pass must find: if a torch build
        # stops visiting the type, the census falls back to the slower full scan instead of
        # silently counting nothing. Checked within the first census's own pass, not in a pass
        # of its own: that doubled the first census's cost (46 ms against 19 ms for the next,
        # measured in a process that had imported torch).
        if self._referrers_work is None:
            self._referrers_work = _REFERRERS_WORK.get(id(self._torch.Tensor))
        return self._torch.empty(0) if self._referrers_work is None else None

    def _classes_to_scan(self, classes: list[type]) -> list[type]:
        # gc compares every referent against every class asked for, so the pass costs ~1x per
        # class. torch defines a dozen rare subclasses (FakeTensor, MaskedTensor, ...); each
        # instance holds a reference to its class, so a rare class whose reference count is what
        # it was when a full pass found none of its instances has none now, and is skipped. Any
        # change, or every 16th census, triggers a full pass again.
        self._since_full += 1
        if self._since_full >= _FULL_PASS_EVERY:
            return classes
        scan = []
        for cls in classes:
            if cls in self._always:
                scan.append(cls)
                continue
            quiet = self._quiet.get(cls)
            if quiet is None:
                return classes  # a class never seen before, or one with instances
            if sys.getrefcount(cls) != quiet:
                return classes
        return scan

    def _rebaseline(self, classes: list[type], tensors: list[Any]) -> None:
        self._since_full = 0
        with_instances = set(map(type, tensors))
        self._quiet = {
            cls: sys.getrefcount(cls)
            for cls in classes
            if cls not in self._always and cls not in with_instances
        }

    def take(self, objects: Iterable[Any] | None = None, *, follow_graphs: bool = True,
             groups: bool = True) -> Census:
        """Count live tensors (and, with ``follow_graphs``, the tensors their graphs saved).

        ``groups=False`` counts bytes only (``Census.groups`` is then empty): about half the cost,
        which is what a guard's routine census needs; the tensor diff needs grouped censuses.
        """
        started = time.perf_counter()
        # The census allocates tens of thousands of small tuples; letting them trigger a full
        # collection of a large heap mid-census would cost more than the census itself.
        collecting = gc.isenabled()
        gc.disable()
        try:
            return self._take(objects, follow_graphs, groups, started)
        finally:
            if collecting:
                gc.enable()

    def _take(self, objects: Iterable[Any] | None, follow_graphs: bool, grouped: bool,
              started: float) -> Census:
        tensors = self.live_tensors(objects)
        storages: dict[tuple[Any, int], int] = {}
        raw_groups: dict[tuple[Any, ...], list[int]] = {}
        device_names: dict[int, str] = {}
        graph_bytes = 0
        try:
            if grouped:
                self._add_all(tensors, storages, raw_groups, device_names)
            else:
                tensor_count = self._add_totals(tensors, storages)
            if follow_graphs:
                graph_bytes = self._add_graphs(tensors, storages, raw_groups, device_names)
        finally:
            del tensors  # drop the strong references before returning (the guard must not leak)
        groups = {_group(raw, device_names): GroupStats(c, b) for raw, (c, b) in raw_groups.items()}
        if not grouped:
            groups = {}
        else:
            tensor_count = sum(s.count for s in groups.values())
        return Census(
            total_bytes=sum(storages.values()),
            graph_bytes=graph_bytes,
            tensor_count=tensor_count,
            storage_count=len(storages),
            groups=MappingProxyType(groups),
            duration_s=time.perf_counter() - started,
            grouped=grouped,
        )

    def _add_all(self, tensors: list[Any], storages: dict[tuple[Any, int], int],
                 raw_groups: dict[tuple[Any, ...], list[int]], device_names: dict[int, str]) -> None:
        # The hot part of the census, written column-wise: each ``map`` over a torch method runs
        # its loop in C, about 3x faster than one Python loop touching every attribute per tensor.
        tensor_type = self._torch.Tensor
        try:
            owned = list(map(tensor_type.untyped_storage, tensors))
        except (RuntimeError, NotImplementedError):
            # sparse or functional tensors have no plain storage: count the others one by one
            for tensor in tensors:
                self._add_all_slow(tensor, storages, raw_groups, device_names)
            return
        devices = list(map(tensor_type.get_device, tensors))  # ints hash faster than devices
        storage_type = type(owned[0]) if owned else None
        pointers = list(map(storage_type.data_ptr, owned)) if storage_type else []
        keys = list(zip(devices, pointers, strict=True))
        raw = list(zip(devices, map(_DTYPE, tensors), map(_SHAPE, tensors),
                       map(_REQUIRES_GRAD, tensors), map(type, map(_GRAD_FN, tensors)), strict=True))
        for group, count in Counter(raw).items():
            raw_groups[(*group, False)] = [count, 0]
        # The tensor whose group a storage's bytes are attributed to: preferably not a view (the
        # weight, not the `weight.t()` a graph saved) and with a grad_fn (the output a graph made,
        # not the grad-less copy that unpacking the graph's saved tensor leaves behind); the
        # first such in gc order.
        no_grad_fn = map(operator.is_, (group[4] for group in raw), itertools.repeat(type(None)))
        preference = list(zip(map(tensor_type._is_view, tensors), no_grad_fn, strict=True))
        order = sorted(range(len(keys)), key=preference.__getitem__)  # preferred first, stable
        order.reverse()  # in a dict built in this order the earliest of `order` is written last
        first = dict(zip(map(keys.__getitem__, order), order, strict=True))
        for key, index in first.items():
            if key in storages:
                continue
            size = storages[key] = owned[index].nbytes()
            raw_groups[(*raw[index], False)][1] += size
        for device, tensor in zip(devices, tensors, strict=True):
            if device not in device_names:
                device_names[device] = str(tensor.device)
            if len(device_names) == len(set(devices)):
                break

    def _add_totals(self, tensors: list[Any], storages: dict[tuple[Any, int], int]) -> int:
        # Bytes only: the same column-wise pass without the per-tensor group keys.
        tensor_type = self._torch.Tensor
        try:
            owned = list(map(tensor_type.untyped_storage, tensors))
        except (RuntimeError, NotImplementedError):
            raw: dict[tuple[Any, ...], list[int]] = {}
            for tensor in tensors:
                self._add_all_slow(tensor, storages, raw, {})
            return sum(count for count, _ in raw.values())
        if not owned:
            return 0
        keys = zip(map(tensor_type.get_device, tensors), map(type(owned[0]).data_ptr, owned),
                   strict=True)
        unique = dict(zip(keys, owned, strict=True))
        for key in storages.keys() & unique.keys():
            del unique[key]  # counted already
        storages.update(zip(unique.keys(), map(type(owned[0]).nbytes, unique.values()), strict=True))
        return len(tensors)

    def _add_all_slow(self, tensor: Any, storages: dict[tuple[Any, int], int],
                      raw_groups: dict[tuple[Any, ...], list[int]],
                      device_names: dict[int, str]) -> None:
        try:
            storage = tensor.untyped_storage()
        except (RuntimeError, NotImplementedError):
            return
        device = tensor.get_device()
        key = (device, storage.data_ptr())
        size = 0 if key in storages else storage.nbytes()
        storages.setdefault(key, size)
        device_names.setdefault(device, str(tensor.device))
        raw = (device, tensor.dtype, tensor.shape, tensor.requires_grad, type(tensor.grad_fn), False)
        entry = raw_groups.setdefault(raw, [0, 0])
        entry[0] += 1
        entry[1] += size

    def _add_saved(self, tensor: Any, owner: type, storages: dict[tuple[Any, int], int],
                   raw_groups: dict[tuple[Any, ...], list[int]],
                   device_names: dict[int, str]) -> int:
        try:
            storage = tensor.untyped_storage()
            device = tensor.get_device()
            key = (device, storage.data_ptr())
        except (RuntimeError, NotImplementedError):
            return 0
        if key in storages:
            return 0  # a saved alias of a tensor already counted: not extra memory
        size = storages[key] = storage.nbytes()
        device_names.setdefault(device, str(tensor.device))
        raw = (device, tensor.dtype, tensor.shape, tensor.requires_grad, owner, True)
        entry = raw_groups.setdefault(raw, [0, 0])
        entry[0] += 1
        entry[1] += size
        return size

    def _add_graphs(self, tensors: list[Any], storages: dict[tuple[Any, int], int],
                    raw_groups: dict[tuple[Any, ...], list[int]],
                    device_names: dict[int, str]) -> int:
        seen: dict[int, Any] = {}  # id -> node; holding the node keeps its id from being reused
        added = 0
        try:
            for node in self._nodes(tensors, seen):
                for saved in self._saved_tensors(node):
                    added += self._add_saved(saved, type(node), storages, raw_groups,
                                             device_names)
        finally:
            seen.clear()
        return added

    def _nodes(self, tensors: list[Any], seen: dict[int, Any]) -> Iterator[Any]:
        stack = list(filter(None, map(_GRAD_FN, tensors)))
        while stack:
            node = stack.pop()
            if node is None or id(node) in seen:
                continue
            seen[id(node)] = node
            yield node
            stack.extend(next_node for next_node, _ in node.next_functions)

    def _saved_tensors(self, node: Any) -> Iterator[Any]:
        names = self._saved_attrs.get(type(node))
        if names is None:
            names = tuple(n for n in dir(node) if n.startswith(_SAVED_PREFIX))
            self._saved_attrs[type(node)] = names
        for name in names:
            try:
                value = getattr(node, name)
            except RuntimeError:
                continue  # freed by a backward pass already: holds nothing
            if isinstance(value, self._torch.Tensor):
                yield value
            elif isinstance(value, tuple | list):
                yield from (v for v in value if isinstance(v, self._torch.Tensor))


def _group(raw: tuple[Any, ...], device_names: dict[int, str]) -> TensorGroup:
    device, dtype, shape, requires_grad, node_type, in_graph = raw
    name = None if node_type is None or node_type is type(None) else node_type.__name__
    return TensorGroup(device_names.get(device, "cpu" if device < 0 else f"cuda:{device}"),
                       str(dtype).removeprefix("torch."), tuple(shape), bool(requires_grad), name,
                       in_graph)


def diff_groups(before: Census, after: Census) -> list[tuple[TensorGroup, int, int]]:
    """(group, count growth, bytes growth) for groups that grew, largest bytes growth first."""
    grown = []
    for group, stats in after.groups.items():
        old = before.groups.get(group, GroupStats(0, 0))
        if stats.bytes > old.bytes or stats.count > old.count:
            grown.append((group, stats.count - old.count, stats.bytes - old.bytes))
    return sorted(grown, key=lambda item: (-item[2], -item[1], str(item[0])))
