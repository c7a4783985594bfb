"""``vramguard monitor``'s machinery: read NVML (readings), decide (rules), act (actions),
export (exporter), loop (runner). Nothing here imports torch.
"""

from __future__ import annotations

from vramguard.monitor.actions import (
    BackgroundWorker,
    JsonLine,
    LogLine,
    PostWebhook,
    RunCommand,
    SendSignal,
    parse_signal_target,
)
from vramguard.monitor.exporter import SnapshotCollector, parse_listen, serve
from vramguard.monitor.readings import SCHEMA, DeviceReading, Snapshot, read_snapshot
from vramguard.monitor.rules import (
    Event,
    EventKind,
    RuleConfig,
    RuleEngine,
    RuleName,
    TrendBuffer,
    resolve_limit,
)
from vramguard.monitor.runner import Monitor

__all__ = [
    "SCHEMA",
    "BackgroundWorker",
    "DeviceReading",
    "Event",
    "EventKind",
    "JsonLine",
    "LogLine",
    "Monitor",
    "PostWebhook",
    "RuleConfig",
    "RuleEngine",
    "RuleName",
    "RunCommand",
    "SendSignal",
    "Snapshot",
    "SnapshotCollector",
    "TrendBuffer",
    "parse_listen",
    "parse_signal_target",
    "read_snapshot",
    "resolve_limit",
    "serve",
]
