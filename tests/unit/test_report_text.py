"""The text report: rich escapes in a terminal, plain text in a pipe or with NO_COLOR."""

from __future__ import annotations

import io

import pytest

from tests.unit.test_report_html import diagnosed, result, tensors
from vramguard.analysis.suspects import Suspect
from vramguard.reporters.text import render_check

ESC = "\x1b["


class TerminalStream(io.StringIO):
    """A stream that says it is a terminal, as stdout does in an interactive shell."""

    def isatty(self) -> bool:
        return True


def render(stream: io.StringIO, **kwargs: bool | None) -> str:
    render_check(result(suspects=(diagnosed(),)), stream, **kwargs)  # type: ignore[arg-type]
    return stream.getvalue()


def test_terminal_gets_rich_output(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.delenv("TERM", raising=False)
    assert ESC in render(TerminalStream())


def test_pipe_gets_plain_text(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)
    text = render(io.StringIO())
    assert ESC not in text
    assert text.startswith("LEAK app.py:predict on cpu")


def test_no_color_gives_plain_text_even_in_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NO_COLOR", "1")
    text = render(TerminalStream())
    assert ESC not in text  # not even bold: rich's own no_color would keep it


def test_explicit_color_wins_over_the_stream() -> None:
    assert ESC in render(io.StringIO(), color=True)
    assert ESC not in render(TerminalStream(), color=False)


def test_each_diagnosis_fact_on_its_own_line() -> None:
    lines = render(io.StringIO()).splitlines()
    assert any(line.strip() == "allocated at: app.py:12 in predict()" for line in lines)
    assert any(line.strip().startswith("held by: results (global list in module app)")
               for line in lines)
    assert any(line.strip().startswith("fix: predict() keeps outputs") for line in lines)
    assert any("[autograd_graph]" in line for line in lines)


def test_undiagnosed_suspect_prints_no_empty_facts() -> None:
    stream = io.StringIO()
    render_check(result(suspects=(Suspect(tensors()),)), stream)
    text = stream.getvalue()
    assert "Tensor(4x16, float32, cpu" in text
    assert "held by" not in text
    assert "None" not in text
