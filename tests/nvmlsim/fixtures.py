"""Build and drive the simulated NVML driver (see README.md here). Import from tests:

    from tests.nvmlsim.fixtures import build_sim, sim_env, write_scenario, nvml_sim_lib

The plain functions work anywhere (benchmarks too); the pytest fixtures wrap them.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import textwrap
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

SOURCE = Path(__file__).with_name("nvmlsim.c")
LIBRARY_NAME = "libnvidia-ml.so.1"
SCENARIO_VARIABLE = "VRAMGUARD_NVML_SIM"
LIBRARY_VARIABLE = "VRAMGUARD_NVML_LIBRARY"
_FLAGS = {"v3": "-DNO_V3", "v2": "-DNO_V2", "memory_v2": "-DNO_MEMORY_V2"}


def build_sim(directory: Path, *, missing: Iterable[str] = ()) -> Path:
    """Compile nvmlsim.c into ``directory/<hash>/libnvidia-ml.so.1``; reuse it if already built.

    ``missing`` names symbols to leave out (``"v3"``, ``"v2"``, ``"memory_v2"``), the way an old
    driver lacks them. The cache key is the source and the flags, so an edited source rebuilds.
    """
    flags = sorted(_FLAGS[name] for name in missing)
    digest = hashlib.sha256(SOURCE.read_bytes() + " ".join(flags).encode()).hexdigest()[:16]
    target_dir = Path(directory) / digest
    target = target_dir / LIBRARY_NAME
    if target.exists():
        return target
    compiler = shutil.which("gcc") or shutil.which("cc")
    if compiler is None:
        pytest.skip("no C compiler (gcc) to build the simulated NVML driver")
    target_dir.mkdir(parents=True, exist_ok=True)
    partial = target_dir / f".{LIBRARY_NAME}.{os.getpid()}"
    built = subprocess.run(
        [compiler, "-shared", "-fPIC", "-O2", "-Wall", "-Werror", *flags, "-o", str(partial),
         str(SOURCE), "-lpthread"],
        capture_output=True, text=True, timeout=120, check=False,
    )
    if built.returncode != 0:
        raise RuntimeError(f"building the simulated NVML driver failed:\n{built.stderr}")
    partial.replace(target)  # atomic, so a concurrent build never sees half a library
    return target


def write_scenario(directory: Path, text: str, name: str = "scenario.txt") -> Path:
    """Write a scenario (dedented) and return its path."""
    path = Path(directory) / name
    path.write_text(textwrap.dedent(text))
    return path


def sim_env(library: Path, scenario: Path | None, base: Mapping[str, str] | None = None,
            ) -> dict[str, str]:
    """An environment for a subprocess that should see the simulated driver.

    The library is found both through the normal search path (``LD_LIBRARY_PATH``, how
    ``pynvml`` finds the real driver) and through ``VRAMGUARD_NVML_LIBRARY``.
    """
    env = dict(os.environ if base is None else base)
    lib_dir = str(Path(library).parent)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [lib_dir, env.get("LD_LIBRARY_PATH")]))
    env[LIBRARY_VARIABLE] = str(library)
    if scenario is None:
        env.pop(SCENARIO_VARIABLE, None)
    else:
        env[SCENARIO_VARIABLE] = str(scenario)
    return env


@pytest.fixture(scope="session")
def nvml_sim_lib(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The simulated driver with every symbol (built once per session)."""
    return build_sim(tmp_path_factory.getbasetemp() / "nvmlsim")


@pytest.fixture(scope="session")
def nvml_sim_lib_no_v3(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The simulated driver without ``nvmlDeviceGetComputeRunningProcesses_v3``."""
    return build_sim(tmp_path_factory.getbasetemp() / "nvmlsim", missing=("v3",))


@pytest.fixture
def nvml_scenario(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """Write a scenario and point ``VRAMGUARD_NVML_SIM`` at it (for in-process tests)."""

    def use(text: str) -> Path:
        path = write_scenario(tmp_path, text)
        monkeypatch.setenv(SCENARIO_VARIABLE, str(path))
        return path

    return use


@pytest.fixture
def isolated_pynvml():  # type: ignore[no-untyped-def]
    """Forget the library pynvml loaded during the test, so the next test (or a test expecting
    the real driver) starts from pynvml's normal search again."""
    import pynvml

    yield pynvml
    with pynvml.libLoadLock:
        if pynvml._nvmlLib_refcount == 0:
            pynvml.nvmlLib = None
            pynvml._nvmlGetFunctionPointer_cache.clear()
