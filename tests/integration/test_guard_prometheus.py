"""The Guard's Prometheus collector on real torch loops, scraped through prometheus_client."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from vramguard import Guard
from vramguard.prometheus import GuardCollector

RULES = Path(__file__).parents[2] / "deploy" / "prometheus" / "vramguard-rules.yml"


def scrape(guard: Guard) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    registry = CollectorRegistry()  # a fresh registry: nothing global is touched
    registry.register(GuardCollector(guard))
    text = generate_latest(registry).decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def run(guard: Guard, *, leak: bool, steps: int = 130) -> list[torch.Tensor]:
    kept: list[torch.Tensor] = []
    layer = torch.nn.Linear(32, 32)
    for _ in range(steps):
        with guard.step(), torch.no_grad():
            out = layer(torch.randn(8, 32))
            if leak:
                kept.append(out)
    return kept


def test_leaking_loop_is_exported_as_a_leak() -> None:
    guard = Guard("cpu", overhead_budget=None, census_every=4)
    kept = run(guard, leak=True)
    metrics = scrape(guard)
    device = (("device", "cpu"),)
    assert metrics[("vramguard_guard_leak", device)] == 1.0
    assert metrics[("vramguard_guard_verdict", (("device", "cpu"), ("verdict", "leak")))] == 1.0
    assert metrics[("vramguard_guard_verdict", (("device", "cpu"), ("verdict", "no_leak")))] == 0.0
    # 8x32 float32 outputs kept per request: 1 KiB each, plus their bookkeeping on the C heap
    # (the CPU signal): TensorImpl, storage, graph node, a few hundred bytes
    growth = metrics[("vramguard_guard_growth_bytes_per_request", device)]
    assert 1024 <= growth <= 2048
    assert metrics[("vramguard_guard_allocated_bytes", device)] >= 130 * 1024
    assert ("vramguard_guard_non_torch_bytes", device) in metrics
    assert ("vramguard_guard_reserved_bytes", device) not in metrics  # unknown on CPU, not 0
    assert metrics[("vramguard_guard_requests_total", device)] == 130
    assert len(kept) == 130


def test_clean_loop_is_not_a_leak() -> None:
    guard = Guard("cpu", overhead_budget=None, census_every=4)
    run(guard, leak=False)
    metrics = scrape(guard)
    assert metrics[("vramguard_guard_leak", (("device", "cpu"),))] == 0.0
    verdicts = {dict(labels)["verdict"]: value for (name, labels), value in metrics.items()
                if name == "vramguard_guard_verdict"}
    assert sum(verdicts.values()) == 1.0
    assert verdicts["leak"] == 0.0


def test_the_alert_rule_watches_the_exported_series() -> None:
    # The deploy rules alert on this expression; a rename on either side must fail here.
    assert "expr: vramguard_guard_leak == 1" in RULES.read_text()


def test_importing_registers_nothing() -> None:
    code = ("import prometheus_client, vramguard.prometheus; "
            "print(prometheus_client.generate_latest().decode())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    assert "python_info" in out  # the default registry was read
    assert "vramguard_" not in out
