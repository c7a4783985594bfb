"""Real torch request handlers, one per leak and non-leak pattern the verdict must judge right.

Each takes the request index. ``reset()`` puts every pattern back to its initial state.
"""

from __future__ import annotations

import collections
import functools
import random
import typing

import torch
from torch import nn

torch.manual_seed(0)
model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 16))
rng = random.Random(0)

# -- leaks ---------------------------------------------------------------------------------------
kept_outputs: list[torch.Tensor] = []
METRICS: dict[str, torch.Tensor] = {}
activations: list[torch.Tensor] = []
sparse_store: list[torch.Tensor] = []
late_store: list[torch.Tensor] = []
small_store: list[torch.Tensor] = []
scratch: list[torch.Tensor | None] = [None]
hooked = nn.Linear(32, 16)
hooked.register_forward_hook(lambda module, args, output: activations.append(output.detach()))


class Handler:
    history: typing.ClassVar[list[torch.Tensor]] = []  # shared by every instance: leaks


def outputs_with_graph(i: int) -> None:
    kept_outputs.append(model(torch.randn(4, 32)))


def nograd_outputs_in_list(i: int) -> None:
    with torch.no_grad():
        kept_outputs.append(model(torch.randn(4, 32)))


def metrics_in_global_dict(i: int) -> None:
    with torch.no_grad():
        METRICS[f"request-{i}"] = model(torch.randn(4, 32)).mean(dim=0)


def class_attribute(i: int) -> None:
    Handler.history.append(torch.randn(16))


def hook_stores_activations(i: int) -> None:
    with torch.no_grad():
        hooked(torch.randn(4, 32))


def leak_every_tenth(i: int) -> None:
    # 16 KiB every tenth request: sparse, and above the CPU heap counter's 16 KiB-over-the-run
    # floor with room to spare (1 KiB every tenth, ~23 KiB in all, sat on it and flaked under load)
    if i % 10 == 0:
        sparse_store.append(torch.randn(4096))


def late_leak(i: int) -> None:
    if i >= 120:  # 60% into a 200-request check
        late_store.append(torch.randn(64))


def small_leak_under_noise(i: int) -> None:
    scratch[0] = torch.empty(rng.randint(0, 5000))  # up to 20 KB that comes and goes
    small_store.append(torch.empty(64))              # 256 B kept per request


# -- not leaks -----------------------------------------------------------------------------------
trained = nn.Linear(32, 16)
optimizer = torch.optim.Adam(trained.parameters())
window: collections.deque[torch.Tensor] = collections.deque(maxlen=25)
bounded: dict[int, torch.Tensor] = {}
flush_buffer: list[torch.Tensor] = []
last_output: list[torch.Tensor | None] = [None]


def warmup_optimizer_state(i: int) -> None:
    loss = trained(torch.randn(8, 32)).pow(2).mean()
    loss.backward()
    optimizer.step()  # Adam creates its state on the first step, then reuses it
    optimizer.zero_grad(set_to_none=True)


@functools.lru_cache(maxsize=32)
def _embedding(key: int) -> torch.Tensor:
    return torch.randn(128)


def lru_cache(i: int) -> None:
    _embedding(i % 1000)


def bounded_deque(i: int) -> None:
    window.append(torch.randn(128))


def dict_with_bounded_keys(i: int) -> None:
    bounded[rng.randrange(24)] = torch.randn(128)


def periodic_flush(i: int) -> None:
    flush_buffer.append(torch.randn(128))
    if len(flush_buffer) >= 20:
        flush_buffer.clear()


def variable_batch(i: int) -> None:
    with torch.inference_mode():
        last_output[0] = model(torch.randn(rng.choice([1, 8, 64]), 32))


class _Node:
    def __init__(self) -> None:
        self.me = self  # a reference cycle: only the garbage collector frees it
        self.tensor = torch.randn(256)


def reference_cycles(i: int) -> None:
    _Node()


def clean_inference(i: int) -> int:
    with torch.inference_mode():
        return int(model(torch.randn(4, 32)).argmax())


LEAKS = [outputs_with_graph, nograd_outputs_in_list, metrics_in_global_dict, class_attribute,
         hook_stores_activations, leak_every_tenth, late_leak, small_leak_under_noise]
NOT_LEAKS = [warmup_optimizer_state, lru_cache, bounded_deque, dict_with_bounded_keys,
             periodic_flush, variable_batch, reference_cycles, clean_inference]


def reset() -> None:
    for store in (kept_outputs, activations, sparse_store, late_store, small_store, Handler.history,
                  flush_buffer):
        store.clear()
    METRICS.clear()
    bounded.clear()
    window.clear()
    _embedding.cache_clear()
    rng.seed(0)
