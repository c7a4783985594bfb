"""`vramguard check` and `vramguard demo` through a real subprocess: verdicts and every exit code."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("torch")

LEAKY = """
    import torch
    print("loading the model")                 # targets print: --json keeps stdout clean
    kept = []
    def handle(i):
        kept.append(torch.randn(8, 10, requires_grad=True) * 2)   # keeps the graph too
        if i % 50 == 0:
            print("served", i)
"""
CLEAN = """
    import torch
    def handle():
        with torch.inference_mode():
            return torch.randn(8, 10).sum().item()
"""


def vramguard(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vramguard", *args], capture_output=True, text=True,
                          timeout=240, cwd=cwd, check=False)


@pytest.fixture
def app(tmp_path: Path):
    def write(source: str, name: str = "app.py") -> str:
        path = tmp_path / name
        path.write_text(textwrap.dedent(source))
        return str(path)
    return write


def test_leak_exits_1_with_the_json_document(app):
    result = vramguard("check", f"{app(LEAKY)}:handle", "--requests", "150", "--json")
    assert result.returncode == 1, result.stderr
    document = json.loads(result.stdout)  # exactly one document, whatever the target printed
    assert "served 0" in result.stderr
    assert document["schema"] == "vramguard.check/1"
    assert document["verdict"] == "leak"
    assert document["requests"] == 150
    assert document["device"] == "cpu"
    assert 0 < document["detected_after"] < 150
    low, high = document["growth"]["ci95"]
    assert low <= document["growth"]["bytes_per_request"] <= high
    assert document["growth"]["bytes_per_request"] > 0
    groups = {(tuple(s["tensors"]["shape"]), s["tensors"]["grad_fn"]): s["tensors"]
              for s in document["suspects"]}
    kept = groups[((8, 10), "MulBackward0")]   # the outputs, each holding its graph
    assert kept["count_growth"] > 100
    assert kept["bytes_growth"] == kept["count_growth"] * 8 * 10 * 4
    assert set(document["suspects"][0]) >= {"allocated_at", "stack", "held_by", "cause", "fix",
                                            "retained_bytes"}


def test_clean_target_exits_0_and_prints_a_report(app):
    result = vramguard("check", f"{app(CLEAN)}:handle", "--requests", "120")
    assert result.returncode == 0, result.stderr
    assert "NO_LEAK" in result.stdout
    assert "\x1b[" not in result.stdout  # not a terminal: plain text


def test_quiet_prints_nothing_and_module_targets_work(app, tmp_path):
    app(CLEAN, name="cleanmod.py")
    # The current directory is on sys.path for module targets (as `python -m` does), so no
    # PYTHONPATH is needed (one replacing the inherited value would test another vramguard).
    result = subprocess.run(
        [sys.executable, "-m", "vramguard", "check", "cleanmod:handle", "--requests", "60", "--quiet"],
        capture_output=True, text=True, timeout=240, cwd=tmp_path, check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""


def test_target_that_raises_exits_4_with_traceback_and_progress(app):
    source = """
        def handle(i):
            if i == 7:
                raise ValueError("bad request 7")
    """
    result = vramguard("check", f"{app(source)}:handle", "--requests", "50")
    assert result.returncode == 4
    assert "ValueError: bad request 7" in result.stderr
    assert "Traceback" in result.stderr
    assert "7 request(s) completed" in result.stderr


@pytest.mark.parametrize(("args", "needle"), [
    (["check", "missing.py:handle"], "no such file 'missing.py'"),
    (["check", "APP:nope"], "has no attribute 'nope'"),
    (["check", "APP:not_callable"], "expected a callable"),
    (["check", "APP:handle", "--requests", "-3"], "--requests"),
    (["check", "APP:handle", "--warmup", "soon"], "'soon'"),
    (["check", "APP:handle", "--device", "tpu!"], "'tpu!'"),
    (["check", "no_such_module_xyz:handle"], "no module named 'no_such_module_xyz'"),
    (["check", "APP"], "expected a target like"),
    (["check", "APP:two_args"], "2 required arguments"),
])
def test_usage_errors_exit_2_and_name_the_value(app, args, needle):
    path = app(textwrap.dedent(CLEAN) + "\nnot_callable = 3\ndef two_args(a, b):\n    pass\n")
    result = vramguard(*[a.replace("APP", path) for a in args])
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert needle in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_cuda_device_exits_3(app):
    result = vramguard("check", f"{app(CLEAN)}:handle", "--device", "cuda:9", "--requests", "5")
    assert result.returncode == 3
    assert "cuda:9" in result.stderr
    assert "Traceback" not in result.stderr


def test_demo_finds_the_graph_leak_and_exits_0():
    result = vramguard("demo", "--requests", "150", "--json")
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["verdict"] == "leak"
    assert document["suspects"]
    assert any(s["tensors"]["grad_fn"] for s in document["suspects"])


def test_demo_without_a_leak():
    result = vramguard("demo", "--leak", "none", "--requests", "120", "--json")
    assert result.returncode == 0
    assert json.loads(result.stdout)["verdict"] == "no_leak"


def test_help_works_without_torch(tmp_path):
    blocker = tmp_path / "sitecustomize.py"
    blocker.write_text(textwrap.dedent("""
        import sys
        class _Block:
            def find_spec(self, name, path=None, target=None):
                if name == "torch" or name.startswith("torch."):
                    raise ImportError("torch blocked for this test")
                return None
        sys.meta_path.insert(0, _Block())
    """))
    env = {**__import__("os").environ, "PYTHONPATH": str(tmp_path)}
    run = subprocess.run([sys.executable, "-m", "vramguard", "--help"], capture_output=True,
                         text=True, timeout=60, env=env, check=False)
    assert run.returncode == 0
    assert "check" in run.stdout
    run = subprocess.run([sys.executable, "-c", "import vramguard; print(vramguard.__version__)"],
                         capture_output=True, text=True, timeout=60, env=env, check=False)
    assert run.returncode == 0
    run = subprocess.run([sys.executable, "-m", "vramguard", "demo", "--requests", "5"],
                         capture_output=True, text=True, timeout=60, env=env, check=False)
    assert run.returncode == 3
    assert "needs PyTorch" in run.stderr


@pytest.mark.parametrize("mode", ["always", "never"])
def test_diagnose_modes(app, mode):
    source = """
        import torch
        results = []
        def handle(i):
            results.append(torch.randn(8, 10) * 2)   # LEAK
    """
    path = app(source)
    result = vramguard("check", f"{path}:handle", "--requests", "120", "--json", "--diagnose", mode)
    assert result.returncode == 1, result.stderr
    top = json.loads(result.stdout)["suspects"][0]
    assert top["tensors"]["shape"] == [8, 10]
    if mode == "never":
        assert (top["allocated_at"], top["held_by"], top["cause"]) == (None, None, None)
    else:  # sites tracked over the whole check: explained without an extra window
        assert top["allocated_at"] == {"file": path, "line": 5, "function": "handle"}
        assert top["held_by"].startswith("results (global list")
        assert top["cause"] == "global_reference"
