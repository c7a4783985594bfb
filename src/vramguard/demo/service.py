"""A tiny classifier service built in code (no downloads), with a switchable leak.

Each pattern is the way real services leak:
- ``graph``: outputs kept in a list *with* their autograd graph (no ``no_grad``, no ``.detach()``);
- ``list``: detached outputs appended to a list that is never trimmed;
- ``global``: per-request metrics tensors stored in a module-level dict;
- ``hook``: a forward hook that stores every activation of a layer;
- ``none``: the fixed service (inference mode, nothing kept).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

LEAKS = ("graph", "list", "global", "hook", "none")

history: list[Any] = []          # where the "graph" and "list" patterns keep outputs
metrics: dict[str, Any] = {}     # where the "global" pattern keeps per-request tensors
activations: list[Any] = []      # where the "hook" pattern keeps layer outputs


def build_service(leak: str, device: str = "cpu") -> Callable[[int], Any]:
    """Return ``handle(request_index)`` for a fresh model on ``device`` with the chosen leak."""
    import torch
    from torch import nn

    if leak not in LEAKS:
        raise ValueError(f"unknown leak pattern {leak!r}; expected one of {', '.join(LEAKS)}")
    history.clear()
    metrics.clear()
    activations.clear()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10)).to(device)
    if leak == "hook":
        model[1].register_forward_hook(lambda module, args, output: activations.append(output))

    def handle(request: int) -> int:
        batch = torch.randn(8, 64, device=device)
        if leak == "none":
            with torch.inference_mode():
                return int(model(batch).argmax(dim=1)[0])
        if leak in ("graph", "hook"):
            logits = model(batch)                         # grad mode on: builds a graph
            if leak == "graph":
                history.append(logits)                    # keeps logits *and* its graph
        else:
            with torch.no_grad():
                logits = model(batch)
            if leak == "list":
                history.append(logits)
            else:
                metrics[f"request-{request}"] = logits.softmax(dim=1)
        return int(logits.argmax(dim=1)[0])

    return handle
