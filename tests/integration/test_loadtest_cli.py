"""`vramguard loadtest` through the real CLI against real uvicorn servers on 127.0.0.1.

Never a false "no leak": a wrong path, a status without fresh readings or a failing status
endpoint give no verdict (exit 3, one line, no traceback); a run cut short still gives the verdict
over what it measured, marked partial.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.integration.net import free_port
from tests.nvmlsim.fixtures import nvml_sim_lib, sim_env, write_scenario  # noqa: F401

pytest.importorskip("torch")
pytest.importorskip("uvicorn")
pytest.importorskip("fastapi")

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(
    p for p in (str(ROOT), str(ROOT / "src"), os.environ.get("PYTHONPATH", "")) if p)}

# A per-input cache: only varying bodies make it grow (the leak --body-template can drive).
CACHE_APP = """
    import torch
    from fastapi import FastAPI, Request
    from vramguard.asgi import VramGuardMiddleware

    cache = {}
    app = FastAPI()

    @app.post("/embed")
    async def embed(request: Request):
        key = (await request.json())["user"]
        if key not in cache:
            cache[key] = torch.randn(64, 64)
        return {"n": len(cache)}

    app.add_middleware(VramGuardMiddleware, device="cpu", expose_status=True,
                       overhead_budget=None, diagnose_requests=0)
"""



def start(argv: list[str], port: int, cwd: Path = ROOT) -> subprocess.Popen[bytes]:
    log = tempfile.TemporaryFile()  # noqa: SIM115  (a file, not a pipe: never blocks the server)
    process = subprocess.Popen(argv, cwd=cwd, env=ENV, stdout=subprocess.DEVNULL, stderr=log)
    for _ in range(600):  # until it listens (a bound on polls, not a verdict on speed)
        if process.poll() is not None:
            log.seek(0)
            raise AssertionError(f"server died: {log.read().decode()[-2000:]}")
        try:
            httpx.get(f"http://127.0.0.1:{port}/vramguard/healthz", timeout=5)
            log.close()
            return process
        except httpx.TransportError:
            time.sleep(0.1)
    process.kill()
    raise AssertionError("server did not start")


def example_server(options: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    code = ("import uvicorn; from examples.fastapi_app import create_app; "
            f"uvicorn.run(create_app({options}), host='127.0.0.1', port={port}, "
            "log_level='warning')")
    return start([sys.executable, "-c", code], port), f"http://127.0.0.1:{port}"


def stop(process: subprocess.Popen[bytes]) -> None:
    process.kill()
    process.wait(timeout=30)


@pytest.fixture(scope="module")
def dense() -> Iterator[str]:
    # A dense guard (overhead_budget=None): a fresh reading at every request.
    process, base = example_server("device='cpu', overhead_budget=None, diagnose_requests=0")
    try:
        yield base
    finally:
        stop(process)


def loadtest(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vramguard", "loadtest", *args],
                          capture_output=True, text=True, timeout=240, env=ENV, check=False)


def test_clean_route_is_no_leak_over_fresh_readings(dense: str) -> None:
    # 300 requests: on CPU the signal is the process's C heap, which a fresh server grows for
    # its first hundred-odd requests (a short run of a clean route can look like a leak).
    result = loadtest(f"{dense}/predict/clean/1", "--requests", "300", "--sample-every", "3",
                      "--json")
    assert result.returncode == 0, (result.stdout, result.stderr[-3000:])
    document = json.loads(result.stdout)
    assert document["verdict"] == "no_leak"
    fresh = int(document["reason"].split("[")[1].split(" fresh")[0])
    assert 20 <= fresh <= 101, document["reason"]  # each reading counted once, repeats not
    # What loadtest dates its readings by: each memory value's request and time of reading.
    status = httpx.get(f"{dense}/vramguard/status", timeout=60).json()
    memory = status["memory"]
    assert set(memory["read_at_request"]) == set(memory["read_at"]) >= {"allocated", "reserved"}
    assert 0 <= memory["read_at_request"]["allocated"] < status["requests"]
    assert isinstance(memory["read_at"]["allocated"], float)
    assert memory["read_at_request"]["reserved"] is None  # CPU: no caching allocator, never read
    assert memory["floor_bytes"] == 16 << 10  # the heap counter's floors, which loadtest applied
    assert memory["floor_bytes_per_request"] == 256


def test_leaky_route_is_a_leak(dense: str) -> None:
    result = loadtest(f"{dense}/predict/leaky", "--requests", "60", "--concurrency", "2")
    assert result.returncode == 1, (result.stdout, result.stderr[-3000:])
    assert result.stdout.startswith("LEAK GET ")
    assert "fresh memory readings" in result.stdout


def test_a_path_that_does_not_exist_gives_no_verdict(dense: str) -> None:
    result = loadtest(f"{dense}/predict", "--requests", "40")
    assert result.returncode == 3
    assert "40 of 40 requests failed (by status: 404: 40)" in result.stderr
    assert "wrong path" in result.stderr
    assert "NO_LEAK" not in result.stdout
    assert "Traceback" not in result.stderr


def test_mostly_rejected_requests_give_no_verdict_and_json_says_so(dense: str) -> None:
    result = loadtest(f"{dense}/predict/clean/notanumber", "--requests", "30", "--json")
    assert result.returncode == 3
    document = json.loads(result.stdout)
    assert document["schema"] == "vramguard.error/1"
    assert document["exit_code"] == 3
    assert "422: 30" in document["message"]


@pytest.mark.parametrize(("path", "needle"), [
    ("/vramguard/metrics", "did not answer JSON"),
    ("/predict/clean/notanumber", "answered 422"),
    ("/openapi.json", "without a 'memory' block"),
    ("/nowhere", "answered 404"),
])
def test_status_endpoint_errors_are_one_line(dense: str, path: str, needle: str) -> None:
    result = loadtest(f"{dense}/predict/clean/1", "--requests", "5", "--status-url",
                      f"{dense}{path}")
    assert result.returncode == 3, result.stderr
    assert needle in result.stderr
    assert "Traceback" not in result.stderr
    assert len([line for line in result.stderr.splitlines() if "error" in line]) == 1


def test_a_status_endpoint_that_never_answers_times_out() -> None:
    with socket.socket() as silent:  # listens, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        result = loadtest(f"{url}/x", "--requests", "5", "--timeout", "0.5s")
    assert result.returncode == 3
    assert "did not answer in time" in result.stderr
    assert "Traceback" not in result.stderr


def test_default_sparse_guard_is_never_a_pass() -> None:
    # A leaky route behind a guard at its default overhead_budget: its status shows a value
    # again until the next reading, and repeats are no evidence. How many fresh readings come in
    # depends on the guard's budget (its cost measurements); whatever it is, the answer is the
    # leak (1), too little evidence (5) or no reading (3): never a pass.
    process, base = example_server("device='cpu'")
    try:
        result = loadtest(f"{base}/predict/leaky", "--requests", "100")
    finally:
        stop(process)
    assert result.returncode in (1, 3, 5), (result.stdout, result.stderr[-2000:])
    assert "NO_LEAK" not in result.stdout
    if result.returncode == 3:
        assert "overhead_budget" in result.stderr
    else:
        assert "fresh memory readings" in result.stderr


def test_varying_bodies_drive_a_per_input_cache(tmp_path: Path) -> None:
    (tmp_path / "cacheapp.py").write_text(textwrap.dedent(CACHE_APP))
    bodies = tmp_path / "bodies.jsonl"
    bodies.write_text('{"user": "a"}\n{"user": "b"}\n\n{"user": "c"}\n')
    port = free_port()
    process = start([sys.executable, "-m", "uvicorn", "cacheapp:app", "--app-dir", str(tmp_path),
                     "--port", str(port), "--log-level", "warning"], port, cwd=tmp_path)
    url = f"http://127.0.0.1:{port}/embed"
    try:
        cycled = loadtest(url, "-X", "POST", "-H", "Content-Type: application/json",
                          "--bodies", str(bodies), "--requests", "30", "--json")
        varied = loadtest(url, "-X", "POST", "-H", "Content-Type: application/json",
                          "--body-template", '{"user": "u{i}-{uuid}"}', "--requests", "60",
                          "--json")
        count = httpx.post(url, json={"user": "a"}, timeout=10).json()["n"]
    finally:
        stop(process)
    # Too short a run for a no-leak verdict on the C heap (see above): the cycled run's point is
    # that it sent the three bodies in turn, which the server's cache size shows.
    assert json.loads(cycled.stdout)["schema"] == "vramguard.check/1", cycled.stderr[-2000:]
    assert varied.returncode == 1, varied.stderr[-2000:]
    assert json.loads(varied.stdout)["verdict"] == "leak"
    assert count == 3 + 60  # three cycled users, then one new user per templated request


def test_bodies_file_must_be_json_lines(dense: str, tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"ok": 1}\nnot json\n')
    result = loadtest(f"{dense}/predict/clean/1", "--bodies", str(bad))
    assert result.returncode == 2
    assert "line 2 is not JSON" in result.stderr


def server_requests(base: str) -> int:
    return int(httpx.get(f"{base}/vramguard/status", timeout=60).json()["requests"])


def wait_for_server_requests(base: str, at_least: int) -> None:
    for _ in range(3000):  # polls, not seconds: the run is cut once the server has done the work
        if server_requests(base) >= at_least:
            return
        time.sleep(0.2)
    raise AssertionError(f"the server never reached {at_least} requests")


def cut_short(base: str, cut: Callable[[subprocess.Popen[str]], None]) -> tuple[int, str, str]:
    start = server_requests(base)
    # SIGINT handled in the child, as in a terminal: pytest itself may run with SIGINT ignored
    # (a suite started in the background of a non-interactive shell, `cmd &` or nohup, as CI
    # scripts and our load runs do: such jobs start with SIGINT set to SIG_IGN), an ignored
    # signal survives exec (a handled one is reset), and Python then keeps it ignored (full
    # suites: loadtest ran on past its Ctrl-C for the whole timeout, 3 runs of 3; no test
    # changes the handler: checked after every test of a full suite). -X faulthandler: a run
    # that still does not end after its cut is aborted and shows every thread's stack.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        run = subprocess.Popen([sys.executable, "-X", "faulthandler", "-m", "vramguard",
                                "loadtest", f"{base}/predict/leaky", "--requests", "1000000",
                                "--sample-every", "1"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=ENV)
    finally:
        signal.signal(signal.SIGINT, previous)
    wait_for_server_requests(base, start + 100)
    cut(run)
    try:
        out, err = run.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        run.send_signal(signal.SIGABRT)
        out, err = run.communicate(timeout=60)
        raise AssertionError(f"loadtest did not end after its cut:\n{err[-6000:]}") from None
    return run.returncode, out, err


def test_a_run_cut_short_prints_the_partial_verdict() -> None:
    process, base = example_server("device='cpu', overhead_budget=None, diagnose_requests=0")
    try:
        interrupted = cut_short(base, lambda run: run.send_signal(signal.SIGINT))
        gone = cut_short(base, lambda run: stop(process))
    finally:
        if process.poll() is None:
            stop(process)
    for (code, out, err), by_ctrl_c in ((interrupted, True), (gone, False)):
        assert code == 1, (out, err)  # the leak over the 100+ readings it had
        assert out.startswith("LEAK GET ")
        assert "(partial)" in out
        assert "partial: the run stopped early" in out
        assert "loadtest: partial: " in err
        assert ("loadtest: partial: interrupted" in err) == by_ctrl_c, err
        assert "Traceback" not in err


def test_httpx_missing_is_an_environment_error(tmp_path: Path) -> None:
    (tmp_path / "sitecustomize.py").write_text(textwrap.dedent("""
        import sys
        class _Block:
            def find_spec(self, name, path=None, target=None):
                if name == "httpx" or name.startswith("httpx."):
                    raise ImportError("httpx blocked for this test")
                return None
        sys.meta_path.insert(0, _Block())
    """))
    env = {**ENV, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ENV['PYTHONPATH']}"}
    result = subprocess.run([sys.executable, "-m", "vramguard", "loadtest", "http://127.0.0.1:9/x"],
                            capture_output=True, text=True, timeout=120, env=env, check=False)
    assert result.returncode == 3
    assert "pip install 'vramguard[loadtest]'" in result.stderr
    assert "Traceback" not in result.stderr


# -- --pid: NVML's per-process memory, from the simulated driver (tests/nvmlsim) ---------------------
@pytest.fixture
def plain_server(tmp_path: Path) -> Iterator[tuple[str, int]]:
    """A server with no vramguard at all (what --pid is for); (URL, its pid)."""
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind",
                                "127.0.0.1", "--directory", str(tmp_path)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}/"
    try:
        for _ in range(600):
            try:
                httpx.get(base, timeout=5)
                break
            except httpx.TransportError:
                time.sleep(0.1)
        yield base, process.pid
    finally:
        stop(process)


def test_pid_readings_come_from_nvml(nvml_sim_lib: Path,  # noqa: F811
                                     plain_server: tuple[str, int], tmp_path: Path) -> None:
    # The same value at every read: each live NVML read is still a reading (unlike a status's
    # repeat). (A growing schedule would grow with wall time, not with requests: not tested.)
    base, pid = plain_server
    scenario = write_scenario(tmp_path, f"""
        device 0 name=SimGPU uuid=GPU-00000000-0000-0000-0000-000000000000 total=80GiB
        used 0 1GiB
        process 0 {pid} 2GiB
        """)
    env = sim_env(nvml_sim_lib, scenario, base=ENV)
    result = subprocess.run([sys.executable, "-m", "vramguard", "loadtest", base, "--pid",
                             str(pid), "--requests", "60", "--json"], capture_output=True,
                            text=True, timeout=240, env=env, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    document = json.loads(result.stdout)
    assert document["verdict"] == "no_leak"
    assert document["device"] == f"pid {pid}"
    assert document["memory"]["end_bytes"] == 2 * 1024**3
    assert "61 fresh memory readings" in document["reason"]


def test_a_pid_no_gpu_lists_gives_no_verdict(nvml_sim_lib: Path,  # noqa: F811
                                             plain_server: tuple[str, int],
                                             tmp_path: Path) -> None:
    base, pid = plain_server
    scenario = write_scenario(tmp_path, """
        device 0 name=SimGPU uuid=GPU-00000000-0000-0000-0000-000000000000 total=80GiB
        used 0 1GiB
        process 0 1 2GiB
        """)
    env = sim_env(nvml_sim_lib, scenario, base=ENV)
    result = subprocess.run([sys.executable, "-m", "vramguard", "loadtest", base, "--pid",
                             str(pid), "--requests", "30"], capture_output=True, text=True,
                            timeout=240, env=env, check=False)
    assert result.returncode == 3, result.stderr
    assert "no GPU listed the pid" in result.stderr
