"""The cross_device rule on plain snapshots, and where a launch environment puts a process."""

from __future__ import annotations

import pytest

from vramguard.monitor import DeviceReading, EventKind, RuleConfig, RuleEngine, RuleName, Snapshot
from vramguard.monitor.placement import Placement, expected_index, placement_from_env
from vramguard.nvml import ProcessMemory

MiB = 1024**2
DEVICES = [(0, "GPU-aaaa-1111"), (1, "GPU-bbbb-2222")]


@pytest.mark.parametrize(("env", "expected"), [
    ({"LOCAL_RANK": "1"}, 1),
    ({"RANK": "3", "LOCAL_RANK": "1", "CUDA_VISIBLE_DEVICES": "1,0"}, 0),
    ({"LOCAL_RANK": "0", "CUDA_VISIBLE_DEVICES": "1"}, 1),  # one device per rank: pinned
    ({"SLURM_PROCID": "1", "SLURM_LOCALID": "1"}, 1),
    ({"CUDA_VISIBLE_DEVICES": "GPU-bbbb"}, 1),  # a UUID prefix, as CUDA accepts
    ({"CUDA_VISIBLE_DEVICES": "0,1"}, None),  # several devices and no local rank: any is fine
    ({"LOCAL_RANK": "5"}, None),  # a device this node does not have: not judged
    ({"CUDA_VISIBLE_DEVICES": "MIG-1234"}, None),
])
def test_expected_index(env: dict[str, str], expected: int | None) -> None:
    placement = placement_from_env(42, env)
    assert placement is not None
    assert expected_index(placement, DEVICES) == expected


def test_a_silent_environment_has_no_placement() -> None:
    assert placement_from_env(42, {"PATH": "/bin"}) is None


def snapshot(t: float, on0: tuple[ProcessMemory, ...], on1: tuple[ProcessMemory, ...],
             placements: tuple[Placement, ...]) -> Snapshot:
    return Snapshot(time=t, wall=1_700_000_000 + t, placements=placements, devices=(
        DeviceReading(0, DEVICES[0][1], "sim", 10 * MiB, 80 * 1024 * MiB, False, on0),
        DeviceReading(1, DEVICES[1][1], "sim", 10 * MiB, 80 * 1024 * MiB, False, on1)))


def test_a_rank_on_another_ranks_gpu_alerts_once_and_resolves_when_it_leaves() -> None:
    # Rank 1 never called set_device: it holds a context on GPU 0 as well as its own GPU 1.
    ranks = (Placement(100, 0, None), Placement(101, 1, None))
    engine = RuleEngine(RuleConfig(cross_device=True))
    both = snapshot(0.0, (ProcessMemory(100, 900 * MiB), ProcessMemory(101, 500 * MiB)),
                    (ProcessMemory(101, 2000 * MiB),), ranks)
    [alert] = engine.evaluate(both)
    assert (alert.kind, alert.rule, alert.device, alert.pid) == (
        EventKind.ALERT, RuleName.CROSS_DEVICE, 0, 101)
    assert alert.to_json()["limit"] == 1
    assert alert.to_json()["value"] == 500 * MiB
    assert str(alert).startswith("ALERT cross_device GPU 0 pid 101: holds 500.0 MiB here, but "
                                 "its launch environment puts it on GPU 1")
    assert engine.evaluate(both) == []  # still there: no second alert
    fixed = snapshot(1.0, (ProcessMemory(100, 900 * MiB),), (ProcessMemory(101, 2000 * MiB),),
                     ranks)
    [resolved] = engine.evaluate(fixed)
    assert (resolved.kind, resolved.pid) == (EventKind.RESOLVED, 101)
    assert engine.evaluate(fixed) == []
    assert engine.active() == []


def test_off_by_default_and_silent_without_placements() -> None:
    on0 = (ProcessMemory(101, 500 * MiB),)
    ranks = (Placement(101, 1, None),)
    assert RuleEngine(RuleConfig()).evaluate(snapshot(0.0, on0, (), ranks)) == []
    assert RuleEngine(RuleConfig(cross_device=True)).evaluate(snapshot(0.0, on0, (), ())) == []
