"""The HTML report from hand-made results: chart geometry, what is shown, escaping, no network."""

from __future__ import annotations

import re

import pytest

from vramguard.analysis.samples import Sample
from vramguard.analysis.suspects import Site, Suspect, TensorGrowth
from vramguard.analysis.verdict import Growth, Verdict, VerdictKind
from vramguard.reporters.html import chart_model, render_html, render_svg
from vramguard.runner import CheckResult

KIB = 1024


def result(kind: VerdictKind = VerdictKind.LEAK, *, requests: int = 100, warmup: int = 10,
           detected: int | None = 40, suspects: tuple[Suspect, ...] = (),
           slope: float = 2 * KIB) -> CheckResult:
    samples = tuple(Sample(request=i, time=i * 0.01, allocated=100 * KIB + int(slope) * i)
                    for i in range(requests))
    growth = Growth(slope, (slope * 0.9, slope * 1.1), None, None, None)
    verdict = Verdict(kind, requests, warmup, detected,
                      growth if kind is VerdictKind.LEAK else None,
                      samples[warmup].allocated, samples[-1].allocated, None, (),
                      "allocated memory grew steadily")
    return CheckResult("app.py:predict", "cpu", requests, warmup, verdict, suspects, samples)


def tensors() -> TensorGrowth:
    return TensorGrowth("cpu", "float32", (4, 16), True, "AddmmBackward0", 90, 90 * 256)


def diagnosed() -> Suspect:
    return Suspect(
        tensors(), retained_bytes=777 * KIB, allocated_at=Site("app.py", 12, "predict"),
        stack=(Site("app.py", 12, "predict"), Site("server.py", 40, "handle")),
        held_by="results (global list in module app) -> [137] -> Tensor(4, 16)",
        cause="autograd_graph",
        fix="predict() keeps outputs in `results`: append out.detach() <script>alert(1)</script>",
    )


def test_chart_model_uses_the_verdict_slope_and_marks_warmup_and_detection() -> None:
    chart = chart_model(result())
    assert len(chart.points) == 100
    assert chart.warmup == 10
    assert chart.slope == 2 * KIB
    (x0, y0), (x1, y1) = chart.trend or ((0, 0), (0, 0))
    assert (x0, x1) == (10, 99)  # the trend covers the verdict's window, not the warm-up
    assert y0 == pytest.approx(100 * KIB + 2 * KIB * 10)
    assert y1 == pytest.approx(100 * KIB + 2 * KIB * 99)
    assert chart.detection == (40, 100 * KIB + 2 * KIB * 40)


def test_chart_model_fits_its_own_trend_without_a_leak() -> None:
    chart = chart_model(result(VerdictKind.NO_LEAK, detected=None, slope=0))
    assert chart.detection is None
    assert chart.slope == pytest.approx(0)
    assert chart.trend is not None


def test_chart_model_thins_long_runs() -> None:
    chart = chart_model(result(requests=5000, warmup=100, detected=None))
    assert 1000 < len(chart.points) <= 1201
    assert chart.points[-1][0] == 4999


def test_svg_draws_series_trend_warmup_and_detection_in_the_plot() -> None:
    svg = render_svg(chart_model(result()), 100)
    coords = re.search(r'class="series" points="([^"]+)"', svg)
    assert coords is not None
    pairs = [tuple(map(float, p.split(","))) for p in coords.group(1).split()]
    assert len(pairs) == 100
    xs, ys = [p[0] for p in pairs], [p[1] for p in pairs]
    assert xs == sorted(xs)
    assert ys[0] > ys[-1]  # memory grows, SVG y grows downwards
    assert 'class="trend"' in svg
    assert 'class="warmup"' in svg
    assert "detected after request 40" in svg


def test_report_shows_every_diagnosis_field_escaped() -> None:
    page = render_html(result(suspects=(diagnosed(),)))
    assert "app.py:12 in predict()" in page
    assert "server.py:40 in handle()" in page  # the stack
    assert "results (global list in module app) -&gt; [137] -&gt; Tensor(4, 16)" in page
    assert "autograd_graph" in page
    assert "777.0 KiB" in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<script>alert(1)" not in page


def test_report_hides_diagnosis_fields_that_are_none() -> None:
    page = render_html(result(suspects=(Suspect(tensors()),)))
    assert "Tensor(4x16, float32, cpu, grad_fn=AddmmBackward0)" in page
    for label in ("allocated at", "held by", "retains", "Fix:", "allocation stack"):
        assert label not in page
    assert "None" not in page


def test_report_shows_a_child_process_suspect() -> None:
    suspect = Suspect(None, retained_bytes=64 * KIB * KIB, cause="worker_process_growth",
                      fix="use persistent_workers=False")
    page = render_html(result(suspects=(suspect,)))
    assert "Child processes" in page
    assert "worker_process_growth" in page


def test_report_is_self_contained() -> None:
    page = render_html(result(suspects=(diagnosed(),)))
    assert "http://" not in page
    assert "https://" not in page
    assert not re.search(r"<(script|link|img|iframe)[^>]*\b(src|href)=", page)
    assert "default-src 'none'" in page  # the browser itself refuses any load


def test_report_for_an_inconclusive_run_with_no_samples() -> None:
    empty = result(VerdictKind.INCONCLUSIVE, detected=None)
    empty = CheckResult(empty.target, empty.device, 1, 0, empty.verdict, (), ())
    page = render_html(empty)
    assert "inconclusive" in page
    assert "No growing tensor groups." in page


def test_suspect_title_is_the_text_reports() -> None:
    grad_only = TensorGrowth("cpu", "float32", (8, 128), True, "ReluBackward0", 179, 716 * KIB)
    page = render_html(result(suspects=(Suspect(grad_only),)))
    head = str(grad_only).partition("): ")[0] + ")"
    assert head == "Tensor(8x128, float32, cpu, grad_fn=ReluBackward0)"
    assert f"<h3>1. {head}</h3>" in page
    assert "<p>+179 tensors, +716.0 KiB</p>" in page


def test_code_spans_become_code_elements_and_stay_escaped() -> None:
    page = render_html(result(suspects=(diagnosed(),)))
    assert "keeps outputs in <code>results</code>: append" in page
    assert "`results`" not in page
    assert "&lt;script&gt;" in page  # the rest of the fix is still escaped text


def test_y_axis_is_labelled_at_both_ends() -> None:
    chart = chart_model(result())
    svg = render_svg(chart, 100)
    ys = [float(y) for y in re.findall(r'class="tick y-tick" x="[\d.]+" y="([\d.]+)"', svg)]
    assert len(ys) >= 3
    top, bottom = 16, 340 - 40  # the plot's edges in the viewBox
    assert min(ys) == pytest.approx(top + 4)
    assert max(ys) == pytest.approx(bottom + 4)
    assert all(b - a >= 20 for a, b in zip(sorted(ys), sorted(ys)[1:], strict=False))  # no overlap


def test_trend_is_drawn_on_top_of_the_series() -> None:
    svg = render_svg(chart_model(result()), 100)
    assert svg.index('class="series"') < svg.index('class="trend"')
