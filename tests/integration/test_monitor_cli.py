"""`vramguard monitor` as a user runs it: a subprocess on the simulated driver, found through
LD_LIBRARY_PATH by the real nvidia-ml-py."""

from __future__ import annotations

import http.server
import json
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from tests.nvmlsim.fixtures import (  # noqa: F401  (pytest fixtures)
    nvml_sim_lib,
    nvml_sim_lib_no_v3,
    sim_env,
    write_scenario,
)

GiB = 1024**3
SCENARIO = """
clock calls
device 0 name=SimA uuid=GPU-aaaa total=80GiB
device 1 name=SimB uuid=GPU-bbbb total=40GiB
used 0 0:10GiB 4:78GiB
used 1 5GiB
process 0 1234 0:1GiB 4:30GiB
process 0 4321 na
"""


def monitor(lib: Path, scenario: Path | None, *args: str, timeout: float = 120,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vramguard", "monitor", *args], capture_output=True, text=True,
        timeout=timeout, env=env or sim_env(lib, scenario), check=False)


def events(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


@pytest.fixture
def scenario(tmp_path: Path) -> Path:
    return write_scenario(tmp_path, SCENARIO)


def test_once_json_document(nvml_sim_lib: Path, scenario: Path) -> None:  # noqa: F811
    done = monitor(nvml_sim_lib, scenario, "--once", "--json")
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["schema"] == "vramguard.monitor/1"
    assert doc["devices"][0] == {
        "index": 0, "uuid": "GPU-aaaa", "name": "SimA", "used_bytes": 10 * GiB,
        "total_bytes": 80 * GiB, "lost": False,
        "processes": [{"pid": 1234, "used_bytes": GiB}, {"pid": 4321, "used_bytes": None}]}
    assert [d["index"] for d in doc["devices"]] == [0, 1]


def test_once_selects_devices_and_prints_for_humans(nvml_sim_lib: Path, scenario: Path) -> None:  # noqa: F811
    done = monitor(nvml_sim_lib, scenario, "--once", "--devices", "1")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "GPU 1 SimB: 5.0 GiB / 40.0 GiB (12%)"


def test_old_driver_without_v3_still_lists_processes(nvml_sim_lib_no_v3: Path,  # noqa: F811
                                                     scenario: Path) -> None:
    done = monitor(nvml_sim_lib_no_v3, scenario, "--once", "--json")
    assert done.returncode == 0, done.stderr
    assert [p["pid"] for p in json.loads(done.stdout)["devices"][0]["processes"]] == [1234, 4321]


def test_unsupported_queries_read_as_null(nvml_sim_lib: Path, tmp_path: Path) -> None:  # noqa: F811
    path = write_scenario(tmp_path, SCENARIO + "fault 0 memory=not_supported\n"
                          "fault 0 processes=no_permission\n")
    doc = json.loads(monitor(nvml_sim_lib, path, "--once", "--json").stdout)
    assert doc["devices"][0]["used_bytes"] is None
    assert doc["devices"][0]["total_bytes"] is None
    assert doc["devices"][0]["processes"] == []
    assert doc["devices"][1]["used_bytes"] == 5 * GiB


def test_threshold_alerts_then_resolves_once(nvml_sim_lib: Path, tmp_path: Path) -> None:  # noqa: F811
    path = write_scenario(tmp_path, """
        clock calls
        device 0 uuid=GPU-aaaa total=100GiB
        used 0 0:50GiB 2:95GiB 6:95GiB 7:91GiB 8:95GiB 9:20GiB
    """)
    done = monitor(nvml_sim_lib, path, "--interval", "1ms", "--samples", "12",
                   "--threshold", "90%", "--json")
    assert done.returncode == 0, done.stderr
    got = [(e["event"], e["rule"], e["device"], e["value"]) for e in events(done.stdout)]
    assert got == [("alert", "threshold", 0, 95 * GiB), ("resolved", "threshold", 0, 20 * GiB)]
    assert "ALERT threshold GPU 0: 95.0 GiB (limit 90.0 GiB)" in done.stderr


def test_threshold_for_waits_for_the_duration(nvml_sim_lib: Path, tmp_path: Path) -> None:  # noqa: F811
    path = write_scenario(tmp_path, "device 0 total=100GiB\nused 0 95GiB\n")
    start = time.monotonic()
    done = monitor(nvml_sim_lib, path, "--interval", "0.05", "--duration", "3",
                   "--threshold", "90%", "--for", "1s", "--json")
    assert done.returncode == 0, done.stderr
    [alert] = events(done.stdout)
    assert alert["event"] == "alert"
    assert time.monotonic() - start >= 1.0


def test_trend_predicts_a_full_device(nvml_sim_lib: Path, tmp_path: Path) -> None:  # noqa: F811
    path = write_scenario(tmp_path, """
        device 0 total=80GiB
        device 1 total=80GiB
        used 0 0:10GiB 3:70GiB
        used 1 10GiB
    """)
    done = monitor(nvml_sim_lib, path, "--interval", "0.02", "--duration", "1.5",
                   "--predict", "1h", "--trend-window", "1s", "--json")
    assert done.returncode == 0, done.stderr
    got = events(done.stdout)
    assert [(e["event"], e["rule"], e["device"]) for e in got] == [("alert", "trend", 0)]
    assert 0 < got[0]["value"] <= 3600
    assert got[0]["limit"] == 3600


def test_process_budget_names_the_process(nvml_sim_lib: Path, scenario: Path) -> None:  # noqa: F811
    done = monitor(nvml_sim_lib, scenario, "--interval", "1ms", "--samples", "6",
                   "--process-budget", "20GiB", "--json")
    assert done.returncode == 0, done.stderr
    got = [(e["event"], e["rule"], e["device"], e["pid"]) for e in events(done.stdout)]
    assert got == [("alert", "process_budget", 0, 1234)]


def test_gpu_lost_is_alerted_once_and_other_devices_go_on(nvml_sim_lib: Path,  # noqa: F811
                                                         tmp_path: Path) -> None:
    path = write_scenario(tmp_path, SCENARIO + "fault 0 all=gpu_lost after=2\n")
    done = monitor(nvml_sim_lib, path, "--interval", "1ms", "--samples", "20", "--json",
                   "--threshold", "10%")
    assert done.returncode == 0, done.stderr
    got = [(e["event"], e["rule"], e["device"]) for e in events(done.stdout)]
    assert got.count(("alert", "gpu_lost", 0)) == 1
    assert ("alert", "threshold", 1) in got
    assert done.stderr.count("GPU lost") == 1


def test_on_alert_runs_a_command_with_the_event_on_stdin(nvml_sim_lib: Path, scenario: Path,  # noqa: F811
                                                         tmp_path: Path) -> None:
    out = tmp_path / "event.json"
    script = f"import sys; open({str(out)!r}, 'w').write(sys.stdin.read())"
    done = monitor(nvml_sim_lib, scenario, "--interval", "1ms", "--samples", "3",
                   "--devices", "1", "--threshold", "1GiB",
                   "--on-alert", f"{sys.executable} -c \"{script}\"")
    assert done.returncode == 0, done.stderr
    event = json.loads(out.read_text())
    assert event["event"] == "alert"
    assert event["device"] == 1
    assert event["rule"] == "threshold"


class _Hook(http.server.BaseHTTPRequestHandler):
    bodies: list[bytes]
    failures: list[int]

    def do_POST(self) -> None:
        self.bodies.append(self.rfile.read(int(self.headers["Content-Length"])))
        status = 500 if self.failures else 200
        if self.failures:
            self.failures.pop()
        self.send_response(status)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_webhook_posts_events_and_retries(nvml_sim_lib: Path, scenario: Path) -> None:  # noqa: F811
    handler = type("Hook", (_Hook,), {"bodies": [], "failures": [1]})
    server = http.server.HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/hook"
        done = monitor(nvml_sim_lib, scenario, "--interval", "1ms", "--samples", "2",
                       "--devices", "1", "--threshold", "1GiB", "--webhook", url)
        assert done.returncode == 0, done.stderr
    finally:
        server.shutdown()
        server.server_close()
    bodies = [json.loads(b) for b in handler.bodies]
    assert len(bodies) == 2  # one 500, then the retry succeeded
    assert bodies[0] == bodies[1]
    assert bodies[0]["rule"] == "threshold"


def test_signal_reaches_a_real_process(nvml_sim_lib: Path, scenario: Path, tmp_path: Path) -> None:  # noqa: F811
    flag = tmp_path / "signalled"
    code = ("import signal, sys, time\n"
            f"def h(*a):\n    open({str(flag)!r}, 'w').write('USR1'); sys.exit(0)\n"
            "signal.signal(signal.SIGUSR1, h)\nprint('ready', flush=True)\n"
            "time.sleep(30)\nsys.exit(1)\n")
    with subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                          text=True) as target:
        try:
            assert target.stdout is not None
            assert target.stdout.readline().strip() == "ready"
            done = monitor(nvml_sim_lib, scenario, "--interval", "1ms", "--samples", "2",
                           "--devices", "1", "--threshold", "1GiB",
                           "--signal", f"{target.pid}:USR1")
            assert done.returncode == 0, done.stderr
            assert target.wait(timeout=120) == 0
            assert flag.read_text() == "USR1"
        finally:
            target.kill()


def test_sigterm_stops_cleanly(nvml_sim_lib: Path, scenario: Path) -> None:  # noqa: F811
    with subprocess.Popen([sys.executable, "-m", "vramguard", "monitor", "--interval", "0.05"],
                          env=sim_env(nvml_sim_lib, scenario), stderr=subprocess.PIPE,
                          text=True) as proc:
        try:
            assert proc.stderr is not None
            assert "monitoring every" in proc.stderr.readline()
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=120) == 0
        finally:
            proc.kill()


def test_prometheus_endpoint_serves_the_latest_reading(nvml_sim_lib: Path, scenario: Path) -> None:  # noqa: F811
    with subprocess.Popen([sys.executable, "-m", "vramguard", "monitor", "--interval", "0.1",
                           "--prometheus", "127.0.0.1:0", "--prometheus-processes"],
                          env=sim_env(nvml_sim_lib, scenario), stderr=subprocess.PIPE,
                          text=True) as proc:
        _scrape_and_stop(proc)


def _scrape_and_stop(proc: subprocess.Popen[str]) -> None:
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        assert "serving metrics on http://127.0.0.1:" in line, line
        url = line.split(" on ")[1].strip()
        deadline = time.monotonic() + 120  # a failure detector only
        text = ""
        while "vramguard_gpu_up" not in text and time.monotonic() < deadline:
            with urllib.request.urlopen(url, timeout=5) as response:
                text = response.read().decode()
            time.sleep(0.1)
        assert 'vramguard_gpu_memory_total_bytes{gpu="0",uuid="GPU-aaaa"} 8.589934592e+10' in text
        assert 'vramguard_gpu_up{gpu="1",uuid="GPU-bbbb"} 1.0' in text
        assert 'vramguard_process_gpu_memory_bytes{gpu="0",pid="1234",uuid="GPU-aaaa"}' in text
    finally:
        proc.terminate()
        assert proc.wait(timeout=120) == 0
        proc.kill()


@pytest.mark.parametrize(("args", "named"), [
    (["--interval", "5parsecs"], "5parsecs"),
    (["--threshold", "20 gigs"], "20 gigs"),
    (["--process-budget", "150%"], "150%"),
    (["--devices", "a,b"], "a,b"),
    (["--signal", "nope"], "nope"),
    (["--prometheus", "host:port"], "host:port"),
    (["--webhook", "ftp://x"], "ftp://x"),
])
def test_bad_values_are_usage_errors_naming_the_value(nvml_sim_lib: Path, scenario: Path,  # noqa: F811
                                                      args: list[str], named: str) -> None:
    done = monitor(nvml_sim_lib, scenario, *args)
    assert done.returncode == 2
    assert named in done.stderr


def test_missing_nvml_exits_3_with_a_hint(nvml_sim_lib: Path, tmp_path: Path) -> None:  # noqa: F811
    env = sim_env(nvml_sim_lib, None)
    env["VRAMGUARD_NVML_LIBRARY"] = str(tmp_path / "libnvidia-ml.so.1")
    done = monitor(nvml_sim_lib, None, "--once", env=env)
    assert done.returncode == 3
    assert "NVIDIA driver" in done.stderr


def test_works_without_torch(nvml_sim_lib: Path, scenario: Path) -> None:  # noqa: F811
    # A finder that refuses torch, as on a host where it is not installed. (Setting
    # sys.modules["torch"] = None would also break scipy, which probes sys.modules for torch.)
    code = ("import sys\n"
            "class NoTorch:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name == 'torch' or name.startswith('torch.'):\n"
            "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
            "sys.meta_path.insert(0, NoTorch())\n"
            "from vramguard.commands.main import main\n"
            "rc = main(['monitor', '--once', '--json'])\n"
            "assert 'torch' not in sys.modules\n"
            "sys.exit(rc)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, env=sim_env(nvml_sim_lib, scenario), check=False)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["schema"] == "vramguard.monitor/1"


def test_cross_device_alerts_on_a_rank_holding_memory_on_another_ranks_gpu(
        nvml_sim_lib: Path, tmp_path: Path) -> None:  # noqa: F811
    # Two real "ranks" (their /proc/PID/environ is what the monitor reads); the simulated driver
    # lists rank 1 on GPU 1 (its own) and on GPU 0 (not its own: no set_device).
    ranks = [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                              env={"LOCAL_RANK": str(r), "RANK": str(r), "WORLD_SIZE": "2"})
             for r in range(2)]
    try:
        rank0, rank1 = (p.pid for p in ranks)
        path = write_scenario(tmp_path, SCENARIO + f"process 1 {rank1} 2GiB\n"
                              f"process 0 {rank0} 1GiB\nprocess 0 {rank1} 500MiB\n")
        done = monitor(nvml_sim_lib, path, "--interval", "0.01s", "--samples", "2",
                       "--json")
        assert done.returncode == 0, done.stderr
        cross = [e for e in events(done.stdout) if e["rule"] == "cross_device"]
        assert [(e["event"], e["device"], e["pid"], e["limit"]) for e in cross] == [
            ("alert", 0, rank1, 1)]
        assert "holds 500.0 MiB here" in done.stderr
        off = monitor(nvml_sim_lib, path, "--interval", "0.01s", "--samples", "1", "--json",
                      "--no-cross-device")
        assert [e for e in events(off.stdout) if e["rule"] == "cross_device"] == []
    finally:
        for proc in ranks:
            proc.kill()
            proc.wait()
