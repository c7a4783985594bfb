"""A FastAPI model server with one leaking and one clean endpoint, guarded by vramguard.

Needs:    pip install -e '.[examples]'   (fastapi, uvicorn; from the repository root)
Run it:   uvicorn examples.fastapi_app:app --port 8000
Load it:  vramguard loadtest http://127.0.0.1:8000/predict/leaky --requests 300   (LEAK, exit 1)
Look:     curl 127.0.0.1:8000/vramguard/status   (status is on here; keep it off in production)
"""

from __future__ import annotations

from typing import Any

import torch
from fastapi import FastAPI

from vramguard.asgi import VramGuardMiddleware

model = torch.nn.Linear(64, 8)
history: list[torch.Tensor] = []  # the leak: every output is kept, with its autograd graph


def create_app(**guard_options: Any) -> FastAPI:
    """The app; ``guard_options`` go to :class:`~vramguard.asgi.VramGuardMiddleware`."""
    app = FastAPI()

    @app.get("/predict/leaky")
    def leaky() -> dict[str, float]:
        output = model(torch.randn(16, 64))
        history.append(output)  # keeps 16x8 floats and the graph behind them, forever
        return {"score": float(output.mean())}

    @app.get("/predict/clean/{item_id}")
    def clean(item_id: int) -> dict[str, float]:
        with torch.no_grad():
            output = model(torch.randn(16, 64))
        return {"item": item_id, "score": float(output.mean())}

    options: dict[str, Any] = {"expose_status": True, **guard_options}
    app.add_middleware(VramGuardMiddleware, **options)
    return app


# A dense guard (a reading at every request, whatever it costs) so that a load test of a few
# hundred requests has the fresh readings a verdict needs; a production server keeps the default
# overhead_budget and gets its verdict over a longer time.
app = create_app(overhead_budget=None)
