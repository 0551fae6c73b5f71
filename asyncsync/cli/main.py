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

from .. import __version__, startup
from ..config.paths import Paths
from ..errors import AsyncSyncError, exit_code_for

#: command name -> modules to import for it (the first defines it; later ones extend it,
#: e.g. ``syncjob_run`` adds ``sync-job run``). Commands load lazily, so ``asyncsync
#: calendar`` does not pay for importing aiohttp; tests/test_cli_main.py keeps this
#: table in step with each module's ``commands``.
LAZY_COMMANDS: dict[str, tuple[str, ...]] = {
    "datastore": ("datastore",),
    "backup": ("backup",),
    "restore": ("backup",),
    "namespace": ("backup",),
    "snapshot": ("backup",),
    "verify": ("backup",),
    "gc": ("backup",),
    "serve": ("serve",),
    "cert": ("serve",),
    "user": ("access",),
    "acl": ("access",),
    "remote": ("remote",),
    "sync-job": ("syncjob", "syncjob_run"),
    "calendar": ("calendar",),
    "pull": ("pull",),
    "task": ("task",),
    "demo": ("demo",),
}
COMMAND_MODULES = tuple(dict.fromkeys(m for mods in LAZY_COMMANDS.values() for m in mods))


def _leaf_errors(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        out: list[BaseException] = []
        for e in exc.exceptions:
            out.extend(_leaf_errors(e))
        return out
    return [exc]


def _describe(exc: BaseException) -> str:
    """One line for the user. An OSError should have been translated below the CLI; if one
    gets here anyway (a path the library did not expect), it still gets no traceback."""
    if isinstance(exc, OSError) and not isinstance(exc, AsyncSyncError):
        where = f": {exc.filename}" if exc.filename else ""
        return f"{exc.strerror or exc}{where}"
    return str(exc)


class AsyncSyncGroup(click.Group):
    """A click group that loads command modules lazily and turns library errors into
    one-line messages and exit codes."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(LAZY_COMMANDS))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        mods = LAZY_COMMANDS.get(cmd_name)
        if mods is not None and cmd_name not in self.commands:
            for name in mods:
                mod = importlib.import_module(f"{__package__}.{name}")
                for cmd in mod.commands:
                    if cmd.name == cmd_name:
                        self.add_command(cmd)
        return super().get_command(ctx, cmd_name)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.exceptions.Abort):
            raise
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)
        except (AsyncSyncError, OSError, BaseExceptionGroup) as exc:
            leaves = _leaf_errors(exc)
            for leaf in leaves:
                if not isinstance(leaf, AsyncSyncError | OSError):
                    raise  # a bug: the traceback is what its report needs
            for leaf in leaves:
                click.echo(f"error: {_describe(leaf)}", err=True)
            sys.exit(exit_code_for(leaves[0]))


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


def main() -> None:
    try:
        cli(prog_name="asyncsync")
    finally:
        startup.resume()  # the program paused the collector (asyncsync.__main__); no loop ran


__all__ = ["cli", "main"]
