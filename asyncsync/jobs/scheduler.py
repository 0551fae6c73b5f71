"""The scheduler: starts sync jobs when their calendar events come.

Contract of :meth:`Scheduler.run`:

* It wakes at every ``reload_interval`` boundary of the clock (each minute by
  default) and at every job's next event (so a schedule with a seconds field
  fires on its second), re-reads ``sync.cfg`` (jobs created, changed or
  removed while it runs are picked up), and for each job with a schedule
  computes the first event strictly after the job's *base*: its last run's
  start (from the job state), or the first time the scheduler saw it if it
  never ran (recorded as ``created`` in the job state, so this survives
  restarts), or the last event this scheduler already handled for it.
* A job whose event is due is started once, however many of its events were
  missed (server down, clock jump): at start-up a missed event runs once.
* A job runs at most once at a time: if it is still running when its next
  event comes, that event is dropped (not queued), so a slow job does not run
  back to back. Across processes the runner's per-job lock refuses a second
  run (e.g. a ``sync-job run`` in a shell); the scheduler logs that and moves on.
* Runs are children of the scheduler's task group; cancelling :meth:`run`
  cancels them and waits for them to end.

All time comes from the :class:`~asyncsync.jobs.clock.Clock`, so tests move
time without sleeping.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import tzinfo

from ..config.paths import Paths
from ..config.syncjobs import SyncJobConfig, list_jobs
from ..errors import AsyncSyncError, Locked
from .calendar import local_timezone
from .clock import Clock
from .state import JobState, ensure_created, next_run_after

log = logging.getLogger(__name__)

JOB_TYPE = "sync"
#: what the scheduler calls to run one job; returns when the run has ended
JobRunner = Callable[[SyncJobConfig], Awaitable[object]]


@dataclass(frozen=True, slots=True)
class _Planned:
    job: SyncJobConfig
    state: JobState


class Scheduler:
    """Runs sync jobs on their schedules (see the module docstring for the contract).

    ``runner(job)`` runs one job and returns when it has ended; exceptions
    from it are logged, never fatal to the scheduler. ``tz`` is the zone the
    calendar events are read in (default: the local zone).
    """

    def __init__(
        self,
        paths: Paths,
        clock: Clock,
        runner: JobRunner,
        *,
        tz: tzinfo | None = None,
        reload_interval: float = 60.0,
    ) -> None:
        if reload_interval <= 0:
            raise ValueError("reload_interval must be positive")
        self.paths = paths
        self.clock = clock
        self.runner = runner
        self.tz = tz
        self.reload_interval = reload_interval
        self._jobs: list[SyncJobConfig] = []
        self._running: set[str] = set()
        # per job: the last event instant this scheduler started or dropped
        self._handled: dict[str, float] = {}
        self._idle = asyncio.Event()
        self._ticks = 0
        self._next_wakeup: float | None = None
        self._started = 0
        self._skipped = 0

    def __repr__(self) -> str:
        return f"<Scheduler jobs={len(self._jobs)} running={sorted(self._running)}>"

    def statistics(self) -> dict[str, object]:
        return {
            "ticks": self._ticks,
            "jobs": len(self._jobs),
            "running": sorted(self._running),
            "started": self._started,
            "skipped_while_running": self._skipped,
            "next_wakeup": self._next_wakeup,
        }

    @property
    def running_jobs(self) -> frozenset[str]:
        return frozenset(self._running)

    async def wait_idle(self) -> None:
        """Wait until the scheduler sleeps (its tick is done). For tests and diagnostics."""
        await self._idle.wait()

    async def run(self) -> None:
        """Schedule until cancelled; then cancel and await the running jobs."""
        tz = self.tz if self.tz is not None else await asyncio.to_thread(local_timezone)
        async with asyncio.TaskGroup() as tg:
            while True:
                now = self.clock.now()
                wake = await self._tick(tg, now, tz)
                self._ticks += 1
                self._next_wakeup = wake
                self._idle.set()
                try:
                    await self.clock.sleep_until(wake)
                finally:
                    self._idle.clear()

    async def _tick(self, tg: asyncio.TaskGroup, now: float, tz: tzinfo) -> float:
        """Start the due jobs; return when to wake next."""
        planned = await asyncio.to_thread(self._load, now)
        wake = (math.floor(now / self.reload_interval) + 1) * self.reload_interval
        for p in planned:
            job = p.job
            base = max(p.state.time, self._handled.get(job.id, -math.inf))
            due = next_run_after(job.schedule, base, tz)
            if due is None:
                continue
            if due > now:
                wake = min(wake, due)
                continue
            self._handled[job.id] = now
            if job.id in self._running:
                # the event came while the previous run goes on: drop it, do not queue it
                self._skipped += 1
                log.info("sync job %s is still running; skipping its event at %s", job.id, due)
            else:
                self._running.add(job.id)
                self._started += 1
                tg.create_task(self._run_job(job), name=f"syncjob-{job.id}")
            nxt = next_run_after(job.schedule, now, tz)
            if nxt is not None:
                wake = min(wake, nxt)
        return wake

    def _load(self, now: float) -> list[_Planned]:
        """Read the jobs (keeping the last good list if the file is broken) and their state."""
        try:
            self._jobs = list_jobs(self.paths)
        except AsyncSyncError as exc:
            log.warning("cannot read sync jobs, keeping the previous list: %s", exc)
        known = {j.id for j in self._jobs}
        for gone in set(self._handled) - known:
            del self._handled[gone]
        out: list[_Planned] = []
        for job in self._jobs:
            if not job.schedule:
                continue
            try:
                out.append(_Planned(job, ensure_created(self.paths, JOB_TYPE, job.id, now)))
            except AsyncSyncError as exc:
                log.warning("cannot read state of sync job %s: %s", job.id, exc)
        return out

    async def _run_job(self, job: SyncJobConfig) -> None:
        try:
            await self.runner(job)
        except Locked as exc:
            log.info("not starting sync job %s: %s", job.id, exc)
        except AsyncSyncError as exc:
            log.warning("sync job %s: %s", job.id, exc)
        except Exception:
            # one job's bug must not stop the scheduling of all the others
            log.exception("sync job %s failed", job.id)
        finally:
            self._running.discard(job.id)


__all__ = ["JOB_TYPE", "JobRunner", "Scheduler"]
