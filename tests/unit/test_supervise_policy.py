"""The supervisor's rules with plain values and an injected clock: no process, signal or sleep."""

from __future__ import annotations

import io
import json
import signal

import pytest

from vramguard.supervise import (
    EXIT_GAVE_UP,
    Action,
    Backoff,
    ChildExit,
    Decision,
    Event,
    EventKind,
    EventLog,
    LimitWatch,
    Reading,
    Resource,
    RestartBudget,
    RestartMode,
    StopCause,
    decide,
)

MiB = 1024**2


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def tick(self, seconds: float) -> float:
        self.now += seconds
        return self.now


# -- a limit held for --for ---------------------------------------------------------------------

def test_limit_fires_only_after_holding_for_the_whole_duration() -> None:
    clock = FakeClock()
    watch = LimitWatch(Resource.RSS, 100 * MiB, hold_for=5.0)
    assert watch.observe(150 * MiB, clock()) is None  # above, streak starts
    assert watch.observe(150 * MiB, clock.tick(4.9)) is None
    breach = watch.observe(160 * MiB, clock.tick(0.1))
    assert breach is not None
    assert breach.resource is Resource.RSS
    assert breach.value == 160 * MiB
    assert breach.limit == 100 * MiB
    assert breach.held_for == pytest.approx(5.0)
    assert str(breach) == "rss 160.0 MiB above the limit of 100.0 MiB for 5.0s"


def test_a_dip_below_the_limit_restarts_the_streak() -> None:
    clock = FakeClock()
    watch = LimitWatch(Resource.VRAM, 100, hold_for=5.0)
    watch.observe(101, clock())
    watch.observe(101, clock.tick(4))
    assert watch.observe(100, clock.tick(0.5)) is None  # at the limit is not above it
    assert watch.observe(101, clock.tick(0.5)) is None  # a new streak
    assert watch.observe(101, clock.tick(4.9)) is None
    assert watch.observe(101, clock.tick(0.1)) is not None


def test_an_unknown_reading_breaks_the_streak() -> None:
    clock = FakeClock()
    watch = LimitWatch(Resource.VRAM, 100, hold_for=2.0)
    watch.observe(200, clock())
    assert watch.observe(None, clock.tick(1)) is None
    assert watch.observe(200, clock.tick(1.5)) is None  # only 0s since the streak restarted
    assert watch.observe(200, clock.tick(2)) is not None


def test_zero_hold_fires_on_the_first_reading_above() -> None:
    watch = LimitWatch(Resource.RSS, 10, hold_for=0.0)
    assert watch.observe(10, 0.0) is None
    assert watch.observe(11, 0.0) is not None


def test_reset_forgets_the_streak() -> None:
    watch = LimitWatch(Resource.RSS, 10, hold_for=1.0)
    watch.observe(11, 0.0)
    watch.reset()
    assert watch.observe(11, 1.0) is None


@pytest.mark.parametrize(("limit", "hold"), [(0, 1.0), (-1, 1.0), (10, -0.1)])
def test_limit_watch_rejects_nonsense(limit: int, hold: float) -> None:
    with pytest.raises(ValueError, match="must"):
        LimitWatch(Resource.RSS, limit, hold)


# -- exponential backoff ------------------------------------------------------------------------

def test_backoff_doubles_and_caps() -> None:
    backoff = Backoff(initial=1.0, factor=2.0, maximum=10.0)
    assert [backoff.delay(n) for n in range(6)] == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]


def test_backoff_survives_huge_attempt_numbers() -> None:
    assert Backoff(initial=0.5, maximum=60.0).delay(10_000) == 60.0


def test_backoff_zero_initial_means_immediate_restarts() -> None:
    assert Backoff(initial=0.0).delay(50) == 0.0


def test_backoff_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="factor"):
        Backoff(factor=0.5)
    with pytest.raises(ValueError, match="negative"):
        Backoff().delay(-1)


# -- max restarts within a window ---------------------------------------------------------------

def test_budget_counts_restarts_inside_the_sliding_window() -> None:
    clock = FakeClock()
    budget = RestartBudget(max_restarts=3, window=60.0)
    for _ in range(3):
        assert not budget.exhausted(clock())
        budget.record(clock())
        clock.tick(10)
    assert budget.used(clock()) == 3
    assert budget.exhausted(clock())
    clock.tick(30.0)  # the first restart (at t0) is now exactly 60s old: out of the window
    assert budget.used(clock()) == 2
    assert not budget.exhausted(clock())


def test_budget_keeps_a_bounded_list() -> None:
    budget = RestartBudget(max_restarts=2, window=1.0)
    for t in range(10_000):
        budget.record(float(t))
    assert budget.used(10_000.0) == 0
    assert len(repr(budget)) < 200


def test_zero_restarts_allowed_is_exhausted_at_once() -> None:
    assert RestartBudget(max_restarts=0, window=60).exhausted(0.0)


# -- how the child ended ------------------------------------------------------------------------

def test_child_exit_statuses_read_like_a_shell() -> None:
    assert ChildExit(0).success
    assert ChildExit(3).shell_status == 3
    assert str(ChildExit(3)) == "exited with status 3"
    killed = ChildExit(-signal.SIGKILL)
    assert not killed.success
    assert killed.signal is signal.SIGKILL
    assert killed.shell_status == 137
    assert str(killed) == "killed by SIGKILL"


# -- the decision after the child ended ---------------------------------------------------------

def _decide(mode: RestartMode, cause: StopCause, returncode: int, used: int = 0) -> Decision:
    return decide(mode=mode, cause=cause, ended=ChildExit(returncode), restarts_in_window=used,
                  max_restarts=3, window=600.0, backoff=Backoff(initial=1.0, maximum=30.0))


@pytest.mark.parametrize(
    ("mode", "cause", "returncode", "action", "code"),
    [
        # on-failure: a crash or a limit kill restarts; a clean exit ends with the child's status
        (RestartMode.ON_FAILURE, StopCause.EXITED, 1, Action.RESTART, None),
        (RestartMode.ON_FAILURE, StopCause.EXITED, -signal.SIGSEGV, Action.RESTART, None),
        (RestartMode.ON_FAILURE, StopCause.EXITED, 0, Action.EXIT, 0),
        (RestartMode.ON_FAILURE, StopCause.LIMIT, -signal.SIGTERM, Action.RESTART, None),
        # always: even a clean exit restarts
        (RestartMode.ALWAYS, StopCause.EXITED, 0, Action.RESTART, None),
        (RestartMode.ALWAYS, StopCause.LIMIT, -signal.SIGKILL, Action.RESTART, None),
        # never: the child's status, except a limit kill, which is "gave up"
        (RestartMode.NEVER, StopCause.EXITED, 4, Action.EXIT, 4),
        (RestartMode.NEVER, StopCause.EXITED, -signal.SIGSEGV, Action.EXIT, 128 + signal.SIGSEGV),
        (RestartMode.NEVER, StopCause.LIMIT, -signal.SIGTERM, Action.GIVE_UP, EXIT_GAVE_UP),
        # a forwarded SIGINT/SIGTERM: always the child's own answer, whatever the mode
        (RestartMode.ALWAYS, StopCause.FORWARDED, -signal.SIGTERM, Action.EXIT, 143),
        (RestartMode.ON_FAILURE, StopCause.FORWARDED, 7, Action.EXIT, 7),
    ],
)
def test_decide(mode: RestartMode, cause: StopCause, returncode: int, action: Action,
                code: int | None) -> None:
    decision = _decide(mode, cause, returncode)
    assert decision.action is action
    assert decision.exit_code == code


def test_restart_delay_follows_backoff_and_budget_gives_up() -> None:
    delays = [_decide(RestartMode.ON_FAILURE, StopCause.EXITED, 1, used=n) for n in range(3)]
    assert [d.delay for d in delays] == [1.0, 2.0, 4.0]
    gave_up = _decide(RestartMode.ON_FAILURE, StopCause.EXITED, 1, used=3)
    assert gave_up.action is Action.GIVE_UP
    assert gave_up.exit_code == EXIT_GAVE_UP
    assert "3 restarts within 10m" in str(gave_up)


# -- events -------------------------------------------------------------------------------------

def test_event_prints_for_humans_and_as_json() -> None:
    reading = Reading(processes=3, rss=200 * MiB, vram=None, vram_watched=True)
    event = Event(EventKind.RESTART, "restart 1/5 within 10m in 1s: crashed", pid=42,
                  reading=reading, restarts=1, delay=1.0)
    human = io.StringIO()
    EventLog(human).emit(event)
    assert human.getvalue() == ("vramguard supervise: restart 1/5 within 10m in 1s: crashed "
                                "(memory seen: rss 200.0 MiB, vram unknown in 3 processes)\n")
    machine = io.StringIO()
    EventLog(machine, as_json=True, wall_clock=lambda: 0.0).emit(event)
    document = json.loads(machine.getvalue())
    assert document["event"] == "restart"
    assert document["time"] == "1970-01-01T00:00:00+00:00"
    assert document["rss_bytes"] == 200 * MiB
    assert document["vram_bytes"] is None  # unknown is null, never 0
    assert document["restarts"] == 1
    assert document["delay_s"] == 1.0


def test_reading_does_not_mention_vram_when_it_was_not_asked_for() -> None:
    assert str(Reading(processes=1, rss=1024, vram=None)) == "rss 1.0 KiB in 1 process"


def test_a_reading_with_ranks_names_each_and_the_largest() -> None:
    from vramguard.supervise.events import Event, EventKind, RankReading, Reading, rank_note

    reading = Reading(processes=4, rss=900 * 1024**2, vram=None, ranks=(
        RankReading(0, 4241, 1, 200 * 1024**2), RankReading(1, 4242, 2, 600 * 1024**2)))
    assert str(reading) == ("rss 900.0 MiB in 4 processes; rank 0 (pid 4241): rss 200.0 MiB, "
                            "rank 1 (pid 4242): rss 600.0 MiB")
    assert rank_note(reading, "rss") == "; most in rank 1 (pid 4242): rss 600.0 MiB"
    assert rank_note(reading, "vram") == ""
    assert rank_note(Reading(processes=1, rss=1, vram=None), "rss") == ""
    document = Event(EventKind.BREACH, "m", reading=reading).to_json(0.0)
    assert document["ranks"][1] == {"rank": 1, "pid": 4242, "processes": 2,
                                    "rss_bytes": 600 * 1024**2, "vram_bytes": None}
