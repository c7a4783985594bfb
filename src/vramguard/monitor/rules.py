"""Pure rule evaluation over snapshots: threshold for a duration, trend to full, per-process budget,
GPU lost; with hysteresis (an alert resolves once) and a cooldown against alert storms.

No I/O and no clock: :meth:`RuleEngine.evaluate` takes a :class:`Snapshot` and returns events.
State is bounded: one small record per (rule, device, pid) that is alerting or pending, and one
:class:`TrendBuffer` of at most ``max_points`` per device, however long the monitor runs.
"""

from __future__ import annotations

import enum
import math
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from vramguard.analysis.trend import fit_trend, time_to_reach
from vramguard.monitor.placement import expected_index
from vramguard.monitor.readings import DeviceReading, Snapshot
from vramguard.units import Percent, format_bytes, format_duration


class RuleName(enum.Enum):
    """The rules the monitor evaluates (the ``rule`` field of an event)."""

    THRESHOLD = "threshold"
    TREND = "trend"
    PROCESS_BUDGET = "process_budget"
    GPU_LOST = "gpu_lost"
    CROSS_DEVICE = "cross_device"  # a process holds memory on a GPU its LOCAL_RANK does not imply


class EventKind(enum.Enum):
    """An alert starts, or the same alert resolves (exactly once)."""

    ALERT = "alert"
    RESOLVED = "resolved"


@dataclass(frozen=True, slots=True)
class Event:
    """One alert or resolution. ``value``/``limit`` are bytes, except for ``trend`` (seconds until
    the device is predicted full / the horizon), ``gpu_lost`` (both None) and ``cross_device``
    (``value`` the bytes held on ``device``, ``limit`` the index of the GPU it should be on)."""

    kind: EventKind
    rule: RuleName
    device: int
    pid: int | None
    value: float | None
    limit: float | None
    wall: float

    def to_json(self) -> dict[str, Any]:
        """The JSON-lines shape: event, rule, device, pid, value, limit, time (ISO-8601 UTC)."""
        return {
            "event": self.kind.value, "rule": self.rule.value, "device": self.device,
            "pid": self.pid, "value": _plain(self.value), "limit": _plain(self.limit),
            "time": datetime.fromtimestamp(self.wall, tz=UTC).isoformat(),
        }

    def __str__(self) -> str:
        who = f"GPU {self.device}" + (f" pid {self.pid}" if self.pid is not None else "")
        word = "ALERT" if self.kind is EventKind.ALERT else "resolved"
        if self.rule is RuleName.GPU_LOST:
            detail = "GPU lost" if self.kind is EventKind.ALERT else "GPU back"
        elif self.rule is RuleName.CROSS_DEVICE:
            detail = (f"holds {format_bytes(self.value)} here, but its launch environment puts "
                      f"it on GPU {_plain(self.limit)} (call torch.cuda.set_device(local_rank) "
                      "before any CUDA work)" if self.kind is EventKind.ALERT
                      else "no longer on this GPU")
        elif self.rule is RuleName.TREND:
            detail = (f"predicted full in {format_duration(self.value)} "
                      f"(horizon {format_duration(self.limit)})")
        else:
            detail = f"{format_bytes(self.value)} (limit {format_bytes(self.limit)})"
        return f"{word} {self.rule.value} {who}: {detail}"


def _plain(value: float | None) -> float | int | None:
    if value is None or not math.isfinite(value):
        return None
    return int(value) if float(value).is_integer() else round(value, 3)


@dataclass(frozen=True, slots=True)
class RuleConfig:
    """What to watch. ``None`` turns a rule off; sizes may be a :class:`Percent` of the device.

    ``hysteresis`` is the share of a limit the value must fall below it before an alert
    resolves, so a value hovering at the limit alerts and resolves once, not at every sample.
    """

    threshold: int | Percent | None = None
    for_seconds: float = 0.0
    predict_seconds: float | None = None
    process_budget: int | Percent | None = None
    cooldown_seconds: float = 0.0
    hysteresis: float = 0.05
    trend_window_seconds: float = 600.0
    trend_min_points: int = 10
    trend_max_points: int = 120
    cross_device: bool = False  # needs Snapshot.placements (the monitor reads them when on)

    def __str__(self) -> str:
        parts = []
        if self.threshold is not None:
            parts.append(f"threshold {_limit_text(self.threshold)} for "
                         f"{format_duration(self.for_seconds)}")
        if self.predict_seconds is not None:
            parts.append(f"full within {format_duration(self.predict_seconds)}")
        if self.process_budget is not None:
            parts.append(f"process budget {_limit_text(self.process_budget)}")
        if self.cross_device:
            parts.append("cross-device placement")
        return ", ".join(parts) or "no rules (readings only)"


def _limit_text(limit: int | Percent) -> str:
    return str(limit) if isinstance(limit, Percent) else format_bytes(limit)


def resolve_limit(limit: int | Percent, total: int | None) -> int | None:
    """Bytes for a limit; a percentage of an unknown total is unknown."""
    if isinstance(limit, Percent):
        return None if total is None else limit.of(total)
    return limit


class TrendBuffer:
    """Bounded (time, used) history for the trend fit.

    Keeps at most ``max_points`` spread over ``window`` seconds: a point is only kept if it is at
    least ``window / max_points`` after the previous one, and points older than the window drop.
    So a monitor sampling every second for months holds the same few hundred floats.
    """

    __slots__ = ("_points", "_spacing", "window")

    def __init__(self, window: float, max_points: int) -> None:
        self.window = window
        self._spacing = window / max_points
        self._points: deque[tuple[float, float]] = deque(maxlen=max_points)

    def add(self, time: float, value: float) -> None:
        """Record a point (or skip it when too close to the last kept one)."""
        if self._points and time - self._points[-1][0] < self._spacing:
            return
        self._points.append((time, value))
        while self._points and time - self._points[0][0] > self.window:
            self._points.popleft()

    def __len__(self) -> int:
        return len(self._points)

    @property
    def span(self) -> float:
        """Seconds between the oldest and newest kept points."""
        return self._points[-1][0] - self._points[0][0] if self._points else 0.0

    def seconds_to_full(self, current: float, total: float, min_points: int) -> float | None:
        """Predicted seconds until ``total``: inf when not significantly growing, None with too
        few points."""
        if len(self._points) < max(min_points, 3):
            return None
        times, values = zip(*self._points, strict=True)
        trend = fit_trend(times, values)
        if trend is None:
            return None
        if not trend.significant_growth:
            return math.inf
        return time_to_reach(current, total, trend.slope)


@dataclass(slots=True)
class _State:
    since: float | None = None  # when the condition started holding (pending or active)
    active: bool = False
    last_alert: float | None = None


@dataclass(slots=True)
class RuleEngine:
    """Evaluates a :class:`RuleConfig` against successive snapshots; holds only bounded state."""

    config: RuleConfig
    _states: dict[tuple[RuleName, int, int | None], _State] = field(default_factory=dict)
    _trends: dict[int, TrendBuffer] = field(default_factory=dict)

    def evaluate(self, snapshot: Snapshot) -> list[Event]:
        """The events this snapshot causes (alerts that start, alerts that resolve)."""
        events: list[Event] = []
        for device in snapshot.devices:
            events.extend(self._device(snapshot, device))
        return events

    def active(self) -> list[tuple[RuleName, int, int | None]]:
        """The (rule, device, pid) keys alerting now."""
        return [key for key, state in self._states.items() if state.active]

    def _device(self, snap: Snapshot, dev: DeviceReading) -> list[Event]:
        cfg = self.config
        events = self._check(snap, (RuleName.GPU_LOST, dev.index, None), firing=dev.lost,
                             holding=dev.lost, for_seconds=0.0, value=None, limit=None)
        if dev.lost:
            return events
        used, total = dev.used_bytes, dev.total_bytes
        if cfg.threshold is not None:
            limit = resolve_limit(cfg.threshold, total)
            if used is not None and limit is not None:
                events += self._check(snap, (RuleName.THRESHOLD, dev.index, None),
                                      firing=used > limit,
                                      holding=used >= limit * (1 - cfg.hysteresis),
                                      for_seconds=cfg.for_seconds, value=used, limit=limit)
        if cfg.predict_seconds is not None and used is not None and total:
            buffer = self._trends.get(dev.index)
            if buffer is None:
                buffer = self._trends[dev.index] = TrendBuffer(cfg.trend_window_seconds,
                                                               cfg.trend_max_points)
            buffer.add(snap.time, used)
            eta = buffer.seconds_to_full(used, total, cfg.trend_min_points)
            if eta is not None:
                horizon = cfg.predict_seconds
                events += self._check(snap, (RuleName.TREND, dev.index, None),
                                      firing=eta <= horizon,
                                      holding=eta <= horizon * (1 + cfg.hysteresis),
                                      for_seconds=0.0, value=eta, limit=horizon)
        if cfg.process_budget is not None:
            events += self._processes(snap, dev)
        if cfg.cross_device:
            events += self._cross_device(snap, dev)
        return events

    def _cross_device(self, snap: Snapshot, dev: DeviceReading) -> list[Event]:
        # Any memory counts: a stray CUDA context (~500 MiB) on GPU 0 is the usual symptom.
        devices = [(d.index, d.uuid) for d in snap.devices]
        placements = {p.pid: p for p in snap.placements}
        events: list[Event] = []
        here = set()
        for proc in dev.processes:
            placement = placements.get(proc.pid)
            expected = None if placement is None else expected_index(placement, devices)
            if expected is None:
                continue
            here.add(proc.pid)
            events += self._check(snap, (RuleName.CROSS_DEVICE, dev.index, proc.pid),
                                  firing=expected != dev.index, holding=expected != dev.index,
                                  for_seconds=0.0, value=proc.used_bytes, limit=expected)
        for key in [k for k in self._states
                    if k[0] is RuleName.CROSS_DEVICE and k[1] == dev.index and k[2] not in here]:
            if self._states.pop(key).active:  # it left this GPU: resolved once, state gone
                events.append(Event(EventKind.RESOLVED, key[0], key[1], key[2], None, None,
                                    snap.wall))
        return events

    def _processes(self, snap: Snapshot, dev: DeviceReading) -> list[Event]:
        cfg = self.config
        assert cfg.process_budget is not None  # checked by the caller
        limit = resolve_limit(cfg.process_budget, dev.total_bytes)
        events: list[Event] = []
        seen = set()
        for proc in dev.processes:
            seen.add(proc.pid)
            if limit is None or proc.used_bytes is None:
                continue  # unknown is not "under budget", but it is no evidence of excess either
            events += self._check(snap, (RuleName.PROCESS_BUDGET, dev.index, proc.pid),
                                  firing=proc.used_bytes > limit,
                                  holding=proc.used_bytes >= limit * (1 - cfg.hysteresis),
                                  for_seconds=cfg.for_seconds, value=proc.used_bytes,
                                  limit=limit)
        # A process that left the device resolves its alert; its state goes, keeping memory
        # bounded by the processes alive now.
        for key in [k for k in self._states
                    if k[0] is RuleName.PROCESS_BUDGET and k[1] == dev.index and k[2] not in seen]:
            state = self._states[key]
            if state.active:
                events.append(Event(EventKind.RESOLVED, key[0], key[1], key[2], None, limit,
                                    snap.wall))
            if state.last_alert is None or snap.time - state.last_alert >= cfg.cooldown_seconds:
                del self._states[key]
            else:
                state.active, state.since = False, None
        return events

    def _check(self, snap: Snapshot, key: tuple[RuleName, int, int | None], *, firing: bool,
               holding: bool, for_seconds: float, value: float | None,
               limit: float | None) -> list[Event]:
        """Advance one (rule, device, pid): ``firing`` starts or continues the condition;
        an active alert stays active while ``holding`` (the hysteresis band)."""
        state = self._states.get(key)
        if state is None:
            if not firing:
                return []
            state = self._states[key] = _State()
        if state.active:
            if holding:
                return []
            state.active, state.since = False, None
            return [Event(EventKind.RESOLVED, key[0], key[1], key[2], value, limit, snap.wall)]
        if not firing:
            state.since = None
            if state.last_alert is None:
                del self._states[key]
            return []
        if state.since is None:
            state.since = snap.time
        if snap.time - state.since < for_seconds:
            return []
        cooling = (state.last_alert is not None
                   and snap.time - state.last_alert < self.config.cooldown_seconds)
        if cooling:
            return []
        state.active, state.last_alert = True, snap.time
        return [Event(EventKind.ALERT, key[0], key[1], key[2], value, limit, snap.wall)]
