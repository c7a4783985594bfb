"""Issue 9 item 6: the 0-dim tensors autograd wraps Python numbers in (``loss * 0.5``) are folded
into the suspect of the tensor whose graph holds them. Before, they were a suspect of their own
(``Tensor(scalar, float64, cpu)``, cause unknown, no line, no root) listed beside the real
allocation, as if a second leak."""

from __future__ import annotations

from pathlib import Path

import pytest

from vramguard.diagnosis import Cause
from vramguard.runner import run_check
from vramguard.target import load_target

TARGETS = Path(__file__).parent / "targets" / "wrapped_scalars.py"


def _marked_lines() -> dict[str, int]:
    # handler name -> the line marked "# LEAK" inside it
    found: dict[str, int] = {}
    current = ""
    for number, text in enumerate(TARGETS.read_text().splitlines(), 1):
        if text.startswith("def "):
            current = text[4:text.index("(")]
        if "# LEAK" in text:
            found[current] = number
    return found


@pytest.mark.parametrize(("handler", "root"), [
    ("scaled_losses", "losses (global list in module"),
    ("accumulated", "total (global Tensor in module"),
])
def test_wrapped_scalars_go_with_the_tensor_whose_graph_holds_them(handler: str,
                                                                   root: str) -> None:
    report = run_check(handler, load_target(f"{TARGETS}:{handler}"), requests=120,
                       diagnosis_requests=20)
    assert report.verdict.is_leak, report.verdict.reason
    top = report.suspects[0]
    assert top.cause == Cause.AUTOGRAD_GRAPH, top
    assert top.allocated_at is not None, top
    assert Path(top.allocated_at.file).resolve() == TARGETS.resolve()
    assert top.allocated_at.line == _marked_lines()[handler], top.allocated_at
    assert top.held_by is not None
    assert top.held_by.startswith(root), top.held_by
    for suspect in report.suspects:
        growth = suspect.tensors
        # no suspect is a group of the scalars: 0-dim, float64/int64 (a Python number's dtype)
        assert growth is None or growth.shape != () or growth.dtype not in ("float64", "int64"), \
            suspect

