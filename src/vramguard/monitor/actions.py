"""What the monitor does with an event: a log line, a JSON line, a command, a webhook, a signal.

Commands and webhooks may be slow or hang, so they run in a :class:`BackgroundWorker`: sampling
never waits for them. Its queue is bounded; when full, the event is dropped and said so.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import IO, Protocol

from vramguard.errors import UsageError
from vramguard.monitor.rules import Event, EventKind


class Action(Protocol):
    """Something that reacts to an event."""

    def __call__(self, event: Event) -> None:
        """React to ``event``; must return quickly (slow work goes to a BackgroundWorker)."""


@dataclass(slots=True)
class LogLine:
    """The human line every event gets (``vramguard: ALERT threshold GPU 0: ...``)."""

    stream: IO[str]

    def __call__(self, event: Event) -> None:
        """Write one line and flush, so a log collector sees it at once."""
        self.stream.write(f"vramguard: {event}\n")
        self.stream.flush()


@dataclass(slots=True)
class JsonLine:
    """One JSON object per event (``--json``)."""

    stream: IO[str]

    def __call__(self, event: Event) -> None:
        """Write the event's JSON-lines shape and flush."""
        self.stream.write(json.dumps(event.to_json()) + "\n")
        self.stream.flush()


class BackgroundWorker:
    """A daemon thread running jobs from a bounded queue, so callers never block."""

    def __init__(self, name: str, *, capacity: int = 100,
                 on_drop: Callable[[str], None] | None = None) -> None:
        self._queue: queue.Queue[Callable[[], None] | None] = queue.Queue(maxsize=capacity)
        self._on_drop = on_drop
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, job: Callable[[], None], what: str) -> None:
        """Queue ``job``; drop it (and report) when the queue is full."""
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            if self._on_drop:
                self._on_drop(f"dropped {what}: {self._queue.maxsize} jobs already waiting")

    def _run(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            job()

    def close(self, timeout: float) -> None:
        """Let queued jobs finish for up to ``timeout`` seconds, then stop."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                self._queue.put(None, timeout=max(0.0, deadline - time.monotonic()))
                break
            except queue.Full:
                continue
        self._thread.join(max(0.0, deadline - time.monotonic()))


@dataclass(slots=True)
class RunCommand:
    """``--on-alert CMD``: run an argv list (never a shell) with the event JSON on stdin.

    Runs for alerts only, in the background, killed after ``timeout`` seconds.
    """

    argv: Sequence[str]
    worker: BackgroundWorker
    report: Callable[[str], None]
    timeout: float = 30.0

    def __call__(self, event: Event) -> None:
        """Queue the command for an alert; ignore resolutions."""
        if event.kind is EventKind.ALERT:
            payload = json.dumps(event.to_json()).encode()
            self.worker.submit(lambda: self._run(payload), f"on-alert command for {event}")

    def _run(self, payload: bytes) -> None:
        try:
            done = subprocess.run(list(self.argv), input=payload, timeout=self.timeout,
                                  capture_output=True, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            self.report(f"on-alert command {self.argv[0]!r} failed: {exc}")
            return
        if done.returncode != 0:
            self.report(f"on-alert command {self.argv[0]!r} exited {done.returncode}")


@dataclass(slots=True)
class PostWebhook:
    """``--webhook URL``: POST the event JSON, with a timeout and retries, in the background."""

    url: str
    worker: BackgroundWorker
    report: Callable[[str], None]
    timeout: float = 5.0
    retries: int = 3
    backoff: float = 0.5

    def __call__(self, event: Event) -> None:
        """Queue the POST for alerts and resolutions alike."""
        payload = json.dumps(event.to_json()).encode()
        self.worker.submit(lambda: self._post(payload), f"webhook for {event}")

    def _post(self, payload: bytes) -> None:
        last = ""
        for attempt in range(self.retries + 1):
            request = urllib.request.Request(
                self.url, data=payload, method="POST",
                headers={"Content-Type": "application/json", "User-Agent": "vramguard-monitor"})
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    if response.status < 300:
                        return
                    last = f"HTTP {response.status}"
            except (urllib.error.URLError, OSError) as exc:  # HTTPError is a URLError
                last = str(exc)
            if attempt < self.retries:
                time.sleep(self.backoff * 2**attempt)
        self.report(f"webhook {self.url} failed after {self.retries + 1} attempts: {last}")


@dataclass(slots=True)
class SendSignal:
    """``--signal PID:SIG``: signal a process on each alert (e.g. SIGUSR1 to dump a report)."""

    pid: int
    signum: int
    report: Callable[[str], None]

    def __call__(self, event: Event) -> None:
        """Send the signal for alerts; a gone process is reported, not fatal."""
        if event.kind is not EventKind.ALERT:
            return
        try:
            os.kill(self.pid, self.signum)
        except OSError as exc:
            self.report(f"signal {self.signum} to pid {self.pid} failed: {exc}")


def parse_signal_target(text: str) -> tuple[int, int]:
    """``1234:USR1``, ``1234:SIGTERM`` or ``1234:15`` -> (pid, signal number)."""
    pid_text, sep, sig_text = text.partition(":")
    if not sep or not pid_text.strip().isdigit() or int(pid_text) <= 0:
        raise UsageError(f"expected PID:SIGNAL like 1234:USR1, got {text!r}")
    sig_text = sig_text.strip().upper()
    if sig_text.isdigit():
        number = int(sig_text)
        valid = {s.value for s in signal.Signals}
        if number not in valid:
            raise UsageError(f"unknown signal number in {text!r}")
        return int(pid_text), number
    name = sig_text if sig_text.startswith("SIG") else f"SIG{sig_text}"
    try:
        return int(pid_text), int(signal.Signals[name])
    except KeyError:
        raise UsageError(f"unknown signal {sig_text!r} in {text!r}",
                         hint="use a name like USR1, TERM or a number") from None
