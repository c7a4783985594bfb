"""The Flask example under waitress, a production WSGI server with a fixed pool of threads.

Werkzeug's threaded dev server runs each request on a new thread, so on CPU no request is
measured there (a fresh thread's allocator cache fills under the heap counter; see
``WebGuard.begin`` and tests/integration/test_flask_e2e.py). The README tells Flask users to
serve with threads that live on instead; this is that advice tried: only each pool thread's
first request goes unmeasured.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import httpx
import pytest
from examples.flask_app import create_app
from waitress import server as waitress_server

THREADS = 4
LEAKY, CLEAN = "/predict/leaky", "/predict/clean/<int:item_id>"


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
    with httpx.Client(base_url=base, timeout=10) as client:
        for i in range(150):
            assert client.get("/predict/leaky").status_code == 200
            assert client.get(f"/predict/clean/{i}").status_code == 200
        status = client.get("/vramguard/status").json()
    routes = {r["route"]: r for r in status["routes"]}
    assert set(routes) == {LEAKY, CLEAN}
    assert 1 <= status["signal"]["fresh_thread_requests"] <= THREADS
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
