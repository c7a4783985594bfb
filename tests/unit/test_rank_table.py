"""The rank table: own verdicts, median + k*MAD outliers, stale and missing ranks, headline."""

from __future__ import annotations

import json

import pytest

from vramguard.analysis.verdict import VerdictKind
from vramguard.distributed.groups import groups_verdict
from vramguard.distributed.ranktable import RankStatus, judge
from vramguard.distributed.summary import RankSummary, SummaryError

NOW = 1_000_000.0


def summary(rank: int, *, kind: VerdictKind = VerdictKind.NO_LEAK, growth: float | None = 0.0,
            ci: tuple[float, float] | None = (-1.0, 1.0), age: float = 1.0,
            every: float = 30.0, suspect: str | None = None) -> RankSummary:
    return RankSummary(rank=rank, local_rank=rank % 8, world_size=None, verdict=kind,
                       reason="...", requests=400, bytes_per_step=growth, ci95=ci,
                       memory_bytes=1 << 20, suspect=suspect, process_groups=1,
                       time=NOW - age, every_s=every, pid=100 + rank, host="node0")


def test_own_verdict_flags_one_rank() -> None:
    table = judge({0: summary(0), 1: summary(1, kind=VerdictKind.LEAK, growth=1228.8,
                                               ci=(1200.0, 1250.0), suspect="Tensor(8x16)"),
                   2: summary(2)}, world_size=3, now=NOW)
    assert table.leaking_ranks == {1}
    assert table.headline == "rank 1 leaks +1.2 KiB/step (ranks 0, 2: flat)"
    text = str(table)
    assert text.splitlines()[0] == table.headline
    assert "own verdict: leak" in text
    assert "top suspect: Tensor(8x16)" in text


def test_outlier_against_the_median_flags_a_rank_whose_own_verdict_is_undecided() -> None:
    flat = {r: summary(r, growth=float(r % 3), ci=(-5.0, 5.0)) for r in (0, 2, 3, 4)}
    odd = summary(1, kind=VerdictKind.INCONCLUSIVE, growth=900.0, ci=(800.0, 1000.0))
    table = judge({**flat, 1: odd}, world_size=5, now=NOW)
    assert table.leaking_ranks == {1}
    row = next(r for r in table.rows if r.rank == 1)
    assert row.why is not None
    assert row.why.startswith("outlier: +900 B/step")


def test_no_outlier_without_own_significant_growth() -> None:
    # Far above the median, but its own interval includes 0: noise, not a leak.
    flat = {r: summary(r, growth=0.0, ci=(-1.0, 1.0)) for r in (0, 2)}
    noisy = summary(1, growth=900.0, ci=(-100.0, 2000.0))
    table = judge({**flat, 1: noisy}, world_size=3, now=NOW)
    assert table.leaking_ranks == frozenset()
    assert table.headline == "no rank leaks (ranks 0, 1, 2: flat)"
    assert table.conclusive


def test_all_ranks_growing_alike_are_not_outliers() -> None:
    # The same growth everywhere (say, a dataset cache) is no rank-specific outlier; each rank's
    # own verdict decides.
    alike = {r: summary(r, kind=VerdictKind.CACHE_GROWTH, growth=500.0 + r, ci=(400.0, 600.0))
             for r in range(4)}
    table = judge(alike, world_size=4, now=NOW)
    assert table.leaking_ranks == frozenset()
    assert table.headline == "no rank leaks (ranks 0, 1, 2, 3: cache growth)"


def test_two_ranks_have_no_outlier_rule() -> None:
    table = judge({0: summary(0), 1: summary(1, growth=900.0, ci=(800.0, 1000.0))},
                  world_size=2, now=NOW)
    assert table.median is None
    assert table.leaking_ranks == frozenset()


def test_stale_and_missing_ranks() -> None:
    table = judge({0: summary(0), 1: summary(1, age=100.0, every=30.0), 3: "unreadable: x"},
                  world_size=4, now=NOW)
    assert table.stale_ranks == {1}
    assert table.missing_ranks == {2, 3}
    assert not table.conclusive
    assert table.leaking_ranks == frozenset()
    assert table.headline == ("no rank flagged (rank 0: flat; rank 1: stale; rank 2: missing; "
                              "rank 3: invalid)")
    stale = next(r for r in table.rows if r.rank == 1)
    assert stale.why == "no summary for 100s (publishes every 30s)"


def test_a_stale_rank_whose_last_word_was_a_leak_stays_flagged() -> None:
    table = judge({0: summary(0), 1: summary(1, kind=VerdictKind.LEAK, growth=4096.0,
                                               ci=(4000.0, 4200.0), age=500.0)},
                  world_size=2, now=NOW)
    assert table.leaking_ranks == {1}
    assert table.headline == "rank 1 leaks +4.0 KiB/step (stale) (rank 0: flat)"


def test_stale_after_overrides_the_interval_rule() -> None:
    rows = {0: summary(0, age=5.0, every=1.0)}
    assert judge(rows, world_size=1, now=NOW).stale_ranks == {0}
    assert judge(rows, world_size=1, now=NOW, stale_after=10.0).stale_ranks == frozenset()


def test_inconclusive_ranks_mean_no_claim_of_no_leak() -> None:
    table = judge({0: summary(0), 1: summary(1, kind=VerdictKind.INCONCLUSIVE, growth=None,
                                               ci=None)}, world_size=2, now=NOW)
    assert not table.conclusive
    assert table.headline == "no rank flagged (rank 0: flat; rank 1: inconclusive)"


def test_empty_store() -> None:
    table = judge({}, world_size=None, now=NOW)
    assert table.headline == "no rank has published a vramguard summary to this store"
    assert not table.conclusive


def test_process_group_growth_headline_and_json() -> None:
    table = judge({0: summary(0, kind=VerdictKind.PROCESS_GROUP_GROWTH, growth=None, ci=None)},
                  world_size=1, now=NOW)
    assert table.leaking_ranks == {0}
    assert table.headline == "rank 0 leaks process groups"
    document = json.loads(json.dumps(table.to_dict()))
    assert document["leaking_ranks"] == [0]
    assert document["ranks"][0]["verdict"] == "process_group_growth"
    assert document["ranks"][0]["status"] == str(RankStatus.REPORTED)


def test_summary_round_trip_and_bad_documents() -> None:
    original = summary(1, kind=VerdictKind.LEAK, growth=512.0, ci=(500.0, 520.0), suspect="x")
    assert RankSummary.from_json(original.to_json()) == original
    assert len(original.to_json()) < 600  # compact: a store serves thousands of ranks
    with pytest.raises(SummaryError, match=r"expected a vramguard\.rank/1 document"):
        RankSummary.from_json("{}")
    with pytest.raises(SummaryError, match=r"expected a vramguard\.rank/1 document"):
        RankSummary.from_json("not json")


def test_groups_verdict_on_a_growing_and_a_flat_count() -> None:
    growing = [(r, 1 + r) for r in range(60)]
    verdict = groups_verdict(growing, warmup=5)
    assert verdict is not None
    assert verdict.kind is VerdictKind.PROCESS_GROUP_GROWTH
    assert verdict.is_leak
    assert "destroy_process_group" in verdict.reason
    assert str(verdict).startswith("process group growth after 60 requests: live process groups")
    # A job that makes its groups once (after the warm-up too) is fine.
    flat = [(r, 1 if r < 8 else 3) for r in range(60)]
    assert groups_verdict(flat, warmup=5) is None
    assert groups_verdict(growing[:10]) is None  # too few points to say
