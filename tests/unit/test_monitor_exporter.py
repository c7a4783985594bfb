"""The Prometheus collector renders a snapshot; a fresh registry per test, nothing global."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from vramguard.monitor import DeviceReading, Snapshot, SnapshotCollector
from vramguard.nvml import ProcessMemory


def render(snapshot: Snapshot | None, *, per_process: bool = False) -> str:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(lambda: snapshot, per_process=per_process))
    return generate_latest(registry).decode()


SNAPSHOT = Snapshot(time=0.0, wall=0.0, devices=(
    DeviceReading(0, "GPU-a", "sim", 1024, 4096, False,
                  (ProcessMemory(7, 512), ProcessMemory(8, None))),
    DeviceReading(1, "GPU-b", "sim", None, None, True),
))


def test_device_series_in_bytes_labelled_by_index_and_uuid() -> None:
    text = render(SNAPSHOT)
    assert 'vramguard_gpu_memory_used_bytes{gpu="0",uuid="GPU-a"} 1024.0' in text
    assert 'vramguard_gpu_memory_total_bytes{gpu="0",uuid="GPU-a"} 4096.0' in text
    assert 'vramguard_gpu_up{gpu="0",uuid="GPU-a"} 1.0' in text
    assert 'vramguard_gpu_up{gpu="1",uuid="GPU-b"} 0.0' in text
    # unknown is absent, not 0
    assert 'vramguard_gpu_memory_used_bytes{gpu="1"' not in text
    assert "vramguard_process_gpu_memory_bytes" not in text


def test_per_process_series_are_opt_in_and_skip_unknown() -> None:
    text = render(SNAPSHOT, per_process=True)
    assert 'vramguard_process_gpu_memory_bytes{gpu="0",pid="7",uuid="GPU-a"} 512.0' in text
    assert 'pid="8"' not in text


def test_nothing_before_the_first_snapshot() -> None:
    assert "vramguard_" not in render(None)
