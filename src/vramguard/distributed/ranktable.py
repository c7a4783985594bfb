"""Every rank's summary in one table, and which ranks leak.

A rank is flagged (``RankTable.leaking_ranks``) when either holds:

1. **its own verdict** fails a check (``leak``, ``non_torch_growth``, ``process_group_growth``);
2. **it is an outlier among its peers**: its growth per step exceeds the job's median growth by
   more than ``k`` (default 5) scaled MADs, *and* its own 95% interval lies above zero. The MAD
   (median absolute deviation, x1.4826 so it estimates a standard deviation) ignores the
   outlier itself, unlike a standard deviation, so one leaking rank among flat ones cannot hide
   by inflating the spread. The interval condition keeps a flat job, whose MAD is ~0, from
   flagging a rank for noise. It needs at least 3 ranks with a growth figure (with 2 the median
   sits halfway and neither can be an outlier).

A rank whose last summary is older than ``stale_after`` (default: 3 of its own publishing
intervals) is **stale**: hung, dead or cut off from the store. It stays flagged when its last
word was a leak (a rank that leaked and then died of it is the usual story). A rank that never
published is **missing**. Pure: :func:`judge` takes summaries and a time, :func:`read_table`
reads a store (bounded by a deadline, never ``wait``).
"""

from __future__ import annotations

import enum
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from vramguard.distributed.store import PREFIX, WORLD_KEY, rank_key
from vramguard.distributed.summary import RankSummary, SummaryError
from vramguard.units import format_bytes, format_duration

K_MADS = 5.0
_MAD_TO_SIGMA = 1.4826
_MIN_PEERS = 3


class RankStatus(enum.StrEnum):
    """Whether a rank's summary could be used."""

    REPORTED = "reported"
    STALE = "stale"
    MISSING = "missing"
    INVALID = "invalid"


@dataclass(frozen=True, slots=True)
class RankRow:
    """One rank: its status, last summary (None when missing/invalid), age, and why flagged."""

    rank: int
    status: RankStatus
    summary: RankSummary | None
    age_s: float | None
    flagged: bool
    why: str | None

    @property
    def label(self) -> str:
        """One word for the headline's groups: ``flat``, ``stale``, ``inconclusive``, ..."""
        if self.status is not RankStatus.REPORTED or self.summary is None:
            return str(self.status)
        kind = self.summary.verdict
        return "flat" if kind == "no_leak" else kind.label


@dataclass(frozen=True, slots=True)
class RankTable:
    """The job's ranks at ``read_at``; ``median``/``mad`` are over the fresh growth figures
    (bytes/step, None with too few). ``str()`` is a headline and one line per rank."""

    rows: tuple[RankRow, ...]
    world_size: int | None
    median: float | None
    mad: float | None
    k: float
    read_at: float
    problems: tuple[str, ...] = field(default=())

    @property
    def leaking_ranks(self) -> frozenset[int]:
        """The flagged ranks."""
        return frozenset(row.rank for row in self.rows if row.flagged)

    @property
    def stale_ranks(self) -> frozenset[int]:
        """Ranks whose last summary is too old."""
        return frozenset(r.rank for r in self.rows if r.status is RankStatus.STALE)

    @property
    def missing_ranks(self) -> frozenset[int]:
        """Ranks with no (usable) summary."""
        return frozenset(r.rank for r in self.rows
                         if r.status in (RankStatus.MISSING, RankStatus.INVALID))

    @property
    def conclusive(self) -> bool:
        """True when every rank reported freshly with a verdict other than inconclusive: only
        then does "no rank leaks" mean it."""
        return bool(self.rows) and all(
            r.status is RankStatus.REPORTED and r.summary is not None
            and r.summary.verdict != "inconclusive" for r in self.rows)

    @property
    def headline(self) -> str:
        """``rank 1 leaks +1.2 KiB/step (ranks 0, 2: flat)``."""
        if not self.rows:
            return "no rank has published a vramguard summary to this store"
        flagged = [r for r in self.rows if r.flagged]
        others = _groups([r for r in self.rows if not r.flagged])
        if flagged:
            head = "; ".join(_leak_phrase(r) for r in flagged)
        elif self.conclusive:
            head = "no rank leaks"
        else:
            head = "no rank flagged"
        return f"{head} ({others})" if others else head

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (schema ``vramguard.ranks/1``)."""
        return {
            "schema": "vramguard.ranks/1", "headline": self.headline,
            "world_size": self.world_size, "leaking_ranks": sorted(self.leaking_ranks),
            "stale_ranks": sorted(self.stale_ranks), "missing_ranks": sorted(self.missing_ranks),
            "conclusive": self.conclusive, "median_bytes_per_step": self.median,
            "mad_bytes_per_step": self.mad, "k_mads": self.k, "read_at": self.read_at,
            "problems": list(self.problems),
            "ranks": [{
                "rank": r.rank, "status": str(r.status), "flagged": r.flagged, "why": r.why,
                "age_s": r.age_s,
                "local_rank": None if r.summary is None else r.summary.local_rank,
                "verdict": None if r.summary is None else str(r.summary.verdict),
                "bytes_per_step": None if r.summary is None else r.summary.bytes_per_step,
                "ci95": None if r.summary is None or r.summary.ci95 is None
                else list(r.summary.ci95),
                "memory_bytes": None if r.summary is None else r.summary.memory_bytes,
                "requests": None if r.summary is None else r.summary.requests,
                "suspect": None if r.summary is None else r.summary.suspect,
                "process_groups": None if r.summary is None else r.summary.process_groups,
                "pid": None if r.summary is None else r.summary.pid,
                "host": None if r.summary is None else r.summary.host,
            } for r in self.rows],
        }

    def __str__(self) -> str:
        lines = [self.headline,
                 f"{'rank':>4} {'local':>5}  {'verdict':<20} {'growth':>15}  {'memory':>10} "
                 f"{'steps':>7} {'age':>5}  note"]
        for row in self.rows:
            s = row.summary
            local = "-" if s is None or s.local_rank is None else str(s.local_rank)
            verdict = str(row.status) if s is None else str(s.verdict)
            if s is not None and row.status is RankStatus.STALE:
                verdict += " (stale)"
            growth = "" if s is None else s.growth_text()
            memory = "" if s is None else format_bytes(s.memory_bytes)
            steps = "" if s is None else str(s.requests)
            age = "" if row.age_s is None else format_duration(max(0.0, row.age_s))
            note = row.why or ("" if s is None or s.suspect is None else s.suspect)
            if row.flagged and s is not None and s.suspect and s.suspect not in note:
                note += f"; top suspect: {s.suspect}"
            lines.append(f"{row.rank:>4} {local:>5}  {verdict:<20} {growth:>15}  {memory:>10} "
                         f"{steps:>7} {age:>5}  {note}".rstrip())
        if self.median is not None and self.mad is not None:
            lines.append(f"job median {format_bytes(self.median, signed=True)}/step, MAD "
                         f"{format_bytes(self.mad)}/step; outlier: above median + "
                         f"{self.k:g} MAD with its own 95% CI above 0")
        lines.extend(f"problem: {p}" for p in self.problems)
        return "\n".join(lines)


def _leak_phrase(row: RankRow) -> str:
    s = row.summary
    stale = " (stale)" if row.status is RankStatus.STALE else ""
    if s is not None and s.verdict == "process_group_growth":
        return f"rank {row.rank} leaks process groups{stale}"
    growth = "" if s is None or s.bytes_per_step is None else f" {s.growth_text()}"
    return f"rank {row.rank} leaks{growth}{stale}"


def _groups(rows: Sequence[RankRow]) -> str:
    by_label: dict[str, list[int]] = {}
    for row in rows:
        by_label.setdefault(row.label, []).append(row.rank)
    parts = []
    for label, ranks in by_label.items():
        word = "rank" if len(ranks) == 1 else "ranks"
        parts.append(f"{word} {', '.join(map(str, ranks))}: {label}")
    return "; ".join(parts)


def judge(summaries: Mapping[int, RankSummary | str | None], *, world_size: int | None,
          now: float, k: float = K_MADS, stale_after: float | None = None,
          problems: Sequence[str] = ()) -> RankTable:
    """The table for ``summaries`` (rank -> summary, an error text for an unreadable value, or
    None for none) at ``now`` (Unix seconds). Ranks ``0..world_size-1`` all get a row; ranks
    beyond it that published anyway are kept. ``stale_after``: seconds (None: 3 of each rank's
    own publishing intervals). Pure."""
    ranks = set(summaries)
    if world_size is not None:
        ranks |= set(range(world_size))
    fresh: dict[int, RankSummary] = {}
    cells: dict[int, tuple[RankStatus, RankSummary | None, float | None, str | None]] = {}
    for rank in sorted(ranks):
        value = summaries.get(rank)
        if value is None:
            cells[rank] = (RankStatus.MISSING, None, None, None)
        elif isinstance(value, str):
            cells[rank] = (RankStatus.INVALID, None, None, value)
        else:
            age = now - value.time
            limit = stale_after if stale_after is not None else 3 * value.every_s
            if age > limit:
                late = f"no summary for {format_duration(age)} (publishes every {value.every_s:g}s)"
                cells[rank] = (RankStatus.STALE, value, age, late)
            else:
                cells[rank] = (RankStatus.REPORTED, value, age, None)
                fresh[rank] = value
    growths = [s.bytes_per_step for s in fresh.values() if s.bytes_per_step is not None]
    median = mad = None
    if len(growths) >= _MIN_PEERS:
        median = statistics.median(growths)
        mad = _MAD_TO_SIGMA * statistics.median(abs(g - median) for g in growths)
    rows = []
    for rank, (status, summary, row_age, note) in cells.items():
        flagged, why = _flag(summary, median, mad, k)
        if status is RankStatus.STALE and not (summary is not None and summary.is_leak):
            flagged, why = False, note  # an outlier needs a fresh figure to be compared
        elif status is RankStatus.STALE:
            why = f"{why}; {note}"
        elif note is not None:
            why = note
        rows.append(RankRow(rank, status, summary, row_age, flagged, why))
    return RankTable(tuple(rows), world_size, median, mad, k, now, tuple(problems))


def _flag(summary: RankSummary | None, median: float | None, mad: float | None,
          k: float) -> tuple[bool, str | None]:
    """(flagged, why) for one rank's summary against the job's median and MAD."""
    if summary is None:
        return False, None
    if summary.is_leak:
        return True, f"own verdict: {summary.verdict.label}"
    g = summary.bytes_per_step
    if median is None or mad is None or g is None or not summary.growth_significant:
        return False, None
    if g > median + k * mad:
        return True, (f"outlier: {summary.growth_text()} vs the job's median "
                      f"{format_bytes(median, signed=True)}/step (> {k:g} MAD)")
    return False, None


def read_table(store: Any, *, timeout_s: float, clock: Callable[[], float] = time.time,
               monotonic: Callable[[], float] = time.monotonic, k: float = K_MADS,
               stale_after: float | None = None) -> RankTable:
    """Read every rank's summary from ``store`` (a root store, see
    :mod:`~vramguard.distributed.store`) and judge them. Only keys that ``check`` finds are
    read, so no call waits for a rank; ranks not read within ``timeout_s`` show as missing with
    a problem line. Store errors propagate (the caller decides: exit 3 in the CLI)."""
    deadline = monotonic() + timeout_s
    world = None
    if store.check([WORLD_KEY]):
        world = int(store.get(WORLD_KEY).decode())
    summaries: dict[int, RankSummary | str | None] = {}
    problems = []
    ranks = range(world) if world is not None else _published_ranks(store)
    for rank in ranks:
        if monotonic() > deadline:
            problems.append(f"ranks from {rank} on not read within {timeout_s:g}s")
            break
        key = rank_key(rank)
        if not store.check([key]):
            summaries[rank] = None
            continue
        try:
            summaries[rank] = RankSummary.from_json(store.get(key))
        except SummaryError as exc:
            summaries[rank] = f"unreadable summary: {exc}"
    return judge(summaries, world_size=world, now=clock(), k=k, stale_after=stale_after,
                 problems=problems)


def _published_ranks(store: Any) -> list[int]:
    """The ranks with a summary, when no rank knew the world size (a launcher that sets a rank
    but no size): from ``list_keys`` where the store has it, else none."""
    try:
        keys = store.list_keys()
    except Exception:  # an older torch, or a store without the extended API
        return []
    head = PREFIX + "rank/"
    return sorted(int(k[len(head):]) for k in keys if k.startswith(head) and k[len(head):].isdigit())
