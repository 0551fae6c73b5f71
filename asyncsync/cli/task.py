"""Commands: ``task list``, ``task log``, ``task stop``."""

from __future__ import annotations

import sys
from datetime import datetime

import click

from ..errors import AsyncSyncError
from ..jobs import tasks as T
from .common import get_paths, output_format_option, print_table, run_async


def format_epoch(t: float | None) -> str:
    """Local time ``YYYY-MM-DD HH:MM:SS`` (empty for None)."""
    if t is None:
        return ""
    return datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M:%S")


@click.group("task")
def task() -> None:
    """Running and finished tasks (sync-job runs): list them, read their logs, stop them."""


@task.command("list")
@click.option("--running", is_flag=True, help="Only tasks that are running.")
@click.option(
    "--limit", type=click.IntRange(min=1), default=50, show_default=True, help="At most this many tasks."
)
@output_format_option
def list_cmd(running: bool, limit: int, output_format: str) -> None:
    """List tasks, newest first."""
    infos = T.list_tasks(get_paths(), running=running, limit=limit)
    rows = [
        (
            str(i.upid),
            i.upid.worker_type,
            i.upid.worker_id,
            format_epoch(i.upid.starttime),
            format_epoch(i.endtime),
            "running" if i.running else str(i.state or ""),
        )
        for i in infos
    ]
    print_table(
        ["upid", "type", "id", "start", "end", "status"],
        rows,
        output_format=output_format,
        records=[i.to_json() for i in infos],
    )


@task.command("log")
@click.argument("upid")
@click.option("--follow", "-f", is_flag=True, help="Keep printing while the task runs.")
def log_cmd(upid: str, follow: bool) -> None:
    """Print a task's log."""
    paths = get_paths()
    u = T.Upid.parse(upid)
    if not follow:
        T.get_task(paths, u)  # NotFound with a clear message for unknown ids
        offset = 0
        while True:
            data, offset = T.read_log(paths, u, offset)
            if not data:
                return
            sys.stdout.buffer.write(data)

    async def go() -> None:
        async for data in T.follow_log(paths, u):
            sys.stdout.buffer.write(data)
            sys.stdout.buffer.flush()

    run_async(go)


@task.command("stop")
@click.argument("upid")
@click.option(
    "--timeout",
    type=click.FloatRange(min=0),
    default=60.0,
    show_default=True,
    help="Seconds to wait for the task to end (0: do not wait).",
)
def stop_cmd(upid: str, timeout: float) -> None:
    """Stop a running task (it is cancelled cleanly: no half snapshot stays behind)."""
    paths = get_paths()
    u = T.Upid.parse(upid)
    T.request_stop(paths, u)
    if timeout == 0:
        click.echo(f"stop requested for {u}")
        return
    if not run_async(lambda: T.wait_ended(paths, u, within=timeout)):
        raise AsyncSyncError(f"task {u} is still running {timeout:g} s after the stop request")
    info = T.get_task(paths, u)
    click.echo(f"task {u} stopped: {info.state or 'unknown'}")


commands: list[click.Command] = [task]
