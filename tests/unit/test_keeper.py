"""The verdict keeper and the signal floor, on plain samples (see vramguard.analysis.keeper)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vramguard.analysis.floor import EXACT, Floor
from vramguard.analysis.keeper import Keeper
from vramguard.analysis.samples import Sample
from vramguard.analysis.verdict import Verdict, VerdictKind, decide
from vramguard.commands.loadtest import judged_over_time

KIB, MIB = 1024, 1024 * 1024
HEAP = Floor(16 * KIB, 128)  # the CPU heap counter's floor, as the sampler states it
BASE = 300 * MIB


def _samples(levels: np.ndarray, first: int = 0) -> list[Sample]:
    return [Sample(request=first + i, time=float(first + i), allocated=int(v))
            for i, v in enumerate(levels)]


def _noisy(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.normal(0, 2 * KIB, n).round()


def _unsure(requests: int, reason: str = "the window cannot tell") -> Verdict:
    # What a judge's window says when it cannot tell (a route's collinear windows, too few
    # samples after thinning): no growth figure, no evidence either way.
    return Verdict(VerdictKind.INCONCLUSIVE, requests, 0, None, None, None, None, None, (), reason)


def _leaking(rng: np.random.Generator, n: int, per_step: int = 4 * KIB) -> list[Sample]:
    return _samples(BASE + per_step * np.arange(n) + _noisy(rng, n))


def test_a_leak_verdict_is_handed_out_as_it_is_and_noted() -> None:
    samples = _leaking(np.random.default_rng(0), 120)
    verdict = decide(samples, warmup=5, floor=HEAP)
    assert verdict.kind is VerdictKind.LEAK
    keeper, shown = Keeper(HEAP).keep(verdict, samples)
    assert shown is verdict
    assert keeper.seen == samples[-1]
    assert str(keeper) == "keeper: leak last seen at request 119"
    assert str(Keeper()) == "keeper: no leak to hold"


def test_the_leak_holds_while_memory_keeps_growing_and_the_window_cannot_tell() -> None:
    rng = np.random.default_rng(1)
    samples = _leaking(rng, 200)
    first = samples[:120]
    keeper, leak = Keeper(HEAP).keep(decide(first, warmup=5, floor=HEAP), first)
    assert leak.kind is VerdictKind.LEAK
    # The window turns inconclusive at every later look while memory rises 4 KiB a step.
    for end in range(125, 201, 5):
        keeper, shown = keeper.keep(_unsure(end), samples[:end])
        assert shown.kind is VerdictKind.LEAK, (end, shown)
        assert shown.requests == end
    # At first the few samples since cannot tell: the last leak verdict holds, saying why.
    # Once they are enough, they are a leak of their own, which the judge (own series) shows.
    assert shown.growth is not None
    assert shown.growth.bytes_per_request == pytest.approx(4 * KIB, rel=0.2)
    _, early = Keeper(HEAP).keep(leak, first)[0].keep(_unsure(125), samples[:125])
    assert early.growth == leak.growth
    assert "cannot tell yet: the leak verdict holds" in early.warnings[-1]
    assert "rose by" in early.warnings[-1]  # 5 steps of 4 KiB: ~20 KiB, past the floor


def test_a_large_free_mid_leak_does_not_end_it_as_the_window_says() -> None:
    # 64 MiB freed elsewhere at step 100 while 4 KiB a step keeps leaking: the whole window
    # reads something else than a leak; the samples since the free still rise.
    rng = np.random.default_rng(2)
    steps = np.arange(160)
    levels = BASE + 4 * KIB * steps - (64 * MIB) * (steps >= 100) + _noisy(rng, 160)
    samples = _samples(levels)
    keeper, leak = Keeper(HEAP).keep(decide(samples[:100], warmup=5, floor=HEAP), samples[:100])
    assert leak.kind is VerdictKind.LEAK
    kinds = []
    for end in range(105, 161, 5):
        window = decide(samples[:end], warmup=5, floor=HEAP)
        keeper, shown = keeper.keep(window, samples[:end])
        kinds.append((window.kind, shown.kind))
    assert any(window is not VerdictKind.LEAK for window, _ in kinds), kinds  # it can fail
    assert {shown for _, shown in kinds} == {VerdictKind.LEAK}, kinds


def test_a_leak_that_stops_is_let_go_once_the_samples_since_say_no_leak() -> None:
    # The leak stops; memory stays within the floor of its level at the last leak verdict. An
    # inconclusive window holds the leak only while the samples since are too few to tell; a
    # "no leak" window stands at once (a warm-up's false alarm is not kept either).
    rng = np.random.default_rng(3)
    samples = _leaking(rng, 120)
    keeper, leak = Keeper(HEAP).keep(decide(samples, warmup=5, floor=HEAP), samples)
    assert leak.kind is VerdictKind.LEAK
    flat = samples + _samples(samples[-1].allocated + _noisy(rng, 40), first=120)
    assert keeper.keep(_unsure(125), flat[:125])[1].kind is VerdictKind.LEAK
    no_leak = Verdict(VerdictKind.NO_LEAK, 125, 0, None, None, None, None, None, (), "flat")
    assert keeper.keep(no_leak, flat[:125])[1] is no_leak
    keeper, shown = keeper.keep(_unsure(160), flat)
    assert shown.kind is VerdictKind.INCONCLUSIVE  # 40 flat samples since: no leak there
    assert keeper.seen is None
    # ... and a later inconclusive window is not turned back into the leak.
    assert keeper.keep(_unsure(170), flat)[1].kind is VerdictKind.INCONCLUSIVE


def test_a_real_drop_beyond_the_floor_is_let_go_once_the_samples_since_are_flat() -> None:
    # The leak is fixed and what it kept is freed (a drop of ~470 KiB, far beyond the 16 KiB
    # floor), then memory stays flat: held while the few samples since cannot tell, let go as
    # soon as they say "no leak".
    rng = np.random.default_rng(4)
    samples = _leaking(rng, 120)
    keeper, leak = Keeper(HEAP).keep(decide(samples, warmup=5, floor=HEAP), samples)
    assert leak.kind is VerdictKind.LEAK
    after = _samples(BASE + _noisy(rng, 80), first=120)
    shown_at = {}
    for end in range(5, 81, 5):
        series = samples + after[:end]
        keeper, shown = keeper.keep(decide(series, warmup=5, floor=HEAP), series)
        shown_at[end] = shown.kind
    assert shown_at[5] is VerdictKind.LEAK  # 5 samples since the drop cannot tell yet
    assert shown_at[80] is VerdictKind.NO_LEAK, shown_at
    assert keeper.seen is None


def _route(requests: int, kind: VerdictKind = VerdictKind.INCONCLUSIVE) -> Verdict:
    # A route's fresh verdict after ``requests`` requests of it, from its own data.
    return Verdict(kind, requests, 0, None, None, None, None, None, (), "collinear with /clean")


def test_a_route_holds_its_own_leak_while_the_process_keeps_growing() -> None:
    # own=False: the samples are the process's; the verdict is a route's (its bytes/request).
    # The route is half the traffic and keeps 3 KiB a request: the process grows ~1.5 KiB a
    # request from it, plus 0.5 KiB from elsewhere.
    rng = np.random.default_rng(5)
    process = _leaking(rng, 300, per_step=2 * KIB)
    route_leak = decide(_leaking(rng, 50, per_step=3 * KIB), warmup=5, floor=EXACT)
    assert route_leak.kind is VerdictKind.LEAK
    assert route_leak.requests == 50  # the route's 50 requests by process step 100
    keeper, _ = Keeper(HEAP, own=False).keep(route_leak, process[:100])
    for end in range(120, 301, 20):
        keeper, shown = keeper.keep(_route(end // 2), process[:end])
        assert shown.kind is VerdictKind.LEAK, shown
        assert shown.growth == route_leak.growth  # the route's figure, not the process's
    # The route's own "no leak" ends the hold, however the process grows.
    no_leak = _route(160, VerdictKind.NO_LEAK)
    keeper, shown = keeper.keep(no_leak, process)
    assert shown is no_leak
    assert keeper.keep(_route(165), process)[1].kind is VerdictKind.INCONCLUSIVE


@pytest.mark.parametrize("own", [False, True], ids=["route", "own series"])
def test_a_leak_that_was_fixed_is_let_go_though_memory_drifts(own: bool) -> None:
    # The route's leak is fixed at process step 100; the process then drifts by the server's
    # own ~140 B a request, far less than a quarter of the 1.5 KiB a request the held leak
    # predicts, and its samples are sparse (a read every 20 requests, as at default settings):
    # let go at the next look, though those few samples could never say "no leak". The same
    # for a judge of its own series (a Guard's false alarm at default settings).
    rng = np.random.default_rng(9)
    route_leak = decide(_leaking(rng, 50, per_step=3 * KIB), warmup=5, floor=EXACT)
    steps = np.arange(400)
    levels = BASE + np.minimum(steps, 100) * 2 * KIB + np.maximum(steps - 100, 0) * 140
    process = _samples(levels + _noisy(rng, 400))[::20]
    keeper, _ = Keeper(HEAP, own=own).keep(route_leak, [s for s in process if s.request <= 100])
    keeper, shown = keeper.keep(_route(200), process)
    assert shown.kind is VerdictKind.INCONCLUSIVE, shown.warnings
    assert not keeper.holding
    # The same sparse samples, still rising with the leak: held.
    rising = _samples(BASE + steps * 2 * KIB + _noisy(rng, 400))[::20]
    keeper, _ = Keeper(HEAP, own=own).keep(route_leak, [s for s in rising if s.request <= 100])
    assert keeper.keep(_route(200), rising)[1].kind is VerdictKind.LEAK


def test_no_reading_since_the_leak_keeps_it_over_an_inconclusive_window_only() -> None:
    samples = _leaking(np.random.default_rng(6), 120)
    keeper, _ = Keeper(HEAP).keep(decide(samples, warmup=5, floor=HEAP), samples)
    assert keeper.keep(_unsure(121), samples)[1].kind is VerdictKind.LEAK
    cache = Verdict(VerdictKind.CACHE_GROWTH, 121, 0, None, None, None, None, None, (), "cache")
    assert keeper.keep(cache, samples)[1] is cache


def test_held_notes_stay_bounded() -> None:
    rng = np.random.default_rng(7)
    samples = _leaking(rng, 400)
    keeper, _ = Keeper(HEAP, own=False).keep(decide(samples[:100], warmup=5, floor=HEAP),
                                             samples[:100])
    for end in range(101, 400):
        keeper, shown = keeper.keep(_unsure(end), samples[:end])
    assert shown.kind is VerdictKind.LEAK
    assert len(shown.warnings) <= 5
    assert sum("the leak verdict holds" in w for w in shown.warnings) == 1  # the newest only


def test_loadtest_keeps_a_leak_its_load_showed_through_a_free_near_the_end() -> None:
    # What loadtest judges: fresh readings of a server leaking 4 KiB a request, and 64 MiB
    # freed elsewhere 30 readings before the end. The whole series alone is no leak; judged
    # as the load went (every tenth of the readings, through the keeper), it stays a leak.
    rng = np.random.default_rng(8)
    steps = np.arange(200)
    levels = BASE + 4 * KIB * steps - (64 * MIB) * (steps >= 170) + _noisy(rng, 200)
    samples = _samples(levels)
    assert decide(samples, warmup=20, floor=HEAP).kind is not VerdictKind.LEAK
    assert judged_over_time(samples, warmup=20, floor=HEAP).kind is VerdictKind.LEAK
    # A clean load stays what decide() says over it.
    flat = _samples(BASE + _noisy(rng, 200))
    assert judged_over_time(flat, warmup=20, floor=HEAP).kind is decide(
        flat, warmup=20, floor=HEAP).kind


_KINDS = [VerdictKind.LEAK, VerdictKind.NO_LEAK, VerdictKind.INCONCLUSIVE,
          VerdictKind.CACHE_GROWTH]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(_KINDS), st.integers(-64, 64),
                          st.booleans()), min_size=1, max_size=30),
       st.booleans())
def test_the_keeper_never_makes_a_no_leak(looks: list[tuple[VerdictKind, int, bool]],
                                          own: bool) -> None:
    # Any run of fresh verdicts over any series (KiB steps up or down, readings missing):
    # the keeper shows the fresh verdict or holds a leak; "no leak" only where the fresh
    # verdict said it, and a leak only where some fresh verdict or the samples said one.
    keeper = Keeper(HEAP, own=own)
    samples: list[Sample] = []
    level = BASE
    ever_leak = False
    for step, (kind, move, measured) in enumerate(looks):
        level += move * KIB
        samples.append(Sample(request=step, time=float(step),
                              allocated=level if measured else None))
        fresh = Verdict(kind, step + 1, 0, None, None, None, None, None, (), kind.value)
        ever_leak = ever_leak or kind is VerdictKind.LEAK
        keeper, shown = keeper.keep(fresh, samples)
        if shown.kind is VerdictKind.NO_LEAK:
            assert fresh.kind is VerdictKind.NO_LEAK
        if fresh.kind is not VerdictKind.LEAK and shown.kind is VerdictKind.LEAK:
            assert ever_leak
        assert shown.kind in (fresh.kind, VerdictKind.LEAK)


def test_the_floor_is_one_value() -> None:
    assert not EXACT
    assert HEAP
    assert HEAP.widest(Floor(0, 512)) == Floor(16 * KIB, 512)
    assert str(HEAP) == "16.0 KiB over the window and 128 B/step over its recent half"
    with pytest.raises(ValueError, match=r"Floor\.window_bytes .* got -1"):
        Floor(-1, 0)
    with pytest.raises(ValueError, match=r"Floor\.bytes_per_step .* got 1\.5"):
        Floor(0, 1.5)  # type: ignore[arg-type]
