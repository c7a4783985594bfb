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
def reads_until_filled(limit=30):
    # The readings it took until one filled (None: none did), and the values they read.
    taken, values = heap._holes.taken, []
    for count in range(1, limit + 1):
        values.append(counter.read())
        if heap._holes.taken != taken:
            return count, values
    return None, values
"""


def _run(code: str) -> dict[str, float]:
    done = subprocess.run([sys.executable, "-c", HOLES + code], capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_readings_fill_the_holes_once_they_walked_them_enough_and_do_not_see_the_filling(
) -> None:
    result = _run("""
taken = heap._holes.taken
make_holes()
holed = free_chunks()
reads, values = reads_until_filled()
filled = free_chunks()
values.append(counter.read())
print(json.dumps(dict(holed=holed, filled=filled, taken=heap._holes.taken - taken, reads=reads,
                      moved=max(values) - min(values), spent=heap.fill_seconds())))
""")
    assert result["holed"] > 1000, result
    # Not at the first reading that saw them: a filling is bought once the readings have
    # walked the new chunks _FILL_RENT (8) times over, and the one that walked them last fills.
    assert result["reads"] == 8, result
    assert result["filled"] < 100, result          # a read now walks few free chunks
    assert result["taken"] >= 1000 * 208 * 0.9, result   # the holes' bytes, kept
    # The filling took ~300 KiB, and the readings around it moved by less than one block:
    # they are the service's bytes, the filling left out.
    assert result["moved"] < 1024, result
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
    for _ in range(8):  # as often as it takes to pay for a filling
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
reads, _ = reads_until_filled()  # the thread's walk counts towards the rent
after_main = free_chunks()
for _ in range(20):  # a few holes (under heap._FILL_AT) are no reason to fill again
    counter.read()
print(json.dumps(dict(holed=holed, after_thread=after_thread, taken_by_thread=taken_by_thread,
                      after_main=after_main, taken=heap._holes.taken, reads=reads,
                      again=free_chunks())))
""")
    assert result["taken_by_thread"] == 0, result
    assert result["after_thread"] > 1000, result  # (starting a thread takes a few itself)
    assert result["reads"] == 7, result
    assert result["after_main"] < 100, result
    assert result["again"] <= result["after_main"] + 10, result

