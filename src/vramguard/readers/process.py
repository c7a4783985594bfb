"""Process and host memory: psutil, with a fast path for this process's own RSS on Linux."""

from __future__ import annotations

import contextlib
import os

import psutil


class ProcessReader:
    """Resident set size of one process (default: this one) and the host's total memory."""

    def __init__(self, pid: int | None = None) -> None:
        self._pid = pid or os.getpid()
        self._own = pid is None
        self._process = psutil.Process(self._pid)
        self.host_total = int(psutil.virtual_memory().total)
        self._page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
        self._statm: int | None = None
        self._statm_pid = 0

    def rss(self) -> int:
        """Current RSS in bytes. Per-request path: ~3 us on Linux, ~20 us through psutil."""
        if self._own:
            fast = self._own_rss()
            if fast is not None:
                return fast
        return int(self._process.memory_info().rss)

    def _own_rss(self) -> int | None:
        # psutil opens, reads and parses /proc/PID/statm on every call; a kept-open descriptor
        # read with pread costs an eighth. Reopened after a fork (the descriptor names the pid
        # that opened it), and abandoned for psutil where /proc is missing.
        pid = os.getpid()
        try:
            if self._statm is None or self._statm_pid != pid:
                self._statm = os.open(f"/proc/{pid}/statm", os.O_RDONLY | os.O_CLOEXEC)
                self._statm_pid = pid
            return int(os.pread(self._statm, 128, 0).split()[1]) * self._page
        except (OSError, ValueError, IndexError):
            self._own = False
            return None

    def children_rss(self) -> dict[int, int]:
        """RSS of each descendant process (DataLoader workers, for example), by pid."""
        sizes = {}
        for child in self._process.children(recursive=True):
            try:
                sizes[child.pid] = int(child.memory_info().rss)
            except psutil.Error:
                continue  # the child exited between listing and reading: it holds nothing now
        return sizes

    def tree_rss(self) -> int:
        """RSS of the process and all its descendants."""
        return self.rss() + sum(self.children_rss().values())

    def __del__(self) -> None:
        if self._statm is not None and self._statm_pid == os.getpid():
            with contextlib.suppress(OSError):
                os.close(self._statm)
