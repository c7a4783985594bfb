"""The ``/vramguard/*`` endpoints as plain (status, content type, body) values, for any framework.

``healthz`` is for liveness probes (200 / 503), ``metrics`` is Prometheus text (the guard's own
``vramguard_guard_*`` gauges plus per-route ``vramguard_route_*`` series), ``status`` is JSON with
the overall and per-route verdicts in the ``vramguard.check/1`` shapes. ``status`` shows file paths
and variable names, so it answers 404 unless ``expose_status`` is set.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from vramguard.adapters.attribution import RouteEstimate
from vramguard.adapters.web import WebGuard
from vramguard.adapters.window import RouteDiagnosis
from vramguard.analysis.samples import Sample
from vramguard.analysis.verdict import Verdict
from vramguard.readers.heap import filled_bytes
from vramguard.report import Report as CheckResult
from vramguard.reporters.json_report import check_document

STATUS_SCHEMA = "vramguard.status/1"
_log = logging.getLogger("vramguard")

CONCURRENCY_NOTE = (
    "'measured' requests ran alone: their retained bytes are exact (the counter's change from "
    "their start to the next request's start). 'overlapped' requests are attributed "
    "statistically: a regression of the counter's change over windows on each route's requests "
    "gives 'attribution.bytes_per_request' with a 95% interval, or says the route cannot be told "
    "apart from others ('collinear'). 'unsampled' ones ran alone but were not read (budget, "
    "diagnosis scan, or on CPU a thread's first request, whose thread's allocator cache fills "
    "under the counter: every request of a thread-per-request server such as Werkzeug's dev "
    "server, counted in 'signal.fresh_thread_requests'). The overall verdict covers every "
    "request."
)


@dataclass(frozen=True, slots=True)
class Response:
    """One endpoint's answer."""

    status: int
    content_type: str
    body: bytes

    def __str__(self) -> str:
        return f"{self.status} {self.content_type} ({len(self.body)} bytes)"


def _text(status: int, text: str) -> Response:
    return Response(status, "text/plain; charset=utf-8", text.encode())


class RouteCollector(Collector):
    """Per-route counters and verdicts plus health and clean-up, built at scrape time."""

    def __init__(self, web: WebGuard) -> None:
        self._web = web

    def collect(self) -> Iterator[Any]:
        """Fresh metric families from the web guard's state."""
        web = self._web
        requests = CounterMetricFamily("vramguard_route_requests", "Requests per route template",
                                       labels=["route"])
        measured = CounterMetricFamily(
            "vramguard_route_measured_requests",
            "Requests per route that ran alone and were measured", labels=["route"])
        overlapped = CounterMetricFamily(
            "vramguard_route_overlapped_requests",
            "Requests per route that overlapped others (not attributed)", labels=["route"])
        retained = GaugeMetricFamily(
            "vramguard_route_retained_bytes",
            "Counter bytes kept, summed over the route's measured requests", labels=["route"])
        per_request = GaugeMetricFamily(
            "vramguard_route_bytes_per_request",
            "Bytes a request of the route keeps, attributed over windows (absent: unknown)",
            labels=["route"])
        leak = GaugeMetricFamily("vramguard_route_leak",
                                 "1 when the route's verdict is a leak", labels=["route"])
        attribution = web.attribution()
        for counts in web.routes():
            label = [counts.route]
            requests.add_metric(label, counts.requests)
            measured.add_metric(label, counts.measured)
            overlapped.add_metric(label, counts.overlapped)
            retained.add_metric(label, counts.retained_bytes)
            leak.add_metric(label, float(web.route_verdict(counts.route).is_leak))
            estimate = attribution.route(counts.route)
            if estimate is not None and estimate.bytes_per_request is not None:
                per_request.add_metric(label, estimate.bytes_per_request)
        yield from (requests, measured, overlapped, retained, per_request, leak)
        yield GaugeMetricFamily("vramguard_healthy", "1 while /vramguard/healthz answers 200",
                                value=float(web.health().healthy))
        cleanup = web.cleanups
        yield CounterMetricFamily("vramguard_cleanups", "Clean-ups run by the policy",
                                  value=cleanup.runs)
        yield CounterMetricFamily("vramguard_cleanup_seconds", "Time spent in clean-ups",
                                  value=cleanup.seconds)
        if cleanup.freed_bytes is not None:
            yield CounterMetricFamily("vramguard_cleanup_freed_bytes",
                                      "Bytes clean-ups gave back (reserved on GPU, RSS on CPU)",
                                      value=cleanup.freed_bytes)


def make_registry(web: WebGuard) -> CollectorRegistry:
    """A private registry with the guard's collector and the per-route one (nothing global)."""
    from vramguard.prometheus import GuardCollector

    registry = CollectorRegistry(auto_describe=False)
    registry.register(GuardCollector(web.guard))
    registry.register(RouteCollector(web))
    return registry


def _check(target: str, device: str, verdict: Verdict, suspects: tuple[Any, ...]) -> dict[str, Any]:
    result = CheckResult(target=target, device=device, requests=verdict.requests,
                         warmup=verdict.warmup, verdict=verdict, suspects=suspects, samples=())
    return check_document(result)


# The memory values the status shows (``tensor_bytes`` where Sample has it).
_MEMORY = tuple(name for name in ("allocated", "tensor_bytes", "reserved", "device_used",
                                  "device_total") if name in Sample.__dataclass_fields__)


def _latest(samples: tuple[Sample, ...]) -> dict[str, Any]:
    # The newest measured value of each field (the census fills ``allocated`` only every k
    # steps), with the request and time (the server's monotonic clock) it was read at: a client
    # such as ``loadtest`` tells a fresh reading from the same value shown again (owner: h12).
    latest: dict[str, Any] = {"request": samples[-1].request if samples else None}
    at_request: dict[str, int | None] = {}
    at_time: dict[str, float | None] = {}
    for name in _MEMORY:
        found = next((s for s in reversed(samples) if getattr(s, name) is not None), None)
        latest[name] = None if found is None else getattr(found, name)
        at_request[name] = None if found is None else found.request
        at_time[name] = None if found is None else found.time
    latest["read_at_request"] = at_request
    latest["read_at"] = at_time
    return latest


def _finite(value: float | None) -> float | None:
    # JSON has no infinity: "never" is null, with the reason saying so.
    return value if value is not None and math.isfinite(value) else None


def _diagnosis(found: RouteDiagnosis | None) -> dict[str, Any] | None:
    # How the route's suspects were diagnosed: ``tracked_requests`` 0 means no allocation site
    # could be recorded (sync endpoints in a threadpool), so ``allocated_at`` stays null.
    if found is None:
        return None
    return {"window_requests": found.requests, "tracked_requests": found.tracked,
            "analysis_seconds": found.analysis_s}


def _estimate(estimate: RouteEstimate | None) -> dict[str, Any] | None:
    # What the windows say about the route (None: it was in no window yet).
    if estimate is None:
        return None
    return {"status": estimate.status.value, "verdict": estimate.call.value,
            "bytes_per_request": estimate.bytes_per_request,
            "ci95": None if estimate.ci95 is None else list(estimate.ci95),
            "windows": estimate.windows, "requests": estimate.requests,
            "collinear_with": list(estimate.collinear_with), "reason": estimate.reason}


def status_document(web: WebGuard) -> dict[str, Any]:
    """Overall and per-route verdicts with suspects, in the ``vramguard.check/1`` shapes."""
    device = str(web.guard.device)
    health = web.health()
    attribution = web.attribution()
    floor = web.guard.signal_floor
    cut_cost, per_cut = web.cadence
    routes = []
    for counts in web.routes():
        routes.append({
            "route": counts.route,
            "requests": counts.requests,
            "measured": counts.measured,
            "overlapped": counts.overlapped,
            "unsampled": counts.unsampled,
            "retained_bytes": counts.retained_bytes,
            "check": _check(counts.route, device, web.route_verdict(counts.route),
                            web.route_suspects(counts.route)),
            "attribution": _estimate(attribution.route(counts.route)),
            "diagnosis": _diagnosis(web.diagnosis(counts.route)),
        })
    cleanup = web.cleanups
    return {
        "schema": STATUS_SCHEMA,
        "device": device,
        "requests": web.guard.requests,
        "in_flight": web.in_flight,
        "overhead": web.overhead,
        # floor_bytes (per request): the least growth of ``allocated`` over a window (per request)
        # that can count as a leak (the heap counter's floors on CPU), so a client judging these
        # values applies them too.
        "memory": {**_latest(web.guard.samples), "floor_bytes": floor.window_bytes,
                   "floor_bytes_per_request": floor.bytes_per_step},
        "health": {"healthy": health.healthy, "reason": health.reason,
                   "seconds_to_limit": _finite(health.seconds_to_limit)},
        "overall": _check("overall", device, web.verdict(), web.suspects()),
        "routes": routes,
        "concurrency": CONCURRENCY_NOTE,
        "signal": {"counter": web.signal, "unavailable": web.signal_reason,
                   "windows": attribution.windows, "cut_cost_s": cut_cost,
                   "requests_per_cut": per_cut,
                   "fresh_thread_requests": web.fresh_thread_requests,
                   # What filling the heap's holes keeps (readers/heap.py): vramguard's own
                   # memory, left out of the readings (0 off CPU or where nothing was filled).
                   "heap_filled_bytes": filled_bytes() if web.guard.device.is_cpu else 0},
        "cleanup": {"runs": cleanup.runs, "freed_bytes": cleanup.freed_bytes,
                    "seconds": cleanup.seconds},
        # The background worker (route checks, censuses): null while it works; else why it
        # stopped (verdicts go on; no diagnosis window opens by itself).
        "worker_failed": web.worker_failure,
    }


class Endpoints:
    """Answers requests under the prefix; ``answer`` returns None for every other path."""

    def __init__(self, web: WebGuard) -> None:
        self._web = web
        self._prefix = web.options.prefix
        self._registry: CollectorRegistry | None = None

    def owns(self, path: str) -> bool:
        """True for paths under the prefix (cheap: one string test per request)."""
        return path.startswith(self._prefix) and (
            len(path) == len(self._prefix) or path[len(self._prefix)] == "/")

    def answer(self, method: str, path: str) -> Response:
        """The response for a path under the prefix (404 for unknown ones, 405 for non-GET)."""
        name = path[len(self._prefix):].strip("/")
        if name not in ("healthz", "metrics", "status") or (
                name == "status" and not self._web.options.expose_status):
            return _text(404, "not found\n")
        if method not in ("GET", "HEAD"):
            return _text(405, "method not allowed\n")
        try:
            if name == "healthz":
                health = self._web.health()
                return _text(200 if health.healthy else 503, f"{health}\n")
            if name == "metrics":
                if self._registry is None:
                    self._registry = make_registry(self._web)
                return Response(200, CONTENT_TYPE_LATEST, generate_latest(self._registry))
            body = json.dumps(status_document(self._web), allow_nan=False)
            return Response(200, "application/json", body.encode())
        except Exception:
            _log.warning("vramguard: the %s endpoint failed", name, exc_info=True)
            if name == "healthz":
                # A bug in vramguard must not get a healthy pod restarted: say so, and pass.
                return _text(200, "ok: vramguard could not decide (see the server log)\n")
            return _text(500, f"vramguard: {name} failed; see the server log\n")
