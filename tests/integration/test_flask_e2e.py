"""End to end: the Flask example under werkzeug's real WSGI server on 127.0.0.1, in a thread."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import httpx
import pytest
from examples.flask_app import create_app
from flask import Flask
from prometheus_client.parser import text_string_to_metric_families
from werkzeug.serving import BaseWSGIServer, make_server

from vramguard.flask import VramGuard

LEAKY, CLEAN = "/predict/leaky", "/predict/clean/<int:item_id>"


@pytest.fixture
def served() -> Iterator[tuple[Flask, str]]:
    # In-process the census is slower, so the leak rate per second is lower: a generous window.
    app = create_app(device="cpu", overhead_budget=None, unhealthy_limit="64MiB",
                     unhealthy_within="1000h")
    server: BaseWSGIServer = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield app, f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_flask_status_names_only_the_leaking_route(served: tuple[Flask, str]) -> None:
    app, base = served
    with httpx.Client(base_url=base, timeout=10) as client:
        assert client.get("/vramguard/healthz").status_code == 200
        for i in range(50):
            assert client.get(LEAKY.replace("<int:item_id>", "")).status_code == 200
            assert client.get(f"/predict/clean/{i}").status_code == 200
        status = client.get("/vramguard/status").json()
        health = client.get("/vramguard/healthz")
        metrics = client.get("/vramguard/metrics").text
    routes = {r["route"]: r for r in status["routes"]}
    assert set(routes) == {LEAKY, CLEAN}
    assert routes[LEAKY]["check"]["verdict"] == "leak"
    assert routes[CLEAN]["check"]["verdict"] == "no_leak"
    assert routes[LEAKY]["measured"] == 50
    grown = {tuple(s["tensors"]["shape"]) for s in routes[LEAKY]["check"]["suspects"]}
    assert (16, 8) in grown
    assert health.status_code == 503, health.text
    families = {f.name: f for f in text_string_to_metric_families(metrics)}
    leak = {s.labels["route"]: s.value for s in families["vramguard_route_leak"].samples}
    assert leak == {LEAKY: 1.0, CLEAN: 0.0}
    assert VramGuard.web(app).route_verdict(LEAKY).is_leak


def test_two_apps_in_one_process_have_their_own_guards() -> None:
    first, second = create_app(device="cpu"), create_app(device="cpu", expose_status=False)
    assert VramGuard.web(first) is not VramGuard.web(second)
    with first.test_client() as client:
        assert client.get("/vramguard/status").status_code == 200
        assert client.get("/predict/clean/1").status_code == 200
    with second.test_client() as client:
        assert client.get("/vramguard/status").status_code == 404
        assert client.get("/vramguard/healthz").status_code == 200
    assert [r.route for r in VramGuard.web(first).routes()] == [CLEAN]
    assert VramGuard.web(second).routes() == []
