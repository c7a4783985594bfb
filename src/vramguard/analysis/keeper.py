"""The verdict keeper: a leak verdict does not flap while the leak goes on.

Every judge recomputes its verdict over a window of samples, and a window can stop reading
``leak`` for reasons other than the leak ending: one large free elsewhere in the process (a
cache dropped, garbage collected) flattens the level the window retains, so it reads "no leak"
while memory keeps rising (measured: a 6.6 MiB drop turned a +4.7 KiB/step leak into "no leak"
10 steps later); thinning, a noisy stretch or traffic that two routes share can leave it
"inconclusive" (measured at default settings under uvicorn: a route's verdict went leak ->
inconclusive after ~2,400 requests, when its attribution windows turned collinear, while the
process kept growing ~2.4 KiB a request). A status page, healthz or an operator reading
leak -> inconclusive -> leak learns nothing but noise. So every judge (the Guard, each route of
the web guard, ``vramguard loadtest``) hands its fresh verdict through one :class:`Keeper`:

- a leak verdict is handed out as it is, and the keeper notes the newest sample under it;
- when a later verdict is inconclusive, and memory since grew at least a quarter of what the
  leak verdict predicts for the requests since (or too few requests passed to tell), the
  samples since decide on their own: a leak there, or too few of them to tell, keeps the leak
  verdict (with a note saying so); their own "no leak" lets it go. So a window that cannot tell
  does not end a leak that goes on, and a leak that stopped (or a warm-up's false alarm) is let
  go as soon as memory stops keeping up with it, however sparse the samples;
- a later "no leak" (or another finding) stands, as the window's evidence, unless memory fell
  by more than the signal's floor since the leak was last seen on the judge's own series: then
  the window may have been fooled by that fall, and the samples from the fall on decide as
  above (the level before it is evidence of nothing once it is gone);
- the keeper never makes a "no leak": it only holds a leak or passes the fresh verdict on, so
  missing data stays inconclusive.

Pure: a frozen value; :meth:`Keeper.keep` returns the next keeper with the verdict to show.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from vramguard.analysis.floor import EXACT, Floor
from vramguard.analysis.samples import Sample
from vramguard.analysis.verdict import ALLOCATED_MIN_GROWTH, Verdict, VerdictKind, decide
from vramguard.units import format_bytes

_NOTES = 4  # warnings of the held verdict kept beside the keeper's note (bounded while held)
_HOLDS = ": the leak verdict holds"
_KEPT_UP = 0.25  # a route's hold: the least share of its predicted growth the process shows


@dataclass(frozen=True, slots=True)
class Keeper:
    """Holds a judge's leak verdict while the leak goes on (see the module docstring).

    ``floor``: the floor of the series the keeper reads (the sampler's). ``own``: the samples
    are the verdict's own series (the Guard, loadtest), so a leak found in the samples since the
    last leak is handed out as the fresher verdict; False where they are the process's series
    behind a narrower verdict (a route), which then holds its own last leak verdict instead.
    ``hold_unsure``: hold a leak through inconclusive windows (rule 2); False keeps only the
    hold after a fall (rule 3), the Guard's (see its comment). ``seen``: the newest sample at
    the last leak verdict; ``seen_at``: that verdict's request
    count (a route's requests, for how much the process should have grown since);
    ``last``: the verdict handed out last.
    """

    floor: Floor = EXACT
    own: bool = True
    hold_unsure: bool = True
    seen: Sample | None = None
    last: Verdict | None = None
    seen_at: int = 0

    @property
    def holding(self) -> bool:
        """Whether a leak verdict is noted, which a later verdict may be held to."""
        return self.seen is not None and self.last is not None and self.last.is_leak

    def __str__(self) -> str:
        if not self.holding or self.seen is None or self.last is None:
            return "keeper: no leak to hold"
        return f"keeper: {self.last.kind.label} last seen at request {self.seen.request}"

    def keep(self, verdict: Verdict, samples: Sequence[Sample]) -> tuple[Keeper, Verdict]:
        """(the next keeper, the verdict to show) for the judge's fresh ``verdict`` over
        ``samples`` (oldest first; for a route, the process's series)."""
        if verdict.is_leak:
            newest = next((s for s in reversed(samples) if s.allocated is not None), None)
            return replace(self, seen=newest, seen_at=verdict.requests, last=verdict), verdict
        seen, last = self.seen, self.last
        if seen is None or seen.allocated is None or last is None or not last.is_leak:
            return self._let_go(verdict)
        after = [s for s in samples if s.request > seen.request and s.allocated is not None]
        unsure = verdict.kind is VerdictKind.INCONCLUSIVE and self.hold_unsure
        if not after:
            if unsure:  # nothing read since the leak: an inconclusive window cannot end it
                return self._hold(verdict, last, "no memory reading since the leak was last "
                                                 "seen and the window cannot tell")
            return self._let_go(verdict)
        moved, since = self._moved(seen.allocated, after)
        fell = moved is not None and moved < 0
        if not (unsure or (self.own and fell)):
            return self._let_go(verdict)
        span = after[-1].request - seen.request
        after = after[since:]  # after a fall, the level it left is no evidence either way
        if not self._kept_up(verdict, last, after, seen if not fell else None, span):
            return self._let_go(verdict)
        recheck = decide(after, warmup=0, floor=self.floor, find_detection=False)
        how = ("memory stayed within the floor" if moved is None else
               f"memory {'fell' if fell else 'rose'} by {format_bytes(abs(moved))}")
        if recheck.is_leak:
            if self.own:  # judged from the same anchor until the window agrees again
                return replace(self, last=recheck), recheck
            return self._hold(verdict, last, f"{how} since the leak was last seen, and the "
                                             f"{len(after)} samples since read a leak")
        if recheck.kind is VerdictKind.INCONCLUSIVE:
            return self._hold(verdict, last, f"{how} since the leak was last seen and the "
                                             f"whole window now reads {verdict.kind.value}, but "
                                             f"the {len(after)} samples since cannot tell yet")
        return self._let_go(verdict)

    def _kept_up(self, verdict: Verdict, last: Verdict, after: list[Sample],
                 seen: Sample | None, span: int) -> bool:
        # Whether memory grew at least a quarter of what the held leak predicts for the judge's
        # requests since it was seen (pro rata after a fall), once that is past the floor: a
        # hold needs a leak that goes on. Without it a leak that stopped (or a false alarm)
        # would be held as long as the samples since are too sparse to say "no leak": for a
        # route, whose samples are the process's, measured at default settings: a sample every
        # ~140 requests, while the server's own churn (~140 B/request) keeps the process rising
        # a little. A quarter, not all: a route's requests are counted up to now, the process's
        # growth only up to its newest sample, up to one sample gap earlier (at a half, 2 of 10
        # server runs let a route that kept leaking go).
        # ``seen``: the sample the rise counts from (None after a fall: from the fall on, and a
        # single sample since the fall is no evidence either way: the recheck holds it).
        if seen is None and len(after) < 2:
            return True
        first = seen or after[0]
        start, end = first.allocated, after[-1].allocated
        if start is None or end is None:
            return False
        if last.growth is None or last.growth.bytes_per_request <= 0:
            return True  # no prediction to hold it to: the recheck alone decides
        share = (after[-1].request - first.request) / span if span > 0 else 0.0
        requests = max(0, verdict.requests - self.seen_at) * share
        least = _KEPT_UP * last.growth.bytes_per_request * requests
        if least <= max(self.floor.window_bytes, ALLOCATED_MIN_GROWTH):
            return True  # too few requests since to tell a stop from the signal's noise
        return end - start > least

    def _moved(self, level: int, after: list[Sample]) -> tuple[int | None, int]:
        # How far memory moved since the leak verdict, beyond the floor (None within it): the
        # fall to the lowest sample since (negative), with the index of the first sample below
        # the floor, from which the samples since are judged; else the rise to the newest one.
        least = max(float(self.floor.window_bytes), ALLOCATED_MIN_GROWTH)
        values = [s.allocated for s in after if s.allocated is not None]
        lowest = min(values)
        if lowest < level - least:
            return lowest - level, next(i for i, v in enumerate(values) if v < level - least)
        if values[-1] > level + least:
            return values[-1] - level, 0
        return None, 0

    def _hold(self, verdict: Verdict, last: Verdict, why: str) -> tuple[Keeper, Verdict]:
        # One note, the newest: a verdict held over many looks does not repeat it.
        kept = [w for w in last.warnings if not w.endswith(_HOLDS)][:_NOTES]
        held = replace(last, requests=verdict.requests, warnings=(*kept, f"{why}{_HOLDS}"))
        return replace(self, last=held), held

    def _let_go(self, verdict: Verdict) -> tuple[Keeper, Verdict]:
        return replace(self, seen=None, last=verdict), verdict
