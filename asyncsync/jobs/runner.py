"""Runs one sync job as a task: lock the job, pull, record the job state, log through the task log.

:class:`SyncJobRunner` is what the scheduler calls (``await runner(job)``),
what ``sync-job run`` uses (:meth:`SyncJobRunner.run`), and what the API uses
to start a run and answer with its task id at once (:meth:`SyncJobRunner.start`).

A run:

1. takes the job's lock (:func:`~asyncsync.jobs.state.lock_job`): a second run
   of the same job, from this or another process, is refused with
   :class:`~asyncsync.errors.Locked` naming the running task;
2. starts a task ``syncjob`` / job id / user, records ``started`` in the job state;
3. opens the local datastore, connects to the remote (its config + secret),
   pulls with :meth:`PullOptions.from_job`, logs a line per snapshot/group and
   the summary; failed groups end the task with the
   :class:`~asyncsync.errors.PartialFailure` message;
4. records ``finished`` with the end state and releases the lock, also when
   the task was stopped or failed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Protocol

from ..config.datastores import open_datastore
from ..config.paths import Paths
from ..config.remotes import get_remote, remote_secret
from ..config.syncjobs import SyncJobConfig
from ..names import ROOT_AUTH_ID
from ..sync.pull import PullOptions, pull
from ..sync.report import PullReport
from ..sync.source import HttpSource, Source
from .state import SYNC_JOB_TYPE, JobLock, lock_job, record_finished, record_started
from .tasks import TaskHandle, TaskLog, TaskManager, TaskState, Upid, wait_or_stop

JOB_TYPE = SYNC_JOB_TYPE
WORKER_TYPE = "syncjob"


class SourceFactory(Protocol):
    """Opens the source a job pulls from (the caller closes it with ``aclose``)."""

    async def __call__(self, paths: Paths, job: SyncJobConfig) -> Source: ...


async def open_remote_source(paths: Paths, job: SyncJobConfig) -> Source:
    """The job's remote datastore over HTTPS: remote config + secret, pinned fingerprint."""
    rc = await asyncio.to_thread(get_remote, paths, job.remote)
    secret = await asyncio.to_thread(remote_secret, paths, job.remote)
    return await HttpSource.connect(
        rc.bare_host,
        rc.port,
        rc.auth_id,
        secret,
        job.remote_store,
        fingerprint=rc.fingerprint,
        name=rc.name,
    )


def describe_job(job: SyncJobConfig) -> str:
    remote_ns = f" ns {job.remote_ns}" if job.remote_ns.parts else ""
    local_ns = f" ns {job.ns}" if job.ns.parts else ""
    return f"{job.remote}:{job.remote_store}{remote_ns} -> {job.store}{local_ns}"


class SyncJobRunner:
    """Runs sync jobs as tasks of ``tasks`` (see the module docstring)."""

    def __init__(
        self,
        paths: Paths,
        tasks: TaskManager,
        *,
        source_factory: SourceFactory = open_remote_source,
        now: Callable[[], float] = time.time,
    ) -> None:
        self.paths = paths
        self.tasks = tasks
        self.source_factory = source_factory
        self._now = now
        #: the report of each job's last run in this process (job id -> report)
        self.reports: dict[str, PullReport] = {}

    def __repr__(self) -> str:
        return f"<SyncJobRunner {self.paths.state}>"

    async def start(
        self,
        job: SyncJobConfig,
        *,
        auth_id: str = str(ROOT_AUTH_ID),
        echo: Callable[[str], None] | None = None,
    ) -> TaskHandle:
        """Lock the job and start its run as a task; returns at once with the task's handle.

        Raises :class:`~asyncsync.errors.Locked` (naming the running task) if
        the job is running already. ``echo`` receives each log line too
        (called in a worker thread).
        """
        lock = await asyncio.to_thread(lock_job, self.paths, JOB_TYPE, job.id)
        try:
            upid = self.tasks.new_upid(WORKER_TYPE, job.id, auth_id)
            await asyncio.to_thread(self._mark_started, lock, upid, job)

            async def on_end(h: TaskHandle) -> None:
                assert h.state is not None
                await asyncio.to_thread(self._mark_finished, lock, h.upid, h.state, job)

            return await self.tasks.spawn(
                WORKER_TYPE,
                job.id,
                auth_id,
                lambda log: self._body(job, log),
                echo=echo,
                on_end=on_end,
                upid=upid,
            )
        except BaseException:
            await asyncio.to_thread(lock.release)
            raise

    async def run(
        self,
        job: SyncJobConfig,
        *,
        auth_id: str = str(ROOT_AUTH_ID),
        echo: Callable[[str], None] | None = None,
    ) -> TaskHandle:
        """:meth:`start` and wait for the end (cancelling the caller stops the run)."""
        h = await self.start(job, auth_id=auth_id, echo=echo)
        await wait_or_stop(self.tasks, h)
        return h

    async def __call__(self, job: SyncJobConfig) -> TaskState:
        """The scheduler's entry: run ``job`` as ``root@pam``; returns its end state."""
        h = await self.run(job)
        assert h.state is not None
        return h.state

    def _mark_started(self, lock: JobLock, upid: Upid, job: SyncJobConfig) -> None:
        lock.set_task(upid)
        record_started(self.paths, JOB_TYPE, job.id, upid)

    def _mark_finished(self, lock: JobLock, upid: Upid, state: TaskState, job: SyncJobConfig) -> None:
        try:
            record_finished(self.paths, JOB_TYPE, job.id, upid, int(self._now()), state)
        finally:
            lock.release()

    async def _body(self, job: SyncJobConfig, log: TaskLog) -> None:
        log.log(f"sync job {job.id}: {describe_job(job)}")
        options = PullOptions.from_job(job)
        target = await asyncio.to_thread(open_datastore, self.paths, job.store)
        source = await self.source_factory(self.paths, job)
        try:
            report = await pull(source, target, options, log=log.log)
        finally:
            await source.aclose()
        self.reports[job.id] = report
        log.log(report.summary())
        report.raise_for_errors()


__all__ = ["JOB_TYPE", "WORKER_TYPE", "SourceFactory", "SyncJobRunner", "describe_job", "open_remote_source"]
