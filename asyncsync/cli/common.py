"""Helpers shared by the command modules: context, output formats, tables, async runner.

No business logic lives in the CLI: commands parse arguments, call the
library, and print.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import click

from ..config.paths import Paths
from ..runner import run as run_async  # every command's loop starter (serve: transfer=False)

if TYPE_CHECKING:
    # rich loads when something is printed through it (≈ 30 ms of start-up otherwise,
    # e.g. for a pull whose output is JSON)
    from rich.console import Console


OUTPUT_FORMATS = ("text", "json", "json-pretty")

output_format_option = click.option(
    "--output-format",
    type=click.Choice(OUTPUT_FORMATS),
    default="text",
    show_default=True,
    help="Print a table (text) or JSON for scripts.",
)


def get_paths(ctx: click.Context | None = None) -> Paths:
    """The :class:`Paths` chosen by the top-level ``--config-dir``/``--state-dir`` options."""
    ctx = ctx or click.get_current_context()
    obj = ctx.find_root().obj
    if not isinstance(obj, Paths):
        obj = Paths.resolve()
        ctx.find_root().obj = obj
    return obj


def console(stderr: bool = False) -> Console:
    from rich.console import Console

    return Console(stderr=stderr, highlight=False, soft_wrap=True)


def print_json(data: Any, output_format: str) -> None:
    indent = 2 if output_format == "json-pretty" else None
    click.echo(json.dumps(data, indent=indent, sort_keys=False))


def print_table(
    columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
    *,
    output_format: str = "text",
    records: Any = None,
) -> None:
    """Print a box-drawing table (as Proxmox tools do), or ``records`` as JSON."""
    if output_format != "text":
        if records is None:
            records = [dict(zip(columns, r, strict=True)) for r in rows]
        print_json(records, output_format)
        return
    from rich import box
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(box=box.SQUARE_DOUBLE_HEAD, show_edge=True, pad_edge=True)
    for c in columns:
        table.add_column(Text(c), overflow="fold")
    for r in rows:
        # Text, not str: cell values are data, never rich markup or :emoji: codes
        # (a fingerprint "ab:ab:..." or a host "[::1]" must print as is)
        table.add_row(*(Text("" if v is None else str(v)) for v in r))
    out = console()
    if not out.is_terminal:
        # piped or captured output: never fold cells to an assumed 80 columns
        natural = out.measure(table, options=out.options.update(max_width=100_000)).maximum
        out = Console(highlight=False, soft_wrap=True, width=max(natural, 80))
    out.print(table)


def print_kv(data: dict[str, Any], *, output_format: str = "text") -> None:
    """A two-column key/value table (``show`` commands) or JSON."""
    if output_format != "text":
        print_json(data, output_format)
        return
    print_table(["key", "value"], [(k, v) for k, v in data.items() if v not in (None, "", [])])


def warn(message: str) -> None:
    click.echo(f"warning: {message}", err=True)


def isatty() -> bool:
    return sys.stderr.isatty()


#: ``update(done_bytes, description)`` of a :func:`byte_progress` bar
ByteProgress = Callable[[int, str], None]


@contextmanager
def byte_progress(enabled: bool, description: str = "") -> Iterator[ByteProgress | None]:
    """A live, transient bar on stderr for a transfer of unknown size: bytes done and the rate.

    Yields ``update(done_bytes, description)`` (callable from any thread), or None when
    not ``enabled`` (then nothing is printed). rich.progress is imported only when
    enabled, i.e. for a terminal: it is slow to import for scripts. Writes to stderr
    while the bar is shown appear above it.
    """
    if not enabled:
        yield None
        return
    from rich.progress import Progress, ProgressColumn, SpinnerColumn, Task, TextColumn, TimeElapsedColumn
    from rich.text import Text

    from ..units import format_rate, format_size

    class RateColumn(ProgressColumn):
        """The rate in binary units, as the summary lines print it (rich's own is decimal)."""

        def render(self, task: Task) -> Text:
            return Text(format_rate(task.speed) if task.speed else "?", style="progress.data.speed")

    bar = Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        TextColumn("{task.fields[size]}"),
        RateColumn(),
        TimeElapsedColumn(),
        console=console(stderr=True),
        transient=True,
    )
    task = bar.add_task(description, total=None, size=format_size(0))

    def update(done: int, what: str) -> None:
        bar.update(task, completed=done, size=format_size(done), description=what)

    with bar:
        yield update


__all__ = [
    "OUTPUT_FORMATS",
    "ByteProgress",
    "byte_progress",
    "console",
    "get_paths",
    "output_format_option",
    "print_json",
    "print_kv",
    "print_table",
    "run_async",
    "warn",
]
