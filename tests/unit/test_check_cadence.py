"""The training callbacks' verdict checks, spaced by their cost: ``CheckCadence`` (pure) and
``TrainingWatch`` driving it with injected clocks, step by step as a callback does.

At 0.95 ms Lightning steps a check every 50 steps cost 4.5% of the run
(``bench/callback_overhead.py``): the checks now keep to ``CHECK_SHARE`` of the steps' time."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path

import pytest

from vramguard._training import CHECK_SHARE, MAX_SPACING, CheckCadence, TrainingWatch


def test_before_any_check_and_in_dense_mode_the_spacing_is_check_every() -> None:
    assert CheckCadence(50).spacing(step_s=0.001, cost_s=0.0) == 50   # nothing measured
    dense = CheckCadence(50, share=None)
    dense.checked(50, dense.spacing(step_s=0.001, cost_s=1.0))
    assert dense.due == 100                                  # whatever a check costs


def test_a_check_dear_against_the_steps_spaces_the_next_one_out() -> None:
    cadence = CheckCadence(50)
    # 2.5 ms at 1 ms steps: 0.5% of the time between checks needs 500 steps.
    assert cadence.spacing(step_s=0.001, cost_s=0.0025) == \
        round(0.0025 / (CHECK_SHARE * 0.001)) == 500
    assert cadence.spacing(step_s=0.1, cost_s=0.0025) == 50  # long steps: check_every rules
    assert cadence.spacing(step_s=1e-6, cost_s=0.0025) == 50 * MAX_SPACING  # the cap
    cadence.checked(300, 500)
    assert cadence.due == 800


class Clocks:
    """A wall clock the steps advance and a CPU clock the checks advance."""

    def __init__(self) -> None:
        self.wall = 0.0
        self.own = 0.0


def drive(watch: TrainingWatch, clocks: Clocks, steps: int, *, step_s: float,
          check_s: float, act: Callable[[], None] | None = None) -> list[int]:
    """Run ``steps`` steps of ``step_s`` through the watch as a callback does; the steps at
    which it checked (each check costing ``check_s`` of CPU time; ``act`` runs in the first)."""
    checked = []
    for _ in range(steps):
        watch.begin()
        clocks.wall += step_s
        if watch.end():
            watch.check()
            clocks.own += check_s
            clocks.wall += check_s
            if act is not None and not checked:
                act()
            watch.checked()
            checked.append(watch.steps)
    return checked


def watch_with(clocks: Clocks, **options: object) -> TrainingWatch:
    watch = TrainingWatch("training", clock=lambda: clocks.wall, own_clock=lambda: clocks.own,
                          **options)  # type: ignore[arg-type]
    watch.start("cpu")
    return watch


@pytest.mark.parametrize(("step_s", "gap"), [(0.001, 400), (0.05, 50)])
def test_a_watch_checks_at_check_every_or_as_far_apart_as_the_cost_needs(
        step_s: float, gap: int) -> None:
    clocks = Clocks()
    watch = watch_with(clocks, guard_options={"diagnose": "never"})
    checked = drive(watch, clocks, 2000, step_s=step_s, check_s=0.002)
    assert checked[0] == 50                                  # the first at check_every
    assert {b - a for a, b in itertools.pairwise(checked)} == {gap}
    assert watch.checks == len(checked)


def test_the_leak_actions_report_does_not_count_as_the_checks_cost(tmp_path: Path) -> None:
    # A report (hundreds of ms, once per run) must not space the next checks out for long.
    clocks = Clocks()
    watch = watch_with(clocks, report=tmp_path / "report.txt",
                       guard_options={"diagnose": "never"})

    real_report = watch.guard.report

    def dear_report(target: str) -> object:
        clocks.own += 5.0                                    # five CPU seconds on the report
        return real_report(target)

    watch.guard.report = dear_report  # type: ignore[method-assign]

    def act() -> None:
        watch.act("stop")

    checked = drive(watch, clocks, 1000, step_s=0.05, check_s=0.002, act=act)
    assert checked[:3] == [50, 100, 150]
    assert (tmp_path / "report.txt").exists()


def test_with_the_guard_in_dense_mode_a_watch_checks_every_check_every_steps() -> None:
    clocks = Clocks()
    watch = watch_with(clocks, check_every=10,
                       guard_options={"overhead_budget": None, "diagnose": "never"})
    assert drive(watch, clocks, 60, step_s=0.0001, check_s=0.01) == [10, 20, 30, 40, 50, 60]


def test_an_agreed_spacing_overrides_the_watchs_own() -> None:
    # Under on_leak="stop" the ranks vote on the spacing (the largest proposal wins).
    clocks = Clocks()
    watch = watch_with(clocks, check_every=10, guard_options={"diagnose": "never"})
    for _ in range(10):
        watch.begin()
        clocks.wall += 0.01
        due = watch.end()
    assert due
    watch.check()
    assert watch.spacing() == 10                             # its own choice: cost unknown
    watch.checked(spacing=37)
    assert watch.cadence.due == 47


def test_while_a_leak_waits_for_its_action_checks_come_every_check_every_steps() -> None:
    # The check that opens the diagnosis window is dear (a census); spaced by its cost, the
    # action (at the first check after the window) would have come thousands of steps later.
    clocks = Clocks()
    watch = watch_with(clocks, guard_options={"diagnose": "never"})
    drive(watch, clocks, 50, step_s=0.001, check_s=0.002)
    assert watch.cadence.due == 50 + 400
    watch.leak_seen = True                                   # as check() sets on a leak verdict
    assert watch.urgent
    for _ in range(400):
        watch.begin()
        clocks.wall += 0.001
        if watch.end():
            break
    watch.check()
    clocks.own += 0.5                                        # a dear check
    assert watch.spacing() == 50
    watch.acted = True
    assert not watch.urgent
    assert watch.spacing() > 50
