"""End to end: a real Prometheus server scrapes `vramguard monitor` (on the simulated driver) and
its query API returns the series."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from tests.integration.net import free_port
from tests.nvmlsim.fixtures import nvml_sim_lib, sim_env, write_scenario  # noqa: F401

PROMETHEUS = shutil.which("prometheus") or (
    "/usr/bin/prometheus" if Path("/usr/bin/prometheus").exists() else None)
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(PROMETHEUS is None, reason="prometheus server not installed "
                       "(apt-get install --no-install-recommends prometheus); CI installs it"),
]



def query(port: int, promql: str) -> list[dict]:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    with urllib.request.urlopen(url, timeout=5) as response:
        body = json.load(response)
    assert body["status"] == "success"
    return list(body["data"]["result"])


def test_prometheus_scrapes_the_monitor(nvml_sim_lib: Path, tmp_path: Path) -> None:  # noqa: F811
    scenario = write_scenario(tmp_path, """
        device 0 name=SimA uuid=GPU-aaaa total=80GiB
        used 0 0:10GiB 600:70GiB
        process 0 4242 1GiB
    """)
    exporter_port, prom_port = free_port(), free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        "scrape_configs:\n  - job_name: vramguard\n    static_configs:\n"
        f"      - targets: ['127.0.0.1:{exporter_port}']\n")
    assert PROMETHEUS is not None
    with subprocess.Popen(
            [sys.executable, "-m", "vramguard", "monitor", "--interval", "0.5",
             "--prometheus", f"127.0.0.1:{exporter_port}", "--prometheus-processes"],
            env=sim_env(nvml_sim_lib, scenario), stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL) as monitor, subprocess.Popen(
            [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{prom_port}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) as server:
        try:
            deadline = time.monotonic() + 60
            used: list[dict] = []
            while time.monotonic() < deadline:
                assert monitor.poll() is None
                assert server.poll() is None
                try:
                    used = query(prom_port, "vramguard_gpu_memory_used_bytes")
                except OSError:
                    used = []
                if used:
                    break
                time.sleep(0.5)
            assert used, "prometheus never returned vramguard_gpu_memory_used_bytes"
            labels = used[0]["metric"]
            assert labels["gpu"] == "0"
            assert labels["uuid"] == "GPU-aaaa"
            assert labels["job"] == "vramguard"
            assert 10 * 1024**3 <= float(used[0]["value"][1]) < 70 * 1024**3
            [total] = query(prom_port, "vramguard_gpu_memory_total_bytes")
            assert float(total["value"][1]) == 80 * 1024**3
            [up] = query(prom_port, "vramguard_gpu_up")
            assert up["value"][1] == "1"
            [proc] = query(prom_port, "vramguard_process_gpu_memory_bytes")
            assert proc["metric"]["pid"] == "4242"
        finally:
            for proc_ in (server, monitor):
                proc_.terminate()
            for proc_ in (server, monitor):
                try:
                    proc_.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc_.kill()
                    proc_.wait()
