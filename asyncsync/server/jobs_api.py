"""Sync-job runs and tasks over the API, and the job service (task manager + scheduler) of a server.

==================================================  ===============================================
``GET    /admin/sync``                              jobs the caller may see, with their state
``POST   /admin/sync/{id}/run``                     start a run; answers the task's UPID at once
                                                    (the privileges of modifying the job; 409 if
                                                    it runs already)
``GET    /nodes/localhost/tasks``                   tasks (``running=1``, ``limit=N``, ``start=K``)
``GET    /nodes/localhost/tasks/{upid}/status``     one task: running or its end state
``GET    /nodes/localhost/tasks/{upid}/log``        log lines ``[{"n": 1, "t": "..."}]``
                                                    (``start``, ``limit``); ``total`` beside data
``DELETE /nodes/localhost/tasks/{upid}``            stop a running task
==================================================  ===============================================

Tasks: a caller sees and stops its own tasks (those of its tokens too); Sys.Audit
on ``/system`` shows every task, Sys.Modify on ``/system`` stops any.

:class:`JobService` owns the server's :class:`~asyncsync.jobs.tasks.TaskManager`,
the :class:`~asyncsync.jobs.runner.SyncJobRunner` and (unless disabled) the
:class:`~asyncsync.jobs.scheduler.Scheduler`. :func:`setup` registers the
routes and opens a service for the app's lifetime (``cleanup_ctx``): closing
it stops the scheduler, stops the running tasks (each ends as ``task
aborted``; the pull's cancellation guarantees hold) and waits for them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from datetime import tzinfo
from typing import Any, Self

from aiohttp import web

from .. import protocol
from ..access.privileges import Privilege
from ..config import syncjobs
from ..config.paths import Paths
from ..errors import InvalidInput, NotFound
from ..jobs import tasks as T
from ..jobs.calendar import local_timezone
from ..jobs.clock import Clock, SystemClock
from ..jobs.runner import JOB_TYPE, SyncJobRunner
from ..jobs.scheduler import Scheduler
from ..jobs.state import job_status
from ..names import AuthId
from .common import get_access, get_auth_id, ok
from .config_api import can_read_job, check_modify_job, owns
from .keys import PATHS

log = logging.getLogger("asyncsync.server")

ADMIN_SYNC = protocol.API_PREFIX + "/admin/sync"
TASKS = protocol.API_PREFIX + "/nodes/localhost/tasks"
MAX_TASK_LIST = 10_000
MAX_LOG_LINES = 50_000


class JobService:
    """Task manager, job runner and scheduler of one server (an async context manager).

    ``scheduler=False`` serves without running scheduled jobs (``serve
    --no-scheduler``); runs started over the API still work.
    """

    def __init__(
        self,
        paths: Paths,
        *,
        scheduler: bool = True,
        clock: Clock | None = None,
        tz: tzinfo | None = None,
    ) -> None:
        self.paths = paths
        self.tasks = T.TaskManager(paths)
        self.runner = SyncJobRunner(paths, self.tasks)
        self.scheduler: Scheduler | None = (
            Scheduler(paths, clock or SystemClock(), self.runner, tz=tz) if scheduler else None
        )
        self._scheduler_task: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"<JobService {self.paths.state} scheduler={self.scheduler is not None}>"

    async def __aenter__(self) -> Self:
        await self.tasks.__aenter__()
        if self.scheduler is not None:
            self._scheduler_task = asyncio.create_task(self._run_scheduler(self.scheduler), name="scheduler")
        return self

    async def _run_scheduler(self, scheduler: Scheduler) -> None:
        try:
            await scheduler.run()
        except asyncio.CancelledError:
            raise
        except Exception:
            # a bug in the scheduler must not take the server down; it is reported loudly
            log.exception("the scheduler stopped")

    async def __aexit__(self, *exc: object) -> None:
        try:
            if self._scheduler_task is not None:
                self._scheduler_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._scheduler_task
        finally:
            self.tasks.stop_all()
            await self.tasks.__aexit__(None, None, None)


JOBS: web.AppKey[JobService] = web.AppKey("jobs", JobService)


# ---- permission helpers ------------------------------------------------------------


def _task_user(upid: T.Upid) -> AuthId | None:
    try:
        return AuthId.parse(upid.auth_id)
    except InvalidInput:
        return None


def _may_see(auth_id: AuthId, upid: T.Upid, *, all_tasks: bool) -> bool:
    if all_tasks:
        return True
    user = _task_user(upid)
    return user is not None and owns(auth_id, user)


def _check_task(request: web.Request, upid: T.Upid, priv: Privilege) -> None:
    auth_id = get_auth_id(request)
    access = get_access(request)
    user = _task_user(upid)
    if user is not None and owns(auth_id, user):
        return
    if not access.has(auth_id, "/system", priv):
        # the same answer as for an unknown task: ids of others' tasks are not confirmed
        raise NotFound(f"task {upid} not found")


def _upid(request: web.Request) -> T.Upid:
    return T.Upid.parse(request.match_info["upid"])


def _int_query(request: web.Request, key: str, default: int, lo: int, hi: int) -> int:
    raw = request.query.get(key)
    if raw is None or raw == "":
        return default
    try:
        n = int(raw)
    except ValueError:
        raise InvalidInput(f"invalid integer {raw!r}", field=key) from None
    if not lo <= n <= hi:
        raise InvalidInput(f"must be between {lo} and {hi}", field=key)
    return n


def _bool_query(request: web.Request, key: str) -> bool:
    raw = request.query.get(key)
    return raw is not None and syncjobs.parse_bool(raw, key)


# ---- handlers ----------------------------------------------------------------------


async def list_jobs(request: web.Request) -> web.Response:
    auth_id = get_auth_id(request)
    access = get_access(request)
    paths = request.app[PATHS]

    def run() -> list[dict[str, Any]]:
        tz = local_timezone()
        now = time.time()
        out = []
        for job in syncjobs.list_jobs(paths):
            if not can_read_job(access, auth_id, job):
                continue
            rec = job.to_json()
            rec.update(job_status(paths, JOB_TYPE, job.id, job.schedule, tz, now).to_json())
            out.append(rec)
        return out

    return ok(await asyncio.to_thread(run))


async def run_job(request: web.Request) -> web.Response:
    auth_id = get_auth_id(request)
    access = get_access(request)
    paths = request.app[PATHS]
    job = await asyncio.to_thread(syncjobs.get_job, paths, request.match_info["id"])
    if not can_read_job(access, auth_id, job):
        raise NotFound(f"sync job {job.id!r} is not configured")
    check_modify_job(access, auth_id, job)
    handle = await request.app[JOBS].runner.start(job, auth_id=str(auth_id))
    return ok(str(handle.upid))


async def list_tasks(request: web.Request) -> web.Response:
    auth_id = get_auth_id(request)
    access = get_access(request)
    paths = request.app[PATHS]
    running = _bool_query(request, "running")
    start = _int_query(request, "start", 0, 0, MAX_TASK_LIST)
    limit = _int_query(request, "limit", 50, 1, MAX_TASK_LIST)
    all_tasks = access.has(auth_id, "/system", Privilege.SYS_AUDIT)
    infos = await asyncio.to_thread(T.list_tasks, paths, running=running, limit=None)
    visible = [i for i in infos if _may_see(auth_id, i.upid, all_tasks=all_tasks)]
    page = visible[start : start + limit]
    return web.json_response({"data": [i.to_json() for i in page], "total": len(visible)})


async def task_status(request: web.Request) -> web.Response:
    upid = _upid(request)
    _check_task(request, upid, Privilege.SYS_AUDIT)
    info = await asyncio.to_thread(T.get_task, request.app[PATHS], upid)
    return ok(info.to_json())


async def task_log(request: web.Request) -> web.Response:
    upid = _upid(request)
    _check_task(request, upid, Privilege.SYS_AUDIT)
    start = _int_query(request, "start", 0, 0, 1 << 40)
    limit = _int_query(request, "limit", 500, 1, MAX_LOG_LINES)
    paths = request.app[PATHS]

    def run() -> tuple[list[dict[str, Any]], int]:
        lines: list[dict[str, Any]] = []
        total = 0
        offset = 0
        tail = b""
        while True:
            data, offset = T.read_log(paths, upid, offset)
            if not data:
                break
            parts = (tail + data).split(b"\n")
            tail = parts.pop()
            for raw in parts:
                total += 1
                if start < total <= start + limit:
                    lines.append({"n": total, "t": raw.decode(errors="replace")})
        if tail:
            total += 1
            if start < total <= start + limit:
                lines.append({"n": total, "t": tail.decode(errors="replace")})
        return lines, total

    lines, total = await asyncio.to_thread(run)
    return web.json_response({"data": lines, "total": total})


async def stop_task(request: web.Request) -> web.Response:
    upid = _upid(request)
    _check_task(request, upid, Privilege.SYS_MODIFY)
    service = request.app[JOBS]
    if not service.tasks.stop(upid):
        # not one of this server's tasks (e.g. a `sync-job run` in a shell)
        await asyncio.to_thread(T.request_stop, request.app[PATHS], upid)
    return ok(None)


def setup(app: web.Application, *, scheduler: bool = False, clock: Clock | None = None) -> None:
    """Register the routes on ``app`` and open a :class:`JobService` for its lifetime.

    ``scheduler=True`` also runs the scheduler (what ``asyncsync serve`` wants
    unless ``--no-scheduler``). A :class:`JobService` already stored under
    :data:`JOBS` (entered by the caller) is used as it is.
    """
    app.router.add_get(ADMIN_SYNC, list_jobs)
    app.router.add_post(ADMIN_SYNC + "/{id}/run", run_job)
    app.router.add_get(TASKS, list_tasks)
    app.router.add_get(TASKS + "/{upid}/status", task_status)
    app.router.add_get(TASKS + "/{upid}/log", task_log)
    app.router.add_delete(TASKS + "/{upid}", stop_task)

    async def jobs_ctx(app: web.Application) -> AsyncIterator[None]:
        if JOBS in app:
            yield
            return
        async with JobService(app[PATHS], scheduler=scheduler, clock=clock) as service:
            app[JOBS] = service
            yield

    app.cleanup_ctx.append(jobs_ctx)


__all__ = ["ADMIN_SYNC", "JOBS", "TASKS", "JobService", "setup"]
