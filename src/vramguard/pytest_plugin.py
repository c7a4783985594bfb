"""pytest plugin: ``@pytest.mark.no_vram_leak`` fails a test whose body leaks, and ``vram_guard``.

    @pytest.mark.no_vram_leak(iterations=100, warmup=10, device="auto")
    def test_predict():
        predict(batch)            # run 100 times under a dense Guard; fails on a leak verdict

Each setting is resolved once: the marker's argument, else ``--vramguard-iterations`` (etc.) on
the command line, else the ``vramguard_iterations`` ini value, else the default. Tests without the
marker are untouched (one marker lookup). Registered through the ``pytest11`` entry point.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass
from typing import Any

import pytest

from vramguard.errors import TargetFailed, UsageError

MARKER = "no_vram_leak"
_DEFAULTS = {"iterations": 100, "warmup": 10, "device": "auto"}


@dataclass(frozen=True, slots=True)
class Settings:
    """One marked test's settings after resolution."""

    iterations: int
    warmup: int
    device: str

    def __str__(self) -> str:
        return f"{self.iterations} iterations (warm-up {self.warmup}) on {self.device}"


def resolve(marker: Mapping[str, Any], command_line: Mapping[str, Any],
            ini: Mapping[str, Any]) -> Settings:
    """Marker, then command line, then ini, then default: the first that is set wins. Pure."""
    values: dict[str, Any] = {}
    for name, default in _DEFAULTS.items():
        chosen = next((source[name] for source in (marker, command_line, ini)
                       if source.get(name) not in (None, "")), default)
        values[name] = chosen
    try:
        iterations, warmup = int(values["iterations"]), int(values["warmup"])
    except (TypeError, ValueError):
        raise UsageError(f"no_vram_leak: expected whole numbers for iterations and warmup, got "
                         f"{values['iterations']!r} and {values['warmup']!r}") from None
    if iterations < 1 or not 0 <= warmup < iterations:
        raise UsageError(f"no_vram_leak: expected iterations >= 1 and 0 <= warmup < iterations, "
                         f"got iterations={iterations}, warmup={warmup}")
    return Settings(iterations, warmup, str(values["device"]))


def check_leak(nodeid: str, body: Callable[[], Any], settings: Settings) -> Any:
    """Run ``body`` ``settings.iterations`` times under a dense Guard; the CheckResult, or the
    body's own exception (re-raised as is, so pytest reports it as usual)."""
    from vramguard.runner import run_check

    try:
        return run_check(nodeid, lambda _index: body(), requests=settings.iterations,
                         warmup=settings.warmup, device=settings.device)
    except TargetFailed as failed:
        cause = failed.__cause__
        if cause is not None:
            raise cause.with_traceback(cause.__traceback__) from None
        raise


def render(result: Any) -> str:
    """The failure report: the check's text report, suspects with site, path and fix."""
    from vramguard.reporters.text import render_check

    stream = io.StringIO()
    render_check(result, stream, color=False)
    return f"GPU memory leak in the test body:\n{stream.getvalue()}"


class VramguardPlugin:
    """The plugin's state (one per session, made in ``pytest_configure``)."""

    def __init__(self, config: pytest.Config) -> None:
        self._command_line = {name: config.getoption(f"vramguard_{name}") for name in _DEFAULTS}
        self._ini = {name: config.getini(f"vramguard_{name}") for name in _DEFAULTS}
        self.results: dict[str, Any] = {}

    def settings(self, marker: pytest.Mark | None) -> Settings:
        """Resolve one test's settings (marker kwargs, or iterations as the first argument)."""
        kwargs = dict(marker.kwargs) if marker is not None else {}
        if marker is not None and marker.args:
            kwargs.setdefault("iterations", marker.args[0])
        return resolve(kwargs, self._command_line, self._ini)

    @pytest.hookimpl(wrapper=True)
    def pytest_pyfunc_call(self, pyfuncitem: pytest.Function) -> Generator[None, Any, Any]:
        marker = pyfuncitem.get_closest_marker(MARKER)
        if marker is None:
            return (yield)
        settings = self.settings(marker)
        original = pyfuncitem.obj
        names = pyfuncitem._fixtureinfo.argnames
        arguments = {name: pyfuncitem.funcargs[name] for name in names}

        def repeated(*_args: Any, **_kwargs: Any) -> None:
            self.results[pyfuncitem.nodeid] = check_leak(
                pyfuncitem.nodeid, lambda: original(**arguments), settings)

        pyfuncitem.obj = repeated
        try:
            return (yield)
        finally:
            pyfuncitem.obj = original

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item,
                                  call: pytest.CallInfo[None]) -> Generator[None, Any, Any]:
        report: pytest.TestReport = yield
        result = self.results.pop(item.nodeid, None) if call.when == "call" else None
        if result is not None and report.passed and result.verdict.is_leak:
            report.outcome = "failed"
            report.longrepr = render(result)
        return report


def pytest_addoption(parser: pytest.Parser) -> None:
    """``--vramguard-iterations/-warmup/-device`` and the matching ini values."""
    group = parser.getgroup("vramguard", "GPU memory leak checks (no_vram_leak marker)")
    for name, default in _DEFAULTS.items():
        group.addoption(f"--vramguard-{name}", dest=f"vramguard_{name}", default=None,
                        help=f"no_vram_leak {name} unless the marker sets it (default {default})")
        parser.addini(f"vramguard_{name}", f"no_vram_leak {name} (default {default})",
                      default="")


def pytest_configure(config: pytest.Config) -> None:
    """Register the marker (for --strict-markers) and the plugin's state object."""
    config.addinivalue_line(
        "markers", f"{MARKER}(iterations=100, warmup=10, device='auto'): run the test body "
        "repeatedly under a vramguard Guard and fail when GPU memory leaks")
    config.pluginmanager.register(VramguardPlugin(config), "vramguard-state")


@pytest.fixture
def vram_guard(request: pytest.FixtureRequest) -> Any:
    """A dense :class:`~vramguard.guard.Guard` (reads after every step) for tests that drive steps
    themselves: ``with vram_guard.step(): ...`` then assert on ``vram_guard.verdict()``."""
    from vramguard.guard import Guard

    plugin = request.config.pluginmanager.get_plugin("vramguard-state")
    assert isinstance(plugin, VramguardPlugin)  # registered in pytest_configure
    settings = plugin.settings(request.node.get_closest_marker(MARKER))
    return Guard(settings.device, overhead_budget=None, warmup=settings.warmup)
