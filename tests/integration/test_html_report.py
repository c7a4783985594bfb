"""The HTML report in a real headless browser (Debian's chromium): it renders, the chart is drawn,
no console errors, nothing loaded from the network; and ``vramguard check --report`` writes it."""

from __future__ import annotations

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
    root = tmp_path_factory.mktemp("check")
    app = root / "app.py"
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
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")



def test_check_cli_refuses_a_report_in_a_missing_directory(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "vramguard", "check", "nowhere.py:f", "--report",
         str(tmp_path / "missing" / "out.html")],
        capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2
    assert "--report" in done.stderr
