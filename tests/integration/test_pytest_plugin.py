"""The pytest plugin through pytester: real inner pytest runs with the entry-point plugin."""

from __future__ import annotations

import pytest

# Imported here so pytester's in-process runs (which restore sys.modules afterwards) never load
# these extension modules a second time.
import torch  # noqa: F401

import vramguard.reporters.text
import vramguard.runner  # noqa: F401

pytest_plugins = ["pytester"]

LEAKY_AND_CLEAN = """
import pytest
import torch

kept = []

@pytest.mark.no_vram_leak(iterations=40, warmup=4, device="cpu")
def test_leaks():
    kept.append(torch.randn(256))

@pytest.mark.no_vram_leak(iterations=40, warmup=4, device="cpu")
def test_clean():
    torch.randn(256).sum()

def test_unmarked_runs_once():
    kept.append(None)
    assert kept.count(None) == 1
"""


def test_leaking_test_fails_with_the_diagnosis_and_clean_one_passes(
        pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_model=LEAKY_AND_CLEAN)
    result = pytester.runpytest("-p", "no:cacheprovider", "--strict-markers",
                                "-W", "error")
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines([
        "*test_leaks*",
        "*GPU memory leak in the test body*",
        "LEAK *test_leaks* on cpu after 40 requests*",
        "*growing tensors:*",
        "*1. Tensor(256, float32, cpu)*",
    ])
    assert "test_clean FAILED" not in result.stdout.str()


def test_the_bodys_own_failure_is_reported_as_usual(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("""
        import pytest

        @pytest.mark.no_vram_leak(iterations=20, warmup=2, device="cpu")
        def test_broken():
            assert 1 == 2, "plain assertion"
    """)
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*AssertionError: plain assertion*"])


def test_settings_marker_then_command_line_then_ini_then_default(
        pytester: pytest.Pytester) -> None:
    pytester.makeini("""
        [pytest]
        vramguard_iterations = 33
        vramguard_warmup = 3
    """)
    pytester.makepyfile("""
        import pytest

        def settings(request):
            plugin = request.config.pluginmanager.get_plugin("vramguard-state")
            return plugin.settings(request.node.get_closest_marker("no_vram_leak"))

        @pytest.mark.no_vram_leak(iterations=21, device="cpu")
        def test_marker_wins(request):
            s = settings(request)
            assert (s.iterations, s.warmup, s.device) == (21, 5, "cpu")

        def test_fixture_sees_the_command_line_and_ini(request, vram_guard):
            s = settings(request)
            assert (s.iterations, s.warmup, s.device) == (33, 5, "cpu")
            assert str(vram_guard.device) == "cpu"
    """)
    result = pytester.runpytest("-p", "no:cacheprovider", "--vramguard-warmup=5",
                                "--vramguard-device=cpu")
    result.assert_outcomes(passed=2)


def test_vram_guard_fixture_drives_steps(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("""
        import torch

        kept = []

        def test_guarded_loop(vram_guard):
            for _ in range(40):
                with vram_guard.step():
                    kept.append(torch.randn(128))
            assert vram_guard.verdict().is_leak
    """)
    result = pytester.runpytest("-p", "no:cacheprovider", "--vramguard-device=cpu")
    result.assert_outcomes(passed=1)
