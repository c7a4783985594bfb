"""Prometheus metrics for the monitor: a custom collector built at scrape time from the latest
snapshot (the scrape never calls NVML), served from a registry of its own.

Nothing registers at import; :func:`serve` makes a fresh ``CollectorRegistry`` each time, so tests
and embedders choose their registry.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from vramguard.errors import UsageError
from vramguard.monitor.readings import Snapshot


class SnapshotCollector(Collector):
    """Builds ``vramguard_gpu_*`` (and opt-in ``vramguard_process_*``) families from a snapshot.

    ``source`` returns the latest snapshot or None before the first reading. Per-process series
    are opt-in because they multiply series (one per pid, and pids churn).
    """

    def __init__(self, source: Callable[[], Snapshot | None], *, per_process: bool = False) -> None:
        self._source = source
        self._per_process = per_process

    def collect(self) -> Iterator[GaugeMetricFamily]:
        """The metric families for the latest snapshot (none before the first one)."""
        snapshot = self._source()
        if snapshot is None:
            return
        labels = ["gpu", "uuid"]
        used = GaugeMetricFamily("vramguard_gpu_memory_used_bytes",
                                 "GPU memory in use (NVML), bytes.", labels=labels)
        total = GaugeMetricFamily("vramguard_gpu_memory_total_bytes",
                                  "GPU memory capacity (NVML), bytes.", labels=labels)
        up = GaugeMetricFamily("vramguard_gpu_up",
                               "1 when the GPU answered the last reading, 0 when lost.",
                               labels=labels)
        process = GaugeMetricFamily("vramguard_process_gpu_memory_bytes",
                                    "GPU memory held by one process (NVML), bytes.",
                                    labels=[*labels, "pid"])
        for device in snapshot.devices:
            values = [str(device.index), device.uuid or ""]
            up.add_metric(values, 0.0 if device.lost else 1.0)
            # Unknown values are left out rather than exported as 0: absent is honest.
            if device.used_bytes is not None:
                used.add_metric(values, float(device.used_bytes))
            if device.total_bytes is not None:
                total.add_metric(values, float(device.total_bytes))
            if self._per_process:
                for proc in device.processes:
                    if proc.used_bytes is not None:
                        process.add_metric([*values, str(proc.pid)], float(proc.used_bytes))
        yield used
        yield total
        yield up
        if self._per_process:
            yield process


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``PORT`` (host 127.0.0.1: exposing metrics wider is a choice to make)."""
    host, sep, port_text = text.rpartition(":")
    if not sep:
        host, port_text = "127.0.0.1", text
    host = host.strip("[]") or "127.0.0.1"
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise UsageError(f"expected HOST:PORT like 127.0.0.1:9400 or a port, got {text!r}")
    return host, int(port_text)


def serve(collector: Collector, host: str, port: int) -> tuple[WSGIServer, threading.Thread]:
    """Serve ``collector`` on a fresh registry at http://host:port/metrics (a daemon thread)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    try:
        return start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        raise UsageError(f"cannot listen on {host}:{port} for --prometheus: {exc}") from exc
