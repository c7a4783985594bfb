"""loadtest's engine, pure parts: only fresh memory readings count; bodies per request; status parsing."""

from __future__ import annotations

import uuid

import pytest

from vramguard.adapters.load import Freshness, LoadPlan, LoadResult, Reading, Value, parse_status
from vramguard.analysis.floor import Floor
from vramguard.commands._evidence import requests_needed
from vramguard.commands.loadtest import _judge
from vramguard.errors import EnvironmentProblem


def reading(completed: int, allocated: int, at: int | None, *, server: int | None = None) -> Reading:
    moment = None if at is None else float(at)
    return Reading(completed, (Value("allocated", allocated, at, moment),), float(completed), server)


def test_a_value_shown_again_is_not_a_new_reading() -> None:
    # The guard censused at server requests 10 and 20; the status repeated each value in between.
    fresh = Freshness(base=0)
    added = [fresh.add(reading(c, 1000 if c < 20 else 2000, 10 if c < 20 else 20))
             for c in range(12, 30, 2)]
    assert added.count(True) == 2
    assert (fresh.fresh, fresh.stale) == (2, 7)
    samples = fresh.samples()
    assert [(s.request, s.allocated) for s in samples] == [(10, 1000), (20, 2000)]
    assert samples[0].time == 10.0  # the server's time of the read, not the client's


def test_values_read_before_the_load_are_dropped() -> None:
    fresh = Freshness()
    fresh.base = 100                 # the server had served 100 requests before the load
    assert not fresh.add(reading(0, 5000, 99))
    assert fresh.add(reading(10, 5100, 108))
    assert [s.request for s in fresh.samples()] == [8]


def test_undated_values_count_only_when_they_change() -> None:
    # An older server gives no read_at_request: a repeat may be stale, so it is not counted.
    fresh = Freshness()
    for completed, value in enumerate([10, 10, 10, 20, 20, 30]):
        fresh.add(reading(completed, value, None))
    assert not fresh.dated
    assert [(s.request, s.allocated) for s in fresh.samples()] == [(0, 10), (3, 20), (5, 30)]


def test_bodies_vary_per_request() -> None:
    plan = LoadPlan(url="http://h/x", template='{"user": "u{i}", "id": "{uuid}"}')
    first, second = plan.body_for(0).decode(), plan.body_for(1).decode()  # type: ignore[union-attr]
    assert first.startswith('{"user": "u0", "id": "')
    assert second.startswith('{"user": "u1"')
    uuid.UUID(first.split('"id": "')[1].rstrip('"}'))
    assert first.split('"id"')[1] != second.split('"id"')[1]
    cycled = LoadPlan(url="http://h/x", bodies=(b"a", b"b", b"c"))
    assert [cycled.body_for(i) for i in range(5)] == [b"a", b"b", b"c", b"a", b"b"]
    assert LoadPlan(url="http://h/x", body=b"same").body_for(7) == b"same"


def test_status_parsing() -> None:
    document = {"requests": 42, "memory": {
        "allocated": 7, "reserved": None, "device_used": 9,
        "read_at_request": {"allocated": 40, "device_used": 41},
        "read_at": {"allocated": 1.5, "device_used": 2.5}}}
    parsed = parse_status(document, "http://h/s", 3, 99.0)
    assert parsed.server_requests == 42
    assert {v.name: (v.value, v.request, v.time) for v in parsed.values} == {
        "allocated": (7, 40, 1.5), "device_used": (9, 41, 2.5)}
    assert parsed.floor == Floor(0, 0)  # an older server that states no floor
    stated = parse_status({"memory": {"allocated": 7, "floor_bytes": 16384,
                                      "floor_bytes_per_request": 128}}, "u", 0, 0.0)
    assert stated.floor == Floor(16384, 128)
    with pytest.raises(EnvironmentProblem, match="without a 'memory' block"):
        parse_status({"openapi": "3.1"}, "http://h/s", 0, 0.0)
    with pytest.raises(EnvironmentProblem, match="without a 'memory' block"):
        parse_status([1, 2], "http://h/s", 0, 0.0)


def test_requests_needed_follows_the_reading_rate() -> None:
    # 18 readings over 18 post-warm-up requests: 20 * 1.25 = 25 readings -> 25 after the warm-up,
    # and an automatic warm-up of a tenth on top.
    assert requests_needed(requests=20, warmup=2, readings=18, auto_warm=True) == 27
    # One reading every 10 requests with a fixed warm-up of 5.
    assert requests_needed(requests=105, warmup=5, readings=10, auto_warm=False) == 255
    assert requests_needed(requests=100, warmup=10, readings=0, auto_warm=True) is None


def flat_run(*, stopped: str | None, interrupted: bool = False) -> LoadResult:
    fresh = Freshness(base=0)
    for request in range(80):
        fresh.add(reading(request + 1, 4096, request))
    return LoadResult(freshness=fresh, completed=80, statuses={"200": 80}, reads=80,
                      stopped=stopped, interrupted=interrupted)


@pytest.mark.parametrize(("stopped", "interrupted", "code"), [
    (None, False, 0),                       # ran to its end, flat: no leak
    ("interrupted", True, 130),             # Ctrl-C: the partial verdict, but not a pass
    ("request 80 failed: gone", False, 3),  # the server went away: not a pass either
])
def test_a_partial_run_is_never_a_pass(stopped: str | None, interrupted: bool, code: int,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    result = _judge(flat_run(stopped=stopped, interrupted=interrupted), target="GET u",
                    device="server", warm=None, as_json=False, quiet=False, status="u")
    out = capsys.readouterr().out
    assert result == code
    assert out.startswith("NO_LEAK GET u" + (" (partial)" if stopped else ""))
    assert "80 fresh memory readings" in out


def test_mostly_failing_or_unread_runs_have_no_verdict() -> None:
    failing = flat_run(stopped=None)
    failing.statuses = {"200": 39, "500": 41}
    with pytest.raises(EnvironmentProblem, match=r"41 of 80 requests failed \(by status: 200: 39, 500: 41\)"):
        _judge(failing, target="t", device="d", warm=None, as_json=False, quiet=True, status="u")
    unread = LoadResult(freshness=Freshness(base=0), completed=50, statuses={"200": 50}, reads=6)
    with pytest.raises(EnvironmentProblem, match="overhead_budget=None"):
        _judge(unread, target="t", device="d", warm=None, as_json=False, quiet=True, status="u")


def test_the_servers_floor_is_applied_to_its_readings(capsys: pytest.CaptureFixture[str]) -> None:
    # 100 B/request over 120 fresh readings (~11 KiB): exact growth that an allocator counter
    # calls a leak, but under the 16 KiB floor a heap-counter server states.
    def run(floor: int) -> int:
        fresh = Freshness(base=0)
        for request in range(120):
            value = Value("allocated", 50_000_000 + 100 * request, request, float(request))
            fresh.add(Reading(request + 1, (value,), float(request), None, Floor(floor)))
        result = LoadResult(freshness=fresh, completed=120, statuses={"200": 120}, reads=120)
        return _judge(result, target="GET u", device="server", warm=None, as_json=False,
                      quiet=True, status="u")
    assert run(0) == 1
    assert run(16384) == 5
    err = capsys.readouterr().err
    # 16 KiB at ~100 B/request is ~165 requests past the warm-up; with the margin and the
    # automatic warm-up, a rerun of ~230 requests would clear the floor.
    assert "16.0 KiB" in err
    assert "(--requests 2" in err, err
