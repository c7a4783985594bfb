"""The monitor's rules on plain snapshots: no NVML, no clock, no threads."""

from __future__ import annotations

import json

import pytest

from vramguard.monitor import (
    DeviceReading,
    EventKind,
    RuleConfig,
    RuleEngine,
    RuleName,
    Snapshot,
    TrendBuffer,
)
from vramguard.nvml import ProcessMemory
from vramguard.units import Percent

GiB = 1024**3
TOTAL = 80 * GiB


def snap(t: float, used: int | None, *, procs: tuple[ProcessMemory, ...] = (), lost: bool = False,
         total: int | None = TOTAL, index: int = 0) -> Snapshot:
    device = DeviceReading(index, f"GPU-{index}", "sim", None if lost else used,
                           None if lost else total, lost, procs)
    return Snapshot(time=t, wall=1_700_000_000 + t, devices=(device,))


def run(engine: RuleEngine, series: list[tuple[float, int]]) -> list[tuple[float, str]]:
    out = []
    for t, used in series:
        out += [(t, e.kind.value) for e in engine.evaluate(snap(t, used))]
    return out


def test_threshold_fires_only_after_holding_for_the_whole_duration() -> None:
    engine = RuleEngine(RuleConfig(threshold=Percent(90), for_seconds=300))
    high, low = 75 * GiB, 10 * GiB
    # Above for 240s, one dip, then above again: the clock restarts at the dip.
    series = [(float(t), high) for t in range(0, 241, 60)] + [(300.0, low)]
    series += [(float(t), high) for t in range(360, 721, 60)]
    events = run(engine, series)
    assert events == [(660.0, "alert")]


def test_threshold_without_for_fires_on_the_first_sample_above() -> None:
    engine = RuleEngine(RuleConfig(threshold=70 * GiB))
    assert run(engine, [(0.0, 60 * GiB), (1.0, 71 * GiB)]) == [(1.0, "alert")]


def test_hysteresis_alerts_and_resolves_once_when_hovering_at_the_limit() -> None:
    limit = 72 * GiB
    engine = RuleEngine(RuleConfig(threshold=limit, hysteresis=0.05))
    wobble = [limit + GiB // 10, limit - GiB // 10] * 20  # within 5% of the limit
    series = [(float(i), v) for i, v in enumerate(wobble)] + [(100.0, int(limit * 0.9))]
    assert run(engine, series) == [(0.0, "alert"), (100.0, "resolved")]


def test_cooldown_suppresses_a_second_alert_until_it_has_passed() -> None:
    engine = RuleEngine(RuleConfig(threshold=70 * GiB, cooldown_seconds=60, hysteresis=0))
    hi, lo = 75 * GiB, 10 * GiB
    series = [(0.0, hi), (10.0, lo), (20.0, hi), (30.0, lo), (40.0, hi), (70.0, hi)]
    assert run(engine, series) == [(0.0, "alert"), (10.0, "resolved"), (70.0, "alert")]


def test_alert_event_json_has_the_documented_shape() -> None:
    engine = RuleEngine(RuleConfig(threshold=Percent(50)))
    [event] = engine.evaluate(snap(0.0, 50 * GiB))
    doc = event.to_json()
    assert list(doc) == ["event", "rule", "device", "pid", "value", "limit", "time"]
    assert doc["event"] == "alert"
    assert doc["rule"] == "threshold"
    assert doc["device"] == 0
    assert doc["pid"] is None
    assert doc["value"] == 50 * GiB
    assert doc["limit"] == 40 * GiB
    assert doc["time"] == "2023-11-14T22:13:20+00:00"
    json.dumps(doc)
    assert str(event) == "ALERT threshold GPU 0: 50.0 GiB (limit 40.0 GiB)"


def test_unknown_usage_never_alerts() -> None:
    engine = RuleEngine(RuleConfig(threshold=Percent(10), predict_seconds=3600))
    assert engine.evaluate(snap(0.0, None)) == []
    assert engine.evaluate(snap(1.0, 50 * GiB, total=None)) == []  # % of unknown total


def growing(engine: RuleEngine, rate: float, n: int = 30, start: int = 10 * GiB) -> list:
    events = []
    for i in range(n):
        events += engine.evaluate(snap(i * 10.0, int(start + rate * i * 10)))
    return events


def test_trend_predicting_a_full_device_within_the_horizon_alerts() -> None:
    engine = RuleEngine(RuleConfig(predict_seconds=3600))
    events = growing(engine, rate=20 * 1024**2)  # 20 MiB/s: 70 GiB left is ~1h
    [event] = events
    assert event.rule is RuleName.TREND
    assert event.kind is EventKind.ALERT
    assert event.value is not None
    assert event.value <= 3600
    assert event.limit == 3600
    assert "predicted full in" in str(event)


def test_trend_that_fills_after_the_horizon_or_is_flat_stays_quiet() -> None:
    assert growing(RuleEngine(RuleConfig(predict_seconds=3600)), rate=1024**2) == []
    assert growing(RuleEngine(RuleConfig(predict_seconds=3600)), rate=0) == []


def test_trend_needs_enough_points_before_predicting() -> None:
    engine = RuleEngine(RuleConfig(predict_seconds=3600, trend_min_points=10))
    assert growing(engine, rate=1024**3, n=9) == []


def test_trend_buffer_is_bounded_and_spans_its_window() -> None:
    buffer = TrendBuffer(window=600, max_points=120)
    for i in range(200_000):
        buffer.add(i * 0.1, float(i))
    assert len(buffer) <= 120
    assert buffer.seconds_to_full(0.0, 1.0, min_points=500) is None
    assert 590 <= buffer.span <= 600
    assert TrendBuffer(10, 10).seconds_to_full(0, 1, 0) is None  # empty: no fit, no crash


def test_process_budget_alerts_per_pid_and_resolves_when_the_process_leaves() -> None:
    engine = RuleEngine(RuleConfig(process_budget=Percent(25), for_seconds=5))
    big, small = ProcessMemory(11, 30 * GiB), ProcessMemory(22, 1 * GiB)
    unknown = ProcessMemory(33, None)
    events = []
    for t in (0.0, 3.0, 6.0):
        events += engine.evaluate(snap(t, 40 * GiB, procs=(big, small, unknown)))
    events += engine.evaluate(snap(9.0, 10 * GiB, procs=(small,)))
    assert [(e.kind.value, e.rule.value, e.pid) for e in events] == [
        ("alert", "process_budget", 11), ("resolved", "process_budget", 11)]
    assert events[0].limit == 20 * GiB
    assert engine.active() == []


def test_gpu_lost_alerts_once_not_at_every_sample() -> None:
    engine = RuleEngine(RuleConfig(threshold=Percent(90)))
    events = []
    for t in range(100):
        events += engine.evaluate(snap(float(t), None, lost=True))
    assert [(e.kind, e.rule) for e in events] == [(EventKind.ALERT, RuleName.GPU_LOST)]
    assert str(events[0]) == "ALERT gpu_lost GPU 0: GPU lost"
    assert events[0].to_json()["value"] is None


@pytest.mark.parametrize("bad", [Percent(50), 10])
def test_rule_config_describes_itself(bad: object) -> None:
    config = RuleConfig(threshold=bad, for_seconds=300, predict_seconds=3600)  # type: ignore[arg-type]
    assert "threshold" in str(config)
    assert "for 5m" in str(config)
    assert str(RuleConfig()) == "no rules (readings only)"
