"""Leaks and look-alikes reproduced from public bug reports (each case file cites its report).

Leaks: the top suspect of a diagnosis window names the cause, the root and the line marked
``# LEAK`` (the user's line that allocated, or called the library code that allocated, what
leaks), and its fix says what the report's fix says. Look-alikes: a check of the same shape
ends in no ``leak`` verdict.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from vramguard.analysis.verdict import VerdictKind
from vramguard.diagnosis import Cause, diagnose
from vramguard.runner import run_check
from vramguard.target import load_target

CORPUS = Path(__file__).parent / "corpus"


@dataclass(frozen=True)
class Case:
    cause: Cause
    held_by: str  # what the top suspect's path starts with
    fix: tuple[str, ...]  # the fix names all of these
    not_in_fix: tuple[str, ...] = ()


LEAKS = {
    "loss_sum_graph": Case(Cause.AUTOGRAD_GRAPH, "loss_sum (global Tensor",
                           ("`loss_sum`", "loss.item()", "autograd nodes"),
                           ("inference_mode", "no_grad")),
    "create_graph_cycle": Case(Cause.REFERENCE_CYCLE, "model (global Linear",
                               ("create_graph=True", "torch.autograd.grad", "zero_grad(set_to_none")),
    "metric_never_reset": Case(Cause.CONTAINER_GROWTH, "auroc (global BinaryAUROC",
                               ("`auroc.reset()`",)),
    "lightning_step_outputs": Case(Cause.AUTOGRAD_GRAPH, "module (global Regressor",
                                   ("`training_step_outputs`", "detach()"), ("inference_mode",)),
    "hook_stores_in_module": Case(Cause.HOOK_RETENTION, "model (global Sequential",
                                  ("capture_activations()", "`model.0`")),
    "hidden_not_detached": Case(Cause.AUTOGRAD_GRAPH, "hidden (global Tensor",
                                ("`hidden`", "detach()")),
    "transformers_hidden_list": Case(Cause.AUTOGRAD_GRAPH, "hidden_states_list (global list",
                                     ("`hidden_states_list`", "inference_mode")),
    "transformers_train_losses": Case(Cause.AUTOGRAD_GRAPH, "step_losses (global list",
                                      ("`step_losses`", "detach()"), ("inference_mode",)),
    "lru_cache_function": Case(Cause.CONTAINER_GROWTH, "embed (global _lru_cache_wrapper",
                               ("`embed.cache_clear()`",)),
    "lru_cache_getitem": Case(Cause.CONTAINER_GROWTH, "Clips.__getitem__ (class attribute",
                              ("cache_clear()",)),
    "global_hook_registry": Case(Cause.HOOK_RETENTION, "seen_outputs (global list",
                                 ("global hook", "`seen_outputs`")),
    # the cell calls a function of the case file, so the allocating line is a file line
    "ipython_out_cache": Case(Cause.GLOBAL_REFERENCE, "_", (
        "IPython's output cache", "%reset -f out", "cache_size = 0")),
}

LOOK_ALIKES = ("ok_loss_item_sum", "ok_metric_reset", "ok_hidden_detached", "ok_autograd_grad",
               "ok_lightning_outputs_cleared", "ok_bounded_lru")


def leak_line(path: Path) -> int:
    """The 1-based number of the line marked ``# LEAK`` (exactly one per case)."""
    lines = [n for n, text in enumerate(path.read_text().splitlines(), 1) if "# LEAK" in text]
    assert len(lines) == 1, f"{path.name} must mark exactly one line with # LEAK"
    return lines[0]


def _cleanup(name: str) -> None:
    module = sys.modules.get(name)
    handle = getattr(module, "hook_handle", None)
    if handle is not None:
        handle.remove()  # the global hook must not outlive its case
    if name == "ipython_out_cache":
        from IPython.core.interactiveshell import InteractiveShell

        InteractiveShell.instance().reset(new_session=False)
        InteractiveShell.clear_instance()
    sys.modules.pop(name, None)


@pytest.mark.parametrize("name", sorted(LEAKS))
def test_leak_names_cause_root_line_and_fix(name: str) -> None:
    case = LEAKS[name]
    path = CORPUS / f"{name}.py"
    handle = load_target(f"{path}:handle")
    try:
        for index in range(3):  # warm-up: lazy state and first-call caches are not the leak
            handle(index)
        diagnosis = diagnose(handle, requests=12, start=3)
    finally:
        _cleanup(path.stem)
    assert diagnosis.suspects, diagnosis
    top = diagnosis.suspects[0]
    assert top.cause == case.cause, top
    assert top.held_by is not None
    assert top.held_by.startswith(case.held_by), top.held_by
    assert "vramguard" not in top.held_by, top.held_by
    for words in case.fix:
        assert words in (top.fix or ""), top.fix
    for words in case.not_in_fix:
        assert words not in (top.fix or ""), top.fix
    assert top.allocated_at is not None, top
    assert Path(top.allocated_at.file).resolve() == path.resolve(), top.allocated_at
    assert top.allocated_at.line == leak_line(path), top.allocated_at


@pytest.mark.parametrize("name", LOOK_ALIKES)
def test_look_alike_is_not_a_leak(name: str) -> None:
    path = CORPUS / f"{name}.py"
    try:
        result = run_check(name, load_target(f"{path}:handle"), requests=60,
                           diagnosis_requests=0)
    finally:
        _cleanup(path.stem)
    assert not result.verdict.is_leak, result.verdict
    assert result.verdict.kind is not VerdictKind.INCONCLUSIVE, result.verdict
