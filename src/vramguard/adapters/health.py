"""The liveness decision behind ``/vramguard/healthz``. Pure: verdict and samples in, Health out."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from vramguard.analysis.samples import Sample
from vramguard.analysis.verdict import Verdict
from vramguard.units import Percent, format_bytes, format_duration

Size = int | Percent


@dataclass(frozen=True, slots=True)
class Health:
    """``healthy`` False means "restart me": the process will run out of memory, or already sits
    at its limit. ``reason`` says why in one line (also the healthz body)."""

    healthy: bool
    reason: str
    seconds_to_limit: float | None = None

    def __str__(self) -> str:
        return f"{'ok' if self.healthy else 'unhealthy'}: {self.reason}"


def _resolve(size: Size | None, capacity: int | None) -> int | None:
    if isinstance(size, Percent):
        return None if capacity is None else size.of(capacity)
    return size


def _usage(sample: Sample) -> int | None:
    # What "memory in use" means for a threshold: the device as a whole when known (driver used
    # memory on CUDA, RSS on CPU), else what PyTorch holds.
    for value in (sample.device_used, sample.reserved, sample.allocated):
        if value is not None:
            return value
    return None


def seconds_to_limit(verdict: Verdict, limit: Size | None) -> float | None:
    """Seconds until a leak reaches ``limit`` (None: the device capacity) at its measured rate.

    None when there is no leak, no rate, or the limit is unknown; 0 when already there.
    """
    growth = verdict.growth
    if not verdict.is_leak or growth is None:
        return None
    if limit is None:
        return growth.seconds_to_full
    rate = growth.bytes_per_second
    resolved = _resolve(limit, verdict.capacity_bytes)
    if rate is None or resolved is None or verdict.end_bytes is None:
        return None
    if verdict.end_bytes >= resolved:
        return 0.0
    return math.inf if rate <= 0 else (resolved - verdict.end_bytes) / rate


def decide_health(
    verdict: Verdict,
    samples: Sequence[Sample],
    now: float,
    *,
    within: float,
    limit: Size | None = None,
    above: Size | None = None,
    above_for: float = 300.0,
) -> Health:
    """Unhealthy when a leak reaches ``limit`` within ``within`` seconds, or when usage stayed
    above ``above`` for ``above_for`` seconds up to the latest sample (``now`` on the same clock)."""
    eta = seconds_to_limit(verdict, limit)
    target = "the device's capacity" if limit is None else (
        str(limit) if isinstance(limit, Percent) else format_bytes(limit))
    if eta is not None and eta <= within:
        return Health(False, f"leak of {verdict.growth} is predicted to reach {target} in "
                             f"{format_duration(eta)} (limit {format_duration(within)})", eta)
    if above is not None:
        capacity = next((s.device_total for s in reversed(samples) if s.device_total), None)
        threshold = _resolve(above, capacity)
        since = None  # start of the run of samples above the threshold that ends now
        for sample in reversed(samples if threshold is not None else ()):
            usage = _usage(sample)
            if usage is None:
                continue
            if threshold is None or usage <= threshold:
                break
            since = sample.time
        if threshold is not None and since is not None and now - since >= above_for:
            return Health(False, f"memory in use has stayed above {format_bytes(threshold)} for "
                                 f"{format_duration(now - since)}", eta)
    if eta is None:
        return Health(True, "no leak predicted", None)
    return Health(True, f"a leak is predicted to reach {target} in {format_duration(eta)}, later "
                        f"than {format_duration(within)}", eta)


def hold(held: Health | None, current: Health, *, cleared: bool) -> tuple[Health, Health | None]:
    """(the answer, what to hold next): once unhealthy, stay unhealthy until ``cleared`` (the
    verdict behind the held answer now says no leak), so that a verdict that turns inconclusive
    for a while does not make a pod that is still leaking healthy (no flapping)."""
    if not current.healthy:
        return current, current
    if held is not None and not cleared:
        return Health(False, f"{held.reason} (held: no verdict has said no leak since)",
                      held.seconds_to_limit), held
    return current, None
