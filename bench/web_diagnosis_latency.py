"""Latency of the other requests while the web guard's diagnosis runs (issue 9, web target).

A real uvicorn subprocess on 127.0.0.1 serves ``tests.integration.targets.web_apps.leaky_app``
with ``VramGuardMiddleware`` at default settings (only ``expose_status=True``): ``/leak`` keeps
each output with its graph, ``/clean`` keeps nothing; both do ``--work`` 64x64 matmuls. The server
also holds ``--ballast`` small objects in a module global (a real service's heap: the snapshot
walk visits everything a module reaches). ``--clients`` threads call ``/clean`` in closed loops
and record each request's start and end; one more thread calls ``/leak`` (in bursts) until the
leak verdict opens a diagnosis window and its analysis is done, then the clean clients go on for
``--tail`` seconds.

When the diagnosis runs is read from the server's log, not guessed from time: the window logs
its phases at debug level (``scanning``: the set of live storages and a census, ``open``: the
route's next requests are counted (tracked on async endpoints), ``explaining``: the second
census, the heap snapshot and the reference paths, ``done``). The server stamps each line with
``time.perf_counter()`` (CLOCK_MONOTONIC, the same clock as the client's on Linux). A clean
request belongs to a phase when its interval overlaps it; "outside" is every clean request that
overlaps no phase (before the window opened, and in the tail after it).

Baseline: the same app without the middleware under the same clients, for as long as the guarded
run lasted. Fresh server per round; figures over all rounds' requests, and per round.
Run: python bench/web_diagnosis_latency.py [--rounds 3] [--clients 3] [--work 20] [--sync]
     [--ballast 1000000]
"""

from __future__ import annotations

import argparse
import itertools
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _servers import free_port, launch  # noqa: E402  (bench/ is on sys.path as a script)

PHASES = ("scanning", "open", "explaining")
_SERVER = """
import gc, logging, sys, time
import torch, uvicorn
torch.set_num_threads(1)

class Stamp(logging.Handler):
    # one line per diagnosis phase, stamped on the shared monotonic clock
    def __init__(self, path):
        super().__init__()
        self.file = open(path, "a", buffering=1)
    def emit(self, record):
        message = record.getMessage()
        if message.startswith("vramguard: diagnosis window"):
            self.file.write(f"{{time.perf_counter():.6f}} {{message}}\\n")

log = logging.getLogger("vramguard")
log.setLevel(logging.DEBUG)
log.addHandler(Stamp({log!r}))
ballast = [[i] for i in range({ballast})]  # lists: gc tracks them (a dict of ints it does not)
if {stalls}:
    import threading, traceback
    def stalls():
        # a 1 ms ticker: when it wakes late, where every other thread is now (the long holder
        # of the GIL has just let go: its frame is the one right after the long call)
        me = threading.get_ident()
        names = {{}}
        while True:
            began = time.perf_counter()
            time.sleep(0.001)
            late = time.perf_counter() - began
            if late > 0.02:
                names = {{t.ident: t.name for t in threading.enumerate()}}
                where = []
                for ident, frame in sys._current_frames().items():
                    if ident == me:
                        continue
                    stack = traceback.extract_stack(frame)[-4:]
                    where.append(names.get(ident, "?") + ": " + " < ".join(
                        f"{{f.name}}:{{f.lineno}}" for f in reversed(stack)))
                with open({log!r}, "a") as out:
                    out.write(f"{{time.perf_counter():.6f}} stall {{late * 1000:.1f}} ms | "
                              + " || ".join(where) + "\\n")
    threading.Thread(target=stalls, daemon=True).start()
from tests.integration.targets.web_apps import leaky_app
app = leaky_app(sync={sync}, work={work}, rows={rows}, guard={guard})
with open({log!r}, "a") as out:
    out.write(f"{{time.perf_counter():.6f}} gc objects {{len(gc.get_objects())}}\\n")
uvicorn.run(app, host="127.0.0.1", port={port}, log_level="warning")
"""


@dataclass(frozen=True, slots=True)
class Round:
    """One server's run: clean requests as (start, end) and the phases as (name, start, end)."""

    clean: list[tuple[float, float]]
    phases: list[tuple[str, float, float]]
    leak_requests: int
    gc_objects: int
    analysis_s: float | None
    leak_s: float  # how long the leak route was called


def _serve(*, guard: bool, sync: bool, work: int, rows: int, ballast: int, log: str,
           stalls: bool) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    code = _SERVER.format(log=log, ballast=ballast, sync=sync, work=work, rows=rows, guard=guard,
                          port=port, stalls=stalls)
    return launch(code, port, "/clean", tries=600, timeout=5)


def _read_log(path: str) -> tuple[dict[str, float], int, float | None]:
    stamps: dict[str, float] = {}
    objects, analysis = 0, None
    for line in Path(path).read_text().splitlines():
        stamp, _, message = line.partition(" ")
        if message.startswith("gc objects"):
            objects = int(message.split()[-1])
            continue
        if message.startswith("stall"):
            continue
        phase = message.split(": ")[-1]
        name = phase.split()[0]
        stamps.setdefault(name, float(stamp))
        if name == "done":
            analysis = float(phase.split()[2])
    return stamps, objects, analysis


class _Clients:
    """``count`` clean clients in closed loops (each request's start and end recorded) and one
    leak client, until stopped."""

    def __init__(self, base: str, count: int) -> None:
        self.base = base
        self.stop, self.leak_stop = threading.Event(), threading.Event()
        self.clean: list[list[tuple[float, float]]] = [[] for _ in range(count)]
        self.leaks = 0
        self.threads = [threading.Thread(target=self._clean, args=(c,)) for c in self.clean]
        self.threads.append(threading.Thread(target=self._leak))

    def _clean(self, mine: list[tuple[float, float]]) -> None:
        with httpx.Client(base_url=self.base, timeout=60) as http:
            while not self.stop.is_set():
                started = time.perf_counter()
                http.get("/clean").raise_for_status()
                mine.append((started, time.perf_counter()))

    def _leak(self) -> None:
        # In bursts of random (seeded) length with random pauses: a steady 3:1 mix of closed
        # loops makes every attribution window collinear, and the route never gets a verdict
        # (measured: inconclusive after 82,000 /leak requests); real traffic is not that steady.
        rng = random.Random(0)
        with httpx.Client(base_url=self.base, timeout=60) as http:
            while not self.leak_stop.is_set():
                for _ in range(rng.randint(1, 40)):
                    http.get("/leak").raise_for_status()
                    self.leaks += 1
                self.leak_stop.wait(rng.uniform(0.0, 0.3))

    def start(self) -> None:
        with httpx.Client(base_url=self.base, timeout=5) as http:
            for _ in range(20):  # warm both routes (first-call costs) before timing anything
                http.get("/clean")
                http.get("/leak")
        for thread in self.threads:
            thread.start()

    def join(self) -> None:
        self.stop.set()
        self.leak_stop.set()
        for thread in self.threads:
            thread.join(60)


def _phases(stamps: dict[str, float]) -> list[tuple[str, float, float]]:
    order = [*PHASES, "done"]
    return [(name, stamps[name], stamps.get(following, float("inf")))
            for name, following in itertools.pairwise(order) if name in stamps]


def run_round(*, guard: bool, sync: bool, work: int, rows: int, ballast: int, clients: int,
              tail: float,
              duration: float | None = None, leak_for: float | None = None,
              limit: float, stalls: bool = False) -> Round:
    """One fresh server. Guarded: until the diagnosis is done plus ``tail`` seconds (at most
    ``limit``); bare: for ``duration`` seconds, the leak route called for the first
    ``leak_for``."""
    with tempfile.NamedTemporaryFile("w", suffix=".log", delete=False) as handle:
        log = handle.name
    process, base = _serve(guard=guard, sync=sync, work=work, rows=rows, ballast=ballast,
                           log=log, stalls=stalls)
    load = _Clients(base, clients)
    done_at: float | None = None
    try:
        load.start()
        began = time.perf_counter()
        while time.perf_counter() - began < (duration if duration is not None else limit):
            time.sleep(0.1)
            if guard and done_at is None and "done" in _read_log(log)[0]:
                done_at = time.perf_counter()
                load.leak_stop.set()  # the leak route has done its part; it is not timed
            if done_at is not None and time.perf_counter() - done_at >= tail:
                break
            if leak_for is not None and time.perf_counter() - began >= leak_for:
                load.leak_stop.set()
        if guard and done_at is None:
            status = httpx.get(f"{base}/vramguard/status", timeout=30).json()
            for route in status["routes"]:
                print(f"  no diagnosis: {route['route']}: {route['check']['verdict']} "
                      f"({route['check']['reason']}); measured {route['measured']} of "
                      f"{route['requests']}, attribution {route['attribution']}")
    finally:
        load.join()
        process.kill()
        process.wait()
    stamps, objects, analysis = _read_log(log)
    if stalls:
        print("".join(line + "\n" for line in Path(log).read_text().splitlines()
                      if " stall " in line or " vramguard: " in line), end="")
    os.unlink(log)
    if guard and "done" not in stamps:
        print(f"  no diagnosis finished within {limit:.0f} s (phases seen: {sorted(stamps)})")
    leak_s = (done_at if done_at is not None else time.perf_counter()) - began
    return Round([r for c in load.clean for r in c], _phases(stamps), load.leaks, objects,
                 analysis, leak_s)


def _overlaps(request: tuple[float, float], start: float, end: float) -> bool:
    return request[0] < end and request[1] > start


def split(round_: Round) -> dict[str, list[float]]:
    """Clean latencies (ms) by phase; "outside" overlaps none."""
    out: dict[str, list[float]] = {"outside": [], **{name: [] for name, _, _ in round_.phases}}
    for request in round_.clean:
        hit = [name for name, start, end in round_.phases if _overlaps(request, start, end)]
        for name in hit or ["outside"]:
            out[name].append((request[1] - request[0]) * 1000)
    return out


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def describe(values: list[float]) -> tuple[float, float, float]:
    return percentile(values, 0.5), percentile(values, 0.99), max(values)


def row(label: str, values: list[float], base: tuple[float, float, float] | None) -> str:
    if not values:
        return f"| {label} | 0 | - | - | - | - |"
    p50, p99, top = describe(values)
    ratio = "" if base is None else f"{p50 / base[0]:.2f} / {p99 / base[1]:.2f} / {top / base[2]:.2f}"
    return f"| {label} | {len(values)} | {p50:.2f} | {p99:.2f} | {top:.1f} | {ratio} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=3)
    parser.add_argument("--work", type=int, default=20, help="64x64 matmuls per request")
    parser.add_argument("--rows", type=int, default=64,
                        help="rows of the input each /leak request keeps (64: ~10 KiB/request)")
    parser.add_argument("--ballast", type=int, default=1_000_000)
    parser.add_argument("--sync", action="store_true", help="plain def endpoints (threadpool)")
    parser.add_argument("--tail", type=float, default=5.0)
    parser.add_argument("--limit", type=float, default=240.0)
    parser.add_argument("--stalls", action="store_true",
                        help="print where the server's threads were when a 1 ms ticker woke "
                             "more than 20 ms late (diagnoses the latency; adds load)")
    args = parser.parse_args()
    print(f"load average at start: {os.getloadavg()}; cores: {os.cpu_count()}")
    common = {"sync": args.sync, "work": args.work, "rows": args.rows, "ballast": args.ballast,
              "clients": args.clients, "tail": args.tail, "limit": args.limit,
              "stalls": args.stalls}
    print(f"settings: {common}")
    guarded: dict[str, list[float]] = {}
    bare: list[float] = []
    for number in range(args.rounds):
        found = run_round(guard=True, **common)
        lasted = max(end for _, end in found.clean) - min(start for start, _ in found.clean)
        plain = run_round(guard=False, duration=lasted, leak_for=found.leak_s, **common)
        parts = split(found)
        for name, values in parts.items():
            guarded.setdefault(name, []).extend(values)
        bare.extend(ms for ms in ((e - s) * 1000 for s, e in plain.clean))
        phases = ", ".join(f"{name} {end - start:.2f} s" for name, start, end in found.phases)
        outside = describe(parts["outside"])
        during = describe(parts["explaining"]) if parts.get("explaining") else None
        print(f"round {number + 1}: {found.gc_objects} gc objects, {found.leak_requests} /leak "
              f"requests, phases: {phases or 'none (no leak verdict)'}; clean p99 outside "
              f"{outside[1]:.2f} ms, during the analysis "
              f"{'-' if during is None else f'{during[1]:.2f} ms (max {during[2]:.1f})'}; "
              f"bare p99 {describe(bare)[1]:.2f} ms", flush=True)
    print(f"load average at end: {os.getloadavg()}")
    base = describe(bare)
    outside = describe(guarded["outside"])
    print("\n| clean requests | n | p50 ms | p99 ms | max ms | p50 / p99 / max vs outside |")
    print("|---|---|---|---|---|---|")
    print(row("no middleware", bare, outside))
    print(row("middleware, outside the diagnosis", guarded["outside"], outside))
    for name in PHASES:
        print(row(f"middleware, during `{name}`", guarded.get(name, []), outside))
    print(f"\noutside vs no middleware: p50 {outside[0] / base[0]:.2f}, p99 "
          f"{outside[1] / base[1]:.2f}, max {outside[2] / base[2]:.2f}")
    if guarded.get("explaining"):
        during = describe(guarded["explaining"])
        print(f"analysis p99 over outside p99: +{during[1] - outside[1]:.1f} ms; per-round "
              f"medians of phase durations are above")
    print(f"(median clean latency, all: {statistics.median(guarded['outside']):.2f} ms)")


if __name__ == "__main__":
    main()
