"""The ``asyncsync`` command: the top-level group, error mapping, and command registration.

Each command module under :mod:`asyncsync.cli` exposes ``commands``: a list of
click commands or groups added here. Errors from the library become one line
on stderr and the error's exit code; ``ExceptionGroup``s from task groups are
unwrapped first.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

import click

from .. import __version__
from ..config.paths import Paths
from ..errors import AsyncSyncError

COMMAND_MODULES = (
    "datastore",
    "backup",
    "serve",
    "access",
    "remote",
    "syncjob",
    "calendar",
    "pull",
    "task",
    "demo",
)


def _leaf_errors(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        out: list[BaseException] = []
        for e in exc.exceptions:
            out.extend(_leaf_errors(e))
        return out
    return [exc]


class AsyncSyncGroup(click.Group):
    """A click group that turns library errors into one-line messages and exit codes."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.exceptions.Abort):
            raise
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)
        except (AsyncSyncError, BaseExceptionGroup) as exc:
            leaves = _leaf_errors(exc)
            for leaf in leaves:
                if not isinstance(leaf, AsyncSyncError):
                    raise
            for leaf in leaves:
                click.echo(f"error: {leaf}", err=True)
            first = leaves[0]
            assert isinstance(first, AsyncSyncError)
            sys.exit(first.exit_code)


@click.group(cls=AsyncSyncGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="asyncsync")
@click.option(
    "--config-dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Configuration folder (default: $ASYNCSYNC_CONFIG_DIR, /etc/asyncsync or ~/.config/asyncsync).",
)
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False),
    default=None,
    help="State folder (default: $ASYNCSYNC_STATE_DIR, /var/lib/asyncsync or ~/.local/state/asyncsync).",
)
@click.pass_context
def cli(ctx: click.Context, config_dir: str | None, state_dir: str | None) -> None:
    """Replicate backup datastores between machines: remotes, sync jobs, pulls."""
    ctx.obj = Paths.resolve(config_dir, state_dir)


for _name in COMMAND_MODULES:
    _mod = importlib.import_module(f"{__package__}.{_name}")
    for _cmd in _mod.commands:
        cli.add_command(_cmd)


def main() -> None:
    cli(prog_name="asyncsync")


__all__ = ["cli", "main"]
