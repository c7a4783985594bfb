"""The verdict on real torch workloads: every leak pattern is caught, no non-leak is flagged."""

import pytest

pytest.importorskip("torch")

from tests.integration.targets import patterns
from vramguard.analysis.verdict import VerdictKind
from vramguard.runner import run_check


@pytest.fixture(autouse=True)
def _fresh_state():
    patterns.reset()
    yield
    patterns.reset()


@pytest.mark.parametrize("handler", patterns.LEAKS, ids=lambda f: f.__name__)
def test_leaks_are_caught(handler):
    result = run_check(handler.__name__, handler, requests=200, device="cpu")
    assert result.verdict.kind is VerdictKind.LEAK, result.verdict.reason
    assert result.verdict.growth is not None
    assert result.verdict.growth.bytes_per_request > 0
    assert result.verdict.detected_after is not None
    assert result.suspects, "a leak verdict names the tensor groups that grew"


@pytest.mark.parametrize("handler", patterns.NOT_LEAKS, ids=lambda f: f.__name__)
def test_non_leaks_are_not_flagged(handler):
    result = run_check(handler.__name__, handler, requests=200, device="cpu")
    assert result.verdict.kind is not VerdictKind.LEAK, result.verdict.reason
    assert result.suspects == ()


def test_graph_leak_names_the_growing_group_and_its_root():
    result = run_check("outputs_with_graph", patterns.outputs_with_graph, requests=200, device="cpu")
    top = result.suspects[0]
    assert top.tensors is not None
    assert top.tensors.count_growth >= 150
    assert top.tensors.bytes_growth > 0
    assert top.cause == "autograd_graph"
    assert top.held_by is not None
    assert top.held_by.startswith("kept_outputs (global list in module tests.integration.targets")
    assert top.allocated_at is not None
    assert top.allocated_at.function == "outputs_with_graph"
