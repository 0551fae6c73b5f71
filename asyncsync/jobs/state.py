"""Per-job state: when a job last ran, how it went, and when it runs next; the per-job lock.

One JSON file per job, ``<state>/jobstates/<type>-<id>.json``::

    {"state": "created", "time": 1767000000}
    {"state": "started", "upid": "UPID:...", "time": 1767000000}
    {"state": "finished", "upid": "UPID:...", "time": 1767000000,
     "endtime": 1767000042, "status": "OK"}

``created`` records when the scheduler first saw a job that never ran, so the
next event is computed from then (and a missed first event still runs once
after a restart). ``time`` is always the instant the next event is computed
after: the last run's start, or the first sight.

A job runs at most once at a time: :func:`lock_job` takes an exclusive
``flock`` on ``<state>/jobstates/.<type>-<id>.lck`` (across processes: the
server's scheduler, ``sync-job run``, the API) and writes the running task's
UPID into it, so a refusal can name the task that holds it.

Blocking: file I/O; call from a worker thread on an event loop.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
from dataclasses import dataclass
from datetime import tzinfo
from pathlib import Path
from typing import Any, Literal

from ..config.paths import Paths
from ..errors import AsyncSyncError, InvalidInput, Locked, StorageError
from ..names import safe_id
from .calendar import next_event
from .tasks import TaskState, TaskStateKind, Upid, get_task, write_text_atomic

STATE_DIR = "jobstates"
Kind = Literal["created", "started", "finished"]


@dataclass(frozen=True, slots=True)
class JobState:
    """What the state file of one job says."""

    kind: Kind
    #: last run's start (``started``/``finished``) or first sight (``created``), epoch seconds
    time: float
    upid: str | None = None
    endtime: int | None = None
    #: the end state as :meth:`TaskState.serialize` writes it (``finished`` only)
    status: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"state": self.kind, "time": self.time}
        if self.upid is not None:
            out["upid"] = self.upid
        if self.endtime is not None:
            out["endtime"] = self.endtime
        if self.status is not None:
            out["status"] = self.status
        return out

    @classmethod
    def from_json(cls, data: Any) -> JobState:
        if not isinstance(data, dict) or data.get("state") not in ("created", "started", "finished"):
            raise InvalidInput("invalid job state file")
        t = data.get("time")
        if not isinstance(t, int | float) or isinstance(t, bool):
            raise InvalidInput("invalid job state file (time)")
        upid, endtime, status = data.get("upid"), data.get("endtime"), data.get("status")
        return cls(
            data["state"],
            float(t),
            upid if isinstance(upid, str) else None,
            endtime if isinstance(endtime, int) else None,
            status if isinstance(status, str) else None,
        )


@dataclass(frozen=True, slots=True)
class JobStatus:
    """A job's state as shown to people: last run, its outcome, next run."""

    last_run_start: int | None = None
    last_run_end: int | None = None
    #: ``OK``, ``WARNINGS: n``, the error message, ``running`` or ``unknown``; None if never run
    last_state: str | None = None
    last_upid: str | None = None
    next_run: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "last-run-upid": self.last_upid,
            "last-run-state": self.last_state,
            "last-run-starttime": self.last_run_start,
            "last-run-endtime": self.last_run_end,
            "next-run": self.next_run,
        }


def _name(job_type: str, job_id: str) -> str:
    return f"{job_type}-{safe_id(job_id, 'job id')}"


def state_path(paths: Paths, job_type: str, job_id: str) -> Path:
    return paths.state / STATE_DIR / f"{_name(job_type, job_id)}.json"


def load_job_state(paths: Paths, job_type: str, job_id: str) -> JobState | None:
    """The job's state, or None if it has none (never seen, or the file is damaged)."""
    path = state_path(paths, job_type, job_id)
    try:
        return JobState.from_json(json.loads(path.read_bytes()))
    except FileNotFoundError:
        return None
    except (ValueError, InvalidInput):
        return None  # a damaged file is treated as "never ran": the job still runs
    except OSError as exc:
        raise StorageError(f"cannot read {path}: {exc.strerror}") from exc


def save_job_state(paths: Paths, job_type: str, job_id: str, state: JobState) -> None:
    path = state_path(paths, job_type, job_id)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StorageError(f"cannot write {path}: {exc.strerror}") from exc
    write_text_atomic(path, json.dumps(state.to_json()))


def ensure_created(paths: Paths, job_type: str, job_id: str, now: float) -> JobState:
    """The job's state; if it has none, record ``created`` at ``now`` (first sight) and return that."""
    st = load_job_state(paths, job_type, job_id)
    if st is None:
        st = JobState("created", now)
        save_job_state(paths, job_type, job_id, st)
    return st


def record_started(paths: Paths, job_type: str, job_id: str, upid: Upid) -> None:
    save_job_state(paths, job_type, job_id, JobState("started", upid.starttime, str(upid)))


def record_finished(
    paths: Paths, job_type: str, job_id: str, upid: Upid, endtime: int, state: TaskState
) -> None:
    save_job_state(
        paths, job_type, job_id, JobState("finished", upid.starttime, str(upid), endtime, state.serialize())
    )


def remove_job_state(paths: Paths, job_type: str, job_id: str) -> None:
    state_path(paths, job_type, job_id).unlink(missing_ok=True)


#: the job type of sync jobs in state file names and locks
SYNC_JOB_TYPE = "sync"


def forget_job(paths: Paths, job_type: str, job_id: str) -> None:
    """Drop a removed job's state, so a new job with the same id starts fresh
    (and does not run a 'missed' event of the old one at once)."""
    remove_job_state(paths, job_type, job_id)


def next_run_after(schedule: str | None, after: float, tz: tzinfo) -> float | None:
    """The first event of ``schedule`` strictly after ``after``; None without a (valid) schedule."""
    if not schedule:
        return None
    try:
        return next_event(schedule, after, tz)
    except InvalidInput:
        return None


def job_status(
    paths: Paths, job_type: str, job_id: str, schedule: str | None, tz: tzinfo, now: float
) -> JobStatus:
    """Last run, its outcome and the next run of one job (what ``sync-job list`` shows).

    A job that never ran and was never seen by a scheduler has its next run
    computed from ``now``. A ``started`` job whose task is not running any
    more (its process died) shows the state its task ended with, else
    ``unknown``.
    """
    st = load_job_state(paths, job_type, job_id)
    if st is None:
        return JobStatus(next_run=_int(next_run_after(schedule, now, tz)))
    next_run = _int(next_run_after(schedule, st.time, tz))
    if st.kind == "created":
        return JobStatus(next_run=next_run)
    last_state: str | None
    endtime = st.endtime
    if st.kind == "finished":
        last_state = str(TaskState.parse(st.status or ""))
    else:
        last_state = "unknown"
        if st.upid is not None:
            with contextlib.suppress(AsyncSyncError):
                info = get_task(paths, st.upid)
                if info.running:
                    last_state = "running"
                elif info.state is not None and info.state.kind is not TaskStateKind.UNKNOWN:
                    last_state = str(info.state)
                    endtime = info.endtime
    return JobStatus(int(st.time), endtime, last_state, st.upid, next_run)


def _int(t: float | None) -> int | None:
    return None if t is None else int(t)


class JobLock:
    """An exclusive per-job lock held by this process; :meth:`release` (or ``with``) frees it."""

    def __init__(self, fd: int, path: Path, what: str) -> None:
        self._fd: int | None = fd
        self.path = path
        self.what = what

    def __repr__(self) -> str:
        return f"<JobLock {self.what} {'held' if self._fd is not None else 'released'}>"

    def set_task(self, upid: Upid | str) -> None:
        """Record the task that holds the lock (named when someone else is refused)."""
        if self._fd is None:
            return
        data = f"{upid}\n".encode()
        try:
            os.ftruncate(self._fd, 0)
            os.pwrite(self._fd, data, 0)
        except OSError:
            pass  # only the refusal message loses detail

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> JobLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def lock_job(paths: Paths, job_type: str, job_id: str) -> JobLock:
    """Take the job's lock without waiting; :class:`Locked` naming the running task if it is held."""
    name = _name(job_type, job_id)
    path = paths.state / STATE_DIR / f".{name}.lck"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise StorageError(f"cannot open job lock {path}: {exc.strerror}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        holder = b""
        with contextlib.suppress(OSError):
            holder = os.pread(fd, 512, 0)
        os.close(fd)
        if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise StorageError(f"cannot lock {path}: {exc.strerror}") from exc
        task = holder.decode(errors="replace").strip()
        detail = f" (task {task})" if task else ""
        raise Locked(f"{job_type} job {job_id!r} is already running{detail}") from None
    return JobLock(fd, path, name)


__all__ = [
    "JobLock",
    "JobState",
    "JobStatus",
    "ensure_created",
    "job_status",
    "load_job_state",
    "lock_job",
    "next_run_after",
    "record_finished",
    "record_started",
    "remove_job_state",
    "save_job_state",
    "state_path",
]
