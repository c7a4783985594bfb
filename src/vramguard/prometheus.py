"""Prometheus metrics for an in-process :class:`~vramguard.guard.Guard`, built at scrape time.

Nothing is registered at import. Register a collector on the registry you serve::

    from prometheus_client import REGISTRY
    from vramguard.prometheus import GuardCollector

    REGISTRY.register(GuardCollector(guard))

A scrape reads the guard's latest sample and its verdict (recomputed only when new samples
arrived: a few ms); it never touches the request path and never raises into the exporter.
``deploy/prometheus/vramguard-rules.yml`` alerts on ``vramguard_guard_leak == 1``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from vramguard.analysis.verdict import VerdictKind
from vramguard.distributed.summary import rank_verdict

if TYPE_CHECKING:
    from vramguard.analysis.samples import Sample
    from vramguard.guard import Guard

_log = logging.getLogger("vramguard")


def _latest(samples: tuple[Sample, ...], field: str) -> int | None:
    """The newest measured value of ``field``: the census fills ``allocated`` only every k steps."""
    for sample in reversed(samples):
        value = getattr(sample, field)
        if value is not None:
            return int(value)
    return None


class GuardCollector(Collector):
    """Exports one guard's memory and verdict as ``vramguard_guard_*`` gauges, labelled ``device``
    and, in a distributed job, ``rank`` and ``local_rank`` (so a rule can compare a job's ranks:
    ``deploy/prometheus/vramguard-rules.yml``, ``VramguardRankOutlier``).

    Unknown values (before the first sample, ``reserved`` on CPU) are left out, not exported as 0.
    """

    def __init__(self, guard: Guard) -> None:
        self._guard = guard
        self._failed = False

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        """Fresh metric families from the guard's current state."""
        try:
            families = self._families()
        except Exception:  # a broken scrape must not break the service's exporter
            if not self._failed:
                self._failed = True
                _log.warning("vramguard: building the guard's metrics failed", exc_info=True)
            return
        yield from families

    def _families(self) -> list[GaugeMetricFamily | CounterMetricFamily]:
        guard = self._guard
        # Rank labels only where known: outside a job the series stay as they were.
        ranks = guard.identity.labels()
        names = ["device", *ranks]
        device = [str(guard.device), *ranks.values()]
        samples = guard.samples
        verdict = guard.verdict()

        def gauge(name: str, documentation: str, value: float | None) -> GaugeMetricFamily:
            family = GaugeMetricFamily(name, documentation, labels=names)
            if value is not None:
                family.add_metric(device, float(value))
            return family

        allocated = _latest(samples, "allocated")
        reserved = _latest(samples, "reserved")
        used = _latest(samples, "device_used")
        torch_bytes = reserved if reserved is not None else allocated
        # On CPU there is no cache: RSS minus live tensor bytes is what lives outside PyTorch.
        non_torch = None if used is None or torch_bytes is None else used - torch_bytes
        growth = None if verdict.growth is None else verdict.growth.bytes_per_request
        requests = CounterMetricFamily("vramguard_guard_requests",
                                       "Requests (steps) the guard has seen.", labels=names)
        requests.add_metric(device, float(guard.requests))
        kinds = GaugeMetricFamily("vramguard_guard_verdict",
                                  "1 for the guard's current verdict, 0 for the others.",
                                  labels=[*names, "verdict"])
        # process_group_growth is judged beside the memory verdict (vramguard.distributed).
        shown = rank_verdict(guard).kind
        for kind in VerdictKind:
            kinds.add_metric([*device, kind.value], 1.0 if kind is shown else 0.0)
        groups = guard.process_groups.points
        return [
            gauge("vramguard_guard_allocated_bytes",
                  "Bytes held by live tensors on the guarded device (latest sample).", allocated),
            gauge("vramguard_guard_reserved_bytes",
                  "Bytes the caching allocator holds from the device (absent on CPU).", reserved),
            gauge("vramguard_guard_non_torch_bytes",
                  "Device memory in use outside PyTorch (device used minus reserved; on CPU, RSS "
                  "minus tensor bytes).", non_torch),
            gauge("vramguard_guard_growth_bytes_per_request",
                  "Growth per request of the metric that decided the verdict (robust trend).",
                  growth),
            gauge("vramguard_guard_leak", "1 when the guard's verdict is 'leak', else 0.",
                  1.0 if verdict.kind is VerdictKind.LEAK else 0.0),
            gauge("vramguard_guard_process_groups",
                  "Live torch.distributed process groups (absent outside a distributed job).",
                  groups[-1][1] if groups else None),
            requests,
            kinds,
        ]
