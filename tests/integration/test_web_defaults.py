"""The middleware at DEFAULT settings (overhead_budget=0.01) under a real uvicorn on 127.0.0.1:
per-route verdicts for a sequential client and for 4 concurrent clients on sync endpoints,
healthz turning 503 and staying there while the leak goes on.

Bounded by request counts (checked every 100), never by time. The leak is stronger than the
benchmark's (~12 KiB instead of ~3 KiB a request) to keep the tests short on 2 cores;
``bench/web_routes.py`` measures the ~3 KiB case against the 1,000/2,000-request targets.
"""

from __future__ import annotations

import os
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
ROWS = 64  # the leaked input's rows: ~12 KiB of native heap a request with its graph
# 64x64 matmuls per request on both routes (~7 us each): a ~1 ms handler, the reference
# request. The budget is a share of the handler's time, and once the leak has fragmented the heap
# a cut costs 50-300 us (mallinfo2 walks the free chunks): with the bare 0.2-0.3 ms handler the
# default budget affords a cut every 100-260 requests, /leak read leak at 1,100-1,900 requests
# and in 1 run of 6 not within 2,400 (windows too collinear to separate the routes; measured,
# quiet machine). With this work: at 300-500 requests, 6 runs of 6.
WORK = 100


def _serve(options: str) -> tuple[subprocess.Popen[bytes], str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    code = ("import torch, uvicorn; torch.set_num_threads(1); "
            "from tests.integration.targets.web_apps import leaky_app; "
            f"uvicorn.run(leaky_app({options}), host='127.0.0.1', port={port}, "
            "log_level='warning')")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH",
                                                                                  "")])}
    log = tempfile.TemporaryFile()  # noqa: SIM115 - closed once the server is up
    process = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=env,
                               stdout=subprocess.DEVNULL, stderr=log)
    base = f"http://127.0.0.1:{port}"
    for _ in range(300):
        if process.poll() is not None:
            log.seek(0)
            raise AssertionError(f"server died: {log.read().decode()[-2000:]}")
        try:
            httpx.get(f"{base}/vramguard/healthz", timeout=1)
            log.close()
            return process, base
        except httpx.TransportError:
            time.sleep(0.2)
    process.kill()
    log.close()
    raise AssertionError("server did not start")


@pytest.fixture
def served(request: pytest.FixtureRequest) -> Iterator[str]:
    process, base = _serve(request.param)
    try:
        yield base
    finally:
        process.kill()
        process.wait(timeout=10)


def _routes(client: httpx.Client) -> dict[str, Any]:
    return {r["route"]: r for r in client.get("/vramguard/status").json()["routes"]}


@pytest.mark.parametrize("served", [f"rows={ROWS}, work={WORK}, unhealthy_limit='1MiB'"], indirect=True)
def test_sequential_client_default_settings_names_the_leaking_route(served: str) -> None:
    rng = random.Random(0)  # one client, routes in a seeded random order
    health = []
    with httpx.Client(base_url=served, timeout=30) as client:
        assert client.get("/vramguard/healthz").status_code == 200
        for i in range(1, 2401):
            assert client.get("/leak" if rng.random() < 0.5 else "/clean").status_code == 200
            if i % 100 == 0:
                routes = _routes(client)
                if routes["/leak"]["check"]["verdict"] == "leak":
                    break
        # The leak goes on: healthz answers 503 and keeps answering it.
        for _ in range(5):
            for _ in range(40):
                assert client.get("/leak").status_code == 200
            health.append(client.get("/vramguard/healthz"))
        client_status = client.get("/vramguard/status").json()
    routes = {r["route"]: r for r in client_status["routes"]}
    leak, clean = routes["/leak"], routes["/clean"]
    assert leak["check"]["verdict"] == "leak", leak["check"]["reason"]
    assert clean["check"]["verdict"] != "leak", clean["check"]["reason"]
    assert leak["overlapped"] == 0
    # At defaults the budget spaces the cuts out, and the status says by how much (and why).
    signal = client_status["signal"]
    assert signal["requests_per_cut"] >= 1, signal
    assert signal["cut_cost_s"] > 0, signal
    # A server starts with hundreds of free chunks and the leak adds ~1 a request: the cuts'
    # reads fill them, and the status says what that keeps.
    assert 0 < signal["heap_filled_bytes"] < 8 << 20, signal
    assert [r.status_code for r in health] == [503] * 5, [r.text for r in health]
    assert "route /leak" in health[-1].text or "leak of" in health[-1].text


@pytest.mark.parametrize("served", [f"rows={ROWS}, sync=True"], indirect=True)
def test_four_concurrent_clients_on_sync_endpoints_attribute_the_leak(served: str) -> None:
    total, lock, done = 1200, threading.Lock(), [0]
    verdicts: list[str] = []

    def client(seed: int) -> None:
        rng = random.Random(seed)
        with httpx.Client(base_url=served, timeout=30) as http:
            while True:
                with lock:
                    if done[0] >= total or (verdicts and verdicts[-1] == "leak"):
                        return
                    done[0] += 1
                    check = done[0] % 100 == 0 and done[0] >= 400
                assert http.get(rng.choice(["/leak", "/clean"])).status_code == 200
                if check:
                    verdicts.append(_routes(http)["/leak"]["check"]["verdict"])

    threads = [threading.Thread(target=client, args=(seed,)) for seed in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    with httpx.Client(base_url=served, timeout=30) as http:
        routes = _routes(http)
    leak, clean = routes["/leak"], routes["/clean"]
    assert leak["check"]["verdict"] == "leak", (leak["check"]["reason"], leak["attribution"])
    assert clean["check"]["verdict"] != "leak", (clean["check"]["reason"], clean["attribution"])
    assert leak["overlapped"] > leak["requests"] // 2  # mostly concurrent: the windows decided
    attribution = leak["attribution"]
    assert attribution["status"] == "estimated"
    low, high = attribution["ci95"]
    # The counter itself reads the same work 25% apart depending on the allocator's state
    # (glibc's per-thread caches hold freed chunks it counts as in use), so the truth is a band:
    # the estimate within it and the interval reaching into it. bench/web_routes.py reports the
    # coverage of the exact figures.
    truth = _truth()
    assert 0.75 * truth <= attribution["bytes_per_request"] <= 1.25 * truth, (truth, attribution)
    assert low <= 1.25 * truth
    assert high >= 0.75 * truth


def _truth() -> float:
    """What one /leak request keeps: the same work in a bare loop, in a fresh process with one
    torch thread, like the server (measured in the server after the run it read 25% lower)."""
    code = ("import torch; torch.set_num_threads(1); "
            "from vramguard.readers.heap import HeapCounter; "
            f"h, m, k = HeapCounter(), torch.nn.Linear(32, 8), {{}}\n"
            f"for i in range(100): k[i] = m(torch.randn({ROWS}, 32))\n"
            "a = h.read()\n"
            f"for i in range(100, 600): k[i] = m(torch.randn({ROWS}, 32))\n"
            "print((h.read() - a) / 500)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(
                             [str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])})
    return float(out.stdout.strip())


Checks = list[tuple[dict[str, Any], dict[str, Any]]]  # (/leak's check, /clean's), per look


def _until_a_leak(client: httpx.Client, rng: random.Random) -> None:
    # One client in seeded random order until /leak reads leak (looked at every 50 requests).
    for i in range(1, 2401):
        assert client.get("/leak" if rng.random() < 0.5 else "/clean").status_code == 200
        if i % 50 == 0 and _routes(client)["/leak"]["check"]["verdict"] == "leak":
            return
    raise AssertionError(f"/leak never read leak: {_routes(client)['/leak']['check']}")


def _looks(client: httpx.Client, rng: random.Random, requests: int, every: int, *,
           until_let_go: bool = False) -> Checks:
    # More of the same traffic; both routes' checks every ``every`` requests.
    checks: Checks = []
    for i in range(1, requests + 1):
        assert client.get("/leak" if rng.random() < 0.5 else "/clean").status_code == 200
        if i % every == 0:
            routes = _routes(client)
            checks.append((routes["/leak"]["check"], routes["/clean"]["check"]))
            if until_let_go and checks[-1][0]["verdict"] != "leak":
                break
    return checks


@pytest.mark.parametrize("served", [f"rows={ROWS}, work={WORK}, ballast=64 << 20"], indirect=True)
def test_a_leaking_route_s_verdict_holds_through_a_large_free(served: str) -> None:
    # Mid-leak, something elsewhere in the process frees 64 MiB (a cache dropped). Measured on
    # the code before the route keeper (3 runs of 3): the leaking route read "leak" until the
    # free and "inconclusive" at every check after it ("+0 B/request ... below the 1.0 KiB/request
    # that the counter can tell"), while it kept its ~12 KiB a request. Now a route's leak verdict
    # holds while the process keeps growing and the route's own data cannot tell; the clean
    # route, never a leak, is not held into one.
    rng = random.Random(0)
    with httpx.Client(base_url=served, timeout=30) as client:
        _until_a_leak(client, rng)
        assert client.get("/ballast/drop").json() == {"freed": 64 << 20}
        checks = _looks(client, rng, 600, 50)
    assert [leak["verdict"] for leak, _ in checks] == ["leak"] * 12, [
        leak["reason"] for leak, _ in checks]
    assert all(clean["verdict"] != "leak" for _, clean in checks), [
        clean["reason"] for _, clean in checks]


@pytest.mark.parametrize("served", [f"rows={ROWS}, work={WORK}"], indirect=True)
def test_a_route_whose_leak_is_fixed_is_not_held(served: str) -> None:
    # The hold must end when the leak does: once /leak stops keeping anything, the process
    # grows only by the server's own churn, far below what the held leak predicts, and the
    # route's verdict is let go (measured: within 100-800 requests of the fix, in 3 runs; held
    # for good without that rule), although the guard's sparse samples at default settings
    # (one every ~140 requests) could not say "no leak" for a long time. The clean route is
    # never a leak.
    rng = random.Random(0)
    with httpx.Client(base_url=served, timeout=30) as client:
        _until_a_leak(client, rng)
        assert client.get("/leak/stop").json() == {"leaking": False}
        checks = _looks(client, rng, 2000, 100, until_let_go=True)
    assert checks[-1][0]["verdict"] != "leak", checks[-1][0]["warnings"]
    assert all(clean["verdict"] != "leak" for _, clean in checks), [
        clean["reason"] for _, clean in checks]
