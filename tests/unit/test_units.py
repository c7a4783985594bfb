import math

import pytest

from vramguard.errors import UsageError
from vramguard.units import Percent, format_bytes, format_duration, parse_duration, parse_size


@pytest.mark.parametrize(("text", "expected"), [
    ("20GiB", 20 * 1024**3), ("512MB", 512 * 1000**2), ("1048576", 1048576), ("1.5 KiB", 1536),
    ("0", 0), ("2g", 2 * 1000**3),
])
def test_sizes(text, expected):
    assert parse_size(text) == expected


def test_percent_only_where_allowed():
    assert parse_size("90%", allow_percent=True) == Percent(90.0)
    assert Percent(90.0).of(1000) == 900
    with pytest.raises(UsageError, match="'90%'"):
        parse_size("90%")
    with pytest.raises(UsageError, match="between 0 and 100"):
        parse_size("150%", allow_percent=True)


@pytest.mark.parametrize("text", ["20 gigs", "", "-5GiB", "GiB", "1e9"])
def test_bad_sizes_name_the_value(text):
    with pytest.raises(UsageError) as info:
        parse_size(text)
    assert repr(text) in str(info.value)


@pytest.mark.parametrize(("text", "seconds"), [("0.5s", 0.5), ("30s", 30), ("5m", 300), ("1h", 3600),
                                               ("10", 10), ("250ms", 0.25)])
def test_durations(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["5 minutes", "1y", "", "-1s"])
def test_bad_durations(text):
    with pytest.raises(UsageError, match="duration"):
        parse_duration(text)


def test_format_bytes_is_binary_and_signed():
    assert format_bytes(4096, signed=True) == "+4.0 KiB"
    assert format_bytes(-1536) == "-1.5 KiB"
    assert format_bytes(3) == "3 B"
    assert format_bytes(None) == "unknown"
    assert format_duration(math.inf) == "never"
    assert format_duration(90) == "90s"
    assert format_duration(7200 * 3) == "6.0h"
