"""Causes, fixes and path formatting with plain values."""

from __future__ import annotations

from vramguard.diagnosis.causes import Cause, Evidence, RootKind, classify, write_fix
from vramguard.diagnosis.refpath import ReferencePath, Root, Step


def test_graph_outputs_fix_names_function_file_and_variable() -> None:
    evidence = Evidence(function="predict", file="/srv/app.py", root_kind=RootKind.MODULE_GLOBAL,
                        variable="results", direct=True, graph=True)
    assert classify(evidence) is Cause.AUTOGRAD_GRAPH
    assert write_fix(Cause.AUTOGRAD_GRAPH, evidence) == (
        "predict() in app.py runs with grad enabled and keeps outputs in `results`: run it under "
        "`torch.inference_mode()`, or append `out.detach()` (or `.cpu()`)")


def test_hook_wins_over_global_container_and_graph() -> None:
    evidence = Evidence(root_kind=RootKind.MODULE_GLOBAL, variable="acts", direct=True, graph=True,
                        hook=("model.layer", "<lambda> at app.py:9", "forward"))
    assert classify(evidence) is Cause.HOOK_RETENTION
    fix = write_fix(Cause.HOOK_RETENTION, evidence)
    assert "on `model.layer`" in fix
    assert "<lambda> at app.py:9" in fix
    assert "`acts`" in fix


def test_where_the_reference_lives_decides_global_or_container() -> None:
    direct_global = Evidence(root_kind=RootKind.MODULE_GLOBAL, direct=True, variable="metrics")
    class_attr = Evidence(root_kind=RootKind.CLASS_ATTRIBUTE, direct=True, variable="S.seen")
    through_closure = Evidence(root_kind=RootKind.MODULE_GLOBAL, direct=False, variable="cache")
    default = Evidence(root_kind=RootKind.FUNCTION_DEFAULT, direct=True, variable="history",
                       function="predict")
    assert classify(direct_global) is Cause.GLOBAL_REFERENCE
    assert classify(class_attr) is Cause.GLOBAL_REFERENCE
    assert "class attribute `S.seen`" in write_fix(Cause.GLOBAL_REFERENCE, class_attr)
    assert classify(through_closure) is Cause.CONTAINER_GROWTH
    assert classify(default) is Cause.CONTAINER_GROWTH
    assert "mutable default argument" in write_fix(Cause.CONTAINER_GROWTH, default)


def test_no_root_is_cycle_or_unknown_and_workers_come_first() -> None:
    assert classify(Evidence(cycle=True)) is Cause.REFERENCE_CYCLE
    assert classify(Evidence()) is Cause.UNKNOWN
    assert "no named root" in write_fix(Cause.UNKNOWN, Evidence())
    workers = Evidence(worker_growth_bytes=8 << 20, graph=True, function="Items.__getitem__",
                       file="data.py", variable="loader")
    assert classify(workers) is Cause.WORKER_PROCESS_GROWTH
    fix = write_fix(Cause.WORKER_PROCESS_GROWTH, workers)
    assert "+8.0 MiB" in fix
    assert "Items.__getitem__() in data.py" in fix
    assert "`loader`" in fix


def test_accumulator_fix_says_item() -> None:
    evidence = Evidence(function="validate", file="v.py", root_kind=RootKind.MODULE_GLOBAL,
                        variable="total", graph=True, accumulator=True)
    assert "`loss.item()`" in write_fix(classify(evidence), evidence)


def test_path_formatting() -> None:
    root = Root(RootKind.MODULE_GLOBAL, "results", "list", "app")
    path = ReferencePath(root, (Step("index", "137"),), "Tensor(8, 10)")
    assert str(path) == "results (global list in module app) -> [137] -> Tensor(8, 10)"
    assert path.direct
    assert path.variable == "results"
    keyed = ReferencePath(Root(RootKind.MODULE_GLOBAL, "handle", "function", "app"),
                          (Step("closure", "cache"), Step("key", "'user-5'")), "Tensor(4)")
    assert str(keyed) == ("handle (global function in module app) -> closure `cache` -> "
                          "['user-5'] -> Tensor(4)")
    assert not keyed.direct
    assert keyed.variable == "cache"
    module = ReferencePath(Root(RootKind.MODULE_GLOBAL, "model", "Sequential", "app"),
                           (Step("attr", "_modules"), Step("key", "'1'")), "Linear")
    assert module.dotted == "model.1"
    graph = ReferencePath(root, (Step("index", "3"), Step("graph", "AddmmBackward0")), "Tensor(8)")
    assert str(graph).endswith("[3] -> .grad_fn graph (saved by AddmmBackward0) -> Tensor(8)")
    default = Root(RootKind.FUNCTION_DEFAULT, "history", "list", "predict")
    assert str(default) == "history (default argument of predict(), list)"
    assert str(Root(RootKind.CLASS_ATTRIBUTE, "Service.seen", "list", "app")) == (
        "Service.seen (class attribute, list, in module app)")


def test_a_training_step_is_never_told_to_use_inference_mode() -> None:
    outputs = Evidence(function="training_step", root_kind=RootKind.MODULE_GLOBAL,
                       variable="outputs", graph=True, trained=True)
    fix = write_fix(classify(outputs), outputs)
    assert "inference_mode" not in fix
    assert "no_grad" not in fix
    assert "`out.detach()`" in fix
    summed = Evidence(function="step", variable="loss_sum", graph=True, accumulator=True,
                      trained=True, stored_by="train_epoch", graph_nodes=96)
    fix = write_fix(classify(summed), summed)
    assert classify(summed) is Cause.AUTOGRAD_GRAPH
    assert "`loss.item()`" in fix
    assert "+96 autograd nodes" in fix
    assert "by `train_epoch()`" in fix
    assert "no_grad" not in fix


def test_a_create_graph_cycle_through_grad_is_a_reference_cycle() -> None:
    evidence = Evidence(function="step", variable="model", graph=True, grad_cycle=True,
                        root_kind=RootKind.MODULE_GLOBAL)
    assert classify(evidence) is Cause.REFERENCE_CYCLE
    fix = write_fix(Cause.REFERENCE_CYCLE, evidence)
    assert "torch.autograd.grad(..., create_graph=True)" in fix
    assert "set_to_none=True" in fix


def test_holders_that_empty_themselves_are_told_to() -> None:
    metric = Evidence(function="handle", root_kind=RootKind.MODULE_GLOBAL, variable="preds",
                      reset="auroc.reset()")
    assert "call `auroc.reset()` after each epoch/compute" in write_fix(classify(metric), metric)
    cache = Evidence(function="handle", root_kind=RootKind.MODULE_GLOBAL, variable="embed",
                     reset="embed.cache_clear()")
    assert "`embed.cache_clear()`" in write_fix(classify(cache), cache)


def test_ipython_roots_get_ipython_fixes() -> None:
    out = Evidence(root_kind=RootKind.MODULE_GLOBAL, variable="_12", direct=True,
                   ipython_cache=True)
    fix = write_fix(classify(out), out)
    assert "`;`" in fix
    assert "%reset -f out" in fix
    assert "InteractiveShell.cache_size = 0" in fix
    crashed = Evidence(root_kind=RootKind.MODULE_GLOBAL, variable="last_traceback",
                       traceback=True)
    fix = write_fix(classify(crashed), crashed)
    assert "%xdel" in fix
    assert "sys.last_traceback = None" in fix


def test_local_steps_name_the_variable() -> None:
    path = ReferencePath(Root(RootKind.MODULE_GLOBAL, "last_traceback", "traceback", "sys"),
                         (Step("local", "batch"), Step("index", "0")), "Tensor(2)")
    assert str(path) == ("last_traceback (global traceback in module sys) -> local `batch` -> [0] "
                         "-> Tensor(2)")
    assert path.variable == "batch"
