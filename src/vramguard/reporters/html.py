"""The HTML report: one self-contained file (no network: styles, chart and script inline).

``chart_model`` turns a :class:`~vramguard.report.Report` into plain chart geometry (pure,
unit-tested); ``render_html`` writes the page around it: the verdict, an SVG chart of allocated
memory over requests with the fitted trend, the warm-up shaded and the detection point marked,
then the suspects with their allocation sites, reference paths, causes and fixes. Diagnosis
fields that are ``None`` are not shown.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from html import escape
from pathlib import Path

import numpy as np

from vramguard.analysis.suspects import Suspect
from vramguard.analysis.trend import fit_trend
from vramguard.analysis.verdict import VerdictKind
from vramguard.report import Report as CheckResult
from vramguard.reporters._html_assets import CSS, SCRIPT
from vramguard.units import format_bytes

# Geometry of the SVG viewBox; the page scales it to its width.
_WIDTH, _HEIGHT = 900, 340
_LEFT, _RIGHT, _TOP, _BOTTOM = 78, 18, 16, 40
_MAX_POINTS = 1200  # a polyline beyond this adds bytes, not information
# Content-Security-Policy: the page may load nothing at all, so it cannot phone home.
_CSP = ("default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; "
        "img-src data:")


_CODE_SPAN = re.compile(r"`([^`]+)`")


def _prose(text: str) -> str:
    """Escaped text with Markdown code spans (`x`) as ``<code>``: the fixes and reasons use them."""
    return _CODE_SPAN.sub(r"<code>\1</code>", escape(text))


@dataclass(frozen=True, slots=True)
class ChartModel:
    """What the chart shows, in data units (requests, bytes); no pixels yet.

    ``trend`` is the fitted line over the verdict's window as ((x0, y0), (x1, y1)), None when it
    could not be fitted; ``detection`` is (request, bytes) where the leak was first evident.
    """

    points: tuple[tuple[int, int], ...]
    reserved: tuple[tuple[int, int], ...]
    warmup: int
    trend: tuple[tuple[float, float], tuple[float, float]] | None
    detection: tuple[int, int] | None
    slope: float | None

    def __str__(self) -> str:
        slope = "no trend" if self.slope is None else (
            f"trend {format_bytes(self.slope, signed=True)}/request")
        return f"chart of {len(self.points)} samples, warm-up {self.warmup}, {slope}"


def chart_model(result: CheckResult) -> ChartModel:
    """The chart's data: allocated memory per sample, the trend after warm-up, the detection."""
    points = tuple((s.request, s.allocated) for s in result.samples if s.allocated is not None)
    reserved = tuple((s.request, s.reserved) for s in result.samples if s.reserved is not None)
    window = [(x, y) for x, y in points if x >= result.warmup]
    trend = None
    slope: float | None = None
    if len(window) >= 3:
        xs = np.asarray([x for x, _ in window], dtype=float)
        ys = np.asarray([y for _, y in window], dtype=float)
        growth = result.verdict.growth
        if growth is not None and result.verdict.kind is VerdictKind.LEAK:
            # The verdict's own slope, so chart and text agree; Theil-Sen's intercept for it.
            slope = growth.bytes_per_request
            intercept = float(np.median(ys) - slope * np.median(xs))
        else:
            idx = np.unique(np.linspace(0, xs.size - 1, min(xs.size, 200)).round().astype(int))
            fitted = fit_trend(xs[idx], ys[idx])
            if fitted is not None:
                slope, intercept = fitted.slope, fitted.intercept
        if slope is not None:
            first, last = float(xs[0]), float(xs[-1])
            trend = ((first, intercept + slope * first), (last, intercept + slope * last))
    detection = None
    if result.verdict.detected_after is not None and points:
        at = result.verdict.detected_after
        nearest = min(points, key=lambda p: abs(p[0] - at))
        detection = (at, nearest[1])
    return ChartModel(_thin(points), _thin(reserved), result.warmup, trend, detection, slope)


def _thin(points: tuple[tuple[int, int], ...]) -> tuple[tuple[int, int], ...]:
    """At most ``_MAX_POINTS`` (+ the last), evenly spaced: enough for the eye, small files."""
    if len(points) <= _MAX_POINTS:
        return points
    step = len(points) / _MAX_POINTS
    return (*(points[int(i * step)] for i in range(_MAX_POINTS)), points[-1])


@dataclass(frozen=True, slots=True)
class _Scale:
    x0: float
    x1: float
    y0: float
    y1: float

    def x(self, value: float) -> float:
        width = _WIDTH - _LEFT - _RIGHT
        return _LEFT + (value - self.x0) / ((self.x1 - self.x0) or 1) * width

    def y(self, value: float) -> float:
        height = _HEIGHT - _TOP - _BOTTOM
        return _TOP + height - (value - self.y0) / ((self.y1 - self.y0) or 1) * height


def _scale(chart: ChartModel, requests: int) -> _Scale:
    values = [float(y) for _, y in (*chart.points, *chart.reserved)]
    if chart.trend is not None:
        values += [chart.trend[0][1], chart.trend[1][1]]
    low, high = (min(values), max(values)) if values else (0.0, 1.0)
    pad = (high - low) * 0.08 or max(abs(high) * 0.05, 1.0)
    return _Scale(0.0, float(max(requests - 1, 1)), max(0.0, low - pad), high + pad)


def _ticks(low: float, high: float, count: int = 5) -> list[float]:
    span = (high - low) or 1.0
    raw = span / count
    magnitude = 10 ** np.floor(np.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    first = np.ceil(low / step) * step
    return [float(first + i * step) for i in range(count + 2) if first + i * step <= high]


def _byte_ticks(low: float, high: float) -> list[float]:
    """Ticks at round binary sizes (64 KiB, 128 KiB, ...) so the labels read as round numbers."""
    unit = 1024.0 ** max(0, int(np.log(max(high, 1.0)) / np.log(1024)))
    return [tick * unit for tick in _ticks(low / unit, high / unit)]


def _y_labels(s: _Scale) -> list[float]:
    """The axis's two ends, labelled, and the round ticks between that do not crowd them."""
    gap = (s.y1 - s.y0) * 0.08  # about 24 px of the plot's height
    inner = [v for v in _byte_ticks(s.y0, s.y1) if s.y0 + gap < v < s.y1 - gap]
    return [s.y0, *inner, s.y1]


def render_svg(chart: ChartModel, requests: int) -> str:
    """The chart as an inline ``<svg>`` element (drawn by the browser without any script)."""
    s = _scale(chart, requests)
    out = [f'<svg id="chart" class="chart" viewBox="0 0 {_WIDTH} {_HEIGHT}" role="img" '
           f'aria-label="allocated memory over requests">']
    bottom, right = _HEIGHT - _BOTTOM, _WIDTH - _RIGHT
    if chart.warmup > 0:
        out.append(f'<rect class="warmup" x="{_LEFT}" y="{_TOP}" '
                   f'width="{max(0.0, s.x(chart.warmup) - _LEFT):.1f}" height="{bottom - _TOP}">'
                   f"<title>warm-up: first {chart.warmup} requests, ignored</title></rect>")
        out.append(f'<text class="label" x="{_LEFT + 6}" y="{_TOP + 14}">warm-up</text>')
    for value in _y_labels(s):
        y = s.y(value)
        out.append(f'<line class="grid" x1="{_LEFT}" x2="{right}" y1="{y:.1f}" y2="{y:.1f}"/>')
        out.append(f'<text class="tick y-tick" x="{_LEFT - 6}" y="{y + 4:.1f}" '
                   f'text-anchor="end">{escape(format_bytes(value))}</text>')
    for value in _ticks(s.x0, s.x1):
        x = s.x(value)
        out.append(f'<text class="tick" x="{x:.1f}" y="{bottom + 16}" text-anchor="middle">'
                   f"{value:.0f}</text>")
    out.append(f'<text class="tick" x="{(_LEFT + right) / 2:.0f}" y="{_HEIGHT - 4}" '
               f'text-anchor="middle">request</text>')
    out.append(f'<line class="axis" x1="{_LEFT}" x2="{right}" y1="{bottom}" y2="{bottom}"/>')
    out.append(f'<line class="axis" x1="{_LEFT}" x2="{_LEFT}" y1="{_TOP}" y2="{bottom}"/>')
    if chart.reserved:
        coords = " ".join(f"{s.x(x):.1f},{s.y(y):.1f}" for x, y in chart.reserved)
        out.append(f'<polyline class="reserved" points="{coords}"><title>reserved</title></polyline>')
    coords = " ".join(f"{s.x(x):.1f},{s.y(y):.1f}" for x, y in chart.points)
    out.append(f'<polyline class="series" points="{coords}"><title>allocated</title></polyline>')
    if chart.trend is not None:
        (tx0, ty0), (tx1, ty1) = chart.trend
        out.append(f'<line class="trend" x1="{s.x(tx0):.1f}" y1="{s.y(ty0):.1f}" '
                   f'x2="{s.x(tx1):.1f}" y2="{s.y(ty1):.1f}"><title>fitted trend '
                   f"{escape(format_bytes(chart.slope, signed=True))}/request</title></line>")
    if chart.detection is not None:
        at, level = chart.detection
        x = s.x(at)
        out.append(f'<line class="detect" x1="{x:.1f}" x2="{x:.1f}" y1="{_TOP}" y2="{bottom}"/>')
        out.append(f'<circle class="detect-dot" cx="{x:.1f}" cy="{s.y(level):.1f}" r="5">'
                   f"<title>leak detected after request {at}</title></circle>")
        anchor = "end" if x > _WIDTH * 0.7 else "start"
        offset = -6 if anchor == "end" else 6
        out.append(f'<text class="label" x="{x + offset:.1f}" y="{_TOP + 30}" '
                   f'text-anchor="{anchor}">detected after request {at}</text>')
    out.append('<circle class="hover" cx="0" cy="0" r="0"/>')
    out.append("</svg>")
    return "\n".join(out)


def _chart_data(chart: ChartModel, requests: int) -> str:
    s = _scale(chart, requests)
    data = {
        "x0": s.x0, "x1": s.x1,
        "view": {"width": _WIDTH, "left": _LEFT, "plotWidth": _WIDTH - _LEFT - _RIGHT},
        "points": [[x, y, round(s.x(x), 1), round(s.y(y), 1)] for x, y in chart.points],
    }
    # "</" inside a script element would end it early; JSON allows the escaped slash.
    return json.dumps(data, separators=(",", ":")).replace("</", "<\\/")


def _suspect_html(rank: int, suspect: Suspect) -> str:
    t = suspect.tensors
    cause = f'<span class="cause">{escape(suspect.cause)}</span>' if suspect.cause else ""
    if t is None:  # growth outside this process's tensors (worker processes)
        parts = [f'<section class="suspect"><h3>{rank}. Child processes{cause}</h3>']
    else:
        # The text report's words: "Tensor(8x128, float32, cpu, grad_fn=ReluBackward0)", then
        # the counts, so the two reports name a suspect the same way.
        head, _, counts = str(t).partition("): ")
        parts = [f'<section class="suspect"><h3>{rank}. {escape(head)}){cause}</h3>',
                 f"<p>{escape(counts)}</p>"]
    parts.append('<dl class="facts">')
    if suspect.retained_bytes is not None:
        parts.append(f"<dt>retains</dt><dd>{escape(format_bytes(suspect.retained_bytes))}</dd>")
    if suspect.allocated_at is not None:
        parts.append(f"<dt>allocated at</dt><dd><code>{escape(str(suspect.allocated_at))}"
                     f"</code></dd>")
    if suspect.held_by is not None:
        parts.append(f"<dt>held by</dt><dd><code>{escape(suspect.held_by)}</code></dd>")
    parts.append("</dl>")
    if suspect.fix is not None:
        parts.append(f'<div class="fix"><strong>Fix:</strong> {_prose(suspect.fix)}</div>')
    if suspect.stack:
        frames = "\n".join(escape(str(site)) for site in suspect.stack)
        count = len(suspect.stack)
        parts.append(f"<details><summary>allocation stack ({count} frame{'s' * (count != 1)})"
                     f"</summary><pre>{frames}</pre></details>")
    parts.append("</section>")
    return "\n".join(parts)


def render_html(result: CheckResult) -> str:
    """The whole report as one HTML document (UTF-8 text)."""
    verdict = result.verdict
    chart = chart_model(result)
    kind = verdict.kind.value
    facts = [("target", result.target), ("device", result.device),
             ("requests", f"{result.requests} (warm-up {result.warmup})"),
             ("reason", verdict.reason)]
    if verdict.growth is not None:
        facts.append(("growth", str(verdict.growth)))
    if verdict.detected_after is not None:
        facts.append(("detected after", f"request {verdict.detected_after}"))
    facts.append(("memory", f"{format_bytes(verdict.start_bytes)} -> "
                            f"{format_bytes(verdict.end_bytes)} of "
                            f"{format_bytes(verdict.capacity_bytes)}"))
    fact_rows = "\n".join(f"<dt>{escape(k)}</dt><dd>{_prose(v)}</dd>" for k, v in facts)
    warnings = ""
    if verdict.warnings:
        items = "\n".join(f"<li>{_prose(w)}</li>" for w in verdict.warnings)
        warnings = f'<h2>Warnings</h2><ul class="warnings">{items}</ul>'
    if result.suspects:
        suspects = "\n".join(_suspect_html(i, s) for i, s in enumerate(result.suspects, 1))
    else:
        suspects = '<p class="muted">No growing tensor groups.</p>'
    legend = ['<span class="l-series">allocated</span>']
    if chart.trend is not None:
        legend.append('<span class="l-trend">fitted trend</span>')
    if chart.warmup:
        legend.append('<span class="l-warmup">warm-up (ignored)</span>')
    if chart.detection is not None:
        legend.append('<span class="l-detect">detection</span>')
    title = f"vramguard: {verdict.kind.label} in {result.target}"
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{_CSP}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{escape(title)}</title>
<style>{CSS}</style>
</head>
<body>
<h1>vramguard check <span class="verdict {escape(kind)}">{escape(verdict.kind.label)}</span></h1>
<p class="muted">{escape(str(verdict))}</p>
<dl class="facts">
{fact_rows}
</dl>
{warnings}
<h2>Memory over requests</h2>
<figure>
{render_svg(chart, result.requests)}
<figcaption class="legend">{"".join(legend)}</figcaption>
</figure>
<div id="readout">{escape(str(chart))}</div>
<h2>Suspects</h2>
{suspects}
<script type="application/json" id="vg-data">{_chart_data(chart, result.requests)}</script>
<script>{SCRIPT}</script>
</body>
</html>
"""


def write_html(result: CheckResult, path: str | os.PathLike[str]) -> Path:
    """Write the report to ``path`` (UTF-8) and return it."""
    target = Path(path)
    target.write_text(render_html(result), encoding="utf-8")
    return target
