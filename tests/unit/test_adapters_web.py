"""Pure parts of the web adapters: options, per-route bookkeeping, the health decision, settings."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

import pytest

from vramguard.adapters.health import Health, decide_health, hold
from vramguard.adapters.options import WebOptions
from vramguard.adapters.routes import OTHER, RouteBook, combine
from vramguard.adapters.window import Windows, WindowState
from vramguard.analysis.samples import Sample
from vramguard.analysis.suspects import Suspect
from vramguard.analysis.verdict import Growth, Verdict, VerdictKind, decide
from vramguard.errors import UsageError
from vramguard.pytest_plugin import Settings, resolve
from vramguard.readers.census import TensorGroup
from vramguard.units import Percent


def test_options_parse_sizes_and_durations() -> None:
    options = WebOptions.parse(unhealthy_within="30m", unhealthy_limit="90%",
                               unhealthy_above="2GiB", cleanup_above="512MiB")
    assert options.unhealthy_within == 1800.0
    assert options.unhealthy_limit == Percent(90.0)
    assert options.unhealthy_above == 2 * 1024**3
    assert options.cleanup_above == 512 * 1024**2


@pytest.mark.parametrize("bad", [{"prefix": "vramguard"}, {"prefix": "/x/"}, {"cleanup_every": 0},
                                 {"unhealthy_within": "soon"}, {"unhealthy_limit": "20 gigs"}])
def test_options_refuse_bad_values(bad: dict[str, object]) -> None:
    with pytest.raises(UsageError):
        WebOptions.parse(**bad)  # type: ignore[arg-type]


def test_route_book_attributes_only_measured_requests() -> None:
    book = RouteBook()
    for i in range(60):
        book.count("/leak")
        book.measure("/leak", float(i), 4096)
        book.count("/clean")
        book.measure("/clean", float(i), 0)
        book.count("/clean", overlapped=True)
        book.count("/clean")  # ran alone, not read
    assert book.verdict("/leak").kind is VerdictKind.LEAK
    assert book.verdict("/clean").kind is VerdictKind.NO_LEAK
    clean = book.counts("/clean")
    assert (clean.requests, clean.measured, clean.overlapped, clean.unsampled) == (180, 60, 60, 60)
    assert book.counts("/leak").retained_bytes == 60 * 4096


def test_route_book_is_bounded() -> None:
    book = RouteBook(max_routes=2, max_samples=16)
    for i in range(100):
        book.count(f"/r{i}")
        book.measure(f"/r{i}", 0.0, 1)
    assert book.names() == ["/r0", "/r1", OTHER]
    assert len(book.samples(OTHER)) < 16


def _leak(rate_per_s: float, start: int = 10 * 2**20) -> list[Sample]:
    return [Sample(request=i, time=float(i), allocated=start + int(rate_per_s * i),
                   device_used=start + int(rate_per_s * i)) for i in range(100)]


def test_a_routes_no_leak_needs_the_trends_interval_tight_too_not_only_the_means() -> None:
    # Measured under waitress: a ~1 KiB/request leak whose series trended +1.4 KiB/request
    # (significant) read "no leak" from the flush-cycle rule, while frees landing in measured
    # requests kept the mean's bound under 512 B. The trend's interval top now counts too.
    def exact(trend: tuple[float, float]) -> Verdict:
        growth = Growth((trend[0] + trend[1]) / 2, trend, None, None, None)
        return Verdict(VerdictKind.NO_LEAK, 150, 3, None, growth, 0, 0, None, (),
                       "allocated memory trended ... did not keep rising in the recent half")

    doubtful = combine(exact((700.0, 2100.0)), None, 150, floor=1024.0, upper=300.0)
    assert doubtful.kind is VerdictKind.INCONCLUSIVE
    assert "up to 2.1 KiB/request is possible" in doubtful.reason
    tight = combine(exact((-20.0, 40.0)), None, 150, floor=1024.0, upper=300.0)
    assert tight.kind is VerdictKind.NO_LEAK


def test_health_fails_when_the_leak_reaches_the_limit_in_time() -> None:
    samples = _leak(2**20)  # 1 MiB/s from 10 MiB
    verdict = decide(samples, warmup=0)
    near = decide_health(verdict, samples, 100.0, within=3600, limit=200 * 2**20)
    far = decide_health(verdict, samples, 100.0, within=30, limit=200 * 2**20)
    assert not near.healthy
    assert near.seconds_to_limit == pytest.approx(91, abs=2)
    assert far.healthy


def test_health_fails_when_usage_stays_above_the_threshold() -> None:
    flat = [Sample(request=i, time=float(i), allocated=100, device_used=5000) for i in range(100)]
    verdict = decide(flat, warmup=0)
    assert decide_health(verdict, flat, 99.0, within=3600, above=4000, above_for=60).healthy is False
    assert decide_health(verdict, flat, 99.0, within=3600, above=4000, above_for=120).healthy
    assert decide_health(verdict, flat, 99.0, within=3600, above=6000, above_for=1).healthy


def test_plugin_settings_marker_then_command_line_then_ini_then_default() -> None:
    assert resolve({}, {}, {}) == Settings(100, 10, "auto")
    assert resolve({}, {}, {"iterations": "50", "device": ""}) == Settings(50, 10, "auto")
    assert resolve({}, {"iterations": "70"}, {"iterations": "50"}) == Settings(70, 10, "auto")
    assert resolve({"iterations": 30}, {"iterations": "70"}, {}) == Settings(30, 10, "auto")
    with pytest.raises(UsageError):
        resolve({"iterations": 5, "warmup": 5}, {}, {})


class _FakeTracker:
    """Stands in for the SiteTracker: counts how often it was entered."""

    def __init__(self) -> None:
        self.entered = 0

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        self.entered += 1
        yield


def _windows(explainer: Any, now: list[float]) -> tuple[Windows, _FakeTracker]:
    tracker = _FakeTracker()
    windows = Windows(3, 600.0, lambda: now[0], explainer=explainer,
                      tracker_factory=lambda: tracker)
    return windows, tracker


def _wait_open(windows: Windows) -> None:
    for _ in range(500):  # bounded: the window's thread takes one heap listing first
        if windows.state("/leak") is WindowState.OPEN:
            return
        time.sleep(0.01)
    raise AssertionError("the window did not open")


GROUP = TensorGroup("cpu", "float32", (16, 8), False, None)


def test_diagnosis_window_tracks_its_route_then_explains_once() -> None:
    calls: list[tuple[Any, Any]] = []

    def explainer(grown: Any, tracker: Any, *, born: Any) -> tuple[Suspect, ...]:
        calls.append((list(grown), born))
        return (Suspect(None, retained_bytes=1, held_by="results -> [0]", cause="global_reference"),)

    now = [0.0]
    windows, tracker = _windows(explainer, now)
    assert windows.due("/leak")
    assert windows.start("/leak", [(GROUP, 3, 1536)])
    assert not windows.start("/other", [(GROUP, 1, 512)])  # one window at a time
    _wait_open(windows)
    with windows.track("/other"):  # another route: not tracked, not counted
        windows.ended("/other")
    first = windows.track("/leak")
    with first, windows.track("/leak"):  # the second, concurrent one is not tracked
        windows.ended("/leak")
    for _ in range(2):
        with windows.track("/leak"):
            windows.ended("/leak")
    windows.join(timeout=10)
    result = windows.result("/leak")
    assert result is not None
    assert (result.requests, result.tracked, tracker.entered) == (3, 3, 3)
    assert result.suspects[0].held_by == "results -> [0]"
    assert calls == [([(GROUP, 3, 1536)], None)]  # tracked requests: no fallback needed
    assert not windows.open
    assert not windows.due("/leak")  # re-opened at most every 600 s
    now[0] = 601.0
    assert windows.due("/leak")


def test_diagnosis_window_failure_is_logged_once_and_never_raises(
        caplog: pytest.LogCaptureFixture) -> None:
    borns: list[Any] = []

    def explainer(grown: Any, tracker: Any, *, born: Any) -> tuple[Suspect, ...]:
        borns.append(born)
        raise RuntimeError("boom")

    windows, _ = _windows(explainer, [0.0])
    assert windows.start("/leak", [(GROUP, 3, 1536)])
    _wait_open(windows)
    for _ in range(3):
        windows.ended("/leak")  # e.g. sync endpoints in a threadpool: counted, not tracked
    windows.join(timeout=10)
    assert windows.result("/leak") is None
    assert len(borns) == 1
    assert callable(borns[0])  # nothing was tracked: the storages born in the window instead
    assert not windows.due("/leak")  # diagnosis is off from now on
    assert [r.message for r in caplog.records].count(
        "vramguard: the diagnosis window failed while explaining the window; diagnosis is off, "
        "requests go on") == 1


def test_health_holds_503_until_the_verdict_behind_it_says_no_leak() -> None:
    sick, fine = Health(False, "leak of +8 KiB/request ..."), Health(True, "no leak predicted")
    answer, held = hold(None, sick, cleared=False)
    assert answer == sick
    assert held == sick
    answer, held = hold(held, fine, cleared=False)  # the verdict went inconclusive
    assert not answer.healthy
    assert "held" in answer.reason
    assert held == sick
    answer, held = hold(held, fine, cleared=True)   # it now says no leak
    assert answer == fine
    assert held is None
