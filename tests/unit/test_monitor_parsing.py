"""Option parsing helpers of the monitor: values people type, errors that name them."""

from __future__ import annotations

import signal

import pytest

from vramguard.errors import UsageError
from vramguard.monitor import parse_listen, parse_signal_target


@pytest.mark.parametrize(("text", "expected"), [
    ("1234:USR1", (1234, signal.SIGUSR1)),
    ("1234:SIGTERM", (1234, signal.SIGTERM)),
    ("1:9", (1, 9)),
])
def test_signal_targets(text: str, expected: tuple[int, int]) -> None:
    assert parse_signal_target(text) == expected


@pytest.mark.parametrize("text", ["1234", "abc:USR1", "0:TERM", "12:NOPE", "12:999"])
def test_bad_signal_targets_name_the_value(text: str) -> None:
    with pytest.raises(UsageError, match=repr(text).replace("[", r"\[")):
        parse_signal_target(text)


@pytest.mark.parametrize(("text", "expected"), [
    ("9400", ("127.0.0.1", 9400)),
    ("0.0.0.0:9400", ("0.0.0.0", 9400)),
    (":9400", ("127.0.0.1", 9400)),
    ("[::1]:9400", ("::1", 9400)),
])
def test_listen_addresses_default_to_loopback(text: str, expected: tuple[str, int]) -> None:
    assert parse_listen(text) == expected


@pytest.mark.parametrize("text", ["host:port", "127.0.0.1:99999", ""])
def test_bad_listen_addresses(text: str) -> None:
    with pytest.raises(UsageError, match="HOST:PORT"):
        parse_listen(text)
