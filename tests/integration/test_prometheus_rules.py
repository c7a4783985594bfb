"""The shipped alert rules pass `promtool check rules` and their own `promtool test rules`."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

RULES_DIR = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"
PROMTOOL = shutil.which("promtool")
pytestmark = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool not installed (apt-get install --no-install-recommends "
    "prometheus); CI installs it")


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, *args], cwd=RULES_DIR, capture_output=True, text=True,
                          timeout=60, check=False)


def test_rules_are_valid() -> None:
    done = promtool("check", "rules", "vramguard-rules.yml")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "5 rules found" in done.stdout


def test_rule_unit_tests_pass() -> None:
    done = promtool("test", "rules", "vramguard-rules.test.yml")
    assert done.returncode == 0, done.stdout + done.stderr


def test_rule_tests_can_fail(tmp_path: Path) -> None:
    # The tests are not vacuous: a rule at 99% instead of 90% breaks them.
    rules = (RULES_DIR / "vramguard-rules.yml").read_text().replace("> 0.90", "> 0.99")
    (tmp_path / "vramguard-rules.yml").write_text(rules)
    shutil.copy(RULES_DIR / "vramguard-rules.test.yml", tmp_path)
    assert PROMTOOL is not None
    done = subprocess.run([PROMTOOL, "test", "rules", "vramguard-rules.test.yml"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode != 0
    assert "VramguardGpuMemoryHigh" in done.stdout + done.stderr


def test_leak_rule_watches_the_guard_verdict() -> None:
    text = (RULES_DIR / "vramguard-rules.yml").read_text()
    assert "vramguard_guard_leak == 1" in text
