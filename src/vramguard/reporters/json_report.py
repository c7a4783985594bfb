"""The ``vramguard.check/1`` JSON document."""

from __future__ import annotations

import math
from dataclasses import asdict
from typing import Any

from vramguard.analysis.suspects import Suspect
from vramguard.report import Report as CheckResult

SCHEMA = "vramguard.check/1"


def _number(value: float | None) -> float | None:
    # JSON has no infinity: "never full" is null, with the verdict saying why.
    if value is None or not math.isfinite(value):
        return None
    return float(value)


def suspect_document(suspect: Suspect) -> dict[str, Any]:
    """One suspect in the document's shape (unfilled diagnosis fields are null)."""
    tensors: dict[str, Any] | None = None
    if suspect.tensors is not None:  # None: the growth is in child processes, not tensors
        tensors = asdict(suspect.tensors)
        tensors["shape"] = list(suspect.tensors.shape)
        tensors["saved_by_graph"] = tensors.pop("in_graph")
    return {
        "tensors": tensors,
        "retained_bytes": suspect.retained_bytes,
        "allocated_at": None if suspect.allocated_at is None else asdict(suspect.allocated_at),
        "stack": None if suspect.stack is None else [asdict(s) for s in suspect.stack],
        "held_by": suspect.held_by,
        "cause": None if suspect.cause is None else str(suspect.cause),
        "fix": suspect.fix,
        "graph_nodes": suspect.graph_nodes,
    }


def check_document(result: CheckResult) -> dict[str, Any]:
    """The whole check as one JSON-ready dict."""
    verdict = result.verdict
    growth = verdict.growth
    return {
        "schema": SCHEMA,
        "target": result.target,
        "device": result.device,
        "requests": result.requests,
        "warmup": result.warmup,
        "verdict": str(verdict.kind),
        "detected_after": verdict.detected_after,
        "reason": verdict.reason,
        "growth": None if growth is None else {
            "bytes_per_request": _number(growth.bytes_per_request),
            "ci95": [_number(growth.ci95[0]), _number(growth.ci95[1])],
            "bytes_per_second": _number(growth.bytes_per_second),
            "requests_to_full": _number(growth.requests_to_full),
            "seconds_to_full": _number(growth.seconds_to_full),
        },
        "memory": {
            "start_bytes": verdict.start_bytes,
            "end_bytes": verdict.end_bytes,
            "capacity_bytes": verdict.capacity_bytes,
        },
        "warnings": list(verdict.warnings),
        "suspects": [suspect_document(s) for s in result.suspects],
        "unit": result.unit,
        "diagnosis": None if result.diagnosis is None else {
            "steps": result.diagnosis.steps,
            "window_seconds": result.diagnosis.window_s,
            "analysis_seconds": result.diagnosis.analysis_s,
        },
    }
