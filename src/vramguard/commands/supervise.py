"""``vramguard supervise [limits] -- CMD ARGS...``: restart a command before it runs out of memory.

Turns options into a :class:`~vramguard.supervise.SuperviseConfig` (sizes resolved to bytes,
percentages against host RAM or the GPU's total) and runs the supervisor. Never imports torch; NVML
is touched only when ``--max-vram`` is given.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Sequence

import click
import psutil

from vramguard.errors import UsageError
from vramguard.supervise import (
    EXIT_GAVE_UP,
    Backoff,
    Event,
    EventKind,
    EventLog,
    RestartMode,
    SuperviseConfig,
    Supervisor,
    TreeProbe,
)
from vramguard.units import Percent, parse_duration, parse_interval, parse_size


def parse_signal(text: str) -> signal.Signals:
    """``USR1``, ``SIGUSR1``, ``usr1`` or ``10`` -> the signal; a usage error naming the value."""
    name = text.strip().upper()
    try:
        if name.isdigit():
            return signal.Signals(int(name))
        return signal.Signals[name if name.startswith("SIG") else f"SIG{name}"]
    except (KeyError, ValueError):
        raise UsageError(f"expected a signal like USR1, SIGUSR2 or 10, got {text!r}") from None


def _positive_size(option: str, text: str) -> int | Percent:
    size = parse_size(text, allow_percent=True)
    if isinstance(size, int) and size <= 0:
        raise UsageError(f"expected {option} to be a positive size like 8GiB or 90%, got {text!r}")
    return size


def _duration(option: str, text: str, *, positive: bool = False) -> float:
    seconds = parse_duration(text)
    if positive and seconds <= 0:
        raise UsageError(f"expected {option} to be a positive duration like 0.5s, got {text!r}")
    return seconds


def _vram_reader(limit: int | Percent, log: EventLog) -> tuple[int, TreeProbe]:
    """Open NVML (exit 3 if missing), resolve a percentage and build the VRAM-reading probe."""
    from vramguard.errors import NvmlError
    from vramguard.nvml import Nvml, default_library_path

    nvml = Nvml(library_path=default_library_path())
    devices = nvml.devices()  # fails here, before the command starts, if NVML is missing
    if isinstance(limit, Percent):
        # The units a process can run on: MIG instances where a device has them, else the device.
        parents_with_mig = {d.parent for d in devices if d.mig}
        totals = []
        for device in devices:
            if not device.mig and device.index in parents_with_mig:
                continue
            try:
                total = nvml.memory(device.parent if device.mig and device.parent is not None
                                    else device.index, device.mig_index).total_bytes
            except NvmlError:
                continue
            if total is not None:
                totals.append(total)
        if not totals:
            raise UsageError(f"--max-vram {limit} needs the GPU's total memory, which NVML did "
                             "not report", hint="give an absolute size such as 20GiB")
        # With devices of different sizes the smallest one decides: the limit fires early
        # rather than late.
        limit = limit.of(min(totals))
    warned: list[bool] = []

    def vram(pids: Sequence[int]) -> int | None:
        try:
            return nvml.process_vram(set(pids))
        except NvmlError as error:
            # A driver hiccup must not kill the workload: the reading is unknown this time.
            if not warned:
                warned.append(True)
                log.emit(Event(EventKind.WARNING, f"NVML failed ({error}); VRAM is unknown "
                               "until it answers again"))
            return None

    return limit, TreeProbe(vram)


@click.command(context_settings={"ignore_unknown_options": True,
                                 "allow_interspersed_args": False})
@click.option("--max-vram", metavar="SIZE|PCT",
              help="GPU memory limit for the command and its descendants (NVML): 20GiB or 90% "
                   "of the GPU.")
@click.option("--max-rss", metavar="SIZE|PCT",
              help="Host memory (RSS summed over the process tree) limit: 8GiB or 50% of RAM.")
@click.option("--for", "hold_for", default="0s", show_default=True, metavar="DURATION",
              help="How long a limit must stay exceeded before the command is stopped.")
@click.option("--dump-signal", metavar="SIGNAL",
              help="Signal sent first (e.g. USR1) so an in-process guard can write its report.")
@click.option("--dump-wait", default="2s", show_default=True, metavar="DURATION",
              help="How long to wait after --dump-signal before SIGTERM.")
@click.option("--grace", default="10s", show_default=True, metavar="DURATION",
              help="Time between SIGTERM and SIGKILL.")
@click.option("--restart", "restart", type=click.Choice([m.value for m in RestartMode]),
              default=RestartMode.ON_FAILURE.value, show_default=True,
              help="on-failure: after a limit kill or a crash; always: also after exit 0.")
@click.option("--max-restarts", default=5, show_default=True, type=click.IntRange(min=0),
              help="Give up after this many restarts within --window.")
@click.option("--window", default="10m", show_default=True, metavar="DURATION",
              help="The sliding window --max-restarts counts in.")
@click.option("--backoff", default="1s", show_default=True, metavar="DURATION",
              help="Delay before the first restart in the window; doubles with each one.")
@click.option("--backoff-max", default="1m", show_default=True, metavar="DURATION",
              help="Longest delay between restarts.")
@click.option("--interval", default="0.5s", show_default=True, metavar="DURATION",
              help="Time between memory samples.")
@click.option("--json", "as_json", is_flag=True,
              help="Log JSON lines on stderr instead of human lines (stdout is the command's).")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
def supervise(
    *, max_vram: str | None, max_rss: str | None, hold_for: str, dump_signal: str | None,
    dump_wait: str, grace: str, restart: str, max_restarts: int, window: str, backoff: str,
    backoff_max: str, interval: str, as_json: bool, command: tuple[str, ...],
) -> int:
    """Run COMMAND in its own process group; stop and restart it when it uses too much memory.

    When a limit has held for --for: --dump-signal (if set), then SIGTERM to the whole process
    group, then SIGKILL after --grace; then a restart with exponential backoff, unless
    --max-restarts restarts already happened within --window. SIGINT, SIGTERM and SIGHUP are
    passed on to the command. No process of the command's tree outlives the supervisor.

    \b
    Example:
      vramguard supervise --max-vram 90% --max-rss 8GiB --for 5s \\
          --dump-signal USR1 -- python serve.py --port 8000

    \b
    Exit codes:
      N    the command's own status when it ended and no restart was wanted
           (128+S if signal S killed it; also after a forwarded SIGINT/SIGTERM)
      75   gave up: --max-restarts reached within --window, or a limit was hit
           with --restart never
      2    usage error;  3 NVML missing (with --max-vram)
      126  the command could not be executed;  127 command not found
    """
    if not command:
        raise UsageError("expected a command to supervise after the options, e.g. "
                         "`vramguard supervise --max-rss 8GiB -- python train.py`")
    rss_limit = _positive_size("--max-rss", max_rss) if max_rss is not None else None
    vram_limit = _positive_size("--max-vram", max_vram) if max_vram is not None else None
    config_values = {
        "hold_for": _duration("--for", hold_for),
        "grace": _duration("--grace", grace),
        "dump_wait": _duration("--dump-wait", dump_wait),
        "window": _duration("--window", window, positive=True),
        "interval": parse_interval("--interval", interval),
    }
    backoff_value = Backoff(initial=_duration("--backoff", backoff),
                            maximum=_duration("--backoff-max", backoff_max))
    dump = parse_signal(dump_signal) if dump_signal is not None else None
    if isinstance(rss_limit, Percent):
        rss_limit = rss_limit.of(psutil.virtual_memory().total)
    log = EventLog(sys.stderr, as_json=as_json)
    probe = TreeProbe()
    vram_bytes: int | None = None
    if vram_limit is not None:
        vram_bytes, probe = _vram_reader(vram_limit, log)
    config = SuperviseConfig(
        command=tuple(command), max_rss=rss_limit, max_vram=vram_bytes, dump_signal=dump,
        restart=RestartMode(restart), max_restarts=max_restarts, backoff=backoff_value,
        **config_values,
    )
    supervisor = Supervisor(config, probe=probe, log=log, adopt_orphans=True)
    try:
        with supervisor.handling_signals():
            return supervisor.run()
    finally:
        supervisor.close()


__all__ = ["EXIT_GAVE_UP", "parse_signal", "supervise"]
