"""``asyncsync sync-job run ID``, and the last-run / state / next-run columns of ``sync-job list``.

Registered on the ``sync-job`` group of :mod:`asyncsync.cli.syncjob` when this
module is imported (main.py imports it after that module); ``commands`` is
empty on purpose.
"""

from __future__ import annotations

import asyncio
import signal
from datetime import datetime
from typing import Any

import click

from ..config.syncjobs import SyncJobConfig, get_job
from ..errors import AsyncSyncError
from ..jobs.runner import JOB_TYPE, SyncJobRunner
from ..jobs.state import JobStatus, job_status
from ..jobs.tasks import TaskHandle, TaskManager
from ..names import ROOT_AUTH_ID
from . import syncjob
from .common import get_paths, run_async
from .task import format_epoch

#: exit status of a run stopped by ``task stop`` or SIGTERM (as for an interrupt)
EXIT_ABORTED = 130


async def _run(job: SyncJobConfig) -> TaskHandle:
    paths = get_paths()
    async with TaskManager(paths) as tm:
        loop = asyncio.get_running_loop()
        # SIGTERM stops the run cleanly (the pull's cancellation guarantees), like `task stop`
        loop.add_signal_handler(signal.SIGTERM, tm.stop_all)
        try:
            return await SyncJobRunner(paths, tm).run(
                job, auth_id=str(ROOT_AUTH_ID), echo=lambda line: click.echo(line)
            )
        finally:
            loop.remove_signal_handler(signal.SIGTERM)


@click.command("run")
@click.argument("id")
def run(id: str) -> None:
    """Run sync job ID now, in the foreground, as a task; its log is printed as it goes.

    Exit status 0 if the job succeeded, non-zero if it failed or was stopped.
    A job that is running already (scheduled, or another `sync-job run`) is refused.
    """
    job = get_job(get_paths(), id)
    h = run_async(lambda: _run(job))
    if h.state is None or not h.state.failed:
        return
    if isinstance(h.error, AsyncSyncError):
        raise h.error
    if isinstance(h.error, asyncio.CancelledError):
        click.echo("error: task aborted", err=True)
        raise click.exceptions.Exit(EXIT_ABORTED)
    raise AsyncSyncError(str(h.state))


syncjob.sync_job.add_command(run)


# ---- sync-job list: last run, state, next run -------------------------------------------


# one state read per job and listing, shared by the columns; the key holds the listing's
# "now", so a later listing reads afresh (a CLI process lists once anyway)
_STATUS_CACHE: dict[tuple[str, datetime], JobStatus] = {}


def _status(job: SyncJobConfig, now: datetime) -> JobStatus:
    key = (job.id, now)
    st = _STATUS_CACHE.get(key)
    if st is None:
        assert now.tzinfo is not None
        st = job_status(get_paths(), JOB_TYPE, job.id, job.schedule, now.tzinfo, now.timestamp())
        _STATUS_CACHE[key] = st
    return st


def _next_run(job: SyncJobConfig, now: datetime) -> str:
    if not job.schedule:
        return ""
    st = _status(job, now)
    return format_epoch(st.next_run) if st.next_run is not None else "never"


def _record(job: SyncJobConfig, now: datetime) -> dict[str, Any]:
    return _status(job, now).to_json()


def _extend_list() -> None:
    titles = [t for t, _ in syncjob.LIST_COLUMNS]
    extra = [
        ("last run", lambda j, now: format_epoch(_status(j, now).last_run_start)),
        ("state", lambda j, now: _status(j, now).last_state or ""),
    ]
    if "next run" in titles:
        i = titles.index("next run")
        syncjob.LIST_COLUMNS[i] = ("next run", _next_run)
        syncjob.LIST_COLUMNS[i:i] = extra
    else:
        syncjob.LIST_COLUMNS.extend([*extra, ("next run", _next_run)])
    syncjob.RECORD_EXTRAS.append(_record)


_extend_list()

commands: list[click.Command] = []
