"""Starting a server subprocess for the web benchmarks: a free port, and waiting until it answers."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.integration.net import free_port  # noqa: E402  (the tests' own, re-exported)

__all__ = ["ROOT", "free_port", "launch"]


def launch(code: str, port: int, probe: str, what: str = "server", *, tries: int = 300,
           timeout: float = 1.0) -> tuple[subprocess.Popen[bytes], str]:
    """Run ``code`` in a new interpreter (the checkout's root and ``src`` first on its path) and
    wait until GET ``probe`` on ``port`` answers (``tries`` x 0.2 s at most, and not once the
    process has exited); (process, base URL)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "src"),
                                                        os.environ.get("PYTHONPATH", "")])}
    process = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=env)
    base = f"http://127.0.0.1:{port}"
    for _ in range(tries):
        if process.poll() is not None:
            raise SystemExit(f"the {what} died")
        try:
            httpx.get(f"{base}{probe}", timeout=timeout)
            return process, base
        except httpx.TransportError:
            time.sleep(0.2)
    process.kill()
    raise SystemExit(f"the {what} did not start")
