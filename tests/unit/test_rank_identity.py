"""Rank identity from launcher variables (torchrun, Slurm, Open MPI) and /proc environ bytes."""

from __future__ import annotations

import os

import pytest

from vramguard.readers.rank import (
    NOT_DISTRIBUTED,
    RankIdentity,
    identity_from_env,
    parse_environ,
    read_identity,
    read_process_identity,
)


@pytest.mark.parametrize(("env", "expected"), [
    ({"RANK": "1", "LOCAL_RANK": "1", "WORLD_SIZE": "3"}, RankIdentity(1, 1, 3, "env")),
    ({"SLURM_PROCID": "5", "SLURM_LOCALID": "1", "SLURM_NTASKS": "8"},
     RankIdentity(5, 1, 8, "slurm")),
    ({"OMPI_COMM_WORLD_RANK": "2", "OMPI_COMM_WORLD_LOCAL_RANK": "0",
      "OMPI_COMM_WORLD_SIZE": "4"}, RankIdentity(2, 0, 4, "openmpi")),
    # torchrun inside a Slurm allocation: torch uses RANK, so RANK wins.
    ({"RANK": "3", "WORLD_SIZE": "4", "SLURM_PROCID": "0", "SLURM_NTASKS": "1"},
     RankIdentity(3, None, 4, "env")),
    # A garbage RANK does not count; the next launcher's complete set does.
    ({"RANK": "x", "SLURM_PROCID": "7"}, RankIdentity(7, None, None, "slurm")),
    ({"RANK": "-1"}, NOT_DISTRIBUTED),
    ({}, NOT_DISTRIBUTED),
    # Never mixes launchers: local rank and size come from the launcher that gave the rank.
    ({"SLURM_PROCID": "1", "LOCAL_RANK": "0", "WORLD_SIZE": "2"},
     RankIdentity(1, None, None, "slurm")),
])
def test_identity_from_env(env: dict[str, str], expected: RankIdentity) -> None:
    assert identity_from_env(env) == expected


def test_str_and_labels() -> None:
    identity = RankIdentity(1, 0, 3, "env")
    assert str(identity) == "rank 1/3 (local 0)"
    assert identity.labels() == {"rank": "1", "local_rank": "0"}
    assert str(NOT_DISTRIBUTED) == "not a distributed run"
    assert NOT_DISTRIBUTED.labels() == {}
    assert not NOT_DISTRIBUTED.known


def test_parse_environ() -> None:
    raw = b"RANK=2\0PATH=/bin:/usr/bin\0EMPTY=\0BROKEN\0A=b=c\0"
    assert parse_environ(raw) == {"RANK": "2", "PATH": "/bin:/usr/bin", "EMPTY": "", "A": "b=c"}


def test_read_identity_from_given_env_without_torch_initialised() -> None:
    assert read_identity({"RANK": "4", "WORLD_SIZE": "8"}) == RankIdentity(4, None, 8, "env")


@pytest.mark.skipif(not os.path.exists("/proc/self/environ"), reason="needs Linux /proc")
def test_read_process_identity_of_this_process() -> None:
    expected = identity_from_env(os.environ)  # the environment at exec time: unchanged here
    assert read_process_identity(os.getpid()) == expected
    assert read_process_identity(2**22 + 12345) is None  # no such process
