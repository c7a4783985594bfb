"""The HTML report in a real headless browser (Debian's chromium): it renders, the chart is drawn,
no console errors, nothing loaded from the network; and ``vramguard check --report`` writes it."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch")

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_browser = pytest.mark.skipif(
    CHROMIUM is None, reason="needs Debian's chromium (scripts/test installs it)")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run")


def browse(page: Path, profile: Path, *action: str) -> tuple[str, list[str]]:
    """Open ``page`` in chromium; (stdout, console messages). ``--dump-dom`` runs the scripts
    first, and ``--enable-logging=stderr`` prints every console message and uncaught error."""
    assert CHROMIUM is not None
    done = subprocess.run(
        [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0",
         *action, page.as_uri()],
        capture_output=True, text=True, timeout=90, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    console = [line for line in done.stderr.splitlines() if ":CONSOLE" in line]
    return done.stdout, console


LEAKY = """
    import torch
    kept = []
    def handle(i):
        kept.append(torch.randn(8, 10, requires_grad=True) * 2)
"""


@dataclass(frozen=True)
class Checked:
    report: Path
    document: dict[str, Any]
    stderr: str
    returncode: int


@pytest.fixture(scope="module")
def checked(tmp_path_factory: pytest.TempPathFactory) -> Checked:
    """One real ``vramguard check --json --report`` of a leaky target, shared by the tests."""
    # A long folder name: real paths are long, and the report must wrap them on a phone.
    root = tmp_path_factory.mktemp("check") / "a_service_with_a_rather_long_folder_name" / "src"
    root.mkdir(parents=True)
    app = root / "inference_handlers_for_the_report_test.py"
    app.write_text(textwrap.dedent(LEAKY))
    report = root / "out.html"
    done = subprocess.run(
        [sys.executable, "-m", "vramguard", "check", f"{app}:handle", "--requests", "120",
         "--device", "cpu", "--json", "--report", str(report)],
        capture_output=True, text=True, timeout=240, check=False)
    return Checked(report, json.loads(done.stdout), done.stderr, done.returncode)


def copy_of(checked: Checked, tmp_path: Path) -> Path:
    page = tmp_path / "report.html"
    shutil.copyfile(checked.report, page)
    return page


def test_check_cli_writes_the_report(checked: Checked) -> None:
    assert checked.returncode == 1, checked.stderr
    assert f"HTML report written to {checked.report}" in checked.stderr
    page = checked.report.read_text()
    assert page.startswith("<!DOCTYPE html>")
    assert 'class="verdict leak"' in page
    assert 'class="series"' in page
    assert checked.document["verdict"] == "leak"


@needs_browser
def test_report_renders_with_its_chart_and_no_console_errors(
        checked: Checked, tmp_path: Path) -> None:
    dom, console = browse(copy_of(checked, tmp_path), tmp_path / "profile", "--dump-dom")
    assert console == []
    root = re.search(r"<html[^>]*>", dom)
    assert root is not None
    assert 'data-chart="drawn"' in root.group(0)  # set by the page after the browser laid it out
    assert 'data-points="120"' in root.group(0)  # one point per request
    assert f"detected after request {checked.document['detected_after']}" in dom
    assert checked.document["suspects"]
    for suspect in checked.document["suspects"]:
        site = suspect["allocated_at"]
        if site is not None:  # whatever the diagnosis filled is on the page
            assert _escaped(f"{site['file']}:{site['line']} in {site['function']}()") in dom
        for field in ("held_by", "fix", "cause"):
            if suspect[field] is not None:
                assert _escaped(suspect[field]) in dom


@needs_browser
def test_screenshot(checked: Checked, tmp_path: Path) -> None:
    page = copy_of(checked, tmp_path)
    shot = tmp_path / "report.png"
    _, console = browse(page, tmp_path / "profile", f"--screenshot={shot}",
                        "--window-size=1100,1300", "--hide-scrollbars")
    assert console == []
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert shot.stat().st_size > 20_000  # a blank page of that size is a few KiB


@needs_browser
@pytest.mark.parametrize(("breakage", "expected"), [
    ("<script>notAFunction();</script>", "notAFunction is not defined"),
    ('<img src="http://127.0.0.1:9/pixel.png">', "Content Security Policy"),
])
def test_browser_check_catches_errors_and_network_loads(
        checked: Checked, tmp_path: Path, breakage: str, expected: str) -> None:
    # The check above can fail: a broken script or a network load shows up as console output.
    page = copy_of(checked, tmp_path)
    page.write_text(page.read_text().replace("</body>", f"{breakage}</body>"))
    _, console = browse(page, tmp_path / "profile", "--dump-dom")
    assert any(expected in line for line in console), console


def _escaped(text: str) -> str:
    escaped = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", escaped)  # code spans are <code> elements



def test_check_cli_refuses_a_report_in_a_missing_directory(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "vramguard", "check", "nowhere.py:f", "--report",
         str(tmp_path / "missing" / "out.html")],
        capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2
    assert "--report" in done.stderr


# Run inside the page (inline scripts are allowed by its CSP): what a reader would see, measured.
MEASURE = """<script>
(function () {
  var root = document.documentElement, over = [];
  document.querySelectorAll("body, .suspect, dl.facts, dd, h3, .fix, p").forEach(function (e) {
    if (e.scrollWidth > e.clientWidth) {
      over.push(e.tagName + "." + e.className + " " + e.scrollWidth + ">" + e.clientWidth);
    }
  });
  var series = document.querySelector("svg .series"), trend = document.querySelector("svg .trend");
  var axes = document.querySelectorAll("svg line.axis"), yAxis = axes[1].getBBox();
  var labels = Array.prototype.map.call(document.querySelectorAll("svg .y-tick"), function (t) {
    var box = t.getBBox(); return box.y + box.height / 2;
  });
  root.setAttribute("data-measure", JSON.stringify({
    width: window.innerWidth, scroll: root.scrollWidth, client: root.clientWidth, over: over,
    trendDash: getComputedStyle(trend).strokeDasharray,
    trendWidth: parseFloat(getComputedStyle(trend).strokeWidth),
    seriesWidth: parseFloat(getComputedStyle(series).strokeWidth),
    trendOnTop: Boolean(series.compareDocumentPosition(trend) & Node.DOCUMENT_POSITION_FOLLOWING),
    axisTop: yAxis.y, axisBottom: yAxis.y + yAxis.height, labels: labels,
    codes: document.querySelectorAll(".fix code").length
  }));
})();
</script>"""


# Headless chromium's window is at least 500 px wide: a narrower viewport is an iframe of that
# width (its own viewport, media queries included); the frame's measurement is copied out.
FRAME = """<!DOCTYPE html><html><body style="margin:0">
<iframe id="frame" src="report.html" style="width:{width}px;height:900px;border:0"></iframe>
<script>
document.getElementById("frame").addEventListener("load", function () {{
  var inner = this.contentDocument.documentElement;
  document.documentElement.setAttribute("data-measure", inner.getAttribute("data-measure"));
}});
</script></body></html>"""


def measured(checked: Checked, tmp_path: Path, width: int) -> dict[str, Any]:
    page = copy_of(checked, tmp_path)
    page.write_text(page.read_text().replace("</body>", f"{MEASURE}</body>"))
    frame = tmp_path / "frame.html"
    frame.write_text(FRAME.format(width=width))
    dom, console = browse(frame, tmp_path / "profile", "--dump-dom",
                          "--allow-file-access-from-files", "--window-size=1200,1000")
    assert console == []
    found = re.search(r'data-measure="([^"]*)"', dom)
    assert found is not None, dom[:500]
    return dict(json.loads(html.unescape(found.group(1))))


@needs_browser
def test_no_horizontal_overflow_at_420_px(checked: Checked, tmp_path: Path) -> None:
    assert len(str(checked.document["suspects"][0]["allocated_at"]["file"])) > 90  # a long path
    m = measured(checked, tmp_path, 420)
    assert m["width"] == 420
    assert m["scroll"] <= m["client"], m
    assert m["over"] == [], m["over"]


@needs_browser
def test_chart_trend_on_top_dashed_and_the_y_axis_labelled_at_both_ends(
        checked: Checked, tmp_path: Path) -> None:
    m = measured(checked, tmp_path, 1100)
    assert m["trendOnTop"]
    assert m["trendDash"] not in ("", "none")
    assert m["trendWidth"] < m["seriesWidth"]  # the series shows either side of the dashes
    labels = sorted(m["labels"])
    assert abs(labels[0] - m["axisTop"]) < 2
    assert abs(labels[-1] - m["axisBottom"]) < 2
    assert m["codes"] >= 1  # the fix's `code spans` are <code>
