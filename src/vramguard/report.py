"""The report value: what a check, a Guard, a callback or the pytest marker found, in one object.

:class:`Report` is the value behind the ``vramguard.check/1`` JSON document: the verdict, the
samples behind it, the suspects (site, root, cause, fix) and what the diagnosis cost. It prints
itself (``str(report)``: the plain-text report), turns into the JSON document (``to_dict()``) and
writes the HTML report (``to_html(path)``). The reporters import this module, never the drivers
(runner, guard) that produce reports, so there is no import circle through them.
"""

from __future__ import annotations

import io
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from vramguard.analysis.samples import Sample
from vramguard.analysis.suspects import Suspect
from vramguard.analysis.verdict import Verdict, VerdictKind

Unit = Literal["request", "step"]
UNITS: tuple[Unit, ...] = ("request", "step")


@dataclass(frozen=True, slots=True)
class DiagnosisTimings:
    """What explaining a leak cost: the tracked window (user code ran) and the analysis after it."""

    steps: int  # requests/steps run under the site tracker (0: sites tracked over the whole run)
    window_s: float
    analysis_s: float

    @property
    def total_s(self) -> float:
        """Window plus analysis, seconds."""
        return self.window_s + self.analysis_s

    def __str__(self) -> str:
        return f"{self.steps}-step window {self.window_s:.2f} s + analysis {self.analysis_s:.2f} s"


@dataclass(frozen=True, slots=True)
class Report:
    """Everything a check found: the verdict, the growing tensors and the samples behind them.

    ``unit`` names what one step is in the wording ("+4.0 KiB/step" for training, "/request" for
    services). ``diagnosis`` is None when no diagnosis ran (no leak, or ``diagnose="never"``).
    """

    target: str
    device: str
    requests: int
    warmup: int
    verdict: Verdict
    suspects: tuple[Suspect, ...]
    samples: tuple[Sample, ...]
    diagnosis_seconds: float | None = None  # the diagnosis window and its analysis; None: not run
    unit: Unit = "request"
    diagnosis: DiagnosisTimings | None = None

    @property
    def is_leak(self) -> bool:
        """True when the verdict is a leak (of any kind that fails a check)."""
        return self.verdict.is_leak

    @property
    def headline(self) -> str:
        """"GPU memory leak on cuda:0", "memory leak on cpu", "no memory leak on cpu", ..."""
        memory = "memory" if self.device in ("cpu", "server") or self.device.startswith("pid ") \
            else "GPU memory"
        if self.verdict.kind is VerdictKind.NO_LEAK:
            return f"no {memory} leak on {self.device}"
        if self.verdict.kind is VerdictKind.INCONCLUSIVE:
            return f"inconclusive {memory} check on {self.device}"
        return f"{memory} leak on {self.device}"

    def words(self, text: str) -> str:
        """``text`` (written in requests, as the verdict's strings are) in this report's unit."""
        return reword(text, self.unit)

    def render(self, stream: Any, *, color: bool | None = False) -> None:
        """Write the text report to ``stream`` (``color=None``: rich when it is a terminal)."""
        from vramguard.reporters.text import render_check

        render_check(self, stream, color=color)

    def to_dict(self) -> dict[str, Any]:
        """The ``vramguard.check/1`` JSON document, as a JSON-ready dict."""
        from vramguard.reporters.json_report import check_document

        return check_document(self)

    def to_html(self, path: str | os.PathLike[str]) -> Path:
        """Write the self-contained HTML report (chart and suspects) to ``path``; returns it."""
        from vramguard.reporters.html import write_html

        return write_html(self, path)

    def write(self, path: str | os.PathLike[str]) -> Path:
        """Write the report in the format the suffix names: ``.html``, ``.json``, else text."""
        target = Path(path)
        suffix = target.suffix.lower()
        if suffix in (".html", ".htm"):
            return self.to_html(target)
        if suffix == ".json":
            import json

            target.write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")
            return target
        target.write_text(str(self), encoding="utf-8")
        return target

    def __str__(self) -> str:
        stream = io.StringIO()
        self.render(stream, color=False)
        return stream.getvalue()

    def __repr__(self) -> str:
        return (f"Report(target={self.target!r}, device={self.device!r}, "
                f"verdict={self.verdict.kind.value!r}, {self.unit}s={self.requests}, "
                f"suspects={len(self.suspects)})")


# The verdict's strings are worded in requests; these patterns touch only the counting uses
# ("after 40 requests", "/request", "request 12", "requests 10..39"), never prose such as
# "too fragmented to satisfy requests".
_COUNTED = (
    (re.compile(r"/request\b"), "/{unit}"),
    (re.compile(r"(\d) requests\b"), r"\1 {unit}s"),
    (re.compile(r"\brequests (\d)"), r"{unit}s \1"),
    (re.compile(r"\brequest (\d)"), r"{unit} \1"),
    (re.compile(r"(\d) request\b"), r"\1 {unit}"),
)


def reword(text: str, unit: Unit) -> str:
    """Pure: ``text`` with counted requests renamed to ``unit`` ("step"); unchanged for requests."""
    if unit == "request":
        return text
    for pattern, replacement in _COUNTED:
        text = pattern.sub(replacement.format(unit=unit), text)
    return text
