"""The heap counter fills the main heap's holes, so a read walks few free chunks, and its readings
stay the service's own bytes (readers/heap.py, ``_Holes``).

Each case runs in a fresh interpreter: the filling is once-a-process state, and this pytest
process's own heap has been filled and holed by the tests before. Counted in free chunks
(``mallinfo2``'s ``ordblks + smblks``), not in microseconds: what a read costs is what it walks.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")

HOLES = """
import ctypes, json, threading
from vramguard.readers import heap
libc = heap._malloc_free()
mallinfo2 = heap._bind_mallinfo2()
def free_chunks():
    info = mallinfo2()
    return info.ordblks + info.smblks
counter = heap.HeapCounter()  # its start fills the holes the imports left
kept = []
def make_holes(count=1500):
    # holes of 208 B (past the fastbins and the tcache's 7), each between two kept blocks
    freed = []
    for _ in range(count):
        freed.append(libc.malloc(200))
        kept.append(libc.malloc(200))
    for block in freed:
        libc.free(block)
"""


def _run(code: str) -> dict[str, float]:
    done = subprocess.run([sys.executable, "-c", HOLES + code], capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_a_read_fills_the_holes_and_its_readings_do_not_see_the_filling() -> None:
    result = _run("""
taken = heap._holes.taken
make_holes()
holed = free_chunks()
first = counter.read()   # this read finds the holes, and fills them after its value
filled = free_chunks()
second = counter.read()
print(json.dumps(dict(holed=holed, filled=filled, taken=heap._holes.taken - taken,
                      moved=second - first, spent=heap.fill_seconds())))
""")
    assert result["holed"] > 1000, result
    assert result["filled"] < 100, result          # a read now walks few free chunks
    assert result["taken"] >= 1000 * 208 * 0.9, result   # the holes' bytes, kept
    # The filling took ~300 KiB, and the readings around it moved by less than one block:
    # they are the service's bytes, the filling left out.
    assert abs(result["moved"]) < 1024, result
    assert result["spent"] > 0, result


def test_a_leak_read_across_fillings_is_measured_exactly() -> None:
    # Leak 200 B blocks, make holes between them, read: each read may fill again (the holes
    # grow back), and the readings must show the leak's bytes, not the fillings'.
    result = _run("""
taken = heap._holes.taken
leaked, holes = [0] * 1600, [0] * 400  # sized before the first reading: lists grow by malloc
start = counter.read()
for round in range(4):
    for i in range(400):
        leaked[round * 400 + i] = libc.malloc(200)   # the leak
        holes[i] = libc.malloc(200)    # a temporary, freed: a hole between leaked blocks
    for block in holes:
        libc.free(block)
    counter.read()
end = counter.read()
print(json.dumps(dict(grew=end - start, leaked=len(leaked) * 208,
                      taken=heap._holes.taken - taken)))
""")
    assert result["taken"] > 0, result  # the fillings ran
    assert abs(result["grew"] - result["leaked"]) < 8 * 1024, result


def test_other_threads_and_a_few_holes_are_left_alone() -> None:
    result = _run("""
taken = heap._holes.taken
make_holes()
holed = free_chunks()
reader = threading.Thread(target=counter.read)  # not the main thread: its arena is not known
reader.start()
reader.join()
after_thread = free_chunks()
taken_by_thread = heap._holes.taken - taken
counter.read()
after_main = free_chunks()
counter.read()  # a few holes (under heap._FILL_AT) are no reason to fill again
print(json.dumps(dict(holed=holed, after_thread=after_thread, taken_by_thread=taken_by_thread,
                      after_main=after_main, taken=heap._holes.taken,
                      again=free_chunks())))
""")
    assert result["taken_by_thread"] == 0, result
    assert result["after_thread"] > 1000, result  # (starting a thread takes a few itself)
    assert result["after_main"] < 100, result
    assert result["again"] <= result["after_main"] + 10, result
