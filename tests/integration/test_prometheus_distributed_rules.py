"""The rank-outlier rule (deploy/prometheus/vramguard-distributed-rules.yml) under promtool, and
the GuardCollector's rank labels that it relies on, from a real guard in a "rank" process."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

RULES_DIR = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"
RULES = "vramguard-distributed-rules.yml"
TESTS = "vramguard-distributed-rules.test.yml"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (apt-get "
                                    "install --no-install-recommends prometheus); CI installs it")


def promtool(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, *args], cwd=cwd, capture_output=True, text=True, timeout=60,
                          check=False)


@needs_promtool
def test_rules_are_valid_and_their_tests_pass() -> None:
    checked = promtool(RULES_DIR, "check", "rules", RULES)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "3 rules found" in checked.stdout
    tested = promtool(RULES_DIR, "test", "rules", TESTS)
    assert tested.returncode == 0, tested.stdout + tested.stderr


@needs_promtool
@pytest.mark.parametrize(("original", "broken"), [
    ("5 * 1.4826", "500 * 1.4826"),  # a threshold too high: the outlier is missed
    ("+ 512)", "- 100000)"),  # no floor at all: flat ranks alert too
])
def test_rule_tests_can_fail(tmp_path: Path, original: str, broken: str) -> None:
    rules = (RULES_DIR / RULES).read_text()
    assert original in rules
    (tmp_path / RULES).write_text(rules.replace(original, broken))
    shutil.copy(RULES_DIR / TESTS, tmp_path)
    done = promtool(tmp_path, "test", "rules", TESTS)
    assert done.returncode != 0
    assert "VramguardRankOutlier" in done.stdout + done.stderr


SCRAPE = """
import sys
import torch
import torch.distributed as dist
from prometheus_client import CollectorRegistry, generate_latest
from vramguard import Guard
from vramguard.prometheus import GuardCollector
if len(sys.argv) > 1:  # a one-rank job with two extra groups
    dist.init_process_group("gloo", init_method=f"file://{sys.argv[1]}", rank=0, world_size=1)
    groups = [dist.new_group(backend="gloo") for _ in range(2)]
guard = Guard("cpu", overhead_budget=None)
for _ in range(3):
    with guard.step():
        torch.ones(4)
registry = CollectorRegistry()
registry.register(GuardCollector(guard))
print(generate_latest(registry).decode())
"""


@pytest.mark.parametrize(("env", "labels"), [
    ({"RANK": "1", "LOCAL_RANK": "1", "WORLD_SIZE": "3"},
     'vramguard_guard_requests_total{device="cpu",local_rank="1",rank="1"} 3.0'),
    ({}, 'vramguard_guard_requests_total{device="cpu"} 3.0'),
])
def test_guard_collector_labels_each_rank(env: dict[str, str], labels: str) -> None:
    base = {k: v for k, v in os.environ.items()
            if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "SLURM_PROCID",
                         "OMPI_COMM_WORLD_RANK")}
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(SCRAPE)], env={**base, **env},
                          capture_output=True, text=True, timeout=60, check=True)
    assert labels in done.stdout.splitlines()


def test_guard_collector_exports_the_live_process_groups(tmp_path: Path) -> None:
    base = {k: v for k, v in os.environ.items()
            if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "SLURM_PROCID",
                         "OMPI_COMM_WORLD_RANK")}
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(SCRAPE), str(tmp_path / "init")],
                          env=base, capture_output=True, text=True, timeout=60, check=True)
    # torch.distributed gives the rank; no launcher variable gives a local rank.
    assert 'vramguard_guard_process_groups{device="cpu",rank="0"} 3.0' in done.stdout.splitlines()
