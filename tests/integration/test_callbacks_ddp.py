"""The training callbacks in real distributed runs on CPU (2 processes, gloo): Lightning with
``strategy="ddp"``, and an HF Trainer under torchrun. Each shares its rank's summary by itself
and rank 0 logs the rank table at each check.

Each run is a job script in ``distributed_jobs/`` in a subprocess (Lightning's launcher starts
rank 1 itself; torchrun starts both HF ranks); the test reads what each rank wrote after
training. Bounded by the subprocess timeout.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.integration.net import free_port

pytest.importorskip("lightning")
JOB = Path(__file__).parent / "distributed_jobs" / "lightning_job.py"
HF_JOB = Path(__file__).parent / "distributed_jobs" / "hf_job.py"
DEADLINE = 240.0

pytestmark = pytest.mark.slow

# Read after every step (overhead_budget=None) so the verdict comes at a step count, not at a
# load-dependent cadence. warmup=120: a Lightning DDP rank's C heap jumps by ~0.4 MiB around
# step 100 on both ranks, leak or not (measured by hand; the flight recorder is off, below).
GUARD = ("--guard", "overhead_budget=null", "--guard", "warmup=120",
         "--guard", "diagnose_steps=10")


def run(tmp: Path, *args: str, job: Path = JOB, torchrun: bool = False,
        guard: tuple[str, ...] = GUARD) -> dict[int, dict[str, Any]]:
    port = free_port()
    environ = {k: v for k, v in os.environ.items()
               if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "NODE_RANK")}
    environ.update(OMP_NUM_THREADS="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
                   TORCH_CPP_LOG_LEVEL="ERROR", HF_HUB_OFFLINE="1",
                   # torch's c10d flight recorder keeps the last 2000 collectives, ~0.7 KiB each
                   # on the C heap: a clean DDP job grows steadily for its first 2000 steps
                   # (measured: +1.5 MiB by step 2000, flat after). Off here, so a clean rank
                   # grows only by DDP's smaller drift (see clean()); see the README's
                   # distributed section.
                   TORCH_FR_BUFFER_SIZE="0")
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2",
                "--master-addr=127.0.0.1", f"--master-port={port}"] if torchrun else [sys.executable]
    done = subprocess.run([*launcher, str(job), "--out", str(tmp), "--steps", "300", *guard,
                           *args], env=environ, capture_output=True, timeout=DEADLINE,
                          check=False)
    assert done.returncode == 0, done.stderr.decode()[-4000:]
    return {rank: json.loads((tmp / f"rank{rank}.json").read_text()) for rank in (0, 1)}


def clean(rank: dict[str, Any]) -> str:
    """The label a clean rank's row gets: ``flat`` (``no_leak``), or ``inconclusive`` when its
    heap grew steadily but under the heap counter's floor; anything else fails the test.

    Lightning's DDP itself grows a clean rank's C heap by 40-150 B/step over steps 120..200 and
    20-50 B/step over 200..300 (measured without vramguard: the same job with a callback that
    only reads mallinfo2, 6 runs, both ranks), and by ~150-190 B/step from step 120 in one
    CI-clone run on a busy machine, which read ``leak`` under the old floor (128 B/step over the
    window's average). The floor is now 256 B/step over the window's recent half, so such a
    drift reads "grew steadily ... slower than the 256 B/request the counter needs" (or, for a
    smaller total, "a longer run would tell"). That is the honest answer; a clean rank must never
    read ``leak``, and "inconclusive" for any other reason (too few samples) still fails."""
    if rank["verdict"] == "no_leak":
        return "flat"
    assert rank["verdict"] == "inconclusive", rank["reason"]
    assert "grew steadily" in rank["reason"], rank["reason"]
    assert "too steady to rule one out" in rank["reason"], rank["reason"]
    return "inconclusive"


def test_rank_0_logs_the_table_and_names_the_leaking_rank_1(tmp_path: Path) -> None:
    ranks = run(tmp_path, "--leak-rank", "1")
    zero, one = ranks[0], ranks[1]
    assert [zero["shared"], one["shared"]] == [True, True]  # nobody called share(): the callback
    assert [zero["sharer_running"], one["sharer_running"]] == [False, False]  # stopped at the end
    assert one["verdict"] == "leak"
    label = clean(zero)
    table = zero["table"]
    assert table["leaking_ranks"] == [1]
    assert table["headline"].startswith("rank 1 leaks +")
    assert table["headline"].endswith(f"KiB/step (rank 0: {label})")
    assert [row["verdict"] for row in table["ranks"]] == [zero["verdict"], "leak"]
    # A read at each check (every 10 steps), but for checks that found the last one running.
    assert zero["reads"] + zero["skipped"] >= 300 // 10
    assert zero["metrics"]["vramguard/leaking_ranks"] == 1.0
    assert "table" not in one                             # only rank 0 reads the table
    log = (tmp_path / "rank0.log").read_text()
    assert "WARNING vramguard: ranks: rank 1 leaks +" in log
    assert log.count("INFO vramguard: ranks: ") + log.count("WARNING vramguard: ranks: ") \
        == zero["reads"]                                  # every table read was logged
    assert "vramguard: ranks:" not in (tmp_path / "rank1.log").read_text()


def test_at_the_guards_default_budget_rank_1_is_named_too(tmp_path: Path) -> None:
    # The Guard's default budget (1%) with the warm-up past the ~0.4 MiB jump both Lightning DDP
    # ranks' C heaps take around step 100 (see GUARD). 600 steps, not 300: the leaking rank's
    # heap fragments as the leak grows, and glibc's mallinfo2 walks every free chunk, so its
    # read cost rose to 155-360 us against ~2 ms steps (measured): the budget then paid for a
    # read every 8-16 steps, and in 300 steps the leaking rank kept 12-17 samples after the
    # warm-up, too few for any verdict (`inconclusive`, honestly; 3 runs in 3, and once in CI).
    # In 600 steps it kept 34-42 samples in all (leak in 3 runs of 3).
    ranks = run(tmp_path, "--leak-rank", "1", "--steps", "600", guard=("--guard", "warmup=120"))
    assert ranks[1]["verdict"] == "leak"
    assert ranks[0]["verdict"] in ("no_leak", "inconclusive")  # steady DDP drift under floor
    assert ranks[0]["table"]["leaking_ranks"] == [1]


def test_a_clean_ddp_run_flags_no_rank(tmp_path: Path) -> None:
    ranks = run(tmp_path)
    table = ranks[0]["table"]
    assert table["leaking_ranks"] == []
    labels = [clean(ranks[0]), clean(ranks[1])]
    if labels == ["flat", "flat"]:
        assert table["headline"] == "no rank leaks (ranks 0, 1: flat)"
    else:  # e.g. "no rank flagged (rank 0: inconclusive; rank 1: flat)": not "no rank leaks"
        assert table["headline"].startswith("no rank flagged ("), table["headline"]
        assert [row["verdict"] for row in table["ranks"]] == [r["verdict"] for r in ranks.values()]
    assert ranks[0]["metrics"]["vramguard/leaking_ranks"] == 0.0


def test_share_false_keeps_the_callback_to_its_rank(tmp_path: Path) -> None:
    ranks = run(tmp_path, "--leak-rank", "1", "--no-share", "--steps", "40")
    assert [ranks[0]["shared"], ranks[1]["shared"]] == [False, False]
    assert ranks[1]["steps"] == 40                        # each rank's own Guard still ran
    assert "vramguard/leaking_ranks" not in ranks[0]["metrics"]


def test_stop_stops_every_rank_at_the_same_step(tmp_path: Path) -> None:
    # Before the ranks voted, rank 1 left the loop alone and rank 0 died at its next gradient
    # all-reduce ("Connection closed by peer"); run() asserts the job exits 0.
    ranks = run(tmp_path, "--leak-rank", "1", "--on-leak", "stop")
    assert ranks[0]["steps"] == ranks[1]["steps"] < 300
    assert ranks[1]["verdict"] == "leak"
    # Rank 0's verdict is not asserted: stopped ~30 steps after warm-up, a clean DDP rank's
    # short window can read its ~0.6 KiB/step of native growth as a leak (seen once in the HF
    # run: +651 B/step over steps 120..150); the full-length runs above assert it.
    assert 1 in ranks[0]["table"]["leaking_ranks"]


def test_at_default_settings_stop_keeps_every_ranks_checks_at_the_same_steps(
        tmp_path: Path) -> None:
    # At defaults the checks are spaced by their measured cost (CheckCadence), which differs
    # per rank; the stop vote agrees on the largest proposal. Were the ranks to check at
    # different steps, one rank's vote would meet the other's gradient all-reduce: a hang or
    # a crash, which run() turns into a failure (bounded by its timeout).
    ranks = run(tmp_path, "--leak-rank", "1", "--on-leak", "stop", guard=())
    zero, one = ranks[0], ranks[1]
    assert zero["steps"] == one["steps"]
    assert zero["checked_at"] == one["checked_at"]
    gaps = [b - a for a, b in itertools.pairwise(zero["checked_at"])]
    assert gaps, zero["checked_at"]
    assert max(gaps) > 10, zero["checked_at"]            # spaced past check_every (10)


def test_hf_trainer_under_torchrun_names_the_leaking_rank_1(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    ranks = run(tmp_path, "--leak-rank", "1", job=HF_JOB, torchrun=True)
    zero, one = ranks[0], ranks[1]
    assert [zero["shared"], one["shared"]] == [True, True]
    assert [zero["sharer_running"], one["sharer_running"]] == [False, False]
    assert one["verdict"] == "leak"
    label = clean(zero)  # HF's own clean-rank drift: see clean()
    assert zero["steps"] == one["steps"] == 300
    table = zero["table"]
    assert table["leaking_ranks"] == [1]
    assert table["headline"].endswith(f"KiB/step (rank 0: {label})")
    assert zero["logs"][-1]["vramguard/leaking_ranks"] == 1.0   # in the Trainer's logs (rank 0)
    assert all("vramguard/leaking_ranks" not in logs for logs in one["logs"])
    assert "WARNING vramguard: ranks: rank 1 leaks +" in (tmp_path / "rank0.log").read_text()


def test_hf_trainer_stop_stops_every_rank_at_the_same_step(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    ranks = run(tmp_path, "--leak-rank", "1", "--on-leak", "stop", job=HF_JOB, torchrun=True)
    assert ranks[0]["steps"] == ranks[1]["steps"] < 300   # run() asserts the job exited 0
    assert ranks[1]["verdict"] == "leak"
    assert 1 in ranks[0]["table"]["leaking_ranks"]        # rank 0's verdict: see the Lightning test
