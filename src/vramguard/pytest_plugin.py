"""pytest plugin: ``@pytest.mark.no_vram_leak`` fails a test whose body leaks, and ``vram_guard``.

    @pytest.mark.no_vram_leak(iterations=100, warmup=10, device="auto", inconclusive="fail")
    def test_predict():
        predict(batch)            # run 100 times under a dense Guard; fails on a leak verdict

Each setting is resolved once: the marker's argument, else ``--vramguard-iterations`` (etc.) on
the command line, else the ``vramguard_iterations`` ini value, else the default. Tests without the
marker are untouched (one marker lookup). Registered through the ``pytest11`` entry point.

``async def`` tests work under pytest-asyncio (its runner awaits each iteration), anyio (the
iterations run in anyio's event loop, trio included) and with neither (vramguard awaits them on
a loop of its own). A leak fails the test by raising, so ``@pytest.mark.xfail`` marks a known leak.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass
from typing import Any

import pytest

from vramguard.errors import EnvironmentProblem, TargetFailed, UsageError

MARKER = "no_vram_leak"
_DEFAULTS: dict[str, Any] = {"iterations": 100, "warmup": 10, "device": "auto",
                             "inconclusive": "fail"}
_INCONCLUSIVE = ("fail", "pass")


@dataclass(frozen=True, slots=True)
class Settings:
    """One marked test's settings after resolution."""

    iterations: int
    warmup: int
    device: str
    inconclusive: str = "fail"  # "pass": too little evidence does not fail the test

    def __str__(self) -> str:
        return f"{self.iterations} iterations (warm-up {self.warmup}) on {self.device}"


def _whole(name: str, value: Any, source: str) -> int:
    if isinstance(value, bool):
        value = "True" if value else "False"  # bool is an int: True iterations is not meant
    try:
        return int(value)
    except (TypeError, ValueError):
        raise UsageError(f"{source}: expected {name} to be a whole number, got {value!r}") from None


def resolve(marker: Mapping[str, Any], command_line: Mapping[str, Any],
            ini: Mapping[str, Any]) -> Settings:
    """Marker, then command line, then ini, then default: the first that is set wins. Pure.

    Raises :class:`UsageError` with a one-line message naming the value and where it came from.
    """
    unknown = sorted(set(marker) - set(_DEFAULTS))
    if unknown:
        raise UsageError(f"no_vram_leak: unknown setting {unknown[0]!r} (expected one of "
                         f"{', '.join(_DEFAULTS)})")
    values: dict[str, Any] = {}
    where: dict[str, str] = {}
    for name, default in _DEFAULTS.items():
        values[name], where[name] = next(
            ((source[name], label) for source, label in (
                (marker, f"no_vram_leak({name}=...)"), (command_line, f"--vramguard-{name}"),
                (ini, f"ini vramguard_{name}"))
             if source.get(name) not in (None, "")), (default, "default"))
    iterations = _whole("iterations", values["iterations"], where["iterations"])
    warmup = _whole("warmup", values["warmup"], where["warmup"])
    if iterations < 1:
        raise UsageError(f"{where['iterations']}: expected iterations >= 1, got {iterations}")
    if not 0 <= warmup < iterations:
        raise UsageError(f"{where['warmup']}: expected 0 <= warmup < iterations ({iterations}), "
                         f"got warmup={warmup}")
    inconclusive = str(values["inconclusive"])
    if inconclusive not in _INCONCLUSIVE:
        raise UsageError(f"{where['inconclusive']}: expected inconclusive='fail' or 'pass', "
                         f"got {values['inconclusive']!r}")
    device = str(values["device"])
    from vramguard.readers.device import parse_device

    try:
        parse_device(device)
    except UsageError as error:
        raise UsageError(f"{where['device']}: {error}") from None
    return Settings(iterations, warmup, device, inconclusive)


def check_leak(nodeid: str, body: Callable[[], Any], settings: Settings) -> Any:
    """Run ``body`` ``settings.iterations`` times under a dense Guard; the Report, or the body's
    own exception (re-raised as is, so pytest reports it as usual). A body that returns a
    coroutine is awaited (one event loop for the run)."""
    from vramguard.runner import run_check

    try:
        return run_check(nodeid, lambda _index: body(), requests=settings.iterations,
                         warmup=settings.warmup, device=settings.device)
    except TargetFailed as failed:
        raise _own_error(failed) from None


async def check_leak_async(nodeid: str, body: Callable[[], Any], settings: Settings) -> Any:
    """:func:`check_leak` inside the test's running event loop (anyio's runner)."""
    from vramguard.runner import run_check_async

    try:
        return await run_check_async(nodeid, lambda _index: body(), requests=settings.iterations,
                                     warmup=settings.warmup, device=settings.device)
    except TargetFailed as failed:
        raise _own_error(failed) from None


def _own_error(failed: TargetFailed) -> BaseException:
    cause = failed.__cause__
    return failed if cause is None else cause.with_traceback(cause.__traceback__)


def render(result: Any) -> str:
    """The failure report: "memory leak on cpu" (or "GPU memory leak on cuda:0") and the check's
    text report, suspects with site, path and fix."""
    return f"{result.headline[:1].upper()}{result.headline[1:]} in the test body:\n{result}"


def judge(result: Any, settings: Settings) -> str | None:
    """Pure: the failure message for a Report, or None when the test passes."""
    from vramguard.analysis.verdict import VerdictKind

    if result.verdict.is_leak:
        return render(result)
    if result.verdict.kind is VerdictKind.INCONCLUSIVE and settings.inconclusive == "fail":
        return (f"no_vram_leak: inconclusive after {settings}: {result.verdict.reason} "
                "(raise iterations, or pass inconclusive='pass' to accept this)")
    return None


def _device_problem(device: str) -> str | None:
    """Why ``device`` cannot run here (the test is skipped with it), or None."""
    from vramguard.readers.device import resolve_device

    try:
        resolve_device(device)
    except EnvironmentProblem as problem:
        return str(problem)
    return None


class VramguardPlugin:
    """The plugin's state (one per session, made in ``pytest_configure``)."""

    def __init__(self, config: pytest.Config) -> None:
        self._command_line = {name: config.getoption(f"vramguard_{name}") for name in _DEFAULTS}
        self._ini = {name: config.getini(f"vramguard_{name}") for name in _DEFAULTS}
        try:  # a bad --vramguard-* or ini value is the session's usage error, said once
            resolve({}, self._command_line, self._ini)
        except UsageError as error:
            raise pytest.UsageError(str(error)) from None

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
        try:
            settings = self.settings(marker)
        except UsageError as error:
            pytest.fail(str(error), pytrace=False)
        problem = _device_problem(settings.device)
        if problem is not None:
            pytest.skip(f"no_vram_leak(device={settings.device!r}): {problem}")
        original = pyfuncitem.obj
        names = pyfuncitem._fixtureinfo.argnames
        arguments = {name: pyfuncitem.funcargs[name] for name in names}
        nodeid = pyfuncitem.nodeid

        def finish(result: Any) -> None:
            message = judge(result, settings)
            if message is not None:
                pytest.fail(message, pytrace=False)

        repeated: Callable[..., Any]
        if inspect.iscoroutinefunction(original) and "anyio_backend" in pyfuncitem.funcargs:
            # anyio runs the test function it finds in its own loop (asyncio or trio): hand it
            # an async function that awaits every iteration there.
            async def repeated_async(**_kwargs: Any) -> None:
                finish(await check_leak_async(nodeid, lambda: original(**arguments), settings))
            repeated = repeated_async
        else:
            # pytest-asyncio has already made an async test synchronous here; an async test no
            # plugin runs returns a coroutine, which check_leak awaits on a loop of its own.
            def repeated_sync(*_args: Any, **_kwargs: Any) -> None:
                finish(check_leak(nodeid, lambda: original(**arguments), settings))
            repeated = repeated_sync

        pyfuncitem.obj = repeated
        try:
            return (yield)
        finally:
            pyfuncitem.obj = original


def pytest_addoption(parser: pytest.Parser) -> None:
    """``--vramguard-iterations/-warmup/-device/-inconclusive`` and the matching ini values."""
    group = parser.getgroup("vramguard", "GPU memory leak checks (no_vram_leak marker)")
    for name, default in _DEFAULTS.items():
        group.addoption(f"--vramguard-{name}", dest=f"vramguard_{name}", default=None,
                        help=f"no_vram_leak {name} unless the marker sets it (default {default})")
        parser.addini(f"vramguard_{name}", f"no_vram_leak {name} (default {default})",
                      default="")


def pytest_configure(config: pytest.Config) -> None:
    """Register the marker (for --strict-markers) and the plugin's state object."""
    config.addinivalue_line(
        "markers", f"{MARKER}(iterations=100, warmup=10, device='auto', inconclusive='fail'): "
        "run the test body repeatedly under a vramguard Guard and fail when memory leaks")
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
