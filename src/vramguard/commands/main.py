"""The ``vramguard`` command: a lazy click group, and the one place errors become exit codes.

Exit codes (documented in the README): 0 ok / no leak, 1 leak found, 2 usage error, 3 environment
error (torch, CUDA or NVML missing), 4 the target raised, 130 interrupted.
"""

from __future__ import annotations

import importlib
import importlib.util

import click

from vramguard.errors import VramguardError

# name -> "module:attribute". Subcommand modules import lazily, so `vramguard --help` and the
# torch-free commands (monitor, supervise) never import torch.
_COMMANDS = {
    "check": "vramguard.commands.check:check",
    "demo": "vramguard.commands.demo:demo",
    "monitor": "vramguard.commands.monitor:monitor",
    "supervise": "vramguard.commands.supervise:supervise",
    "loadtest": "vramguard.commands.loadtest:loadtest",
    "ranks": "vramguard.commands.ranks:ranks",
}


class _LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(
            name for name, spec in _COMMANDS.items()
            if importlib.util.find_spec(spec.split(":")[0]) is not None
        )

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        spec = _COMMANDS.get(cmd_name)
        if spec is None or cmd_name not in self.list_commands(ctx):
            return None
        module_name, attribute = spec.split(":")
        command: click.Command = getattr(importlib.import_module(module_name), attribute)
        return command


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="vramguard")
def cli() -> None:
    """Find, explain and stop GPU memory leaks in PyTorch services and training jobs."""


def main(argv: list[str] | None = None) -> int:
    """Run the CLI and return the documented exit code (the console script exits with it)."""
    try:
        result = cli.main(args=argv, prog_name="vramguard", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("vramguard: interrupted", err=True)
        return 130
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except VramguardError as exc:
        click.echo(f"vramguard: error: {exc}", err=True)
        return exc.exit_code
    except KeyboardInterrupt:
        click.echo("vramguard: interrupted", err=True)
        return 130
    return result if isinstance(result, int) else 0
