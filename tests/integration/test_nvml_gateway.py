"""The NVML gateway against the simulated driver, loaded in-process by the real nvidia-ml-py."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.nvmlsim.fixtures import (  # noqa: F401  (pytest fixtures)
    isolated_pynvml,
    nvml_scenario,
    nvml_sim_lib,
    nvml_sim_lib_no_v3,
)
from vramguard.errors import EnvironmentProblem
from vramguard.nvml import (
    DeviceInfo,
    DeviceMemory,
    GpuLost,
    Nvml,
    NvmlMissing,
    NvmlNoPermission,
    NvmlNotSupported,
    ProcessMemory,
)

pytestmark = pytest.mark.usefixtures("isolated_pynvml")
GiB = 1024**3
MiB = 1024**2

TWO_GPUS = """
clock calls
device 0 name=SimA uuid=GPU-aaaa total=80GiB reserved=512MiB
device 1 name=SimB uuid=GPU-bbbb total=40GiB
mig 1 0 name=MIG-1g.10gb uuid=MIG-cccc total=10GiB
used 0 0:1GiB 10:11GiB
used 1 5GiB
used 1/0 2GiB
process 0 1234 0:1GiB 10:2GiB
process 0 4321 na
process 1/0 555 1GiB
"""


def test_devices_memory_and_processes(nvml_sim_lib: Path, nvml_scenario) -> None:  # noqa: F811
    nvml_scenario(TWO_GPUS)
    with Nvml(library_path=nvml_sim_lib) as nvml:
        assert nvml.devices() == [
            DeviceInfo(0, "GPU-aaaa", "SimA"),
            DeviceInfo(1, "GPU-bbbb", "SimB"),
            DeviceInfo(1, "MIG-cccc", "MIG-1g.10gb", mig=True, parent=1, mig_index=0),
        ]
        # clock=calls: the k-th memory reading is at x=k, linear between keypoints
        assert nvml.memory(0) == DeviceMemory(1 * GiB, 80 * GiB, 512 * MiB)
        assert nvml.memory(0).used_bytes == 2 * GiB
        assert nvml.memory(1, mig_index=0) == DeviceMemory(2 * GiB, 10 * GiB, 0)
        assert nvml.processes(0) == [ProcessMemory(1234, int(1.1 * GiB)),
                                     ProcessMemory(4321, None)]  # not available -> None
        assert nvml.processes(1, mig_index=0) == [ProcessMemory(555, GiB)]
        assert nvml.process_vram({1234, 555}) == int(1.1 * GiB) + GiB
        assert nvml.process_vram({4321}) is None
        assert nvml.process_vram({99999}) == 0


def test_memory_falls_back_to_v1_when_v2_is_refused(nvml_sim_lib: Path, nvml_scenario) -> None:  # noqa: F811
    nvml_scenario(TWO_GPUS + "fault * memory_v2=not_supported\n")
    with Nvml(library_path=nvml_sim_lib) as nvml:
        # v1 folds the reservation into "used" and has no separate reserved figure
        assert nvml.memory(0) == DeviceMemory(1 * GiB + 512 * MiB, 80 * GiB, None)


def test_processes_fall_back_to_v2_when_the_v3_symbol_is_missing(
        nvml_sim_lib_no_v3: Path, nvml_scenario) -> None:  # noqa: F811
    nvml_scenario(TWO_GPUS)
    import pynvml

    with Nvml(library_path=nvml_sim_lib_no_v3) as nvml:
        nvml.devices()
        with pytest.raises(pynvml.NVMLError_FunctionNotFound):
            pynvml.nvmlDeviceGetComputeRunningProcesses_v3(pynvml.nvmlDeviceGetHandleByIndex(0))
        assert [p.pid for p in nvml.processes(0)] == [1234, 4321]


def test_the_v1_path_reads_the_unversioned_symbol(tmp_path: Path, nvml_scenario) -> None:  # noqa: F811
    from tests.nvmlsim.fixtures import build_sim

    lib = build_sim(tmp_path, missing=("v3", "v2"))
    nvml_scenario(TWO_GPUS)
    with Nvml(library_path=lib) as nvml:
        assert nvml.processes(0) == [ProcessMemory(1234, GiB), ProcessMemory(4321, None)]


def test_children_of_the_loading_process_are_listed(nvml_sim_lib: Path, nvml_scenario) -> None:  # noqa: F811
    nvml_scenario("device 0 total=8GiB\nused 0 1GiB\nprocess 0 children 3GiB\n")
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        with Nvml(library_path=nvml_sim_lib) as nvml:
            listed = {p.pid: p.used_bytes for p in nvml.processes(0)}
            assert listed.get(child.pid) == 3 * GiB
            assert nvml.process_vram({child.pid}) == 3 * GiB
    finally:
        child.kill()
        child.wait()


@pytest.mark.parametrize(("fault", "error"), [
    ("processes=not_supported", NvmlNotSupported),
    ("processes=no_permission", NvmlNoPermission),
])
def test_driver_refusals_map_to_vramguard_errors(nvml_sim_lib: Path, nvml_scenario,  # noqa: F811
                                                 fault: str, error: type) -> None:
    nvml_scenario(TWO_GPUS + f"fault 0 {fault}\n")
    with Nvml(library_path=nvml_sim_lib) as nvml:
        with pytest.raises(error, match="listing processes on GPU 0"):
            nvml.processes(0)
        assert nvml.process_vram({555}) == GiB  # the other device still answers


def test_a_lost_gpu_stays_lost(nvml_sim_lib: Path, nvml_scenario) -> None:  # noqa: F811
    nvml_scenario(TWO_GPUS + "fault 0 all=gpu_lost after=2\n")
    with Nvml(library_path=nvml_sim_lib) as nvml:
        nvml.memory(0)
        nvml.memory(0)
        assert not nvml.is_lost(0)
        with pytest.raises(GpuLost) as lost:
            nvml.memory(0)
        assert lost.value.index == 0
        assert nvml.is_lost(0)
        with pytest.raises(GpuLost):
            nvml.processes(0)
        assert [d.index for d in nvml.devices()][:2] == [0, 1]  # still listed, as lost
        assert nvml.memory(1).used_bytes == 5 * GiB


def test_missing_library_is_an_environment_problem_with_a_hint(tmp_path: Path) -> None:
    nvml = Nvml(library_path=tmp_path / "libnvidia-ml.so.1")  # lazy: no error until a query
    with pytest.raises(NvmlMissing) as missing:
        nvml.devices()
    assert isinstance(missing.value, EnvironmentProblem)
    assert missing.value.exit_code == 3
    assert "NVIDIA driver" in str(missing.value)


def test_library_without_a_driver_is_missing_too(nvml_sim_lib: Path, monkeypatch) -> None:  # noqa: F811
    monkeypatch.delenv("VRAMGUARD_NVML_SIM", raising=False)
    with pytest.raises(NvmlMissing, match="Driver Not Loaded"):
        Nvml(library_path=nvml_sim_lib).devices()
