"""The retainer search on a ~1M-object heap: one snapshot (this version) against the previous
search (a wall-clock-bounded BFS over gc.get_referrers, the file at git revision ``--baseline``),
on the same heap, side by side.

Two heap shapes, each with one leaked tensor held by a user global:
- ``plain``: ``results[i]`` in a global list, beside ~1M unrelated objects;
- ``fan-in``: the tensor's holder is referenced by 2,000 anonymous objects (leftover hook handles
  or metric wrappers each in a list of their own), as in the reports that made the old search
  return a fallback: its BFS expands each referrer with a full heap scan.

Also measured: the longest single GIL hold of the snapshot (the longest gc call; a server's other
threads run between calls) and the p99 latency of a 1 ms "request" loop in another thread while
the snapshot runs, against the same loop with no snapshot.

Run: python bench/diagnosis_snapshot.py [--objects 1000000] [--baseline 59762bf]
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import types
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from vramguard.diagnosis import snapshot as snapshot_module  # noqa: E402
from vramguard.diagnosis.paths import Retainers  # noqa: E402


class Record:
    def __init__(self, index: int) -> None:
        self.index = index
        self.tags = [index]


def build_heap(objects: int, shape: str) -> tuple[types.ModuleType, Any]:
    app = types.ModuleType("bench_app")
    app.records = [Record(i) for i in range(objects // 3)]  # ~3 gc objects each
    tensor = torch.randn(16, 16)
    holder = [tensor]
    app.results = [torch.zeros(1) for _ in range(100)] + [holder]
    if shape == "fan-in":
        app.handles = [[{"hook": holder}] for _ in range(2000)]
        for entry in app.handles:  # each handle also sits in a cycle (gc-visible referrers)
            entry.append(entry)
    sys.modules["bench_app"] = app
    return app, tensor


def load_baseline(revision: str) -> Any:
    text = subprocess.run(["git", "show", f"{revision}:src/vramguard/diagnosis/paths.py"],
                          cwd=ROOT, capture_output=True, text=True, check=True).stdout
    folder = Path(tempfile.mkdtemp())
    (folder / "old_paths.py").write_text(text)
    spec = importlib.util.spec_from_file_location("old_paths", folder / "old_paths.py")
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot load the baseline search from {revision}")
    module = importlib.util.module_from_spec(spec)
    sys.modules["old_paths"] = module  # dataclasses look their module up while it executes
    spec.loader.exec_module(module)
    return module


def gil_holds() -> list[float]:
    """Wrap gc.get_referents inside the snapshot module to time each C call."""
    holds: list[float] = []
    real = gc.get_referents

    def timed(*objects: Any) -> list[Any]:
        began = time.perf_counter()
        try:
            return real(*objects)
        finally:
            holds.append(time.perf_counter() - began)

    names = {name: getattr(gc, name) for name in dir(gc) if not name.startswith("__")}
    snapshot_module.gc = types.SimpleNamespace(**{**names, "get_referents": timed})  # type: ignore[assignment]
    return holds


def latency_p99(work: Any) -> tuple[float, float]:
    """p99 of a 1 ms request loop in another thread while ``work()`` runs; and ``work``'s time."""
    stop = threading.Event()
    latencies: list[float] = []

    def requests() -> None:
        while not stop.is_set():
            began = time.perf_counter()
            time.sleep(0.001)
            latencies.append(time.perf_counter() - began)

    thread = threading.Thread(target=requests)
    thread.start()
    began = time.perf_counter()
    try:
        work()
    finally:
        took = time.perf_counter() - began
        stop.set()
        thread.join()
    return statistics.quantiles(latencies, n=100)[98] if len(latencies) > 2 else float("nan"), took


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--objects", type=int, default=1_000_000)
    # 59762bf: the last revision with the wall-clock-bounded gc.get_referrers search
    parser.add_argument("--baseline", default="59762bf")
    args = parser.parse_args()
    old = load_baseline(args.baseline)
    print("| heap | gc objects | search | answer | time (s) | objects visited |")
    print("|---|---|---|---|---|---|")
    for shape in ("plain", "fan-in"):
        app, tensor = build_heap(args.objects, shape)
        count = len(gc.get_objects())
        modules = {"bench_app": app}
        for label, seconds in (("previous (1 s limit)", 1.0),):
            finder = old.PathFinder(old.Limits(max_seconds=seconds, max_nodes=500_000),
                                    modules=modules)
            began = time.perf_counter()
            found = finder.find(tensor, "Tensor(16, 16)")
            took = time.perf_counter() - began
            answer = str(found.path) if found.path is not None else found.reason
            print(f"| {shape} | {count} | {label} | {answer} | {took:.2f} | {found.explored} |")
        began = time.perf_counter()
        retainers = Retainers([tensor], modules=modules, frames=False)
        found = retainers.find(tensor, "Tensor(16, 16)")
        took = time.perf_counter() - began
        visited = retainers.snapshot.visited
        retainers.close()
        answer = str(found.path) if found.path is not None else found.reason
        print(f"| {shape} | {count} | snapshot (this version) | {answer} | {took:.2f} | "
              f"{visited} |")
        del app, tensor, retainers
        sys.modules.pop("bench_app", None)
        gc.collect()
    # GIL holds and latency of other threads, on the plain heap with every module as a root
    _app, _tensor = build_heap(args.objects, "plain")
    quiet, _ = latency_p99(lambda: time.sleep(3))
    holds = gil_holds()

    def snap() -> None:  # no targets: the walk covers everything the roots reach
        Retainers([], frames=False).close()

    loaded, took = latency_p99(snap)
    print()
    print(f"full walk of the whole process (all modules as roots): {took:.2f} s, "
          f"{len(holds)} gc calls, longest GIL hold {max(holds) * 1000:.1f} ms")
    print(f"p99 of a 1 ms request loop in another thread: {quiet * 1000:.1f} ms idle, "
          f"{loaded * 1000:.1f} ms during the snapshot")


if __name__ == "__main__":
    main()
