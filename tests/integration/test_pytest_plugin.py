"""The pytest plugin through pytester: real inner pytest runs with the entry-point plugin."""

from __future__ import annotations

import pytest

# Imported here so pytester's in-process runs (which restore sys.modules afterwards) never load
# these extension modules a second time.
import torch
import torch._dynamo

import vramguard.reporters.text
import vramguard.runner  # noqa: F401

pytest_plugins = ["pytester"]


def run(pytester: pytest.Pytester, *args: str, subprocess: bool = False) -> pytest.RunResult:
    """An inner pytest run as the suite runs: strict markers, warnings are errors, and the loop
    scope pytest-asyncio warns about when unset (it is installed beside anyio). ``subprocess``:
    a fresh interpreter, for runs whose async plugins must not share this process's state."""
    asyncio = () if "no:asyncio" in args else ("-o", "asyncio_default_fixture_loop_scope=function")
    runner = pytester.runpytest_subprocess if subprocess else pytester.runpytest
    return runner("-p", "no:cacheprovider", "--strict-markers", "-W", "error", *asyncio, *args)

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
    result = run(pytester)
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines([
        "*test_leaks*",
        "*Memory leak on cpu in the test body*",
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
    result = run(pytester)
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

        @pytest.mark.no_vram_leak(iterations=21, device="cpu", inconclusive="pass")
        def test_marker_wins(request):
            s = settings(request)
            assert (s.iterations, s.warmup, s.device, s.inconclusive) == (21, 5, "cpu", "pass")

        def test_fixture_sees_the_command_line_and_ini(request, vram_guard):
            s = settings(request)
            assert (s.iterations, s.warmup, s.device) == (33, 5, "cpu")
            assert str(vram_guard.device) == "cpu"
    """)
    result = run(pytester, "--vramguard-warmup=5", "--vramguard-device=cpu")
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
    result = run(pytester, "--vramguard-device=cpu")
    result.assert_outcomes(passed=1)


ASYNC_TESTS = """
import asyncio
import pytest
import torch

kept = []

@pytest.mark.no_vram_leak(iterations=40, warmup=4, device="cpu")
{mark}
async def test_async_leaks({fixture}):
    await asyncio.sleep(0)
    kept.append(torch.randn(256))

@pytest.mark.no_vram_leak(iterations=40, warmup=4, device="cpu")
{mark}
async def test_async_clean({fixture}):
    await asyncio.sleep(0)
    torch.randn(256).sum()
"""


@pytest.mark.parametrize(("plugin", "mark", "fixture"), [
    ("asyncio", "@pytest.mark.asyncio", ""),
    ("anyio", "@pytest.mark.anyio", "anyio_backend"),
    ("none", "", ""),  # no async plugin drives it: vramguard awaits it on a loop of its own
])
def test_async_tests_are_awaited_under_each_plugin(pytester: pytest.Pytester, plugin: str,
                                                   mark: str, fixture: str) -> None:
    # Before: the coroutine was never awaited, and a leaking async test passed.
    pytester.makepyfile(test_async=ASYNC_TESTS.format(mark=mark, fixture=fixture))
    if plugin == "anyio":
        pytester.makeconftest("""
            import pytest

            @pytest.fixture
            def anyio_backend():
                return "asyncio"
        """)
    options = ("-p", "no:anyio") if plugin == "asyncio" else ("-p", "no:asyncio")
    # In-process runs after an earlier leak run lost the growing-tensor list here (not seen in a
    # fresh interpreter or in repeated run_check calls); a subprocess keeps the runs independent.
    result = run(pytester, *options, subprocess=True)
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*test_async_leaks*", "*Memory leak on cpu in the test body*",
                                 "*1. Tensor(256, float32, cpu)*"])
    assert "test_async_clean FAILED" not in result.stdout.str()


def test_xfail_marks_a_known_leak_and_strict_xfail_of_a_clean_test_xpasses(
        pytester: pytest.Pytester) -> None:
    pytester.makepyfile("""
        import pytest
        import torch

        kept = []

        @pytest.mark.xfail(reason="known leak", strict=True)
        @pytest.mark.no_vram_leak(iterations=40, warmup=4, device="cpu")
        def test_known_leak():
            kept.append(torch.randn(256))

        @pytest.mark.xfail(reason="was a leak", strict=True)
        @pytest.mark.no_vram_leak(iterations=40, warmup=4, device="cpu")
        def test_fixed_leak():
            torch.randn(256).sum()
    """)
    result = run(pytester)
    result.assert_outcomes(xfailed=1, failed=1)
    result.stdout.fnmatch_lines(["*test_fixed_leak*", "[[]XPASS(strict)[]] was a leak"])


def test_bad_marker_settings_are_one_line_errors_naming_the_value(
        pytester: pytest.Pytester) -> None:
    pytester.makepyfile("""
        import pytest

        @pytest.mark.no_vram_leak(iterations=0, device="cpu")
        def test_zero():
            pass

        @pytest.mark.no_vram_leak(iterations=20, warmup=30, device="cpu")
        def test_warmup_too_long():
            pass

        @pytest.mark.no_vram_leak(iterations=20, device="gpu!")
        def test_bad_device():
            pass
    """)
    result = run(pytester)
    result.assert_outcomes(failed=3)
    result.stdout.fnmatch_lines([
        "no_vram_leak(iterations=...): expected iterations >= 1, got 0",
        "no_vram_leak(warmup=...): expected 0 <= warmup < iterations (20), got warmup=30",
        "no_vram_leak(device=...): expected a device like auto, cpu, cuda or cuda:1, got 'gpu!'",
    ])
    assert "pytest_plugin.py" not in result.stdout.str()  # no traceback through the plugin


def test_a_bad_command_line_value_is_a_session_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_nothing():\n    pass\n")
    result = run(pytester, "--vramguard-iterations", "abc")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["ERROR: --vramguard-iterations: expected iterations to be a whole number, got 'abc'"])
    assert "Traceback" not in result.stderr.str()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without a GPU")
def test_cuda_without_a_gpu_skips_with_the_reason(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("""
        import pytest

        @pytest.mark.no_vram_leak(iterations=20, device="cuda")
        def test_on_gpu():
            pass
    """)
    result = run(pytester, "-rs")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["*no_vram_leak(device='cuda'): *CUDA is not available*"])


def test_inconclusive_fails_with_the_reason_unless_accepted(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("""
        import pytest
        import torch

        @pytest.mark.no_vram_leak(iterations=12, warmup=2, device="cpu")
        def test_too_short():
            torch.randn(8).sum()

        @pytest.mark.no_vram_leak(iterations=12, warmup=2, device="cpu", inconclusive="pass")
        def test_too_short_accepted():
            torch.randn(8).sum()
    """)
    result = run(pytester)
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        ["no_vram_leak: inconclusive after 12 iterations (warm-up 2) on cpu: *at least * are "
         "needed (raise iterations, or pass inconclusive='pass' to accept this)"])
