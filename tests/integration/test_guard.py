"""The Guard on real torch: steps, decorators, threads, bounded history, budget, degrading."""

from __future__ import annotations

import asyncio
import logging
import threading

import pytest

torch = pytest.importorskip("torch")

from vramguard import EnvironmentProblem, Guard, VerdictKind  # noqa: E402
from vramguard.readers.census import Census  # noqa: E402
from vramguard.readers.device import Device  # noqa: E402
from vramguard.readers.sampler import Sampler  # noqa: E402


def test_step_and_verdict_find_a_leak():
    guard = Guard("cpu", overhead_budget=None, census_every=1, warmup=10)
    kept = []
    for _ in range(120):
        with guard.step():
            kept.append(torch.randn(16, 16))
    verdict = guard.verdict()
    assert verdict.kind is VerdictKind.LEAK
    assert verdict.growth.bytes_per_request == pytest.approx(16 * 16 * 4)
    group, count, size = guard.growing_tensors()[0]
    assert group.shape == (16, 16)
    assert count >= 100
    assert size == count * 1024
    assert guard.verdict() is verdict  # cached while nothing new was sampled


def test_a_clean_loop_is_no_leak():
    guard = Guard("cpu", overhead_budget=None, census_every=1)
    for _ in range(120):
        with guard.step():
            torch.randn(64).sum()
    assert guard.verdict().kind is VerdictKind.NO_LEAK
    assert guard.growing_tensors() == []


def test_track_decorates_sync_and_async_functions_and_counts_failures():
    guard = Guard("cpu", overhead_budget=None)

    @guard.track
    def handle(x):
        if x < 0:
            raise ValueError("negative")
        return x * 2

    @guard.track
    async def handle_async(x):
        await asyncio.sleep(0)
        return x + 1

    assert handle(3) == 6
    assert asyncio.run(handle_async(1)) == 2
    with pytest.raises(ValueError, match="negative"):
        handle(-1)
    assert guard.requests == 3
    assert handle.__name__ == "handle"


def test_threads_share_one_guard():
    guard = Guard("cpu", overhead_budget=None, census_every=25)
    errors = []

    def worker():
        try:
            for _ in range(150):
                with guard.step():
                    torch.ones(8).sum()
        except Exception as exc:  # surfaced by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    assert guard.requests == 600
    requests = [s.request for s in guard.samples]
    assert requests == sorted(requests)


def test_history_is_bounded_and_spans_the_run():
    guard = Guard("cpu", overhead_budget=None, census_every=5, max_samples=32)
    for _ in range(600):
        with guard.step():
            pass
    samples = guard.samples
    assert len(samples) <= 32
    assert samples[0].request < 20
    assert samples[-1].request > 550


def test_budget_spaces_out_the_census():
    # A fake clock makes every step last exactly 1 ms; the census's real cost (milliseconds in a
    # process with torch loaded) is then far above 1% of a step, so it must run rarely.
    now = [0.0]

    def clock():
        now[0] += 0.0005
        return now[0]

    guard = Guard("cpu", overhead_budget=0.01, clock=clock)
    for _ in range(400):
        with guard.step():
            pass
    censuses = [s for s in guard.samples if s.allocated is not None]
    assert 1 <= len(censuses) <= 3
    assert len(guard.samples) < 400


class _BrokenSampler(Sampler):
    def census(self) -> Census:
        raise RuntimeError("reader exploded")


def test_a_failing_reader_degrades_and_says_so_once(caplog):
    guard = Guard("cpu", overhead_budget=None, sampler=_BrokenSampler(Device("cpu")))
    with caplog.at_level(logging.WARNING, logger="vramguard"):
        for _ in range(50):
            with guard.step():
                pass
    assert guard.requests == 50
    assert guard.verdict().kind is VerdictKind.INCONCLUSIVE
    warnings = [r for r in caplog.records if "stops sampling" in r.getMessage()]
    assert len(warnings) == 1


def test_cuda_without_a_gpu_is_an_environment_problem():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(EnvironmentProblem, match="CUDA is not available"):
        Guard("cuda")


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="overhead_budget"):
        Guard("cpu", overhead_budget=2)
    with pytest.raises(ValueError, match="census_every"):
        Guard("cpu", census_every=0)


def test_climbing_memory_brings_the_next_census_forward():
    # 1 ms steps (fake clock) and a 20% budget read RSS about every step but, at tens of ms per
    # census, put the budgeted census hundreds of steps apart; a leak of 1 MiB per step makes
    # RSS climb, which must trigger censuses long before that.
    now = [0.0]

    def clock():
        now[0] += 0.0005
        return now[0]

    guard = Guard("cpu", overhead_budget=0.2, clock=clock)
    kept = []
    for _ in range(120):
        with guard.step():
            kept.append(torch.ones(1 << 18))  # 1 MiB, touched so RSS really grows
    censuses = [s for s in guard.samples if s.allocated is not None]
    assert len(censuses) >= 3
    assert censuses[-1].allocated - censuses[0].allocated >= 40 << 20
