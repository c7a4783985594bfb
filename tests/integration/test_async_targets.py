"""``async def`` targets through the real ``vramguard check`` CLI: awaited, judged, or refused.

Before: the coroutine was never awaited (a RuntimeWarning only) and a leaking handler got
``NO_LEAK ... +0 B/request``, exit 0.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("torch")

ASYNC_APP = """
    import asyncio
    import torch

    model = torch.nn.Linear(16, 4)
    kept = []

    async def leaky(i):
        await asyncio.sleep(0)
        out = model(torch.randn(4, 16))
        kept.append(out)                  # keeps every output and its autograd graph

    async def clean(i):
        await asyncio.sleep(0)
        with torch.inference_mode():
            return model(torch.randn(4, 16)).sum().item()

    async def streaming(i):              # an async generator: not one request
        yield i

    LOOP = asyncio.new_event_loop()

    def foreign(i):                       # a future of a loop vramguard does not run
        return LOOP.create_future()
"""


def vramguard(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vramguard", *args], capture_output=True,
                          text=True, timeout=240, cwd=cwd, check=False)


@pytest.fixture
def app(tmp_path: Path) -> Path:
    (tmp_path / "async_app.py").write_text(textwrap.dedent(ASYNC_APP))
    return tmp_path


def test_a_leaking_async_handler_is_awaited_and_fails_with_the_fix(app: Path) -> None:
    result = vramguard("check", "async_app.py:leaky", "--requests", "80", cwd=app)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "RuntimeWarning" not in result.stderr
    out = result.stdout
    assert out.startswith("LEAK async_app.py:leaky on cpu after 80 requests")
    assert "allocated at: " in out
    assert "async_app.py:10 in leaky()" in out
    assert "held by: kept (global list in module async_app)" in out
    assert ".detach()" in out


def test_a_clean_async_handler_passes(app: Path) -> None:
    result = vramguard("check", "async_app.py:clean", "--requests", "60", cwd=app)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("NO_LEAK async_app.py:clean on cpu after 60 requests")
    assert "RuntimeWarning" not in result.stderr


@pytest.mark.parametrize(("target", "message"), [
    ("streaming", "returned an async generator: its body runs only when iterated"),
    ("foreign", "returned a future of another event loop, which vramguard cannot drive"),
])
def test_an_awaitable_vramguard_cannot_drive_is_a_usage_error(app: Path, target: str,
                                                                message: str) -> None:
    result = vramguard("check", f"async_app.py:{target}", "--requests", "30", cwd=app)
    assert result.returncode == 2, result.stdout + result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_run_check_async_awaits_in_the_callers_loop() -> None:
    import torch

    from vramguard.runner import run_check_async

    kept: list[object] = []
    loop_ids: set[int] = set()

    async def handler(_index: int) -> None:
        loop_ids.add(id(asyncio.get_running_loop()))
        await asyncio.sleep(0)
        kept.append(torch.randn(128))

    async def main() -> object:
        report = await run_check_async("handler", handler, requests=60, device="cpu",
                                       diagnosis_requests=0)
        return report, id(asyncio.get_running_loop())

    report, caller_loop = asyncio.run(main())
    assert report.verdict.is_leak  # type: ignore[attr-defined]
    assert loop_ids == {caller_loop}


def test_run_check_inside_a_running_loop_says_to_await_run_check_async() -> None:
    from vramguard.errors import UsageError
    from vramguard.runner import run_check

    async def handler(_index: int) -> None:
        await asyncio.sleep(0)

    async def main() -> None:
        run_check("handler", handler, requests=30, device="cpu")

    with pytest.raises(UsageError, match="expected run_check_async there"):
        asyncio.run(main())
