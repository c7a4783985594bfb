"""The few calls that touch processes: the command's process tree, its group, signals, reaping.

Thin wrappers over ``os`` and ``psutil`` so the runner reads as policy. Linux-specific extras
(``prctl``) degrade to no-ops elsewhere.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import signal
import sys
from collections.abc import Callable, Iterable

import psutil

_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36


def _libc_prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
    except OSError:
        return None
    prctl: Callable[..., int] = libc.prctl
    return prctl


# Looked up once in the parent: the pre-exec hook runs in the forked child, where loading a
# library is not safe.
_PRCTL = _libc_prctl()


def become_subreaper() -> bool:
    """Adopt orphaned descendants (Linux ``PR_SET_CHILD_SUBREAPER``); False where unsupported.

    Without it, a grandchild whose parent died is re-parented to init and a descendant that called
    ``setsid()`` leaves the process group: the supervisor would lose both. As a subreaper it keeps
    seeing them as its own descendants, so it can measure them and kill them on the way out.
    """
    return _PRCTL is not None and _PRCTL(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0


def die_with_parent() -> None:
    """Pre-exec hook for the command: SIGKILL it if the supervisor itself dies (Linux only).

    Covers the one exit path the supervisor cannot clean up after: being SIGKILLed itself.
    """
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)


def leader_exited(pid: int) -> bool:
    """True once the command's process has ended, WITHOUT reaping it.

    The zombie keeps its pid, and so the process group id, reserved: signals sent to the group
    while cleaning up can never reach an unrelated group that reused the number.
    """
    try:
        info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return True  # already reaped
    return info is not None


def tree(root_pid: int, *, adopted: bool) -> list[psutil.Process]:
    """The command's process and all its live descendants (plus adopted orphans if ``adopted``)."""
    procs: list[psutil.Process] = []
    try:
        root = psutil.Process(root_pid)
        procs.append(root)
        procs.extend(root.children(recursive=True))
    except psutil.NoSuchProcess:
        pass
    if adopted:
        # As a subreaper, orphans of the tree are re-parented to us: count them too. The command
        # is this process's only child apart from those orphans.
        seen = {p.pid for p in procs}
        with contextlib.suppress(psutil.NoSuchProcess):
            procs.extend(p for p in psutil.Process().children(recursive=True) if p.pid not in seen)
    return procs


def rss(procs: Iterable[psutil.Process]) -> int | None:
    """Resident memory summed over ``procs``; None when none of them could be read.

    RSS counts pages shared between a parent and its forked workers in each process, so the sum
    can exceed the memory really used; it is the figure the kernel's OOM killer looks at per
    process, and the cheap one to read (USS needs a full smaps walk per process).
    """
    total = 0
    read = 0
    for proc in procs:
        try:
            total += proc.memory_info().rss
            read += 1
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return total if read else None


def signal_group(pgid: int, sig: int) -> bool:
    """Send ``sig`` to every process of group ``pgid``; False if the group no longer exists."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    except PermissionError:
        # A member changed its credentials (setuid); the rest of the group still got the signal.
        return True
    return True


def signal_each(procs: Iterable[psutil.Process], sig: int) -> None:
    """Send ``sig`` to each process; psutil refuses a pid that was reused since it was listed."""
    for proc in procs:
        try:
            proc.send_signal(sig)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def group_members(pgid: int) -> list[psutil.Process]:
    """Live (non-zombie) processes of group ``pgid``; a scan of every pid, so only for clean-up."""
    members = []
    for pid in psutil.pids():
        try:
            if os.getpgid(pid) != pgid:
                continue
            proc = psutil.Process(pid)
        except (ProcessLookupError, PermissionError, psutil.NoSuchProcess):
            continue
        if _alive(proc):
            members.append(proc)
    return members


def strays(pgid: int, known: Iterable[psutil.Process], *, adopted: bool) -> list[psutil.Process]:
    """Live descendants outside group ``pgid``: ones that called ``setsid()`` or ``setpgid()``.

    ``known`` is the tree seen at the last sample; with ``adopted`` the supervisor's own
    descendants are added (they include orphans that left the group).
    """
    candidates = {p.pid: p for p in known}
    if adopted:
        try:
            for proc in psutil.Process().children(recursive=True):
                candidates.setdefault(proc.pid, proc)
        except psutil.NoSuchProcess:  # pragma: no cover - we are alive
            pass
    out = []
    for proc in candidates.values():
        try:
            if os.getpgid(proc.pid) == pgid:
                continue
        except ProcessLookupError:
            continue
        if _alive(proc):
            out.append(proc)
    return out


def reap_adopted(exclude: int | None) -> None:
    """Collect exit statuses of adopted orphans so they do not linger as zombies.

    ``exclude`` is the command's own pid while it has not been reaped through ``subprocess``;
    reaping it here would make ``Popen`` see a wrong status.
    """
    try:
        children = psutil.Process().children()
    except psutil.NoSuchProcess:  # pragma: no cover - we are alive
        return
    for child in children:
        if child.pid == exclude:
            continue
        try:
            os.waitpid(child.pid, os.WNOHANG)
        except ChildProcessError:
            continue
