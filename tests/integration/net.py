"""Loopback helpers shared by the tests that start real servers and stores on 127.0.0.1."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any


def free_port() -> int:
    """A TCP port nothing listens on now (the OS picks it; the socket is closed again)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def uvicorn_thread(app: Any, probe: str, **config: Any) -> Iterator[Any]:
    """Serve the ASGI ``app`` with uvicorn in a thread of this process (its event loop is the
    requests' thread) and yield an ``httpx.Client`` on it, once ``probe`` answers; on exit the
    server shuts down (its lifespan too) and the thread is joined."""
    import httpx
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                           log_level="warning", **config))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            for _ in range(200):  # until uvicorn listens
                try:
                    client.get(probe)
                    break
                except httpx.TransportError:
                    time.sleep(0.05)
            yield client
    finally:
        server.should_exit = True
        thread.join(timeout=30)
