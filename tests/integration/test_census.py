"""The census counts real torch tensors exactly: views once, graph-held activations included."""

import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")

from vramguard.readers.census import CensusTaker, diff_groups  # noqa: E402


@pytest.fixture
def taker():
    return CensusTaker()


def test_views_count_once(taker):
    base = torch.zeros(1000)
    views = [base[i:i + 10] for i in range(50)]
    census = taker.take([base, *views])
    assert census.total_bytes == 4000
    assert census.storage_count == 1
    assert census.tensor_count == 51


def test_explicit_objects_are_all_that_is_counted(taker):
    a, b = torch.ones(10), torch.ones(20, dtype=torch.float64)
    census = taker.take([a, "not a tensor", {"x": 1}, b])
    assert census.total_bytes == 10 * 4 + 20 * 8
    assert census.tensor_count == 2


def test_graph_saved_tensors_are_counted_once(taker):
    weight = torch.randn(256, 256, requires_grad=True)
    x = torch.randn(64, 256)
    hidden = (x @ weight).tanh()          # tanh saves its result; mm saves x and weight
    out = hidden.sum()
    plain = taker.take([weight, out], follow_graphs=False)
    deep = taker.take([weight, out])
    assert plain.total_bytes == weight.nbytes + out.nbytes
    # x (64x256) and the tanh result (64x256) are held only by the graph of `out`.
    assert deep.graph_bytes == 2 * 64 * 256 * 4
    assert deep.total_bytes == plain.total_bytes + deep.graph_bytes


def test_after_backward_the_graph_holds_nothing(taker):
    weight = torch.randn(128, 128, requires_grad=True)
    out = (torch.randn(32, 128) @ weight).tanh().sum()
    out.backward()
    assert taker.take([weight, out]).graph_bytes == 0


def test_whole_heap_census_sees_a_growing_list(taker):
    before = taker.take()
    kept = [torch.full((8, 10), float(i)) for i in range(30)]
    after = taker.take()
    grown = diff_groups(before, after)
    top_group, count, size = grown[0]
    assert (top_group.shape, count, size) == ((8, 10), 30, 30 * 320)
    assert after.total_bytes - before.total_bytes >= 30 * 320
    del kept


def test_census_keeps_no_reference(taker):
    tensor = torch.zeros(100)
    refs = sys.getrefcount(tensor)
    taker.take()
    taker.take([tensor])
    assert sys.getrefcount(tensor) == refs


def _fresh_process(monkeypatch):
    # What a process knows of its gc before its first census: nothing.
    import vramguard.readers.census as census_module
    monkeypatch.setattr(census_module, "_REFERRERS_WORK", {})
    return census_module


def test_the_first_census_of_a_process_walks_the_heap_once(monkeypatch):
    # Whether gc finds tensors by type is checked within the first census's own pass; a pass of
    # its own doubled that census's cost (46 ms against 19 ms for the next), and the guard's
    # budget guesses a first census's cost before it has seen one.
    census_module = _fresh_process(monkeypatch)
    passes = []
    real = census_module.gc.get_referrers
    monkeypatch.setattr(census_module.gc, "get_referrers",
                        lambda *classes: passes.append(classes) or real(*classes))
    kept = [torch.zeros(250) for _ in range(4)]
    census = CensusTaker().take(follow_graphs=False)
    assert len(passes) == 1
    assert census_module._REFERRERS_WORK  # the answer is shared with later takers
    assert all(t is not None for t in kept)
    # the check's own tensor (empty, but a tensor) is not in the count
    assert census.tensor_count == CensusTaker().take(follow_graphs=False).tensor_count


def test_a_gc_that_does_not_find_tensors_by_type_falls_back_to_the_full_scan(monkeypatch):
    census_module = _fresh_process(monkeypatch)
    monkeypatch.setattr(census_module.gc, "get_referrers", lambda *classes: [])
    kept = torch.zeros(12345, dtype=torch.uint8)
    taker = CensusTaker()
    for _ in range(2):  # the first census, which finds out, and one after it
        assert any(t is kept for t in taker.live_tensors())
        assert taker.take(follow_graphs=False).total_bytes >= kept.nbytes
    assert census_module._REFERRERS_WORK[id(torch.Tensor)] is False


class _RareTensor(torch.Tensor):
    """A subclass with no instances when the census starts (like FakeTensor or MaskedTensor)."""


def test_subclass_instances_created_later_are_found(taker):
    for _ in range(3):
        taker.take()  # the census learns that _RareTensor has no instances and skips it
    rare = torch.zeros(1000).as_subclass(_RareTensor)
    groups = {g.shape: s for g, s in taker.take().groups.items() if g.shape == (1000,)}
    assert groups[(1000,)].count >= 1
    assert any(t is rare for t in taker.live_tensors())
    del rare


def test_storage_bytes_go_to_the_tensor_that_owns_them(taker):
    weight = torch.zeros(128, 10)
    transposed = [weight.t() for _ in range(5)]  # views, listed before the weight below
    census = taker.take([*transposed, weight])
    by_shape = {g.shape: s for g, s in census.groups.items()}
    assert by_shape[(128, 10)].bytes == 128 * 10 * 4
    assert by_shape[(10, 128)].bytes == 0
    assert by_shape[(10, 128)].count == 5


def test_bytes_go_to_the_graph_output_not_to_a_grad_less_alias(taker):
    # Unpacking saved tensors during a diagnosis can leave grad-less Python tensors on the
    # storage of an output the user holds; the bytes stay with the output.
    weight = torch.randn(8, 16, requires_grad=True)
    output = (torch.randn(4, 8) @ weight).relu()
    alias = torch.empty(0).set_(output.detach().untyped_storage(), 0, output.shape)
    assert not alias._is_view()
    assert alias.untyped_storage().data_ptr() == output.untyped_storage().data_ptr()
    census = taker.take([alias, output], follow_graphs=False)  # the alias comes first
    by_grad_fn = {g.grad_fn: s for g, s in census.groups.items()}
    assert by_grad_fn["ReluBackward0"].bytes == 4 * 16 * 4
    assert by_grad_fn[None].bytes == 0


_BEFORE_TORCH = """
import sys
from vramguard.readers.device import Device
from vramguard.readers.sampler import Sampler
sampler = Sampler(Device("cpu"))
census = sampler.census()
print(census.tensor_count, census.total_bytes, "torch" in sys.modules)
import torch
kept = torch.ones(1000)
print(sampler.census().total_bytes >= 4000)
"""


def test_a_census_before_torch_is_imported_finds_nothing_and_imports_nothing():
    # A service that imports torch when it loads its model (on first use): the census imported
    # it for the guard, 1.8 s of CPU and 85 MB more in use on the C heap, read by the guard's
    # own signal as a step. A fresh interpreter: this one has torch already.
    out = subprocess.run([sys.executable, "-c", _BEFORE_TORCH], capture_output=True, text=True,
                         timeout=300, check=True)
    assert out.stdout.split() == ["0", "0", "False", "True"], out.stderr
