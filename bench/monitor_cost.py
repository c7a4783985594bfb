"""Monitor cost: CPU per sample vs starting one `nvidia-smi`-like process, and RSS after 1M samples.

    python bench/monitor_cost.py [--samples 1000000]

No GPU here: the monitor reads the simulated NVML driver (tests/nvmlsim), and the baseline is a
stand-in `nvidia-smi --query-gpu=memory.used --format=csv` (a tiny C program on the same simulated
library, compiled here), plus `/bin/true` and `python -c pass` for the bare cost of a process start.
"""

from __future__ import annotations

import argparse
import itertools
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.nvmlsim.fixtures import build_sim, sim_env, write_scenario  # noqa: E402

STAND_IN = r"""
/* Stand-in for `nvidia-smi --query-gpu=memory.used --format=csv`: init, read, print, exit. */
#include <stdio.h>
typedef struct { unsigned long long total, free, used; } mem_t;
int nvmlInit_v2(void); int nvmlShutdown(void);
int nvmlDeviceGetCount_v2(unsigned *); int nvmlDeviceGetHandleByIndex_v2(unsigned, void **);
int nvmlDeviceGetMemoryInfo(void *, mem_t *);
int main(void) {
    unsigned n = 0; void *h; mem_t m;
    if (nvmlInit_v2() || nvmlDeviceGetCount_v2(&n)) return 1;
    printf("memory.used [MiB]\n");
    for (unsigned i = 0; i < n; i++) {
        if (nvmlDeviceGetHandleByIndex_v2(i, &h) || nvmlDeviceGetMemoryInfo(h, &m)) return 1;
        printf("%llu MiB\n", m.used >> 20);
    }
    return nvmlShutdown();
}
"""


def rss_kib() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return -1


def per_start(argv: list[str], env: dict[str, str], runs: int) -> tuple[float, float]:
    """Mean wall and CPU (user+sys of the child) seconds per process start."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    for _ in range(runs):
        subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, check=True)
    wall = (time.perf_counter() - start) / runs
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime) / runs
    return wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--samples", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=50)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="vramguard-bench-"))
    lib = build_sim(work)
    scenario = write_scenario(work, """
        device 0 name=SimGPU uuid=GPU-bench total=80GiB
        used 0 0:10GiB 3600:70GiB
        process 0 1111 2GiB
        process 0 2222 3GiB
    """)
    env = sim_env(lib, scenario)
    os.environ.update({k: env[k] for k in ("VRAMGUARD_NVML_SIM", "VRAMGUARD_NVML_LIBRARY")})
    stand_in = work / "nvidia-smi"
    (work / "stand_in.c").write_text(STAND_IN)
    subprocess.run(["gcc", "-O2", "-o", str(stand_in), str(work / "stand_in.c"), str(lib),
                    f"-Wl,-rpath,{lib.parent}"], check=True)

    from vramguard.monitor import Monitor, RuleConfig, RuleEngine
    from vramguard.nvml import Nvml
    from vramguard.units import Percent

    nvml = Nvml(library_path=lib)
    rules = RuleConfig(threshold=Percent(90), for_seconds=300, process_budget=20 * 1024**3)
    monitor = Monitor(nvml=nvml, engine=RuleEngine(rules), actions=())
    # A clock 5 s per sample apart, so every sample adds a point and the fit runs on 120 points
    # (at a real 1 s interval most samples skip the fit's input thinning; this is the worst case).
    fake_time = itertools.count(0.0, 5.0)
    trend_monitor = Monitor(nvml=nvml, engine=RuleEngine(RuleConfig(
        threshold=Percent(90), predict_seconds=3600, process_budget=20 * 1024**3)), actions=(),
        clock=lambda: next(fake_time))
    for _ in range(200):  # warm up: imports, handles, trend buffer filled
        monitor.sample()
        trend_monitor.sample()

    def cpu_per_sample(m: Monitor, n: int) -> float:
        start = time.process_time()
        for _ in range(n):
            m.sample()
        return (time.process_time() - start) / n

    sample_cpu = cpu_per_sample(monitor, 5000)
    trend_cpu = cpu_per_sample(trend_monitor, 1000)
    smi_wall, smi_cpu = per_start([str(stand_in), "--query-gpu=memory.used", "--format=csv"],
                                  env, args.runs)
    true_wall, true_cpu = per_start([shutil.which("true") or "/bin/true"], env, args.runs)
    py_wall, py_cpu = per_start([sys.executable, "-c", "pass"], env, args.runs)

    rss = {0: rss_kib()}
    marks = {10_000, 100_000, args.samples}
    for i in range(1, args.samples + 1):
        monitor.sample()
        if i in marks:
            rss[i] = rss_kib()
    nvml.close()

    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, simulated NVML driver")
    print(f"monitor sample (threshold+budget rules): {sample_cpu * 1e6:8.1f} us CPU")
    print(f"monitor sample (+ trend, 120-point Theil-Sen): {trend_cpu * 1e6:8.1f} us CPU")
    for name, wall, cpu in [("stand-in nvidia-smi start", smi_wall, smi_cpu),
                            ("/bin/true start", true_wall, true_cpu),
                            ("python -c pass start", py_wall, py_cpu)]:
        print(f"{name:28s}: {wall * 1e6:8.0f} us wall, {cpu * 1e6:8.0f} us CPU; "
              f"x{wall / sample_cpu:,.0f} (wall) / x{cpu / sample_cpu:,.0f} (CPU) one sample")
    for n, kib in sorted(rss.items()):
        print(f"RSS after {n:>9,} samples: {kib / 1024:7.1f} MiB")


if __name__ == "__main__":
    main()
