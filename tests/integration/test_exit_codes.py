"""The README's exit-code table, one test per row, through the real CLI in a subprocess.

0 and 1 (no leak, leak) are in test_check_cli.py; 3 for an unreachable server and the loadtest
rows in test_loadtest_cli.py. Here: 2 usage, 3 environment, 4 the target raised or exited,
5 inconclusive, and ``--json`` printing one document for every error.
"""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("torch")

SRC = str(Path(__file__).resolve().parents[2] / "src")
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(
    p for p in (SRC, os.environ.get("PYTHONPATH", "")) if p)}

BLOCK_TORCH = """
    import sys
    class _Block:
        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith("torch."):
                raise ModuleNotFoundError("No module named 'torch'", name="torch")
            return None
    sys.meta_path.insert(0, _Block())
"""


def vramguard(*args: str, cwd: Path | None = None,
              env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vramguard", *args], capture_output=True,
                          text=True, timeout=240, cwd=cwd, env=env or ENV, check=False)


def write(folder: Path, name: str, source: str) -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(source))
    return path


# -- 2: usage errors ------------------------------------------------------------------------------
@pytest.mark.parametrize(("args", "needle"), [
    (["check", "x.py:f", "--device", "foo"], "got 'foo'"),
    (["check", "x.py:f", "--device", "cuda:x"], "got 'cuda:x'"),
    (["demo", "--device", "tpu"], "got 'tpu'"),
    (["monitor", "--threshold", "90"], "90% for a share, or 90B for bytes"),
    (["monitor", "--process-budget", "20"], "20% for a share, or 20B for bytes"),
    (["supervise", "--max-rss", "50", "--", "true"], "50% for a share, or 50B for bytes"),
    (["monitor", "--interval", "0s"], "expected --interval to be a positive duration"),
    (["supervise", "--max-rss", "1GiB", "--interval", "0s", "--", "true"],
     "expected --interval to be a positive duration"),
    (["check", "x.py:f", "--no-such-option"], "No such option"),
])
def test_usage_errors_exit_2_without_a_traceback(args: list[str], needle: str) -> None:
    result = vramguard(*args)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert needle in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(("args", "stream"), [
    (["monitor", "--json", "--threshold", "90"], "stdout"),
    (["loadtest", "not-a-url", "--json"], "stdout"),
    (["supervise", "--json", "--max-rss", "50", "--", "true"], "stderr"),  # stdout: the command's
])
def test_json_errors_are_one_error_document(args: list[str], stream: str) -> None:
    result = vramguard(*args)
    assert result.returncode == 2
    lines = [line for line in getattr(result, stream).splitlines() if line.startswith("{")]
    assert len(lines) == 1, (result.stdout, result.stderr)
    document = json.loads(lines[0])
    assert document["schema"] == "vramguard.error/1"
    assert document["exit_code"] == 2
    assert document["message"]
    if stream == "stdout":
        assert result.stdout.strip() == lines[0]


def test_interval_rules_are_the_same_message_everywhere() -> None:
    monitor = vramguard("monitor", "--interval", "0s").stderr.strip()
    supervise = vramguard("supervise", "--max-rss", "1GiB", "--interval", "0s", "--",
                          "true").stderr.strip()
    assert monitor == supervise


# -- 3: environment -------------------------------------------------------------------------------
@pytest.mark.parametrize("where", ["import", "request", "vramguard"])
def test_torch_missing_is_3_whoever_imports_it(tmp_path: Path, where: str) -> None:
    write(tmp_path, "sitecustomize.py", BLOCK_TORCH)
    sources = {
        "import": "import torch\ndef handle():\n    pass\n",
        "request": "def handle():\n    import torch\n",
        "vramguard": "def handle():\n    pass\n",  # the target needs no torch; the check does
    }
    target = write(tmp_path, "app.py", sources[where])
    env = {**ENV, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ENV['PYTHONPATH']}"}
    result = vramguard("check", f"{target}:handle", "--requests", "30", env=env)
    assert result.returncode == 3, (result.stdout, result.stderr)
    assert "torch" in result.stderr
    assert "pip install torch" in result.stderr
    assert "Traceback" not in result.stderr


# -- 4: the target raised or exited ---------------------------------------------------------------
def test_system_exit_in_a_request_is_4(tmp_path: Path) -> None:
    target = write(tmp_path, "app.py", """
        import sys
        def handle(i):
            if i == 3:
                sys.exit(3)
    """)
    result = vramguard("check", f"{target}:handle", "--requests", "30")
    assert result.returncode == 4, result.stderr
    assert "the target exited with status 3 on request 3" in result.stderr
    assert "3 request(s) completed" in result.stderr


def test_system_exit_at_import_is_4_and_json_prints_one_error_document(tmp_path: Path) -> None:
    target = write(tmp_path, "app.py", """
        import sys
        sys.exit("config missing")
        def handle():
            pass
    """)
    result = vramguard("check", f"{target}:handle", "--json")
    assert result.returncode == 4, result.stderr
    document = json.loads(result.stdout)
    assert document["schema"] == "vramguard.error/1"
    assert document["exit_code"] == 4
    assert "the target exited with status 1 while being imported: config missing" in \
        document["message"]


def test_the_targets_traceback_is_its_own(tmp_path: Path) -> None:
    target = write(tmp_path, "app.py", """
        def helper():
            raise ValueError("bad input")
        def handle(i):
            if i == 5:
                helper()
    """)
    result = vramguard("check", f"{target}:handle", "--requests", "30", "--json")
    assert result.returncode == 4
    assert json.loads(result.stdout)["exit_code"] == 4
    frames = [line for line in result.stderr.splitlines() if line.lstrip().startswith("File ")]
    assert [f.split(", in ")[1] for f in frames] == ["handle", "helper"], result.stderr
    assert all(str(target) in f for f in frames)
    assert "ValueError: bad input" in result.stderr


# -- 5: inconclusive ------------------------------------------------------------------------------
def test_check_with_too_few_requests_is_5_and_says_how_many_would_do(tmp_path: Path) -> None:
    target = write(tmp_path, "app.py", "def handle():\n    pass\n")
    result = vramguard("check", f"{target}:handle", "--requests", "20")
    assert result.returncode == 5, result.stderr
    assert result.stdout.startswith("INCONCLUSIVE")
    assert "warm-up of 2 requests" in result.stdout
    line = next(x for x in result.stderr.splitlines() if "inconclusive" in x)
    assert "at least 20 are needed" in line
    suggested = int(line.rsplit("--requests ", 1)[1].rstrip(")"))
    assert "more requests would help" in line
    # The suggestion is enough: a rerun with it gives a verdict.
    rerun = vramguard("check", f"{target}:handle", "--requests", str(suggested), "--quiet")
    assert rerun.returncode == 0, rerun.stderr


def test_growth_slower_than_the_heap_floor_is_5_and_asks_for_no_more_requests(
        tmp_path: Path) -> None:
    # ~180 B/request of C heap (700 B kept every 4th call): steady, past the 16 KiB window floor
    # over 600 requests, but under the heap counter's 256 B/request. A clean DDP rank's drift
    # looks like this; so could a small leak. Neither "leak" nor "no leak", and a longer run at
    # the same rate would not clear the floor, so no --requests figure is suggested.
    target = write(tmp_path, "app.py", """
        import torch
        kept, calls = [], [0]
        def handle():
            calls[0] += 1
            torch.ones(8).sum()
            if calls[0] % 4 == 0:
                kept.append(bytearray(700))
    """)
    result = vramguard("check", f"{target}:handle", "--requests", "600", "--quiet")
    assert result.returncode == 5, result.stderr
    line = next(x for x in result.stderr.splitlines() if "inconclusive" in x)
    assert "slower than the 256 B/request the counter needs" in line
    assert "more requests at this rate would not clear the floor" in line
    assert "run with --requests" not in line


def test_demo_with_too_few_requests_is_5() -> None:
    result = vramguard("demo", "--requests", "12", "--json")
    assert result.returncode == 5
    assert json.loads(result.stdout)["verdict"] == "inconclusive"
    assert "more requests would help" in result.stderr
    assert "warm-up of 1 request;" in result.stdout


# -- check's conveniences -------------------------------------------------------------------------
def test_check_finds_a_module_in_the_current_directory(tmp_path: Path) -> None:
    write(tmp_path, "leak_list.py", "def predict():\n    pass\n")
    # Not `python -m` (which puts the cwd on sys.path itself): a launcher script elsewhere, as
    # the `vramguard` console script is.
    (tmp_path / "bin").mkdir()
    launcher = write(tmp_path / "bin", "vg.py",
                     "import sys\nfrom vramguard.commands.main import main\nsys.exit(main())\n")
    result = subprocess.run([sys.executable, str(launcher), "check", "leak_list:predict",
                             "--requests", "40", "--quiet"], capture_output=True, text=True,
                            timeout=240, cwd=tmp_path, env=ENV, check=False)
    assert result.returncode == 0, result.stderr


def test_the_progress_bar_shows_the_diagnosis_phase(tmp_path: Path) -> None:
    target = write(tmp_path, "app.py", """
        import torch
        kept = []
        def handle():
            kept.append(torch.randn(8, 10) * 2)
    """)
    primary, secondary = pty.openpty()  # a terminal for stderr: the bar only shows there
    process = subprocess.Popen([sys.executable, "-m", "vramguard", "check", f"{target}:handle",
                                "--requests", "60"], stdout=subprocess.PIPE, stderr=secondary,
                               env={**ENV, "COLUMNS": "200"})
    os.close(secondary)
    screen = b""
    while True:
        try:
            chunk = os.read(primary, 65536)
        except OSError:  # the terminal closed: the process is done
            break
        if not chunk:
            break
        screen += chunk
    out, _ = process.communicate(timeout=240)
    os.close(primary)
    assert process.returncode == 1, out
    assert b"diagnosis: allocation sites" in screen
    assert b"diagnosis: analysing the heap" in screen
