"""The guard's account and history, with plain values."""

from __future__ import annotations

import itertools
import random

import pytest

from vramguard.analysis.samples import Sample
from vramguard.sampling import FIRST_CENSUS_GUESS_S, FIRST_READ_GUESS_S, Budget, History


def _steps(budget: Budget, count: int, seconds: float) -> None:
    for i in range(count):
        budget.record_step(seconds, first=i == 0)


def test_read_period_spreads_the_read_share_of_the_budget():
    budget = Budget(0.01)
    _steps(budget, 100, 0.001)  # 1 ms steps: 1% is 10 us a step, half of it for reads
    budget.read_took(20e-6)
    assert budget.read_period() == 3
    assert Budget(None).read_period() == 1  # dense mode reads every step


def test_aligned_reads_fall_on_multiples_of_a_power_of_two_alike_on_every_rank():
    # Ranks of a distributed job: one whose reads cost 2.5x another's still reads at a subset
    # of the other's steps, so one rank's read never holds the others at a step of its own.
    cheap, dear = Budget(0.01), Budget(0.01)
    for budget, cost in ((cheap, 20e-6), (dear, 50e-6)):
        _steps(budget, 100, 0.001)
        budget.read_took(cost)
    assert (cheap.read_period(), dear.read_period()) == (3, 8)
    assert cheap.next_read(13) == 16                          # 13 + 3
    assert cheap.next_read(14) == 17
    assert cheap.next_read(14, aligned=True) == 16            # the next multiple of 4 (~3)
    assert dear.next_read(13, aligned=True) == 16

    def schedule(budget: Budget) -> set[int]:
        steps, step = set(), 0
        while step < 2000:
            step = budget.next_read(step, aligned=True)
            steps.add(step)
        return steps

    assert schedule(dear) <= schedule(cheap)
    assert len(schedule(dear)) == 2000 // 8                   # 8 is a power of two already


def test_a_census_waits_until_the_steps_paid_for_it():
    budget = Budget(0.01)
    budget.census_took(0.9)  # a census of a huge heap
    _steps(budget, 10_000, 0.001)  # 10 s of steps earn 90 ms at 0.9 x 1%
    assert not budget.census_affordable()
    _steps(budget, 100_000, 0.001)  # 110 s earn 0.99 s
    assert budget.census_affordable()
    budget.paid(0.9)
    assert not budget.census_affordable()


def test_the_first_census_is_priced_at_a_guess_and_dense_mode_keeps_censuses_under_5_percent():
    budget = Budget(None)
    budget.record_step(FIRST_CENSUS_GUESS_S * 19, first=True)
    assert not budget.census_affordable()  # 5% of 19 guesses is under one
    budget.record_step(FIRST_CENSUS_GUESS_S * 2, first=False)
    assert budget.census_affordable()


def test_a_large_heap_raises_the_first_census_guess_and_a_small_one_keeps_the_floor():
    budget = Budget(0.01)
    _steps(budget, 3000, 0.001)  # 27 ms of credit: 1.5x the 15 ms floor and more
    assert budget.census_affordable(scale=1.5)
    budget.guess_census(100_000)  # a small heap: the floor stands
    assert budget.census_guess_s == FIRST_CENSUS_GUESS_S
    budget.guess_census(2_600_000)  # a large one: 78 ms, not affordable yet
    assert budget.census_guess_s == pytest.approx(0.078)
    assert not budget.census_affordable(scale=1.5)
    budget.census_took(0.02)  # once a census was taken, its cost is the estimate
    assert budget.census_affordable(scale=1.0)


def test_the_first_read_is_scheduled_at_its_guess_and_paid_before_it_runs():
    # The reading thread's first heap read fills its tcache first (~0.5 ms): in a fresh server
    # it was most of a web guard's account at 500 requests. 1 ms steps at 1%: 7 us a step for
    # reads, 9 us for the account.
    budget = Budget(0.01)
    _steps(budget, 1, 0.001)
    assert budget.overdrawn()                                  # 9 us earned, 600 us asked
    assert budget.read_period() == 86                          # ceil(0.6 ms / 7 us)
    _steps(budget, 65, 0.001)                                  # 66 ms: 594 us earned
    assert budget.overdrawn()
    _steps(budget, 1, 0.001)                                   # 67 ms: 603 us
    assert not budget.overdrawn()
    budget.read_took(20e-6)                                    # once read, priced as measured
    budget.paid(FIRST_READ_GUESS_S)
    assert budget.read_period() == 3
    assert not Budget(None).overdrawn()


def test_an_overdrawn_account_pauses_reads_until_paid_back():
    budget = Budget(0.01)
    _steps(budget, 1000, 0.001)
    budget.paid(0.05)  # a read preempted (the thread descheduled mid-read)
    assert budget.overdrawn()
    _steps(budget, 5000, 0.001)
    assert not budget.overdrawn()
    assert not Budget(None).overdrawn()


def test_a_census_dearer_than_its_estimate_pauses_censuses_not_reads():
    # A census grows dearer with what a leak keeps: its overdraft must not blind the reads.
    budget = Budget(0.01)
    _steps(budget, 1000, 0.001)  # 1 s of steps: 9 ms to spend
    budget.census_took(0.05)
    budget.paid(0.05)
    assert not budget.overdrawn()                   # reads go on at their own period
    assert not budget.census_affordable()           # the next census waits for the repayment
    budget.paid(0.005)
    assert not budget.overdrawn()                   # 5 ms of reads of the 9 earned
    budget.paid(0.005)
    assert budget.overdrawn()                       # reads past what was earned still pause
    _steps(budget, 100_000, 0.001)                  # 101 s earn 0.91 s: the census repaid
    assert not budget.overdrawn()
    assert budget.census_affordable()


def test_history_halves_evenly_and_keeps_census_samples_apart():
    history = History(16)
    for request in range(1000):
        history.add(Sample(request, float(request), allocated=request), census=False)
        if request % 100 == 0:
            history.add(Sample(request, float(request), tensor_bytes=request), census=True)
    samples = history.samples
    cheap = [s for s in samples if s.tensor_bytes is None]
    census = [s for s in samples if s.tensor_bytes is not None]
    assert len(cheap) < 16
    assert cheap[0].request == 0
    assert cheap[-1].request >= 1000 - 128  # within one gap of the end
    gaps = {b.request - a.request for a, b in itertools.pairwise(cheap)}
    assert len(gaps) == 1  # evenly spread
    assert [s.request for s in census] == list(range(0, 1000, 100))  # none thinned away
    assert [s.request for s in samples] == sorted(s.request for s in samples)


def test_sparse_samples_stay_evenly_spread_and_the_gap_says_what_is_kept():
    # The guard reads every few steps, not every step, and no sooner than the history keeps
    # (``read_gap``): after a thinning the least gap is the kept samples' own, so new samples
    # come no denser than the old. Doubled from 1 instead, the gap lagged the kept samples' and
    # the newest part of the history was denser (here the widest gap 5.7 times the narrowest).
    history = History(16)
    for request in range(0, 2000, 20):
        last = history.samples[-1].request if history.samples else None
        if last is None or request - last >= history.read_gap:
            history.add(Sample(request, float(request), allocated=request), census=False)
    requests = [s.request for s in history.samples]
    gaps = [b - a for a, b in itertools.pairwise(requests)]
    assert max(gaps) == min(gaps), gaps
    assert history.read_gap >= 80  # 2,000 requests over 16 samples: one kept in ~100
    assert requests[-1] >= 2000 - 2 * history.read_gap


def test_a_read_sooner_than_the_history_keeps_is_not_scheduled():
    budget = Budget(0.01)
    budget.record_step(0.01, first=True)
    budget.read_took(5e-6)
    assert budget.next_read(100) == 102  # the budget alone: a read every other step
    assert budget.next_read(100, at_least=64) == 164
    assert budget.next_read(100, aligned=True, at_least=48) == 128  # a power of two, up


def _noisy_steps(budget: Budget, count: int, *, extra: float, seed: int = 0) -> None:
    # 1 ms steps varying by +-20% (uniform); every 5th step takes a read, and the step after it
    # lasts ``extra`` longer.
    rng = random.Random(seed)
    for i in range(count):
        after = i % 5 == 1
        elapsed = 0.001 * rng.uniform(0.8, 1.2) + (extra if after else 0.0)
        budget.record_step(elapsed, first=i == 0, after_read=after)
        if i % 5 == 0:
            budget.read_ended(elapsed)


def _drifting_run(budget: Budget, *, extra: float, steps: int = 4000) -> int:
    # The guard's own schedule (``next_read``, each read priced and paid at 20 us) over a machine
    # whose steps take 1 ms and 2 ms in turns of 200 steps (a busy neighbour comes and goes); the
    # step after each read lasts ``extra`` longer. Returns the reads taken.
    next_read, after, reads = 16, -1, 0
    for step in range(1, steps + 1):
        elapsed = (0.001 if (step // 200) % 2 == 0 else 0.002) + (extra if step == after else 0.0)
        budget.record_step(elapsed, first=step == 1, after_read=step == after)
        if step >= next_read:
            budget.read_took(20e-6)
            budget.paid(20e-6)
            budget.read_ended(None if step == after else elapsed)
            after, reads = step + 1, reads + 1
            next_read = budget.next_read(step)
    return reads


def test_a_reads_after_effect_is_measured_and_priced_into_the_read_period():
    budget = Budget(0.01)
    _noisy_steps(budget, 2000, extra=200e-6)
    budget.read_took(20e-6)
    assert 150e-6 <= budget.after_effect_s <= 210e-6
    # (20 us + ~190 us) against the reads' 7 us a step: a read every ~30 steps, not every 3
    assert 25 <= budget.read_period() <= 35
    budget.paid(20e-6)
    assert budget.overhead > (20e-6 + 150e-6) / budget.busy_s  # the after-effect is counted


def test_step_times_that_vary_by_themselves_are_no_after_effect():
    for seed in range(20):
        budget = Budget(0.01)
        _noisy_steps(budget, 2000, extra=0.0, seed=seed)
        assert budget.after_effect_s == 0.0, seed


def test_reads_that_crowd_into_slow_spells_are_no_after_effect():
    # The read period is counted in steps, so reads come twice as often per step while steps
    # take 2 ms: the steps after reads are slower on average for that alone (the unpaired
    # estimate read 72 us here, and a 3-rank DDP job priced its reads at 4.4% for it).
    budget = Budget(0.01)
    reads = _drifting_run(budget, extra=0.0)
    assert budget.after_effect_s == 0.0
    assert reads > 1000  # the period follows the cheap read alone: ~3 steps, then ~2
    dear = Budget(0.01)
    _drifting_run(dear, extra=300e-6)
    assert 200e-6 <= dear.after_effect_s <= 320e-6  # a real one is still measured


def test_too_few_pairs_say_nothing_yet():
    budget = Budget(0.01)
    for i in range(100):
        after = i < 30 and i % 2 == 1  # 15 reads, each followed by a 1 ms slower step
        budget.record_step(0.002 if after else 0.001, first=i == 0, after_read=after)
        if i < 30 and i % 2 == 0:
            budget.read_ended(0.001)
    assert budget.effect_pairs == 15
    assert budget.after_effect_s == 0.0  # one short of the minimum


def test_a_step_that_followed_a_read_itself_is_no_measure():
    budget = Budget(0.01)
    for i in range(100):  # a read after every step: each step follows one
        budget.record_step(0.001 + 0.0005 * (i > 0), first=i == 0, after_read=i > 0)
        budget.read_ended(None if i > 0 else 0.001)
    assert budget.effect_pairs == 1


def test_where_steps_are_unlike_each_other_no_after_effect_is_measured():
    # A web server's requests: two routes alternating, the slow one always right after a read
    # (a read period that aliases with the route order). Measured, the routes' difference would
    # pass for the reads' cost; the web guard turns the measurement off.
    measured, off = Budget(0.01), Budget(0.01, after_effects=False)
    for budget in (measured, off):
        for i in range(2000):
            slow = i % 2 == 1
            budget.record_step(0.0003 if slow else 0.0001, first=i == 0, after_read=slow)
            if not slow:
                budget.read_ended(0.0001)
        budget.read_took(20e-6)
    assert measured.after_effect_s > 150e-6  # what aliasing would have read as a cost
    assert off.after_effect_s == 0.0
    assert off.read_period() < measured.read_period()
