"""``supervise --max-vram`` against the simulated NVML driver (tests/nvmlsim) and real pynvml.

The scenario gives every child of the supervisor a VRAM schedule by process age, so each restarted
child starts again from the first keypoint, exactly like a real leaking process would.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.nvmlsim.fixtures import nvml_sim_lib, sim_env, write_scenario

__all__ = ["nvml_sim_lib"]  # the session fixture, used by name below

EXIT_GAVE_UP = 75
GiB = 1024**3

LEAKING_CHILD = """
device 0 name=SimGPU uuid=GPU-00000000-0000-0000-0000-000000000000 total=80GiB
used 0 1GiB
process 0 children clock=age 0:100MiB 1:40GiB
"""

SLEEP = (sys.executable, "-c", "import time\nfor _ in range(300): time.sleep(0.1)")


def supervise(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vramguard", "supervise", "--interval", "0.05s",
                           "--grace", "1s", "--backoff", "0.05s", *args, "--", *SLEEP],
                          capture_output=True, text=True, timeout=120, check=False, env=env)


def test_vram_limit_restarts_then_gives_up(nvml_sim_lib: Path, tmp_path: Path) -> None:
    env = sim_env(nvml_sim_lib, write_scenario(tmp_path, LEAKING_CHILD))
    result = supervise(env, "--max-vram", "10GiB", "--for", "0.1s", "--max-restarts", "1")
    assert result.returncode == EXIT_GAVE_UP, result.stderr
    breaches = [line for line in result.stderr.splitlines() if "above the limit" in line
                and "stopping it" in line]
    assert len(breaches) == 2  # the first child and its one restart
    for line in breaches:
        assert line.split(": ")[2].startswith("vram ")
        assert "above the limit of 10.0 GiB" in line
    assert "restart 1/1" in result.stderr
    assert "gave up" in result.stderr


def test_vram_percentage_is_of_the_device_total(nvml_sim_lib: Path, tmp_path: Path) -> None:
    env = sim_env(nvml_sim_lib, write_scenario(tmp_path, LEAKING_CHILD))
    result = supervise(env, "--max-vram", "25%", "--restart", "never", "--json")
    assert result.returncode == EXIT_GAVE_UP, result.stderr
    events = [json.loads(line) for line in result.stderr.splitlines()]
    breach = next(e for e in events if e["event"] == "breach")
    assert "above the limit of 20.0 GiB" in breach["message"]  # 25% of 80 GiB
    assert 20 * GiB < breach["vram_bytes"] <= 40 * GiB
    assert breach["rss_bytes"] > 0


def test_vram_below_the_limit_lets_the_command_finish(nvml_sim_lib: Path,
                                                      tmp_path: Path) -> None:
    env = sim_env(nvml_sim_lib, write_scenario(tmp_path, LEAKING_CHILD))
    result = subprocess.run(
        [sys.executable, "-m", "vramguard", "supervise", "--max-vram", "50GiB", "--interval",
         "0.05s", "--", sys.executable, "-c", "import time; time.sleep(1.2)"],
        capture_output=True, text=True, timeout=120, check=False, env=env)
    assert result.returncode == 0, result.stderr
    assert "above the limit" not in result.stderr


def test_unknown_vram_is_reported_and_never_kills(nvml_sim_lib: Path, tmp_path: Path) -> None:
    scenario = write_scenario(tmp_path, """
        device 0 name=SimGPU uuid=GPU-00000000-0000-0000-0000-000000000000 total=80GiB
        used 0 1GiB
        process 0 children na
        """)
    env = sim_env(nvml_sim_lib, scenario)
    result = subprocess.run(
        [sys.executable, "-m", "vramguard", "supervise", "--max-vram", "1MiB", "--interval",
         "0.05s", "--", sys.executable, "-c", "import time; time.sleep(0.5)"],
        capture_output=True, text=True, timeout=120, check=False, env=env)
    assert result.returncode == 0, result.stderr
    assert "VRAM of the command is unknown" in result.stderr
    assert "above the limit" not in result.stderr


def test_missing_nvml_exits_3_with_a_hint(tmp_path: Path) -> None:
    env = sim_env(tmp_path / "no" / "libnvidia-ml.so.1", None)
    result = supervise(env, "--max-vram", "10GiB")
    assert result.returncode == 3, result.stderr
    assert "hint:" in result.stderr
    assert "started pid" not in result.stderr  # refused before starting anything


def test_driver_not_loaded_exits_3(nvml_sim_lib: Path) -> None:
    result = supervise(sim_env(nvml_sim_lib, None), "--max-vram", "90%")
    assert result.returncode == 3, result.stderr
    assert "started pid" not in result.stderr


def test_an_nvml_failure_mid_run_does_not_kill_the_command(nvml_sim_lib: Path,
                                                           tmp_path: Path) -> None:
    scenario = write_scenario(tmp_path, """
        device 0 name=SimGPU uuid=GPU-00000000-0000-0000-0000-000000000000 total=80GiB
        used 0 1GiB
        process 0 children 100MiB
        fault 0 processes=unknown after=0.2
        """)
    result = subprocess.run(
        [sys.executable, "-m", "vramguard", "supervise", "--max-vram", "1GiB", "--interval",
         "0.05s", "--", sys.executable, "-c", "import time; time.sleep(0.8)"],
        capture_output=True, text=True, timeout=120, check=False, env=sim_env(nvml_sim_lib,
                                                                             scenario))
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if ": NVML failed (" in line]
    assert len(warnings) == 1  # warned once, not at every sample
