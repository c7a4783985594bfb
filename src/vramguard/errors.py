"""The one exception root of vramguard and its few subclasses.

Each subclass carries the CLI exit code it maps to; only ``commands.main.main`` turns an error into
a message and an exit code. Messages say what failed, the value given, what was expected and, where
it helps, a hint.
"""

from __future__ import annotations

# The exit codes every command shares (the README's one table); supervise adds its own (75, and
# the command's status, 126, 127). Only ``commands.main.main`` and the commands return them.
EXIT_OK = 0
EXIT_LEAK = 1
EXIT_USAGE = 2
EXIT_ENVIRONMENT = 3
EXIT_TARGET = 4
EXIT_INCONCLUSIVE = 5
EXIT_INTERRUPTED = 130


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


class CommandNotStarted(VramguardError):
    """``supervise`` could not start its command: 127 not found, 126 not executable (as in sh)."""

    exit_code = 127

    def __init__(self, message: str, *, exit_code: int = 127, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.exit_code = exit_code


class TargetFailed(VramguardError):
    """The user's code under test raised (exit 4); ``__cause__`` is the original exception."""

    exit_code = 4

    def __init__(self, message: str, *, completed: int, traceback_text: str) -> None:
        super().__init__(message)
        self.completed = completed
        self.traceback_text = traceback_text


class NvmlMissing(EnvironmentProblem):
    """The NVML library or the NVIDIA driver behind it is missing (exit 3)."""


class NvmlError(VramguardError):
    """The NVIDIA driver refused an NVML call; ``code`` is NVML's return code when known."""

    def __init__(self, message: str, *, code: int | None = None, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.code = code


class NvmlNotSupported(NvmlError):
    """The device or driver does not support this query (a value vramguard reports as unknown)."""


class NvmlNoPermission(NvmlError):
    """The driver denied the query to this user (per-process memory often needs root)."""


class GpuLost(NvmlError):
    """The device fell off the bus (NVML_ERROR_GPU_IS_LOST); it stays marked lost."""

    def __init__(self, message: str, *, index: int, code: int | None = None) -> None:
        super().__init__(message, code=code, hint="check `dmesg` for Xid errors; the GPU "
                         "usually needs a reset or a reboot")
        self.index = index


class LeakDetected(VramguardError):
    """A training callback found a leak and was asked to raise (``on_leak="raise"``); ``report``
    is the :class:`vramguard.Report` (issue 10, h10)."""

    exit_code = 1

    def __init__(self, message: str, *, report: object = None) -> None:
        super().__init__(message)
        self.report = report
