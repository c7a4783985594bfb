"""The ``vramguard`` command: a lazy click group, and the one place errors become exit codes.

Exit codes (the README's one table): 0 ok / no leak, 1 leak found, 2 usage error, 3 environment
error (torch, CUDA, NVML or httpx missing, a server that does not answer), 4 the target raised or
exited, 5 inconclusive, 130 interrupted. With ``--json`` an error is one
``vramguard.error/1`` document on stdout (for ``supervise``, whose stdout is the command's, one
JSON line on stderr), so a caller that parses stdout always gets a document.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import sys

import click

from vramguard.errors import EXIT_INTERRUPTED, EXIT_USAGE, VramguardError

ERROR_SCHEMA = "vramguard.error/1"

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


def _json_mode(argv: list[str]) -> str | None:
    """The subcommand when its ``--json`` flag was given (before any ``--``), else None."""
    words = argv[: argv.index("--")] if "--" in argv else argv
    command = next((w for w in words if not w.startswith("-")), None)
    return command if command in _COMMANDS and "--json" in words else None


def _fail(message: str, code: int, json_command: str | None) -> int:
    # The human line always goes to stderr; with --json one document goes where the command's
    # documents go (supervise's JSON lines are on stderr: stdout belongs to its command).
    click.echo(f"vramguard: error: {message}", err=True)
    if json_command is not None:
        document = json.dumps({"schema": ERROR_SCHEMA, "exit_code": code, "message": message})
        click.echo(document, err=json_command == "supervise")
    return code


def main(argv: list[str] | None = None) -> int:
    """Run the CLI and return the documented exit code (the console script exits with it)."""
    args = list(sys.argv[1:] if argv is None else argv)
    json_command = _json_mode(args)
    try:
        result = cli.main(args=args, prog_name="vramguard", standalone_mode=False)
    except (click.exceptions.Abort, KeyboardInterrupt):
        return _fail("interrupted", EXIT_INTERRUPTED, json_command)
    except click.exceptions.Exit as exc:  # --help, --version
        return exc.exit_code
    except click.ClickException as exc:
        if json_command is None:
            exc.show()
            # Every click error is about the command line (a FileError included): a usage error.
            return exc.exit_code if exc.exit_code == EXIT_USAGE else EXIT_USAGE
        return _fail(exc.format_message(), EXIT_USAGE, json_command)
    except VramguardError as exc:
        return _fail(str(exc), exc.exit_code, json_command)
    return result if isinstance(result, int) else 0
