"""``asyncsync demo``: a real pull from a loopback server, in a temp folder."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import click

from ..demo import run_demo
from ..errors import IntegrityError
from .common import run_async


@click.command("demo")
@click.option(
    "--workdir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Folder for the demo's installations and data (default: a new temp folder).",
)
@click.option("--keep", is_flag=True, help="Keep the work folder afterwards (always kept with --workdir).")
def demo(workdir: Path | None, keep: bool) -> None:
    """Serve a sample datastore over TLS on 127.0.0.1, pull it with a sync job, change it,
    pull again, and restore archives to prove the copy is exact."""
    own = workdir is None
    folder = Path(tempfile.mkdtemp(prefix="asyncsync-demo-")) if workdir is None else workdir
    try:
        result = run_async(lambda: run_demo(folder, click.echo))
    finally:
        if own and not keep:
            shutil.rmtree(folder, ignore_errors=True)
    if not result.ok:
        raise IntegrityError("demo checks failed (see above)")
    click.echo(
        "\ndemo finished: every check passed" + (f" (files kept in {folder})" if keep or not own else "")
    )


commands: list[click.Command] = [demo]
