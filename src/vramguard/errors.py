"""The one exception root of vramguard and its few subclasses.

Each subclass carries the CLI exit code it maps to; only ``commands.main.main`` turns an error into
a message and an exit code. Messages say what failed, the value given, what was expected and, where
it helps, a hint.
"""

from __future__ import annotations


class VramguardError(Exception):
    """Root of every error vramguard raises on purpose."""

    exit_code: int = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} (hint: {self.hint})" if self.hint else self.message


class UsageError(VramguardError):
    """A bad argument, option, target or configuration value (exit 2)."""

    exit_code = 2


class EnvironmentProblem(VramguardError):
    """Something the machine lacks: torch, a CUDA device, the NVML library (exit 3)."""

    exit_code = 3


class TargetFailed(VramguardError):
    """The user's code under test raised (exit 4); ``__cause__`` is the original exception."""

    exit_code = 4

    def __init__(self, message: str, *, completed: int, traceback_text: str) -> None:
        super().__init__(message)
        self.completed = completed
        self.traceback_text = traceback_text
