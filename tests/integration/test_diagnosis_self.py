"""vramguard never finds itself: while another thread runs vramguard's census and sits inside
vramguard code holding every live tensor in a local list, a diagnosis still names the user's
root, and no suspect's path passes through vramguard's code or objects."""

from __future__ import annotations

import threading
from typing import Any

import torch

from vramguard.diagnosis import diagnose
from vramguard.diagnosis.graphs import graph_holders
from vramguard.readers.census import CensusTaker


class Service:
    def __init__(self) -> None:
        self.state: dict[str, Any] = {"history": []}


service = Service()  # the user's path is 4 steps deep; vramguard's own list would be 2


def handle(request: int) -> None:
    service.state["history"].append(torch.randn(8, 8))


def test_a_concurrent_census_is_never_the_root() -> None:
    inside, release, stop = threading.Event(), threading.Event(), threading.Event()
    weight = torch.randn(4, 4, requires_grad=True)
    graph = (weight * 2).tanh().sum()  # a graph whose saved tensor makes graph_holders call back

    def blocked_inside_vramguard() -> None:
        # graph_holders holds every live tensor in its locals while it calls ``accept``: block
        # there, so the snapshot is taken while vramguard's frame holds the list.
        def accept(saved: Any, node: str) -> bool:
            inside.set()
            release.wait(30)
            return False

        graph_holders(CensusTaker().live_tensors(), accept)

    def census_loop() -> None:
        taker = CensusTaker()
        while not stop.is_set():
            taker.take()

    threads = [threading.Thread(target=blocked_inside_vramguard, name="vramguard-census"),
               threading.Thread(target=census_loop, name="census-loop")]
    for index in range(3):
        handle(index)
    threads[0].start()
    assert inside.wait(30)
    threads[1].start()
    try:
        diagnosis = diagnose(handle, requests=10, start=3)
    finally:
        release.set()
        stop.set()
        for thread in threads:
            thread.join(30)
        service.state["history"].clear()
        del graph
    assert diagnosis.suspects
    top = diagnosis.suspects[0]
    assert top.held_by is not None
    assert top.held_by.startswith(
        "service (global Service in module tests.integration.test_diagnosis_self) -> .state -> "
        "['history'] -> ["), top.held_by
    for suspect in diagnosis.suspects:
        held_by = suspect.held_by or ""
        assert "vramguard" not in held_by, held_by
        assert "thread vramguard-census" not in held_by, held_by
        assert "census-loop" not in held_by, held_by
        for name in ("live_tensors", "graph_holders", "_tensors_by_type", "take()"):
            assert name not in held_by, held_by
