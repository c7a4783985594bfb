"""Real distributed jobs on 127.0.0.1 (gloo, CPU): torchrun with 3 ranks, and ranks launched by
hand the way srun/mpirun would (so one can be killed without the launcher tearing the job down).

Each job is ``distributed_jobs/job.py``; rank 0 writes its ``vramguard.distributed.table()`` to a
file, and the ranks stay up until the test has read the store from outside with ``vramguard
ranks``. Every wait is for a file or a process, bounded by a generous deadline; none is a sleep
whose length the result depends on.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.net import free_port

JOB = Path(__file__).parent / "distributed_jobs" / "job.py"
DEADLINE = 120.0

pytestmark = pytest.mark.slow



def env() -> dict[str, str]:
    out = dict(os.environ)
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "SLURM_PROCID", "OMPI_COMM_WORLD_RANK"):
        out.pop(name, None)
    out["OMP_NUM_THREADS"] = "1"
    out["TORCH_CPP_LOG_LEVEL"] = "ERROR"
    return out


def wait_for_file(path: Path, procs: list[subprocess.Popen[bytes]]) -> None:
    deadline = time.monotonic() + DEADLINE
    while not path.exists():
        dead = [p.returncode for p in procs if p.poll() not in (None, 0, -9)]
        assert not dead, (f"a job process failed (exit {dead}) before writing {path.name}:\n"
                          + errors(path.parent))
        assert time.monotonic() < deadline, f"{path.name} not written within {DEADLINE:g}s"
        time.sleep(0.05)  # polling for the job's file; the result does not depend on it


def start(argv: list[str], environ: dict[str, str], stderr: Path) -> subprocess.Popen[bytes]:
    """Start a job process with its stderr in a file (a pipe nobody reads can fill up)."""
    with stderr.open("wb") as sink:
        return subprocess.Popen(argv, env=environ, stdout=subprocess.DEVNULL, stderr=sink)


def errors(out: Path) -> str:
    """The tail of every job process's stderr (kept in files: a pipe nobody reads can fill)."""
    return "\n".join(f"--- {f.name}\n{f.read_text()[-2000:]}" for f in sorted(out.glob("*.err")))


def ranks_cli(port: int) -> tuple[int, dict[str, Any]]:
    done = subprocess.run([sys.executable, "-m", "vramguard", "ranks", "--store",
                           f"127.0.0.1:{port}", "--json"], capture_output=True, env=env(),
                          timeout=DEADLINE, check=False)
    assert done.stderr == b"", done.stderr.decode()
    return done.returncode, json.loads(done.stdout)


class Job:
    """A running job: its processes, its output folder, its store's port."""

    def __init__(self, tmp: Path, port: int, procs: list[subprocess.Popen[bytes]]) -> None:
        self.out, self.port, self.procs = tmp, port, procs

    def table(self) -> dict[str, Any]:
        wait_for_file(self.out / "table.json", self.procs)
        document: dict[str, Any] = json.loads((self.out / "table.json").read_text())
        return document

    def release(self) -> list[int | None]:
        (self.out / "release").touch()
        return [p.wait(timeout=DEADLINE) for p in self.procs]


@pytest.fixture
def torchrun(tmp_path: Path) -> Iterator[Any]:
    jobs: list[Job] = []

    def launch(*args: str) -> Job:
        port = free_port()
        proc = start([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=3",
                      "--master-addr=127.0.0.1", f"--master-port={port}", str(JOB), "--out",
                      str(tmp_path), *args], env(), tmp_path / "torchrun.err")
        jobs.append(Job(tmp_path, port, [proc]))
        return jobs[-1]

    yield launch
    for job in jobs:
        (job.out / "release").touch()
        for proc in job.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()


def test_torchrun_rank_1_leaks_and_only_rank_1_is_flagged(torchrun: Any) -> None:
    job = torchrun("--leak-rank", "1")
    table = job.table()
    assert table["table"]["leaking_ranks"] == [1]
    assert re.fullmatch(r"rank 1 leaks \+16\.\d KiB/step \(ranks 0, 2: flat\)",
                        table["text"].splitlines()[0])
    status, document = ranks_cli(job.port)  # from outside the job, while it runs
    assert status == 1
    assert document["leaking_ranks"] == [1]
    assert [r["local_rank"] for r in document["ranks"]] == [0, 1, 2]
    assert job.release() == [0]


def test_torchrun_without_a_leak_flags_no_rank(torchrun: Any) -> None:
    job = torchrun()
    table = job.table()
    assert table["table"]["leaking_ranks"] == []
    assert table["text"].splitlines()[0] == "no rank leaks (ranks 0, 1, 2: flat)"
    status, document = ranks_cli(job.port)
    assert (status, document["leaking_ranks"], document["conclusive"]) == (0, [], True)
    assert job.release() == [0]


@pytest.fixture
def agent_store() -> Iterator[Any]:
    """The store a launcher hosts for its ranks (as torchrun's agent does), here in the test: it
    is listening before any rank starts (no connection retries), and it outlives a killed rank
    without the launcher tearing the whole job down."""
    import datetime as dt

    import torch.distributed as dist

    store = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False,
                          timeout=dt.timedelta(seconds=DEADLINE))
    yield store
    del store


def by_hand(tmp: Path, store: Any, world: int, *args: str) -> Job:
    """Ranks started one by one with torchrun's variables, as srun or mpirun would."""
    procs = []
    for rank in range(world):
        rank_env = {**env(), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(store.port),
                    "TORCHELASTIC_USE_AGENT_STORE": "True", "RANK": str(rank),
                    "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world)}
        procs.append(start([sys.executable, str(JOB), "--out", str(tmp), *args], rank_env,
                           tmp / f"rank{rank}.err"))
    return Job(tmp, store.port, procs)


def test_a_killed_rank_shows_as_stale_and_nothing_hangs(tmp_path: Path, agent_store: Any) -> None:
    # Rank 2 SIGKILLs itself after its first publish; the others go on.
    job = by_hand(tmp_path, agent_store, 3, "--leak-rank", "1", "--die-rank", "2")
    try:
        table = job.table()["table"]
        assert table["stale_ranks"] == [2]
        assert table["leaking_ranks"] == [1]
        status, document = ranks_cli(job.port)
        assert status == 1
        assert document["stale_ranks"] == [2]
        assert re.fullmatch(r"rank 1 leaks \+16\.\d KiB/step \(rank 0: flat; rank 2: stale\)",
                            document["headline"])
        assert job.release() == [0, 0, -9]
    finally:
        for proc in job.procs:
            if proc.poll() is None:
                proc.kill()


def test_a_new_group_every_step_is_process_group_growth(tmp_path: Path,
                                                         agent_store: Any) -> None:
    job = by_hand(tmp_path, agent_store, 1, "--new-group-every-step")
    try:
        table = job.table()["table"]
        row = table["ranks"][0]
        assert row["verdict"] == "process_group_growth"
        assert row["process_groups"] == 41  # the default group and one per step
        assert table["headline"] == "rank 0 leaks process groups"
        assert job.release() == [0]
    finally:
        for proc in job.procs:
            if proc.poll() is None:
                proc.kill()


def test_the_debug_servers_vramguard_page_shows_the_table(tmp_path: Path,
                                                         agent_store: Any) -> None:
    # PyTorch's distributed debug server needs these besides torch.
    for module in ("jinja2", "aiohttp", "tabulate"):
        pytest.importorskip(module)
    debug_port = free_port()
    job = by_hand(tmp_path, agent_store, 1, "--leak-rank", "0", "--debug-port", str(debug_port))
    try:
        assert job.table()["table"]["leaking_ranks"] == [0]
        page = fetch(f"http://127.0.0.1:{debug_port}/vramguard", job.procs)
        assert re.search(r"rank 0 leaks \+16\.\d KiB/step", page)
        assert job.release() == [0]
        # The server's frontend (a process of its own) ended with the job: nothing listens.
        with socket.socket() as probe:
            assert probe.connect_ex(("127.0.0.1", debug_port)) != 0
    finally:
        for proc in job.procs:
            if proc.poll() is None:
                proc.kill()


def fetch(url: str, procs: list[subprocess.Popen[bytes]]) -> str:
    """GET ``url`` once the debug server's process listens (it starts after rank 0 shares)."""
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + DEADLINE
    while True:
        try:
            with urllib.request.urlopen(url, timeout=DEADLINE) as response:
                return str(response.read().decode())
        except (urllib.error.URLError, ConnectionError):
            assert all(p.poll() is None for p in procs), "the job ended before serving"
            assert time.monotonic() < deadline, f"{url} not served within {DEADLINE:g}s"
            time.sleep(0.05)  # polling for the server to listen; the result does not depend on it
