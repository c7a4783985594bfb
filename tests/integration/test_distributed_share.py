"""share() and table() against real torch.distributed stores, in one process; vramguard ranks.

The stores are torch's own (``HashStore`` in memory, ``TCPStore`` on 127.0.0.1); the multi-process
jobs are in ``test_distributed_torchrun.py``.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist

import vramguard
import vramguard.distributed as vd
from tests.integration.net import free_port
from vramguard import Guard, VerdictKind
from vramguard.commands.main import main
from vramguard.distributed.publish import Sharer
from vramguard.distributed.store import WORLD_KEY, rank_key
from vramguard.distributed.summary import RankSummary
from vramguard.errors import UsageError


@pytest.fixture
def rank0(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")


def trained(*, leak: bool, steps: int = 40) -> tuple[Guard, list[torch.Tensor]]:
    guard = Guard("cpu", overhead_budget=None, warmup=5)
    layer = torch.nn.Linear(64, 64)
    kept: list[torch.Tensor] = []
    for _ in range(steps):
        with guard.step(), torch.no_grad():
            out = layer(torch.randn(64, 64))
            if leak:
                kept.append(out)
    return guard, kept


@pytest.mark.usefixtures("rank0")
def test_share_publishes_a_summary_and_table_reads_it() -> None:
    guard, _kept = trained(leak=True)
    store = dist.HashStore()
    clock = iter([1000.0, 1001.0])
    # every=1h: the thread publishes once at start; the second publish is ours, synchronous.
    with vd.share(guard, every="1h", store=store, clock=lambda: next(clock)) as sharer:
        assert sharer.wait_for(1, timeout=60)
        assert sharer.publish()
    assert not sharer.running
    assert sharer.published == 2
    summary = RankSummary.from_json(store.get(rank_key(0)))
    assert summary.verdict is VerdictKind.LEAK
    assert summary.time == 1001.0
    assert (summary.rank, summary.local_rank, summary.world_size) == (0, 0, 1)
    # 64x64 float32 a step, plus the tensor's own bookkeeping the heap counter sees.
    assert summary.bytes_per_step is not None
    assert 16384 <= summary.bytes_per_step <= 16384 + 1024
    assert summary.suspect is not None
    assert summary.suspect.startswith("Tensor(64x64, float32, cpu)")
    assert store.get(WORLD_KEY) == b"1"
    table = vd.table(timeout="5s", store=store, stale_after=1e12)  # the fake clock is old
    assert table.leaking_ranks == {0}
    assert re.fullmatch(r"rank 0 leaks \+16\.\d KiB/step", table.headline)


class BrokenStore:
    """A store whose server went away: every call fails."""

    def set(self, key: str, value: Any) -> None:
        raise RuntimeError("Connection reset by peer")


@pytest.mark.usefixtures("rank0")
def test_a_failing_store_degrades_logs_once_and_never_reaches_the_steps(
        caplog: pytest.LogCaptureFixture) -> None:
    guard = Guard("cpu")
    sharer = Sharer(guard, BrokenStore(), every_s=30.0)
    with caplog.at_level(logging.WARNING, logger="vramguard"):
        assert [sharer.publish() for _ in range(3)] == [False, False, False]
    assert sharer.failures == 3
    assert sharer.error == "RuntimeError: Connection reset by peer"
    warnings = [r for r in caplog.records if "publishing this rank's summary failed" in r.message]
    assert len(warnings) == 1
    with guard.step():  # the guard goes on as before
        pass
    assert guard.requests == 1


def test_share_outside_a_distributed_job_is_a_usage_error(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("RANK", "SLURM_PROCID", "OMPI_COMM_WORLD_RANK"):
        monkeypatch.delenv(name, raising=False)
    guard = Guard("cpu")
    with pytest.raises(UsageError, match="expected a process of a distributed job"):
        vd.share(guard, store=dist.HashStore())
    with pytest.raises(UsageError, match="expected every to be a positive duration"):
        vd.share(guard, every=0, store=dist.HashStore())


def publish_job(store: Any, kinds: dict[int, tuple[VerdictKind, float]], now: float) -> None:
    store.set(WORLD_KEY, str(len(kinds)))
    for rank, (kind, growth) in kinds.items():
        store.set(rank_key(rank), RankSummary(
            rank=rank, local_rank=rank, world_size=len(kinds), verdict=kind, reason="r",
            requests=300, bytes_per_step=growth, ci95=(growth - 10, growth + 10),
            memory_bytes=4096, suspect=None, process_groups=1, time=now, every_s=3600.0,
            pid=1, host="h").to_json())


@pytest.fixture
def server() -> Any:
    store = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False,
                          timeout=dt.timedelta(seconds=10))
    yield store
    del store


def test_ranks_cli_flags_the_leaking_rank(server: Any, capsys: pytest.CaptureFixture[str]) -> None:
    import time

    publish_job(server, {0: (VerdictKind.NO_LEAK, 0.0), 1: (VerdictKind.LEAK, 1228.8),
                         2: (VerdictKind.NO_LEAK, 0.0)}, time.time())
    assert main(["ranks", "--store", f"127.0.0.1:{server.port}"]) == 1
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "rank 1 leaks +1.2 KiB/step (ranks 0, 2: flat)"
    assert main(["ranks", "--store", f"127.0.0.1:{server.port}", "--json"]) == 1
    document = json.loads(capsys.readouterr().out)
    assert document["leaking_ranks"] == [1]
    assert [r["verdict"] for r in document["ranks"]] == ["no_leak", "leak", "no_leak"]


def test_ranks_cli_no_leak_stale_and_empty(server: Any, capsys: pytest.CaptureFixture[str]) -> None:
    import time

    address = f"127.0.0.1:{server.port}"
    assert main(["ranks", "--store", address]) == 5  # nothing published: no claim either way
    assert "no rank has published" in capsys.readouterr().out
    publish_job(server, dict.fromkeys(range(3), (VerdictKind.NO_LEAK, 0.0)), time.time())
    assert main(["ranks", "--store", address]) == 0
    assert capsys.readouterr().out.startswith("no rank leaks (ranks 0, 1, 2: flat)")
    assert main(["ranks", "--store", address, "--stale-after", "0.001s"]) == 5
    assert "stale" in capsys.readouterr().out.splitlines()[0]


def test_ranks_cli_bad_input(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ranks", "--store", "nohost"]) == 2
    assert "expected --store as HOST:PORT" in capsys.readouterr().err
    assert main(["ranks", "--store", "127.0.0.1:1", "--timeout", "soon"]) == 2
    assert "expected a duration" in capsys.readouterr().err


def test_guard_rank_attributes_and_per_rank_oom_files(monkeypatch: pytest.MonkeyPatch,
                                                      tmp_path: Path) -> None:
    guard = Guard("cpu")
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "SLURM_PROCID", "OMPI_COMM_WORLD_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert (guard.rank, guard.local_rank, guard.world_size) == (None, None, None)
    # Read when asked, not at construction: torchrun's variables, or init_process_group later.
    monkeypatch.setenv("SLURM_PROCID", "3")
    monkeypatch.setenv("SLURM_LOCALID", "1")
    monkeypatch.setenv("SLURM_NTASKS", "4")
    assert (guard.rank, guard.local_rank, guard.world_size) == (3, 1, 4)
    watch = vramguard.on_oom(tmp_path / "oom.json", guard=guard)
    with pytest.raises(MemoryError), watch:
        raise MemoryError
    assert not (tmp_path / "oom.json").exists()
    document = json.loads((tmp_path / "oom.rank3.json").read_text())
    assert (document["rank"], document["local_rank"], document["world_size"]) == (3, 1, 4)
    text_watch = vramguard.on_oom(tmp_path / "oom.txt", guard=guard)
    assert text_watch.write(source="test") == tmp_path / "oom.rank3.txt"
    assert ", rank 3/4, pid " in (tmp_path / "oom.rank3.txt").read_text().splitlines()[0]
    watch.close()
    text_watch.close()


@pytest.mark.usefixtures("rank0")
def test_the_top_suspect_is_looked_up_again_only_every_ten_minutes() -> None:
    # The suspect takes a grouped census; between lookups the last line is republished.
    guard, kept = trained(leak=True)
    times = iter([0.0, 10.0, 700.0])
    sharer = Sharer(guard, dist.HashStore(), every_s=30.0, clock=lambda: next(times))
    layer = torch.nn.Linear(64, 64)

    def leak_more() -> None:
        for _ in range(10):
            with guard.step(), torch.no_grad():
                kept.append(layer(torch.randn(64, 64)))

    lines = []
    for _ in range(3):
        assert sharer.publish()
        assert sharer.last is not None
        lines.append(sharer.last.suspect)
        leak_more()
    assert lines[0] is not None
    assert lines[1] == lines[0]  # 10 s later: republished, not looked up
    assert lines[2] != lines[0]  # 700 s later: looked up again, the group has grown
    assert lines[2] is not None
    assert lines[2].startswith("Tensor(64x64, float32, cpu)")


def test_ranks_cli_unreachable_store_is_exit_3(capsys: pytest.CaptureFixture[str]) -> None:
    port = free_port()  # nothing listens there
    assert main(["ranks", "--store", f"127.0.0.1:{port}", "--timeout", "0.5s", "--json"]) == 3
    captured = capsys.readouterr()
    assert f"could not reach the store at 127.0.0.1:{port}" in captured.err
    document = json.loads(captured.out)
    assert (document["schema"], document["exit_code"]) == ("vramguard.error/1", 3)



def test_ranks_without_a_world_size_are_found_by_their_keys(server: Any,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    import time

    # A launcher that gives a rank but no size (SLURM_PROCID without SLURM_NTASKS): no rank
    # publishes the world size, and the reader lists the keys instead.
    for rank, kind in ((0, VerdictKind.NO_LEAK), (4, VerdictKind.LEAK)):
        server.set(rank_key(rank), RankSummary(
            rank=rank, local_rank=None, world_size=None, verdict=kind, reason="r", requests=300,
            bytes_per_step=1024.0 * rank, ci95=(1000.0 * rank, 1100.0 * rank), memory_bytes=1,
            suspect=None, process_groups=None, time=time.time(), every_s=3600.0, pid=1,
            host="h").to_json())
    assert main(["ranks", "--store", f"127.0.0.1:{server.port}", "--json"]) == 1
    document = json.loads(capsys.readouterr().out)
    assert [r["rank"] for r in document["ranks"]] == [0, 4]
    assert document["leaking_ranks"] == [4]
    assert document["world_size"] is None


class FlakyServer:
    """A store whose first connection breaks (a restarted store server); later ones work."""

    def __init__(self) -> None:
        self.connections: list[Any] = []
        self.data: dict[str, str] = {}

    def clone(self) -> Any:
        server, number = self, len(self.connections)

        class Connection:
            def set_timeout(self, timeout: dt.timedelta) -> None:
                pass

            def set(self, key: str, value: str) -> None:
                if number == 0:
                    raise RuntimeError("Broken pipe")
                server.data[key] = value

        self.connections.append(Connection())
        return self.connections[-1]


@pytest.mark.usefixtures("rank0")
def test_a_broken_connection_is_replaced_at_the_next_publish() -> None:
    server = FlakyServer()
    sharer = Sharer(Guard("cpu"), server, every_s=30.0)
    assert not sharer.publish()
    assert sharer.publish()
    assert len(server.connections) == 2
    assert rank_key(0) in server.data


@pytest.mark.usefixtures("rank0")
def test_a_hung_store_never_blocks_a_step() -> None:
    import threading

    entered, release = threading.Event(), threading.Event()

    class HungStore:
        def set(self, key: str, value: str) -> None:
            entered.set()
            release.wait()  # a store server that stopped answering

    guard = Guard("cpu")
    sharer = vd.share(guard, every="30s", store=HungStore())
    try:
        assert entered.wait(timeout=60)  # the publish is stuck inside the store now
        for _ in range(50):
            with guard.step():
                torch.ones(8).sum()
        assert guard.requests == 50  # the steps went on while the publish hung
        assert sharer.published == 0
    finally:
        release.set()
        sharer.stop(timeout=60)
    assert not sharer.running


def test_an_initialised_group_s_identity_keeps_the_launcher_s_local_rank_alone() -> None:
    # Lightning's DDP launcher sets LOCAL_RANK but not RANK in the processes it starts; the
    # local rank must still show (it showed "-"): h13's finding under a real Lightning DDP run.
    from vramguard.readers.rank import read_identity

    dist.init_process_group("gloo", rank=0, world_size=1, store=dist.HashStore())
    try:
        identity = read_identity({"LOCAL_RANK": "3"})
    finally:
        dist.destroy_process_group()
    assert (identity.rank, identity.local_rank, identity.world_size) == (0, 3, 1)
    assert identity.source == "torch.distributed"
