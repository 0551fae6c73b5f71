"""``asyncsync pull REMOTE REMOTE_STORE LOCAL_STORE``: a one-off pull.

``REMOTE`` is a configured remote, or ``-`` for *this* installation: then
``REMOTE_STORE`` names a configured local datastore and the pull is local to
local (``-`` cannot be a remote name, so there is no ambiguity; it reads as
Proxmox's sync job without a remote).

The command parses arguments, calls :func:`asyncsync.sync.pull.pull`, and prints:
on a terminal a live progress bar on stderr, a log line per snapshot and group,
then the summary (or the report as JSON). Exit code 0 when everything synced,
the :class:`~asyncsync.errors.PartialFailure` code when some group failed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager

import click

from ..config.datastores import open_datastore
from ..errors import PartialFailure
from ..names import AuthId, Namespace
from ..sync.defaults import (
    DEFAULT_FETCH_WORKERS,
    DEFAULT_GROUP_WORKERS,
    DEFAULT_MAX_INFLIGHT,
    MAX_FETCH_WORKERS,
    MAX_GROUP_WORKERS,
)
from ..sync.groupfilter import GroupFilters
from ..sync.pull import PullOptions, pull
from ..sync.report import LogCallback, ProgressCallback, PullProgress, PullReport
from ..sync.source import HttpSource, LocalSource, Source
from ..units import parse_size
from .common import console, get_paths, isatty, output_format_option, print_json, run_async

LOCAL_REMOTE = "-"


@contextmanager
def _display(enabled: bool) -> Iterator[tuple[ProgressCallback | None, LogCallback]]:
    """A live progress bar on stderr (when ``enabled``) and a log printer that keeps under it."""
    if not enabled:
        # plain lines: rich (≈ 30 ms to import) is only needed for the bar
        yield None, lambda line: click.echo(line, err=True)
        return
    err = console(stderr=True)
    # only a terminal gets the bar: rich.progress is slow to import for scripts
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TaskID,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(binary_units=True),
        TransferSpeedColumn(),
        TextColumn("{task.fields[chunks]} chunks"),
        TimeRemainingColumn(),
        console=err,
        transient=True,
    )
    task: TaskID = bar.add_task("listing", total=None, chunks=0)

    def on_progress(p: PullProgress) -> None:
        bar.update(
            task,
            completed=p.logical_bytes,
            total=p.total_logical_bytes or None,
            chunks=p.chunks,
            description=p.current_group or "finishing",
        )

    with bar:
        yield on_progress, lambda line: bar.console.print(line, markup=False)


async def _open_source(remote: str, remote_store: str) -> Source:
    paths = get_paths()
    if remote == LOCAL_REMOTE:
        return LocalSource(await asyncio.to_thread(open_datastore, paths, remote_store))
    from ..config.remotes import get_remote, remote_secret

    rc = await asyncio.to_thread(get_remote, paths, remote)
    secret = await asyncio.to_thread(remote_secret, paths, remote)
    return await HttpSource.connect(
        rc.bare_host, rc.port, rc.auth_id, secret, remote_store, fingerprint=rc.fingerprint, name=rc.name
    )


async def _run(
    remote: str, remote_store: str, local_store: str, options: PullOptions, show_progress: bool
) -> PullReport:
    target = await asyncio.to_thread(open_datastore, get_paths(), local_store)
    source = await _open_source(remote, remote_store)
    try:
        with _display(show_progress) as (on_progress, log):
            return await pull(source, target, options, progress=on_progress, log=log)
    finally:
        await source.aclose()


@click.command("pull")
@click.argument("remote")
@click.argument("remote_store")
@click.argument("local_store")
@click.option("--ns", default="", help="Local namespace anchor (default: root).")
@click.option("--remote-ns", default="", help="Remote namespace anchor (default: root).")
@click.option(
    "--max-depth",
    type=click.IntRange(0, 7),
    default=None,
    help="Levels below the anchor to sync (0 = the anchor only; default: all).",
)
@click.option(
    "--group-filter",
    multiple=True,
    help="[exclude:]type:T | group:T/ID | regex:RE; repeat for several.",
)
@click.option("--remove-vanished", is_flag=True, help="Remove local data the remote no longer has.")
@click.option("--owner", default="root@pam", show_default=True, help="Owner of newly created groups.")
@click.option(
    "--transfer-last", type=click.IntRange(min=1), default=None, help="Only the newest N snapshots."
)
@click.option("--rate-in", default=None, help="Incoming rate limit, e.g. 20MiB (per second).")
@click.option("--burst-in", default=None, help="Burst size of the rate limit (default: one second).")
@click.option("--verified-only", is_flag=True, help="Only snapshots the remote verified OK.")
@click.option(
    "--group-workers",
    type=click.IntRange(1, MAX_GROUP_WORKERS),
    default=DEFAULT_GROUP_WORKERS,
    show_default=True,
)
@click.option(
    "--fetch-workers",
    type=click.IntRange(1, MAX_FETCH_WORKERS),
    default=DEFAULT_FETCH_WORKERS,
    show_default=True,
    help="Most chunk requests in flight (the adaptive limit climbs up to it).",
)
@click.option(
    "--max-inflight",
    default=f"{DEFAULT_MAX_INFLIGHT // (1024 * 1024)}MiB",
    show_default=True,
    help="Most chunk bytes in flight.",
)
@click.option(
    "--progress/--no-progress",
    "progress",
    default=None,
    help="Live progress bar on stderr (default: when stderr is a terminal).",
)
@output_format_option
def pull_cmd(
    remote: str,
    remote_store: str,
    local_store: str,
    ns: str,
    remote_ns: str,
    max_depth: int | None,
    group_filter: tuple[str, ...],
    remove_vanished: bool,
    owner: str,
    transfer_last: int | None,
    rate_in: str | None,
    burst_in: str | None,
    verified_only: bool,
    group_workers: int,
    fetch_workers: int,
    max_inflight: str,
    progress: bool | None,
    output_format: str,
) -> None:
    """Pull REMOTE_STORE of REMOTE (or of this installation, for REMOTE '-') into LOCAL_STORE.

    Only missing chunks cross the wire; every chunk is verified; each snapshot
    appears whole or not at all. Exit code 8 if some group failed.
    """
    options = PullOptions(
        ns=Namespace.parse(ns),
        remote_ns=Namespace.parse(remote_ns),
        max_depth=max_depth,
        group_filter=GroupFilters.parse(group_filter),
        remove_vanished=remove_vanished,
        owner=AuthId.parse(owner),
        transfer_last=transfer_last,
        verified_only=verified_only,
        rate_in=parse_size(rate_in, field="rate-in") if rate_in else None,
        burst_in=parse_size(burst_in, field="burst-in") if burst_in else None,
        group_workers=group_workers,
        fetch_workers=fetch_workers,
        max_inflight=parse_size(max_inflight, field="max-inflight"),
    )
    show = isatty() and output_format == "text" if progress is None else progress
    report = run_async(lambda: _run(remote, remote_store, local_store, options, show))
    if output_format == "text":
        click.echo(report.summary())
    else:
        print_json(report.to_json(), output_format)
    if not report.ok:
        raise PartialFailure(report.failure_message())


commands: list[click.Command] = [pull_cmd]
