"""``%load_ext vramguard`` in a real IPython ``InteractiveShell``: each cell is a step, and the
output cache (``Out[N]``/``_N``) that keeps every displayed tensor is named with its fix.

ipython#3452: ``Out`` keeps objects alive (even with ``cache_size=0`` in old versions);
pytorch#37726: tensors kept alive by the traceback of an interrupted notebook cell.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("IPython")

from IPython.core.interactiveshell import InteractiveShell
from traitlets.config import Config

from vramguard.ipython import notebook_suspect


@pytest.fixture
def shell(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[InteractiveShell]:
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    config = Config()
    config.HistoryManager.hist_file = ":memory:"
    ip = InteractiveShell.instance(config=config)
    ip.run_cell("%load_ext vramguard", store_history=True)
    ip.run_cell("import torch\nmodel = torch.nn.Linear(16, 256)\nx = torch.randn(64, 16)",
                store_history=True)
    yield ip
    ip.run_cell("%unload_ext vramguard")
    ip.reset(new_session=False)  # the cached outputs belong to this test only
    InteractiveShell.clear_instance()


def run_cells(shell: InteractiveShell, source: str, count: int) -> None:
    for _ in range(count):
        result = shell.run_cell(source, store_history=True)
        assert result.success


def test_displayed_outputs_are_blamed_on_the_output_cache(
        shell: InteractiveShell, capsys: pytest.CaptureFixture[str]) -> None:
    run_cells(shell, "y = x * 2\nmodel(x)", 60)  # each result is displayed, so Out keeps it
    capsys.readouterr()
    shell.run_cell("%vramguard", store_history=True)
    text = capsys.readouterr().out
    assert text.startswith("LEAK notebook on cpu after 61 steps")
    assert "[output_cache]" in text
    assert "IPython's output cache" in text
    assert "held by: Out[" in text
    assert "allocated at: <cell " in text
    assert ":2 in <module>()" in text            # line 2 of the cell, never vramguard's code
    assert "vramguard" not in text.split("allocated at:")[1].split("\n")[0]
    assert "end the cell with `;`" in text
    assert "%reset -f out" in text
    assert "InteractiveShell.cache_size = 0" in text
    shell.run_cell("%vramguard --json", store_history=True)
    document = json.loads(capsys.readouterr().out)
    assert document["schema"] == "vramguard.check/1"
    assert document["verdict"] == "leak"
    assert document["suspects"][0]["cause"] == "output_cache"
    assert document["suspects"][0]["allocated_at"]["file"].startswith("<cell ")


def test_a_silenced_cell_is_no_leak(shell: InteractiveShell,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    run_cells(shell, "y = x * 2\nmodel(x);", 60)  # `;`: not displayed, not cached
    capsys.readouterr()
    shell.run_cell("%vramguard", store_history=True)
    assert capsys.readouterr().out.startswith("NO_LEAK notebook on cpu after 61 steps")


def test_the_last_errors_traceback_is_named_as_the_root() -> None:
    from vramguard.analysis.suspects import Site, Suspect

    suspect = Suspect(None, allocated_at=Site("<ipython-input-7-0a1b2c>", 3, "<module>"),
                      held_by="last_traceback (global traceback in module sys) -> .tb_frame "
                              "-> Tensor(8, 4)", fix="x")
    named = notebook_suspect(suspect)
    assert str(named.allocated_at) == "<cell 7>:3 in <module>()"
    assert named.held_by is not None
    assert named.held_by.startswith("sys.last_traceback (the last error's traceback keeps the "
                                    "interrupted cell's frames) -> .tb_frame")
    assert named.fix is not None
    assert "sys.last_traceback = sys.last_value = None" in named.fix
