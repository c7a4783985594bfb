"""`uvicorn examples.fastapi_app:app` works from the repository root even where another installed
package is called ``examples`` (e3nn and opacus ship one): a regular package there would beat a
namespace package here, so ``examples/`` is a regular package."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("uvicorn")
pytest.importorskip("fastapi")
pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parents[2]


def test_uvicorn_serves_the_example_despite_another_examples_package(tmp_path: Path) -> None:
    shadow = tmp_path / "site" / "examples"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text('"""Another project\'s examples package."""\n')
    paths = [str(tmp_path / "site"), str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p)}
    check = subprocess.run([sys.executable, "-c", "import examples; print(examples.__file__)"],
                           cwd=tmp_path, env=env, capture_output=True, text=True, check=True)
    assert str(shadow) in check.stdout  # the shadow is what `import examples` finds elsewhere
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    log = tempfile.TemporaryFile()  # noqa: SIM115
    server = subprocess.Popen([sys.executable, "-m", "uvicorn", "examples.fastapi_app:app",
                               "--port", str(port), "--log-level", "warning"], cwd=ROOT, env=env,
                              stdout=subprocess.DEVNULL, stderr=log)
    try:
        for _ in range(600):  # until it listens, or dies
            if server.poll() is not None:
                log.seek(0)
                pytest.fail(f"uvicorn exited: {log.read().decode()[-1500:]}")
            try:
                response = httpx.get(f"http://127.0.0.1:{port}/predict/clean/3", timeout=5)
                break
            except httpx.TransportError:
                time.sleep(0.1)
        else:
            pytest.fail("uvicorn did not start")
        assert response.status_code == 200
        assert response.json()["item"] == 3
    finally:
        server.kill()
        server.wait(timeout=30)
        log.close()
