"""RankSharing, the training callbacks' sharing, in one process against torch's own stores: a
check publishes and (rank 0) reads and logs the table off the caller's thread; close leaves no
thread running; a broken store is logged once and never raised. The real DDP runs are in
``test_callbacks_ddp.py``."""

from __future__ import annotations

import datetime as dt
import logging
import threading
from typing import Any

import pytest
import torch
import torch.distributed as dist

from vramguard import Guard
from vramguard._training import TrainingWatch
from vramguard.distributed.store import rank_key
from vramguard.distributed.summary import RankSummary
from vramguard.distributed.training import RankSharing, world
from vramguard.errors import UsageError


@pytest.fixture(autouse=True)
def rank0(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")


def leaking_guard(steps: int = 40) -> tuple[Guard, list[torch.Tensor]]:
    guard = Guard("cpu", overhead_budget=None, warmup=5, diagnose="never")
    layer = torch.nn.Linear(64, 64)
    kept = []
    for _ in range(steps):
        with guard.step(), torch.no_grad():
            kept.append(layer(torch.randn(64, 64)))
    return guard, kept


def threads() -> set[str]:
    # Sharing's threads only: a web middleware's worker ("vramguard-web") that an earlier test
    # of the same process left running is not this module's to count.
    return {t.name for t in threading.enumerate() if t.name in ("vramguard-share", "vramguard-table")}


def test_a_check_publishes_and_rank_0_logs_the_table(caplog: pytest.LogCaptureFixture) -> None:
    guard, _kept = leaking_guard()
    store = dist.HashStore()
    caplog.set_level(logging.INFO, logger="vramguard")
    sharing = RankSharing(guard, 0, every="1h", store=store)
    assert threads() == {"vramguard-share", "vramguard-table"}
    assert sharing.metrics() == {}                         # no table read yet
    sharing.check()
    assert sharing.wait_for_reads(1, timeout=60)
    assert sharing.latest is not None
    assert sharing.latest.leaking_ranks == {0}
    assert sharing.metrics() == {"vramguard/leaking_ranks": 1.0}
    assert RankSummary.from_json(store.get(rank_key(0))).requests == 40
    [record] = [r for r in caplog.records if "ranks:" in r.getMessage()]
    assert record.levelno == logging.WARNING              # a rank newly flagged
    assert record.getMessage().startswith("vramguard: ranks: rank 0 leaks +16")
    sharing.check()                                        # the same table again: info
    assert sharing.wait_for_reads(2, timeout=60)
    assert [r.levelno for r in caplog.records if "ranks:" in r.getMessage()] == [
        logging.WARNING, logging.INFO]
    final = sharing.close()
    assert final is not None
    assert final.leaking_ranks == {0}
    assert threads() == set()                              # nothing left running
    assert sharing.close() is sharing.latest               # idempotent


class CountedClones:
    """A real store whose ``clone()`` (a new connection) is counted."""

    def __init__(self, store: Any) -> None:
        self.store, self.clones = store, 0

    def clone(self) -> Any:
        self.clones += 1
        return self.store.clone()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)


def test_rank_0_reads_every_table_over_one_kept_connection() -> None:
    # A connection per read stalled ~5 s at about one connect in 25 to a TCPStore served from
    # the same process (as Lightning's rank 0 serves it): reads then took seconds.
    guard, _kept = leaking_guard()
    server = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False,
                           timeout=dt.timedelta(seconds=30))
    store = CountedClones(server)
    sharing = RankSharing(guard, 0, every="1h", store=store)
    for reads in range(1, 41):
        sharing.check()
        assert sharing.wait_for_reads(reads, timeout=60)
    final = sharing.close()
    assert final is not None
    assert final.leaking_ranks == {0}
    assert (sharing.reads, sharing.failures) == (41, 0)
    assert store.clones == 2                               # the sharer's and the reader's


def test_other_ranks_publish_but_read_no_table() -> None:
    guard, _kept = leaking_guard()
    store = dist.HashStore()
    sharing = RankSharing(guard, 1, every="1h", store=store)
    assert threads() == {"vramguard-share"}
    before = sharing.sharer.publish_soon()
    sharing.check()
    assert sharing.sharer.wait_for(before + 1, timeout=60)
    assert sharing.close() is None
    assert (sharing.reads, sharing.metrics(), threads()) == (0, {}, set())


class Broken:
    """A store whose server went away: every call fails."""

    def __getattr__(self, name: str) -> Any:
        def fail(*args: object, **kwargs: object) -> None:
            raise RuntimeError("Connection reset by peer")
        return fail


def test_a_broken_store_is_logged_once_and_never_raised(caplog: pytest.LogCaptureFixture) -> None:
    guard, _kept = leaking_guard()
    sharing = RankSharing(guard, 0, every="1h", store=Broken())
    for _ in range(3):
        sharing.check()
        sharing.read()
    assert sharing.close() is None
    assert sharing.failures >= 3
    assert threads() == set()
    failed = [r.getMessage() for r in caplog.records if "rank table failed" in r.getMessage()]
    assert failed == ["vramguard: reading the rank table failed (RuntimeError: Connection reset "
                      "by peer); retrying at each check, logged only once"]


def test_outside_a_distributed_run_nothing_is_shared() -> None:
    assert not dist.is_initialized()
    assert world() is None
    watch = TrainingWatch("training", share=True, guard_options={"overhead_budget": None})
    watch.start("cpu")
    assert watch.sharing is None
    assert watch.rank_metrics() == {}


def test_a_bad_share_interval_fails_when_the_callback_is_made() -> None:
    with pytest.raises(UsageError, match="expected share_every to be a positive duration like "
                                         "'30s', got '0s'"):
        TrainingWatch("training", share=True, share_every="0s")
