"""No orphans: whatever way the supervisor ends, no process of the command's tree survives it.

The command starts a family: a grandchild that ignores SIGTERM (with a great-grandchild of its
own) and a grandchild that calls ``setsid()`` to leave the process group. Each logs its pid; after
the supervisor is done, psutil must find none of them alive and no live process in the group.
"""

from __future__ import annotations

import io
import os
import select
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Sequence
from pathlib import Path

import psutil
import pytest

from vramguard.supervise import EventLog, Reading, RestartMode, SuperviseConfig, Supervisor

FAMILY = """
import os, signal, subprocess, sys, time
log, role = sys.argv[1], sys.argv[2]
def note():
    with open(log, "a") as f:
        f.write(f"{role} {os.getpid()}\\n")
def spawn(r):
    return subprocess.Popen([sys.executable, __file__, log, r])
def linger():
    for _ in range(600):  # bounded: 60 s at most even if everything else fails
        time.sleep(0.1)
if role == "child":
    spawn("stubborn")
    spawn("escaper")
    note()
    # Wait until the whole family has logged itself (a count, not a time: a loaded machine may
    # take long to start four Pythons; linger() bounds the rest).
    while len(open(log).read().splitlines()) < 4:
        time.sleep(0.05)
    if sys.argv[3] == "exit":
        sys.exit(0)
    linger()
elif role == "stubborn":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    spawn("great")
    note()
    linger()
elif role == "great":
    note()
    linger()
elif role == "escaper":
    os.setsid()  # leaves the process group: killpg alone would miss it
    note()
    linger()
"""

FAMILY_SIZE = 4
# Failure detectors only, never what a result depends on: far above what a loaded machine needs,
# and below the family's own 60 s linger, so a process nobody killed is still caught alive.
START_CAP_S = 120.0
DEATH_CAP_S = 30.0


def family_pids(log: Path) -> dict[str, int]:
    return {role: int(pid) for role, pid in (line.split() for line in log.read_text().splitlines())}


def wait_for_family(log: Path, proc: subprocess.Popen[str] | None = None) -> dict[str, int]:
    deadline = time.monotonic() + START_CAP_S
    while not log.exists() or len(log.read_text().splitlines()) < FAMILY_SIZE:
        assert time.monotonic() < deadline, "the family never started"
        if proc is not None:
            assert proc.poll() is None, proc.communicate()[1]
        time.sleep(0.02)
    return family_pids(log)


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def live_group_members(pgid: int) -> list[int]:
    members = []
    for pid in psutil.pids():
        try:
            if os.getpgid(pid) == pgid and alive(pid):
                members.append(pid)
        except ProcessLookupError:
            continue
    return members


def wait_until_dead(pids: dict[str, int]) -> None:
    """Block until each process has exited, on the kernel's word (a pidfd turns readable when its
    process ends): SIGKILL is delivered asynchronously, and a killed process that is no child of
    ours is reaped by init whenever it gets to it. An event, not a poll against a deadline."""
    for pid in pids.values():
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            continue  # already gone (and reaped)
        try:
            ready, _, _ = select.select([fd], [], [], DEATH_CAP_S)
            assert ready, f"pid {pid} still alive {DEATH_CAP_S:.0f} s after the supervisor ended"
        finally:
            os.close(fd)


def assert_all_gone(pids: dict[str, int], pgid: int) -> None:
    wait_until_dead(pids)
    survivors = {role: pid for role, pid in pids.items() if alive(pid)}
    assert not survivors, f"orphans left behind: {survivors}"
    # Members of the group we did not list (a process the family forked meanwhile) were killed
    # with it; SIGKILL is asynchronous, so wait for each on the kernel's word too.
    wait_until_dead({str(pid): pid for pid in live_group_members(pgid)})
    assert not live_group_members(pgid)


def kill_quietly(pids: dict[str, int]) -> None:
    """Test hygiene only: never leave the family behind if an assertion failed first."""
    for pid in pids.values():
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            continue


@pytest.fixture
def family(tmp_path: Path) -> Path:
    path = tmp_path / "family.py"
    path.write_text(textwrap.dedent(FAMILY))
    return path


def run_cli(family: Path, log: Path, *args: str, mode: str = "stay") -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "vramguard", "supervise", "--interval", "0.05s", "--grace", "0.5s",
         *args, "--", sys.executable, str(family), str(log), "child", mode],
        stderr=subprocess.PIPE, text=True)


def test_forwarded_sigterm_leaves_no_orphans(family: Path, tmp_path: Path) -> None:
    log = tmp_path / "pids.log"
    proc = run_cli(family, log)
    pids = wait_for_family(log, proc)
    try:
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=START_CAP_S)
        assert proc.returncode == 128 + signal.SIGTERM, stderr
        assert_all_gone(pids, pgid=pids["child"])
        # the stubborn grandchild needed SIGKILL; the escaper was found outside the group
        assert "sent SIGKILL" in stderr
        assert "outside it" in stderr
    finally:
        kill_quietly(pids)


def test_leftovers_of_a_command_that_exits_are_stopped(family: Path, tmp_path: Path) -> None:
    log = tmp_path / "pids.log"
    proc = run_cli(family, log, "--restart", "never", mode="exit")
    pids = wait_for_family(log)
    try:
        _, stderr = proc.communicate(timeout=START_CAP_S)
        assert proc.returncode == 0, stderr  # the command's own status
        assert "leftover process" in stderr
        assert_all_gone(pids, pgid=pids["child"])
    finally:
        kill_quietly(pids)


def test_rss_is_summed_over_the_tree_and_the_limit_kill_leaves_no_orphans(
    family: Path, tmp_path: Path
) -> None:
    # One idle Python is ~10 MiB: only the tree's sum can pass 25 MiB.
    log = tmp_path / "pids.log"
    proc = run_cli(family, log, "--max-rss", "25MiB", "--restart", "never")
    try:
        _, stderr = proc.communicate(timeout=START_CAP_S)
        assert proc.returncode == 75, stderr
        breach = next(line for line in stderr.splitlines() if "above the limit" in line)
        processes = int(breach.rsplit(" in ", 1)[1].split()[0])
        assert processes >= 3, breach
        pids = family_pids(log)
        assert_all_gone(pids, pgid=pids["child"])
    finally:
        if log.exists():
            kill_quietly(family_pids(log))


class ExplodingProbe:
    """Fails like a supervisor bug would, once the whole family is running."""

    def read(self, tree: Sequence[psutil.Process]) -> Reading:
        if len(tree) >= FAMILY_SIZE:
            raise RuntimeError("probe failed")
        return Reading(processes=len(tree), rss=None, vram=None)


def test_the_supervisors_own_error_still_kills_the_tree(family: Path, tmp_path: Path) -> None:
    log = tmp_path / "pids.log"
    config = SuperviseConfig(command=(sys.executable, str(family), str(log), "child", "stay"),
                             interval=0.05, grace=0.5, restart=RestartMode.NEVER)
    stream = io.StringIO()
    supervisor = Supervisor(config, probe=ExplodingProbe(), log=EventLog(stream),
                            die_with_parent=False)
    try:
        with pytest.raises(RuntimeError, match="probe failed"):
            supervisor.run()
        pids = family_pids(log)
        assert_all_gone(pids, pgid=pids["child"])  # waits for the kernel to end them
    finally:
        supervisor.close()
        if log.exists():
            kill_quietly(family_pids(log))
