"""``vramguard supervise`` against real child processes: RSS limits, restarts, escalation, signals.

Every test runs the real CLI (``python -m vramguard supervise``) on a small Python child written
to ``tmp_path``. Timings are short (0.05s samples, sub-second grace) and every wait is bounded.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

EXIT_GAVE_UP = 75
MiB = 1024**2

# Leaks 20 MiB every 0.1s up to a bounded total; logs its pid at start and "done" if it finishes.
LEAK = """
import os, sys, time
log = open(sys.argv[1], "a"); log.write(f"start {os.getpid()}\\n"); log.flush()
buf = []
for _ in range(int(sys.argv[2])):
    buf.append(bytearray(b"x") * (20 * 1024 * 1024))  # written, so resident
    time.sleep(0.1)
log.write("done\\n")
"""

# Exits 3 on its first two runs and 0 on the third.
FLAKY = """
import sys
from pathlib import Path
log = Path(sys.argv[1])
runs = len(log.read_text().splitlines()) if log.exists() else 0
log.write_text("run\\n" * (runs + 1))
sys.exit(int(sys.argv[2]) if runs < 2 else 0)
"""

# Records the dump signal and SIGTERM, in order, then dies of SIGTERM; goes over 30 MiB once the
# handlers are in place so the limit cannot fire before them.
DUMPER = """
import os, signal, sys, time
log = open(sys.argv[1], "a", buffering=1)
def dump(signum, frame): log.write("dump\\n")
def term(signum, frame):
    log.write("term\\n")
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)
signal.signal(signal.SIGUSR1, dump)
signal.signal(signal.SIGTERM, term)
buf = bytearray(b"x") * (64 * 1024 * 1024)
for _ in range(300):
    time.sleep(0.1)
"""

# Ignores SIGTERM and grows over the limit.
STUBBORN = """
import signal, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
buf = bytearray(b"x") * (64 * 1024 * 1024)
for _ in range(300):
    time.sleep(0.1)
"""

# Writes "ready" then sleeps; on SIGINT exits with status 7 (so forwarding is observable).
SLEEPER = """
import signal, sys, time
from pathlib import Path
signal.signal(signal.SIGINT, lambda s, f: sys.exit(7))
Path(sys.argv[1]).write_text("ready")
for _ in range(300):
    time.sleep(0.1)
"""


def write(tmp_path: Path, name: str, source: str) -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(source))
    return path


# A failure detector, not a deadline results depend on: generous for a loaded machine.
CAP_S = 120


def supervise(*args: str, timeout: float = CAP_S) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vramguard", "supervise", *args],
                          capture_output=True, text=True, timeout=timeout, check=False)


FAST = ("--interval", "0.05s", "--grace", "1s", "--backoff", "0.05s")


def test_rss_leak_is_restarted_then_given_up(tmp_path: Path) -> None:
    leak = write(tmp_path, "leak.py", LEAK)
    starts = tmp_path / "starts.log"
    result = supervise("--max-rss", "120MiB", "--for", "0.2s", "--max-restarts", "2", *FAST,
                       "--", sys.executable, str(leak), str(starts), "40")
    assert result.returncode == EXIT_GAVE_UP, result.stderr
    lines = starts.read_text().splitlines()
    assert len(lines) == 3  # the first run and two restarts
    assert "done" not in lines  # each run was stopped long before its 800 MiB
    restarts = [line for line in result.stderr.splitlines() if ": restart " in line]
    assert len(restarts) == 2
    for line in restarts:
        assert "rss" in line
        assert "above the limit of 120.0 MiB" in line
        assert "memory seen: rss" in line
    assert "gave up: 2 restarts within 10m" in result.stderr
    assert f"exiting with status {EXIT_GAVE_UP}" in result.stderr


def test_json_log_reports_the_memory_seen(tmp_path: Path) -> None:
    leak = write(tmp_path, "leak.py", LEAK)
    result = supervise("--max-rss", "80MiB", "--restart", "never", "--json", *FAST,
                       "--", sys.executable, str(leak), str(tmp_path / "starts.log"), "40")
    assert result.returncode == EXIT_GAVE_UP, result.stderr
    events = [json.loads(line) for line in result.stderr.splitlines()]
    kinds = [event["event"] for event in events]
    assert kinds[0] == "start"
    assert "breach" in kinds
    assert kinds[-1] == "give_up"
    breach = events[kinds.index("breach")]
    assert 80 * MiB < breach["rss_bytes"] < 800 * MiB
    assert breach["vram_bytes"] is None  # not asked for: null, never 0
    assert any(e["event"] == "signal" and e["signal"] == "SIGTERM" for e in events)


def test_crashes_are_restarted_on_failure_until_success(tmp_path: Path) -> None:
    flaky = write(tmp_path, "flaky.py", FLAKY)
    runs = tmp_path / "runs.log"
    result = supervise("--restart", "on-failure", *FAST, "--", sys.executable, str(flaky),
                       str(runs), "3")
    assert result.returncode == 0, result.stderr
    assert len(runs.read_text().splitlines()) == 3
    assert len(re.findall(r"pid \d+ exited with status 3 after", result.stderr)) == 2
    assert "restart 2/5 within 10m in 0.1s: the command exited with status 3" in result.stderr


def test_restart_never_passes_the_crash_status_through(tmp_path: Path) -> None:
    flaky = write(tmp_path, "flaky.py", FLAKY)
    result = supervise("--restart", "never", *FAST, "--", sys.executable, str(flaky),
                       str(tmp_path / "runs.log"), "42")
    assert result.returncode == 42, result.stderr
    assert ": restart " not in result.stderr


def test_restart_always_restarts_clean_exits_until_the_budget_is_spent(tmp_path: Path) -> None:
    result = supervise("--restart", "always", "--max-restarts", "2", *FAST,
                       "--", sys.executable, "-c", "pass")
    assert result.returncode == EXIT_GAVE_UP, result.stderr
    assert len(re.findall(r"pid \d+ exited with status 0 after", result.stderr)) == 3


def test_dump_signal_reaches_the_child_before_sigterm(tmp_path: Path) -> None:
    dumper = write(tmp_path, "dumper.py", DUMPER)
    log = tmp_path / "signals.log"
    result = supervise("--max-rss", "30MiB", "--dump-signal", "USR1", "--dump-wait", "0.3s",
                       "--restart", "never", *FAST, "--", sys.executable, str(dumper), str(log))
    assert result.returncode == EXIT_GAVE_UP, result.stderr
    assert log.read_text().splitlines() == ["dump", "term"]
    assert result.stderr.index("sent SIGUSR1") < result.stderr.index("sent SIGTERM")
    assert "killed by SIGTERM" in result.stderr
    assert "sent SIGKILL" not in result.stderr


def test_sigkill_after_grace_for_a_child_that_ignores_sigterm(tmp_path: Path) -> None:
    stubborn = write(tmp_path, "stubborn.py", STUBBORN)
    started = time.monotonic()
    result = supervise("--max-rss", "30MiB", "--restart", "never", "--interval", "0.05s",
                       "--grace", "0.5s", "--", sys.executable, str(stubborn))
    elapsed = time.monotonic() - started
    assert result.returncode == EXIT_GAVE_UP, result.stderr
    assert "sent SIGTERM" in result.stderr
    assert "sent SIGKILL to process group" in result.stderr
    assert "after 0.5s grace" in result.stderr
    assert "killed by SIGKILL" in result.stderr
    assert elapsed >= 0.5


def _start_and_wait_ready(tmp_path: Path, *extra: str) -> tuple[subprocess.Popen[str], Path]:
    sleeper = write(tmp_path, "sleeper.py", SLEEPER)
    ready = tmp_path / "ready"
    proc = subprocess.Popen([sys.executable, "-m", "vramguard", "supervise", *FAST, *extra,
                             "--", sys.executable, str(sleeper), str(ready)],
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + CAP_S
    while not ready.exists():
        assert time.monotonic() < deadline, "the child never became ready"
        assert proc.poll() is None, proc.communicate()[1]
        time.sleep(0.02)
    return proc, ready


@pytest.mark.parametrize(("sig", "status"), [(signal.SIGTERM, 128 + signal.SIGTERM),
                                             (signal.SIGINT, 7)])
def test_sigint_and_sigterm_are_forwarded_and_the_childs_status_returned(
    tmp_path: Path, sig: signal.Signals, status: int
) -> None:
    proc, _ = _start_and_wait_ready(tmp_path, "--restart", "always")
    child_pid = psutil.Process(proc.pid).children()[0].pid
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=CAP_S)
    assert proc.returncode == status, stderr
    assert f"received {sig.name}; passed it on to process group {child_pid}" in stderr
    assert ": restart " not in stderr  # a stop request is not a crash, even with --restart always
    assert not psutil.pid_exists(child_pid)


def test_usage_errors_name_the_value() -> None:
    result = supervise("--max-rss", "20gigs", "--", "true")
    assert result.returncode == 2
    assert "'20gigs'" in result.stderr
    result = supervise("--grace", "soon", "--", "true")
    assert result.returncode == 2
    assert "'soon'" in result.stderr
    result = supervise("--dump-signal", "SIGNOPE", "--", "true")
    assert result.returncode == 2
    assert "'SIGNOPE'" in result.stderr
    result = supervise("--max-rss", "1GiB")
    assert result.returncode == 2
    assert "expected a command" in result.stderr


def test_a_missing_command_exits_127(tmp_path: Path) -> None:
    result = supervise("--", str(tmp_path / "no-such-program"))
    assert result.returncode == 127
    assert "command not found" in result.stderr


def test_supervise_never_imports_torch() -> None:
    code = ("import sys\nfrom vramguard.commands.main import main\n"
            "rc = main(['supervise', '--restart', 'never', '--', 'true'])\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\n"
            "assert 'pynvml' not in sys.modules, 'NVML touched without --max-vram'\n"
            "sys.exit(rc)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=30, check=False)
    assert result.returncode == 0, result.stderr


def test_supervise_help_documents_exit_codes() -> None:
    result = supervise("--help")
    assert result.returncode == 0
    assert "75" in result.stdout
    assert "127" in result.stdout



def test_a_stop_signal_during_the_backoff_delay_ends_the_supervisor(tmp_path: Path) -> None:
    # A backoff of an hour: ending within the cap at all shows it was not sat out, and the
    # message shows where the signal landed; no elapsed-time assertion.
    proc = subprocess.Popen([sys.executable, "-m", "vramguard", "supervise", "--restart",
                             "always", "--backoff", "1h", "--backoff-max", "1h", "--", sys.executable,
                             "-c", "pass"], stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    for line in proc.stderr:  # bounded by the child: it exits at once, then the restart line
        if ": restart 1/" in line:
            break
    proc.send_signal(signal.SIGTERM)
    _, rest = proc.communicate(timeout=CAP_S)
    assert proc.returncode == 128 + signal.SIGTERM, rest
    assert "while waiting to restart" in rest
