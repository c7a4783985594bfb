"""The web guard's diagnosis under continuous concurrent load (the issue's live failure: the
status named vramguard's own census list as the root while requests kept coming): uvicorn serving
the FastAPI example on 127.0.0.1, four client threads hammering the clean route while the leaky
route is driven to its diagnosis; the status's top suspect names the user's root and no suspect
names vramguard's code."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import httpx
import pytest

from tests.integration.test_asgi_e2e import CLEAN, DIAGNOSED, LEAKY, diagnosed, serving


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    with serving(DIAGNOSED) as base:
        yield base


def test_top_suspect_under_concurrent_load_is_the_users_root(server: str) -> None:
    stop = threading.Event()
    failures: list[str] = []

    def load() -> None:
        with httpx.Client(base_url=server, timeout=10) as client:
            item = 0
            while not stop.is_set():
                item += 1
                response = client.get(CLEAN.replace("{item_id}", str(item % 50)))
                if response.status_code != 200:
                    failures.append(str(response.status_code))

    threads = [threading.Thread(target=load, name=f"load-{i}") for i in range(4)]
    for thread in threads:
        thread.start()
    try:
        with httpx.Client(base_url=server, timeout=10) as client:
            routes = diagnosed(client, LEAKY, LEAKY)
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
    assert not failures
    suspects = routes[LEAKY]["check"]["suspects"]
    assert suspects, routes[LEAKY]
    top = suspects[0]
    assert top["held_by"].startswith("history (global list in module examples.fastapi_app) -> "), top
    for suspect in suspects:
        held_by = suspect["held_by"] or ""
        assert "vramguard" not in held_by, held_by
        for name in ("_add_graphs", "_add_all", "_nodes", "live_tensors", "_tensors_by_type"):
            assert name not in held_by, held_by
