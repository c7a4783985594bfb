"""The Flask example under production WSGI servers with a pool of threads: waitress (in-process)
and gunicorn's gthread worker (a real subprocess on 127.0.0.1).

Werkzeug's threaded dev server runs each request on a new thread, so on CPU no request is
measured there (a fresh thread's allocator cache fills under the heap counter; see
``WebGuard.begin`` and tests/integration/test_flask_e2e.py). The README tells Flask users to
serve with threads that live on instead; this is that advice tried: only each pool thread's
first request goes unmeasured.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from examples.flask_app import create_app
from waitress import server as waitress_server

THREADS = 4
ROOT = Path(__file__).resolve().parents[2]
LEAKY, CLEAN = "/predict/leaky", "/predict/clean/<int:item_id>"


def _alternate(base: str) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """150 requests of each route, alternating, from one client; the status after them and its
    routes by name. Only each pool thread's first request is fresh."""
    with httpx.Client(base_url=base, timeout=10) as client:
        for i in range(150):
            assert client.get("/predict/leaky").status_code == 200
            assert client.get(f"/predict/clean/{i}").status_code == 200
        status = client.get("/vramguard/status").json()
    assert 1 <= status["signal"]["fresh_thread_requests"] <= THREADS
    return status, {r["route"]: r for r in status["routes"]}


@pytest.fixture
def base() -> Iterator[str]:
    app = create_app(device="cpu", overhead_budget=None, unhealthy_limit="64MiB",
                     unhealthy_within="1000h", diagnose_requests=0)
    server = waitress_server.create_server(app, host="127.0.0.1", port=0, threads=THREADS)
    closing = threading.Event()

    def run() -> None:
        # waitress has no stop call for a loop in another thread: closing its sockets under
        # the select loop makes that loop fail with EBADF, which is the stop, not an error.
        try:
            server.run()
        except (OSError, ValueError):
            if not closing.is_set():
                raise

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.effective_port}"
    finally:
        closing.set()
        server.task_dispatcher.shutdown()
        server.close()
        thread.join(timeout=10)


def test_under_waitress_only_each_pool_threads_first_request_goes_unmeasured(base: str) -> None:
    _, routes = _alternate(base)
    assert set(routes) == {LEAKY, CLEAN}
    for route in routes.values():
        # Dense mode: every request that ran alone is measured, but for its thread's first
        # one and a route's first one (its caches warming).
        assert route["measured"] >= 150 - THREADS - 1, route
        assert route["overlapped"] == 0
    # The example keeps ~1 KiB a request, at the CPU route floor, in a process whose heap the
    # in-process client shares: never a false "no leak" for the leaking route, never "leak"
    # for the clean one.
    assert routes[LEAKY]["check"]["verdict"] != "no_leak", routes[LEAKY]["check"]["reason"]
    assert routes[CLEAN]["check"]["verdict"] != "leak", routes[CLEAN]["check"]["reason"]


@pytest.fixture
def gunicorn_base() -> Iterator[str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    app = ("examples.flask_app:create_app(device='cpu', overhead_budget=None, "
           "diagnose_requests=0)")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT), str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    server = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "--worker-class", "gthread", "--threads",
         str(THREADS), "--workers", "1", "--bind", f"127.0.0.1:{port}", "--log-level",
         "warning", app], cwd=ROOT, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):  # bounded: up to ~60 s for gunicorn, torch and Flask to start
            try:
                httpx.get(f"{base}/vramguard/healthz", timeout=1)
                break
            except httpx.TransportError:
                assert server.poll() is None, "gunicorn exited"
                time.sleep(0.1)
        else:
            pytest.fail(f"gunicorn did not answer on {base} within 600 tries")
        yield base
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_under_gunicorn_gthread_the_routes_are_measured_and_the_leak_is_seen(
        gunicorn_base: str) -> None:
    status, routes = _alternate(gunicorn_base)
    for route in routes.values():
        assert route["measured"] >= 150 - THREADS - 1, route
    leaky, clean = routes[LEAKY]["check"], routes[CLEAN]["check"]
    # Out of the client's process the measurements are tight: the example keeps ~0.9 KiB a
    # request (measured: +899 B, 95% CI +895 .. +903 B), under the 1 KiB/request a route needs
    # on CPU to be called a leak; the clean route ~160 B of the server's own. So both routes
    # are inconclusive with their figures, the leaking one clearly above the clean one, and
    # the overall verdict (no route floor) sees the leak.
    assert leaky["verdict"] != "no_leak", leaky["reason"]
    assert clean["verdict"] != "leak", clean["reason"]
    assert leaky["growth"] is not None
    assert clean["growth"] is not None
    assert leaky["growth"]["bytes_per_request"] > clean["growth"]["bytes_per_request"] + 400
    # Over these 300 requests the overall series is noisy (the server's own buffers): it read
    # "leak" in 10 runs of 10, but in 2 of 41 earlier runs "no leak" ("trended +666 B/request
    # ... did not keep rising in the recent half"), a false one. Such a run is now inconclusive
    # (the verdict's hidden-by-noise doubt), never a pass.
    overall = status["overall"]
    assert overall["verdict"] == "leak" or (
        overall["verdict"] == "inconclusive" and "the noise" in overall["reason"]), overall
