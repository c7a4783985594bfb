"""Cutting request time into attribution windows (adapters/ledger.py), with plain values."""

from __future__ import annotations

import pytest

from vramguard.adapters.ledger import Ledger


def test_sequential_requests_give_exact_windows_from_start_to_next_start() -> None:
    ledger = Ledger(0.0)
    finished = []
    heap = 1000
    for i in range(3):
        start = 10.0 * (i + 1)
        finished += ledger.cut(start, heap, 0)
        window = ledger.begin()
        heap += 100 * (i + 1) + 50  # kept 100*(i+1), plus 50 freed after the response
        finished += ledger.end(window, start, start + 1.0, f"/r{i}")
        heap -= 50  # the response's buffers go after the request ended
    finished += ledger.cut(40.0, heap, 0)
    exact = [(w.exact, w.delta) for w in finished if w.exact is not None]
    assert exact == [("/r0", 100), ("/r1", 200), ("/r2", 300)]
    assert finished[0].exact is None  # the first window began before any request


def test_overlapping_requests_are_split_by_time_and_finish_when_none_is_in_flight() -> None:
    ledger = Ledger(0.0)
    ledger.cut(0.0, 0, 0)
    a = ledger.begin()               # /a runs 0..4
    assert ledger.cut(2.0, 10, 0) == []  # /a is still in flight: window 1 is not finished
    b = ledger.begin()               # /b runs 2..3
    assert ledger.end(b, 2.0, 3.0, "/b") == []
    finished = ledger.end(a, 0.0, 4.0, "/a")  # window 1 is done; window 2 is still open
    finished += ledger.cut(4.0, 30, 0)
    assert [w.delta for w in finished] == [10, 20]
    assert finished[0].counts == pytest.approx({"/a": 0.5})
    assert finished[1].counts == pytest.approx({"/a": 0.5, "/b": 1.0})
    assert all(w.exact is None for w in finished)


def test_a_window_that_overlapped_a_diagnosis_scan_has_no_delta() -> None:
    ledger = Ledger(0.0)
    ledger.cut(0.0, 0, 0)
    window = ledger.begin()
    ledger.end(window, 0.0, 1.0, "/a")
    finished = ledger.cut(2.0, 5000, 2)  # the scan epoch moved: its references were counted
    assert [w.delta for w in finished] == [None]
    finished = ledger.cut(3.0, 5000, 3)  # odd: a scan is running now
    assert [w.delta for w in finished] == [None]


def test_a_window_cut_while_a_background_job_ran_keeps_its_delta_but_is_not_quiet() -> None:
    ledger = Ledger(0.0)
    ledger.cut(0.0, 0, 0, 0, 0)
    deltas = []
    for now, value, busy, kept in ((1.0, 100, 0, 0), (2.0, 300, 1, 0), (3.0, 400, 1, 0),
                                   (4.0, 450, 2, 0), (5.0, 500, 4, 0), (6.0, 600, 6, 1),
                                   (7.0, 700, 6, 1)):
        window = ledger.begin()
        deltas += [(w.delta, w.quiet) for w in ledger.end(window, now - 1.0, now - 0.5, "/a")]
        deltas += [(w.delta, w.quiet) for w in ledger.cut(now, value, 0, busy, kept)]
    # A job ran across the cuts at 2 and 3 (the windows they end or open are not quiet); a
    # whole job ran inside the fifth window (quiet: what it used, it freed); a census (a job
    # that keeps its baseline) ran inside the sixth.
    assert deltas == [(100, True), (200, False), (100, False), (50, False), (50, True),
                      (100, False), (100, True)]


def test_an_unavailable_counter_gives_no_delta() -> None:
    ledger = Ledger(0.0)
    ledger.cut(0.0, None, 0)
    assert [w.delta for w in ledger.cut(1.0, 100, 0)] == [None]


def test_a_tainted_window_has_no_delta_and_its_neighbours_keep_theirs() -> None:
    ledger = Ledger(0.0)
    finished = ledger.cut(0.0, 0, 0)
    for i, heap in enumerate((100, 300, 600)):
        window = ledger.begin()
        if i == 1:
            ledger.taint(window)  # a request on a thread's first use ran here
        finished += ledger.end(window, float(i), i + 0.5, "/r")
        finished += ledger.cut(i + 1.0, heap, 0)
    assert [w.delta for w in finished if w.exact] == [100, None, 300]
