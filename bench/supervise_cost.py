"""What one supervisor sample costs, against starting one ``ps`` process to read the same tree.

The common alternative to ``vramguard supervise`` is a shell loop that runs ``ps`` (or
``nvidia-smi``) every few seconds. This measures, in the same run on the same process tree (a
command with ``--children`` sleeping children):

- one supervisor sample: list the tree (psutil, recursive) and sum its RSS, exactly what the
  runner does each ``--interval`` without ``--max-vram``;
- one ``ps -o rss= -g PGID`` process start, the shell loop's equivalent;
- the group clean-up scan (``group_members``), which runs only while stopping the command.

CPU is process time (the supervisor's own; for ``ps`` the child's, from ``RUSAGE_CHILDREN``);
wall time is included because a process start mostly waits. Reported as medians and ratios.

    python bench/supervise_cost.py [--samples 500] [--children 8]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time

from vramguard.supervise import TreeProbe, procs


def spawn_tree(children: int) -> subprocess.Popen[bytes]:
    code = ("import subprocess, sys, time\n"
            f"kids = [subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)']) "
            f"for _ in range({children})]\n"
            "time.sleep(120)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
    deadline = time.monotonic() + 30
    while len(procs.tree(proc.pid, adopted=False)) < children + 1:
        if time.monotonic() > deadline:
            raise RuntimeError("the tree did not start")
        time.sleep(0.05)
    return proc


def sample_cost(pid: int, samples: int) -> tuple[float, float]:
    probe = TreeProbe()
    cpu, wall = [], []
    for _ in range(samples):
        c0, w0 = time.process_time(), time.perf_counter()
        probe.read(procs.tree(pid, adopted=False))
        cpu.append(time.process_time() - c0)
        wall.append(time.perf_counter() - w0)
    return statistics.median(cpu), statistics.median(wall)


def ps_cost(pgid: int, runs: int) -> tuple[float, float]:
    cpu, wall = [], []
    for _ in range(runs):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        w0 = time.perf_counter()
        subprocess.run(["ps", "-o", "rss=", "-g", str(pgid)], capture_output=True, check=True)
        wall.append(time.perf_counter() - w0)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu.append((after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime))
    return statistics.median(cpu), statistics.median(wall)


def scan_cost(pgid: int, runs: int) -> float:
    wall = []
    for _ in range(runs):
        w0 = time.perf_counter()
        procs.group_members(pgid)
        wall.append(time.perf_counter() - w0)
    return statistics.median(wall)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=500)
    parser.add_argument("--children", type=int, default=8)
    args = parser.parse_args()
    tree = spawn_tree(args.children)
    try:
        sample_cost(tree.pid, 20)  # warm up psutil's caches and the imports
        s_cpu, s_wall = sample_cost(tree.pid, args.samples)
        p_cpu, p_wall = ps_cost(tree.pid, max(args.samples // 5, 20))
        scan = scan_cost(tree.pid, 50)
    finally:
        procs.signal_group(tree.pid, 9)
        tree.wait()
    processes = len(os.listdir("/proc")) if os.path.isdir("/proc") else -1
    print(f"tree: 1 + {args.children} processes; host /proc entries: {processes}")
    print(f"supervisor sample : cpu {s_cpu * 1e6:8.0f} us   wall {s_wall * 1e6:8.0f} us")
    print(f"ps process start  : cpu {p_cpu * 1e6:8.0f} us   wall {p_wall * 1e6:8.0f} us "
          "(cpu: the ps process itself, from RUSAGE_CHILDREN)")
    print(f"ratio ps/sample   : cpu {p_cpu / s_cpu if s_cpu else float('nan'):6.1f}x   "
          f"wall {p_wall / s_wall:6.1f}x")
    print(f"clean-up group scan (only while stopping): wall {scan * 1e6:8.0f} us")
    print(f"at --interval 0.5s a sample is {s_cpu / 0.5 * 100:.3f}% of one core")


if __name__ == "__main__":
    main()
