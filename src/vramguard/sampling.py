"""The guard's bookkeeping, pure: what it may spend on reading memory, and the history it keeps.

``Budget`` turns "at most 1% of step time" into decisions: a cheap read every ``k`` steps, and a
census (milliseconds, up to a second on a huge heap) only once the step time that has passed
pays for it. Everything the guard spends, triggers included, comes out of one account, so
``spent / busy`` stays at the budget whatever the workload (see ``bench/guard_overhead.py``).

``History`` is a bounded, evenly spread history over the whole run: when full it keeps every
other sample and accepts new ones half as often. Census samples (rare) live in their own
reservoir, so thinning the dense cheap samples never drops them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from vramguard.analysis.samples import Sample, SampleStore

READ_SHARE = 0.7  # of the budget, spread evenly over the steps for the cheap reads (the signal)
# The account as a whole may not spend more than this share of the budget: the rest is headroom
# for a step's fixed cost (~1-2 us) and for cost estimates that lag. A census takes what the
# reads leave, once it is paid for.
ACCOUNT_SHARE = 0.9
DENSE_CENSUS_BUDGET = 0.05  # without a budget (check): routine censuses still stay under 5%
FIRST_CENSUS_GUESS_S = 0.015  # a census with nothing retained, in a process that imported torch
# A first census's cost per block of the Python heap (sys.getallocatedblocks): its gc pass visits
# every container. Measured with a CI run beside it: 26-27 ns/block in a process with torch and
# nothing retained (575k blocks, 15-17 ms), 23 ns with 600,000 small lists besides (2.6 M
# blocks, 59 ms). Rounded up; the account asks 1.5x the guess besides.
CENSUS_S_PER_BLOCK = 30e-9
# What the first read is priced at before it runs: the reading thread's first heap read fills its
# glibc tcache first (readers/heap.prime_thread_cache, ~0.5 ms), and the first read of a process
# walks a cold heap. In a uvicorn server that read, taken at the first request, was 0.6-0.8 ms of
# a web guard's account against ~0.1 s of requests: the status's overhead read 1.1-1.4% at 500
# requests (bench/web_routes.py's app). Paid before it runs, as the first census is.
FIRST_READ_GUESS_S = 0.6e-3
# Pairs (a step that took a read, the step after it) before their difference counts as a read's
# after-effect: fewer, and one slow step (a collection) would set the read period.
AFTER_EFFECT_MIN_STEPS = 16
AFTER_EFFECT_CAP = 2.0  # step times above this many typical steps count as this many


@dataclass(slots=True)
class Budget:
    """The guard's account: time in steps earns credit, reads and censuses spend it.

    ``share`` is the budget (0.01 = 1%), or None for dense mode: read after every step, and take
    routine censuses within ``DENSE_CENSUS_BUDGET``. Not thread-safe: the guard's sampling
    thread (one at a time) updates it; the step path only adds to ``busy_s``.
    """

    share: float | None
    after_effects: bool = True  # measure and price a read's after-effect (``after_effect_s``)
    busy_s: float = 0.0
    spent_s: float = 0.0
    step_s: float = 0.0  # EWMA of one step's duration
    read_cost_s: float = 0.0
    census_cost_s: float = 0.0
    census_guess_s: float = FIRST_CENSUS_GUESS_S  # until a census has been taken (``guess_census``)
    census_spent_s: float = 0.0  # of ``spent_s``: what censuses took
    reads: int = 0
    # A read's after-effect (see ``after_effect_s``): the step that took a read, until the next
    # step ends; the differences between the two, summed.
    before_s: float | None = None
    effect_sum_s: float = 0.0
    effect_squares: float = 0.0
    effect_pairs: int = 0

    def record_step(self, elapsed: float, first: bool, after_read: bool = False) -> None:
        """Hot path: one step took ``elapsed`` seconds (``after_read``: it began right after a
        cheap read)."""
        self.busy_s += elapsed
        step = self.step_s = self.step_s + (elapsed - self.step_s) * (1.0 if first else 0.05)
        if not after_read or not self.after_effects:
            return
        before = self.before_s
        if before is None:
            return
        self.before_s = None
        # Capped alike on both sides, so a rare slow step (a collection, the machine) does not
        # stand for every read; a real after-effect is a fraction of a step. (Conditionals,
        # not min(): this runs at every step after a read.)
        cap = AFTER_EFFECT_CAP * step
        difference = (elapsed if elapsed < cap else cap) - (before if before < cap else cap)
        self.effect_sum_s += difference
        self.effect_squares += difference * difference
        self.effect_pairs += 1

    def read_ended(self, step_s: float | None) -> None:
        """A cheap read was taken at the end of a step that lasted ``step_s`` (None: that step
        began right after a read itself, so it is no measure of a step without one)."""
        self.before_s = step_s

    @property
    def after_effect_s(self) -> float:
        """What a cheap read costs the step after it, beyond its own time: the step right after a
        read against the step that took it, on average, less two standard errors of that mean (0
        until ``AFTER_EFFECT_MIN_STEPS`` pairs). Step times vary by themselves (a busy machine,
        uneven requests); the margin keeps that noise from passing for a cost, which would thin
        the reads, and so the verdicts, for nothing.

        Paired, not the steps after reads against all others: the read period is counted in
        steps and shortens when steps slow down, so reads crowd into a machine's slow spells,
        and the steps after them were slower for that alone. On a 3-rank CPU DDP job an unpaired
        estimate once read 2 ms (steps after reads 8.7 ms on average, the others 6.7 ms) with no
        cost to the job (wall-clock ratio 0.999), and priced the guard at 4.2-4.7% against its 1%.
        Adjacent steps share the machine's state; their difference is the read's.

        ``mallinfo2`` walks every free chunk of the C heap, and the walk evicts the service's
        working set from the caches: on a CPU DDP rank a 141-163 us read made the next step
        60-135 us slower (bench/distributed_share.py), time no clock of the guard's own thread
        sees. Priced in, reads are spaced by what they cost the service. In dense mode every
        step follows a read: there is no pair, and the estimate stays 0 (it prices nothing there)."""
        pairs = self.effect_pairs
        if pairs < AFTER_EFFECT_MIN_STEPS:
            return 0.0
        mean = self.effect_sum_s / pairs
        variance = max(0.0, self.effect_squares / pairs - mean ** 2) / pairs
        return max(0.0, mean - 2.0 * math.sqrt(variance))

    def _read_price_s(self) -> float:
        if self.reads == 0:  # the first read is scheduled at its guess, and paid before it runs
            return FIRST_READ_GUESS_S
        return self.read_cost_s + self.after_effect_s

    def _spent_with_after_effects(self) -> float:
        return self.spent_s + self.reads * self.after_effect_s

    def read_period(self) -> int:
        """Steps between two cheap reads (1 in dense mode). At least 2 where the after-effect is
        measured: the step between two reads is what the step after a read is measured
        against (a read after every step would leave none, and an after-effect unseen)."""
        if self.share is None:
            return 1
        allowed = self.share * READ_SHARE * max(self.step_s, 1e-7)
        return max(2 if self.after_effects else 1, math.ceil(self._read_price_s() / allowed))

    def next_read(self, step: int, *, aligned: bool = False, at_least: int = 1) -> int:
        """The step (counted from 1) of the next cheap read after ``step``: ``read_period``
        steps on, or ``at_least`` if more (the history's least gap: a read sooner would not be
        kept). ``aligned``: at the next multiple of that period rounded to the nearest power of
        two, a schedule every rank of a distributed job computes alike (see the Guard).
        Nearest, not up: rounding up read up to half as often, and a leaking rank of a
        300-step DDP run at defaults ended `inconclusive` (32 samples). Rounded down, reads
        may take up to 1.4x their share (0.7 of the budget: 0.99 at most), and the account
        (``overdrawn``, at 0.9) pauses them before the budget is exceeded. ``at_least`` is
        rounded up: the history's gap is a floor, not a cost estimate."""
        period = self.read_period()
        if not aligned:
            return step + max(period, at_least)
        period = max(1 << round(math.log2(period)), 1 << math.ceil(math.log2(at_least)))
        return (step // period + 1) * period

    def census_affordable(self, *, scale: float = 1.0) -> bool:
        """Whether the account pays for one census now (at ``scale`` times its estimated cost).

        The estimate is the last censuses' cost (before the first, ``census_guess_s``): a census
        that grew dearer is paid for after the fact, and the next waits until the account is
        positive.
        """
        share = DENSE_CENSUS_BUDGET if self.share is None else self.share * ACCOUNT_SHARE
        cost = (self.census_cost_s or self.census_guess_s) * scale
        return share * self.busy_s - self._spent_with_after_effects() >= cost

    def guess_census(self, heap_blocks: int) -> None:
        """Guess the first census's cost from the Python heap's size (``sys.getallocatedblocks``):
        a fixed guess was 15 ms, and a first census in a process with torch cost 20-48 ms (more
        with a model loaded), paid after the fact: ``spent / busy`` overshot the budget (1.33-1.46%
        against 1%, bench/guard_long_run.py) until later steps repaid it."""
        self.census_guess_s = max(FIRST_CENSUS_GUESS_S, heap_blocks * CENSUS_S_PER_BLOCK)

    def overdrawn(self) -> bool:
        """True when the reads spent more than the account earned (a read cost more than its
        estimate): reads pause until the steps have paid it back. Never in dense mode.

        What censuses spent does not pause reads: a census that cost more than its estimate is
        repaid by the censuses after it, which wait until the whole account is positive
        (``census_affordable``). The census explains, the reads are the signal: a census grows
        dearer with what a leak keeps, and its overdraft would otherwise blind the guard for
        ~100 times its cost in steps' time, just while a leak goes on. The first read waits
        until the account affords ``FIRST_READ_GUESS_S``."""
        if self.share is None:
            return False
        spent = self._spent_with_after_effects() - self.census_spent_s
        if self.reads == 0:
            spent += FIRST_READ_GUESS_S
        return spent > self.share * ACCOUNT_SHARE * self.busy_s

    def paid(self, seconds: float) -> None:
        """The guard spent ``seconds`` reading memory."""
        self.spent_s += seconds

    def census_took(self, seconds: float) -> None:
        """A census cost ``seconds`` (kept as the estimate of the next one; the caller pays it
        with the rest of its sampling, :meth:`paid`)."""
        self.census_cost_s = cost_estimate(self.census_cost_s, seconds)
        self.census_spent_s += seconds

    def read_took(self, seconds: float) -> None:
        """A cheap read cost ``seconds``."""
        self.read_cost_s = cost_estimate(self.read_cost_s, seconds)
        self.reads += 1

    @property
    def overhead(self) -> float:
        """Spent as a share of busy (0.004 = 0.4%), the reads' after-effects included."""
        return self._spent_with_after_effects() / self.busy_s if self.busy_s > 0 else 0.0


def cost_estimate(old: float, new: float) -> float:
    """The running estimate of a cost after one more measurement (0.0: none yet).

    Machine noise only ever adds time, so a cheaper measurement is believed at once and a
    dearer one only gradually: the estimate tracks the real cost, not the worst moments."""
    if old == 0.0 or new < old:
        return new
    return old + (new - old) * 0.2


class History:
    """At most ``capacity`` cheap samples and ``capacity`` census samples, each evenly spread
    over the whole run (a guard runs for weeks: the resolution halves, the span never shrinks)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = max(16, capacity)
        self._cheap = SampleStore(self.capacity, even=True)
        self._census = SampleStore(self.capacity)

    def add(self, sample: Sample, *, census: bool) -> None:
        """Keep ``sample`` (a census sample when ``census``) if the spacing allows."""
        (self._census if census else self._cheap).add(sample)

    @property
    def read_gap(self) -> int:
        """The least steps between two cheap samples that the history still keeps: once full
        it thins and keeps one in ``read_gap``, so a guard with a budget reads no more often
        (in a long job the reads, and their cost, fall by half at each thinning)."""
        return self._cheap.min_gap

    @property
    def samples(self) -> list[Sample]:
        """Both reservoirs, oldest first."""
        if not self._census.count:
            return self._cheap.samples
        return sorted((*self._cheap.samples, *self._census.samples), key=_request)


def _request(sample: Sample) -> int:
    return sample.request
