"""The supervisor behind ``vramguard supervise``: restart a command before it runs out of memory.

- :mod:`.policy`: pure decisions (a limit held for ``--for``, backoff, restart budget, modes);
- :mod:`.procs`: the few process calls (tree, group, signals, reaping);
- :mod:`.probe`: memory of the process tree (RSS via psutil, VRAM via an injected reader);
- :mod:`.events`: what gets logged, for humans or as JSON lines;
- :mod:`.runner`: the loop that ties them together.

Nothing here imports torch; NVML is reached only through the probe the caller injects.
"""

from __future__ import annotations

from vramguard.supervise.events import Event, EventKind, EventLog, Reading
from vramguard.supervise.policy import (
    EXIT_GAVE_UP,
    Action,
    Backoff,
    Breach,
    ChildExit,
    Decision,
    LimitWatch,
    Resource,
    RestartBudget,
    RestartMode,
    StopCause,
    decide,
)
from vramguard.supervise.probe import Probe, TreeProbe
from vramguard.supervise.runner import SuperviseConfig, Supervisor

__all__ = [
    "EXIT_GAVE_UP",
    "Action",
    "Backoff",
    "Breach",
    "ChildExit",
    "Decision",
    "Event",
    "EventKind",
    "EventLog",
    "LimitWatch",
    "Probe",
    "Reading",
    "Resource",
    "RestartBudget",
    "RestartMode",
    "StopCause",
    "SuperviseConfig",
    "Supervisor",
    "TreeProbe",
    "decide",
]
