"""Process and host memory through psutil."""

from __future__ import annotations

import os

import psutil


class ProcessReader:
    """Resident set size of one process (default: this one) and the host's total memory."""

    def __init__(self, pid: int | None = None) -> None:
        self._process = psutil.Process(pid or os.getpid())
        self.host_total = int(psutil.virtual_memory().total)

    def rss(self) -> int:
        """Current RSS in bytes (a few microseconds: a read of /proc/PID/statm)."""
        return int(self._process.memory_info().rss)

    def tree_rss(self) -> int:
        """RSS of the process and all its descendants (DataLoader workers, for example)."""
        total = self.rss()
        for child in self._process.children(recursive=True):
            try:
                total += int(child.memory_info().rss)
            except psutil.Error:
                continue  # the child exited between listing and reading: it holds nothing now
        return total
