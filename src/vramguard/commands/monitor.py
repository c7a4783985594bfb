"""``vramguard monitor``: watch GPU memory through NVML, alert on rules, export to Prometheus.

Needs no torch. Exit codes: 0 stopped cleanly (SIGINT/SIGTERM, ``--samples``/``--duration``
reached, or ``--once`` printed), 2 a bad option (the message names the value), 3 NVML or the
NVIDIA driver missing.
"""

from __future__ import annotations

import json
import shlex
import signal
import sys
from types import FrameType

import click

from vramguard.errors import UsageError
from vramguard.monitor import (
    BackgroundWorker,
    JsonLine,
    LogLine,
    Monitor,
    PostWebhook,
    RuleConfig,
    RuleEngine,
    RunCommand,
    SendSignal,
    SnapshotCollector,
    parse_listen,
    parse_signal_target,
    serve,
)
from vramguard.monitor.actions import Action
from vramguard.monitor.placement import read_placement
from vramguard.nvml import Nvml, default_library_path
from vramguard.units import Percent, parse_duration, parse_interval, parse_size


def _size(text: str | None) -> int | Percent | None:
    return None if text is None else parse_size(text, allow_percent=True)


def _devices(text: str | None) -> set[int] | None:
    if text is None:
        return None
    try:
        return {int(part) for part in text.split(",") if part.strip()}
    except ValueError:
        raise UsageError(f"expected device indexes like 0,2 for --devices, got {text!r}") from None


def _config(*, threshold: str | None, for_: str, predict: str | None, process_budget: str | None,
            cooldown: str, hysteresis: str, trend_window: str,
            cross_device: bool = True) -> RuleConfig:
    hyst = parse_size(hysteresis, allow_percent=True)
    if not isinstance(hyst, Percent):
        raise UsageError(f"expected a percentage like 5% for --hysteresis, got {hysteresis!r}")
    return RuleConfig(
        threshold=_size(threshold), for_seconds=parse_duration(for_),
        predict_seconds=None if predict is None else parse_duration(predict),
        process_budget=_size(process_budget), cooldown_seconds=parse_duration(cooldown),
        hysteresis=hyst.value / 100.0, trend_window_seconds=parse_duration(trend_window),
        cross_device=cross_device,
    )


@click.command()
@click.option("--interval", default="1s", show_default=True, help="Time between samples.")
@click.option("--threshold", help="Alert when device usage is above this (90%, 70GiB).")
@click.option("--for", "for_", default="0s", show_default=True,
              help="How long a threshold or budget must hold before it alerts (5m).")
@click.option("--predict", help="Alert when the trend predicts a full device within this (1h).")
@click.option("--trend-window", default="10m", show_default=True,
              help="How much history the trend fit uses.")
@click.option("--process-budget", help="Per-process limit (20GiB or a percentage of the device).")
@click.option("--cooldown", default="0s", show_default=True,
              help="Minimum time between two alerts of the same rule, device and process.")
@click.option("--hysteresis", default="5%", show_default=True,
              help="How far below its limit a value must fall before its alert resolves.")
@click.option("--json", "as_json", is_flag=True, help="JSON on stdout (one document with --once, "
              "else one event per line).")
@click.option("--on-alert", "on_alert", help="Command run (no shell) for each alert, with the "
              "event JSON on stdin, e.g. --on-alert 'notify-send vram'.")
@click.option("--webhook", help="POST each event as JSON to this URL (timeout and retries, in "
              "the background).")
@click.option("--signal", "signal_target", help="Send PID:SIG on each alert, e.g. 1234:USR1.")
@click.option("--once", is_flag=True, help="Print one reading of all devices and processes, exit.")
@click.option("--devices", help="Only these device indexes, e.g. 0,2.")
@click.option("--prometheus", help="Serve metrics at HOST:PORT (a bare port binds 127.0.0.1).")
@click.option("--prometheus-processes", is_flag=True,
              help="Also export per-process series (one per pid: they multiply series).")
@click.option("--samples", type=click.IntRange(min=1), help="Stop after this many samples.")
@click.option("--duration", help="Stop after this long (e.g. 10m).")
@click.option("--cross-device/--no-cross-device", default=True, show_default=True,
              help="Alert (cross_device) when a process holds memory on a GPU other than the one "
                   "its LOCAL_RANK / CUDA_VISIBLE_DEVICES implies (read from /proc/PID/environ).")
def monitor(
        interval: str, threshold: str | None, for_: str, predict: str | None,
            trend_window: str, process_budget: str | None, cooldown: str, hysteresis: str,
            as_json: bool, on_alert: str | None, webhook: str | None,
            signal_target: str | None, once: bool, devices: str | None,
            prometheus: str | None, prometheus_processes: bool, samples: int | None,
            duration: str | None, cross_device: bool) -> int:
    """Watch GPU memory through NVML (no torch needed) and alert on rules.

    \b
    vramguard monitor --threshold 90% --for 5m --predict 1h --json
    vramguard monitor --once --json
    """
    # Parse everything before touching NVML, so a typo is exit 2 even on a machine without GPUs.
    config = _config(threshold=threshold, for_=for_, predict=predict,
                     process_budget=process_budget, cooldown=cooldown, hysteresis=hysteresis,
                     trend_window=trend_window, cross_device=cross_device)
    period = parse_interval("--interval", interval)
    stop_after = None if duration is None else parse_duration(duration)
    selected = _devices(devices)
    listen = None if prometheus is None else parse_listen(prometheus)
    target = None if signal_target is None else parse_signal_target(signal_target)
    argv = None if on_alert is None else shlex.split(on_alert)
    if argv is not None and not argv:
        raise UsageError("--on-alert needs a command, got an empty string")
    if webhook is not None and not webhook.startswith(("http://", "https://")):
        raise UsageError(f"expected an http(s) URL for --webhook, got {webhook!r}")

    nvml = Nvml(library_path=default_library_path())
    try:
        if once:
            return _once(nvml, selected, as_json)
        return _watch(nvml, config, period=period, selected=selected, listen=listen,
                      per_process=prometheus_processes, as_json=as_json, argv=argv,
                      webhook=webhook, target=target, samples=samples, stop_after=stop_after)
    finally:
        nvml.close()


def _once(nvml: Nvml, selected: set[int] | None, as_json: bool) -> int:
    monitor = Monitor(nvml=nvml, engine=RuleEngine(RuleConfig()), actions=(), devices=selected)
    snapshot = monitor.sample()
    click.echo(json.dumps(snapshot.to_json(), indent=2) if as_json else str(snapshot))
    return 0


def _report(message: str) -> None:
    sys.stderr.write(f"vramguard: {message}\n")
    sys.stderr.flush()


def _watch(nvml: Nvml, config: RuleConfig, *, period: float, selected: set[int] | None,
           listen: tuple[str, int] | None, per_process: bool, as_json: bool,
           argv: list[str] | None, webhook: str | None, target: tuple[int, int] | None,
           samples: int | None, stop_after: float | None) -> int:
    # The human line goes to stderr always, so stdout stays machine-readable with --json.
    actions: list[Action] = [LogLine(sys.stderr)]
    if as_json:
        actions.append(JsonLine(sys.stdout))
    workers = []
    if argv is not None:
        workers.append(BackgroundWorker("vramguard-on-alert", on_drop=_report))
        actions.append(RunCommand(argv, workers[-1], _report))
    if webhook is not None:
        workers.append(BackgroundWorker("vramguard-webhook", on_drop=_report))
        actions.append(PostWebhook(webhook, workers[-1], _report))
    if target is not None:
        actions.append(SendSignal(target[0], target[1], _report))
    runner = Monitor(nvml=nvml, engine=RuleEngine(config), actions=actions, interval=period,
                     devices=selected, processes=True,
                     placement=read_placement if config.cross_device else None)

    def _stop(signum: int, frame: FrameType | None) -> None:
        runner.stop.set()

    previous = {sig: signal.signal(sig, _stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    server = None
    try:
        if listen is not None:
            server, _thread = serve(SnapshotCollector(lambda: runner.latest,
                                                      per_process=per_process), *listen)
            host, port = server.server_address[:2]
            _report(f"serving metrics on http://{host!s}:{port}/metrics")
        _report(f"monitoring every {period:g}s: {config}")
        runner.run(max_samples=samples, duration=stop_after)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if server is not None:
            server.shutdown()
            server.server_close()
        for worker in workers:
            worker.close(timeout=10.0)
    return 0
