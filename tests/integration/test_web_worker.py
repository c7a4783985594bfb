"""The web guard's background worker (vramguard.adapters.checker): the per-route leak check and the
Guard's censuses run on it, never on a request's thread; it stops with the app's lifespan; a
check that fails stops it once, said once, and the requests go on.

Real uvicorn on 127.0.0.1 (in a thread: its event loop is the requests' thread) or the ASGI app
in-process, real torch, the real heap counter. Waits are on events and on the worker going idle,
bounded by request counts; nothing is timed.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import torch
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from tests.integration.net import uvicorn_thread
from vramguard.adapters.options import WebOptions
from vramguard.adapters.web import WebGuard
from vramguard.adapters.window import Windows
from vramguard.asgi import VramGuardMiddleware

KEPT: list[torch.Tensor] = []
WORKER = "vramguard-web"


class RecordingWindows(Windows):
    """Diagnosis windows that note which thread asked to open one (the route check's) and open
    none: a real window marks vramguard's own work as running for the whole process (see
    readers.own), which would pause the next test's guard."""

    def __init__(self) -> None:
        super().__init__(5, 600.0, time.perf_counter)
        self.opened_in: str | None = None
        self.opened = threading.Event()

    def start(self, route: str, grown: Any = None) -> bool:
        self.opened_in = threading.current_thread().name
        self.opened.set()
        return False


class FailingWindows(RecordingWindows):
    """Windows whose opening raises: the route check that decides to open one fails."""

    def start(self, route: str, grown: Any = None) -> bool:
        self.opened.set()
        raise RuntimeError("window store broken")


def _app(web: WebGuard, request_threads: set[str]) -> VramGuardMiddleware:
    async def leak(request: Request) -> JSONResponse:
        request_threads.add(threading.current_thread().name)
        KEPT.append(torch.ones(16384))  # 64 KiB kept a request: a leak verdict in tens
        return JSONResponse({"kept": len(KEPT)})

    async def clean(request: Request) -> JSONResponse:
        request_threads.add(threading.current_thread().name)
        return JSONResponse({"score": float(torch.ones(64).sum())})

    return VramGuardMiddleware(Starlette(routes=[Route("/leak", leak), Route("/clean", clean)]),
                               web=web)


def _web(windows: Windows) -> WebGuard:
    # Dense mode: every request measured, so the leak verdict (and its check) comes within tens.
    # The clock ticks 10 ms a reading, so the once-a-second route check is due every few dozen
    # requests however fast the machine is (bounded by request counts, not by time).
    ticks = itertools.count()
    return WebGuard("cpu", overhead_budget=None, windows=windows, clock=lambda: next(ticks) * 0.01,
                    options=WebOptions(expose_status=True))


@contextlib.contextmanager
def _served(app: VramGuardMiddleware) -> Iterator[httpx.Client]:
    try:
        with uvicorn_thread(app, "/clean", lifespan="on") as client:
            yield client
    finally:
        KEPT.clear()


def _until_checked(client: Any, web: WebGuard, windows: RecordingWindows, *paths: str) -> None:
    # Requests until a route check (leak verdict: open a window) has run, waiting for the
    # worker after each round. Bounded: a check is due every few dozen requests (the clock).
    for _ in range(400):
        for path in paths:
            assert client.get(path).status_code == 200
        if windows.opened.is_set() or not web.settle(timeout=60):
            break
    assert windows.opened.is_set(), "no route check ran"


def test_the_route_check_opens_the_window_from_the_worker_and_stops_with_the_app() -> None:
    windows = RecordingWindows()
    web = _web(windows)
    threads: set[str] = set()
    with _served(_app(web, threads)) as client:
        _until_checked(client, web, windows, "/leak", "/clean")
        assert web.worker_alive
    assert windows.opened_in == WORKER
    assert threads  # the requests ran elsewhere (uvicorn's event loop)
    assert WORKER not in threads
    # The lifespan's shutdown stopped the worker with the app.
    assert not web.worker_alive
    assert web.worker_failure is None


def test_a_census_runs_on_the_worker_never_in_a_request(caplog: pytest.LogCaptureFixture) -> None:
    web = _web(RecordingWindows())
    threads: set[str] = set()
    app = _app(web, threads)
    caplog.set_level(logging.DEBUG, logger="vramguard")
    with TestClient(app) as client:
        for _ in range(20):
            assert client.get("/clean").status_code == 200
        assert web.settle(timeout=60)
        censuses = [r for r in caplog.records if r.getMessage().startswith("vramguard: census")]
        # The grouped baseline of the tensor diff (the first read of a dense guard)...
        assert censuses, [r.getMessage() for r in caplog.records]
        assert {r.threadName for r in censuses} == {WORKER}
        assert any(s.tensor_bytes is not None for s in web.guard.samples)  # ...with its sample
    assert not web.worker_alive  # the lifespan's shutdown stopped it
    KEPT.clear()


def test_a_failing_route_check_stops_the_worker_once_and_requests_go_on(
        caplog: pytest.LogCaptureFixture) -> None:
    windows = FailingWindows()
    web = _web(windows)
    app = _app(web, set())
    caplog.set_level(logging.WARNING, logger="vramguard")
    with TestClient(app) as client:
        _until_checked(client, web, windows, "/leak")
        web.settle(timeout=60)
        for _ in range(30):  # more requests, more due checks: no second failure, no error
            assert client.get("/leak").status_code == 200
        status = client.get("/vramguard/status").json()
    failures = [r for r in caplog.records if "thread failed" in r.getMessage()]
    assert len(failures) == 1, [r.getMessage() for r in failures]
    assert "window store broken" in (web.worker_failure or "")
    assert status["worker_failed"] == web.worker_failure
    assert not web.worker_alive
    counts = {c.route: c.requests for c in web.routes()}
    assert counts["/leak"] >= 31  # every request still counted after the failure
    app.close()
    KEPT.clear()


def test_an_app_started_again_gets_its_worker_back() -> None:
    # A test client (or a server) that runs the same app's lifespan twice in one process: the
    # first shutdown stopped the worker, the second startup lets it run again.
    windows = RecordingWindows()
    web = _web(windows)
    app = _app(web, set())
    for _ in range(2):
        windows.opened.clear()
        with TestClient(app) as client:
            _until_checked(client, web, windows, "/leak")
            assert windows.opened_in == WORKER
        assert not web.worker_alive
    KEPT.clear()
