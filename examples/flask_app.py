"""A Flask app (application factory) with one leaking and one clean endpoint, guarded by vramguard.

Run it:   flask --app examples.flask_app:create_app run --port 8000
Look:     curl 127.0.0.1:8000/vramguard/healthz
"""

from __future__ import annotations

from typing import Any

import torch
from flask import Flask

from vramguard.flask import VramGuard

guard = VramGuard(expose_status=True)
model = torch.nn.Linear(64, 8)
history: list[torch.Tensor] = []


def create_app(**guard_options: Any) -> Flask:
    """A fresh app; ``guard_options`` override the extension's for this app."""
    app = Flask(__name__)

    @app.get("/predict/leaky")
    def leaky() -> dict[str, float]:
        with torch.no_grad():
            output = model(torch.randn(16, 64))
        history.append(output)  # the leak
        return {"score": float(output.mean())}

    @app.get("/predict/clean/<int:item_id>")
    def clean(item_id: int) -> dict[str, float]:
        with torch.no_grad():
            output = model(torch.randn(16, 64))
        return {"item": item_id, "score": float(output.mean())}

    guard.init_app(app, **guard_options)
    return app
