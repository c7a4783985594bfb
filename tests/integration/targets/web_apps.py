"""FastAPI apps for the web guard's default-settings tests and benchmarks (bench/web_routes.py).

``leaky_app``: ``/leak`` keeps each output with its autograd graph in a dict (~2 KiB of native
heap per request: the saved 8x32 input, the output and the graph's nodes), ``/clean`` does the
same work under ``no_grad`` and keeps nothing. ``sync=True`` makes both endpoints plain ``def``
(FastAPI runs them in its threadpool, so concurrent clients overlap).
"""

from __future__ import annotations

import itertools
from typing import Any

import torch
from fastapi import FastAPI

from vramguard.asgi import VramGuardMiddleware

kept: dict[int, torch.Tensor] = {}  # the leak's root: outputs with their graphs, by request id


def leaky_app(*, sync: bool = False, rows: int = 4, work: int = 0, guard: bool = True,
              ballast: int = 0, **guard_options: Any) -> FastAPI:
    """The app; ``guard_options`` go to the middleware (nothing: the defaults). ``rows``: the
    leaked input's rows (4: ~2 KiB a request in all; 64: ~10 KiB); ``work``: 64x64 matmuls each
    request does besides (both routes), to give requests a realistic duration; ``guard=False``:
    the same app without the middleware (a benchmark's baseline). ``ballast``: bytes held from
    the start that ``/ballast/drop`` frees (a cache dropped elsewhere in the process)."""
    app = FastAPI()
    held = [torch.ones(ballast // 4)] if ballast else []

    def drop() -> dict[str, int]:
        freed = sum(t.numel() * t.element_size() for t in held)
        held.clear()
        return {"freed": freed}

    app.get("/ballast/drop")(drop)
    leaking = [True]

    def stop() -> dict[str, bool]:  # the leak is fixed: /leak keeps nothing from now on
        leaking[0] = False
        return {"leaking": False}

    app.get("/leak/stop")(stop)
    model = torch.nn.Linear(32, 8)
    ids = itertools.count()
    block = torch.randn(64, 64)

    def busy() -> None:
        for _ in range(work):
            block @ block

    def leak() -> dict[str, float]:
        busy()
        output = model(torch.randn(rows, 32))
        if leaking[0]:
            kept[next(ids)] = output  # the graph (and the input it saved) stays alive with it
        return {"score": float(output.detach().mean())}

    def clean() -> dict[str, float]:
        busy()
        with torch.no_grad():
            return {"score": float(model(torch.randn(rows, 32)).mean())}

    def truth() -> dict[str, float]:
        # What one /leak request keeps, measured here (this process's allocator state): the
        # same work 200 times, heap counter before and after. Call it while no request runs.
        from vramguard.readers.heap import HeapCounter

        heap = HeapCounter()
        before = heap.read()
        for _ in range(200):
            kept[next(ids)] = model(torch.randn(rows, 32))
        after = heap.read()
        return {"bytes_per_request": -1.0 if before is None or after is None
                else (after - before) / 200}

    app.get("/truth")(truth)
    if sync:
        app.get("/leak")(leak)
        app.get("/clean")(clean)
    else:
        async def leak_async() -> dict[str, float]:
            return leak()

        async def clean_async() -> dict[str, float]:
            return clean()

        app.get("/leak")(leak_async)
        app.get("/clean")(clean_async)
    if guard:
        app.add_middleware(VramGuardMiddleware, **{"expose_status": True, **guard_options})
    return app
