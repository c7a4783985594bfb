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


def leaky_app(*, sync: bool = False, **guard_options: Any) -> FastAPI:
    """The app; ``guard_options`` go to the middleware (nothing: the defaults)."""
    app = FastAPI()
    model = torch.nn.Linear(32, 8)
    ids = itertools.count()

    def leak() -> dict[str, float]:
        output = model(torch.randn(8, 32))
        kept[next(ids)] = output  # the graph (and the input it saved) stays alive with it
        return {"score": float(output.detach().mean())}

    def clean() -> dict[str, float]:
        with torch.no_grad():
            return {"score": float(model(torch.randn(8, 32)).mean())}

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
    app.add_middleware(VramGuardMiddleware, **{"expose_status": True, **guard_options})
    return app
