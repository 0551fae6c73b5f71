"""Tasks: long-running operations with an id, a log file and an end state.

Every sync-job run (scheduled, ``sync-job run`` or started over the API) is a
*task*. Its id is a UPID, as in Proxmox::

    UPID:<node>:<pid 8 hex>:<serial 8 hex>:<start time 8 hex>:<type>:<id>:<auth-id>:

(``:``, ``/``, ``\\`` and control characters in the fields are escaped as
``\\xNN``, so a UPID is also a safe file name).

On disk, under ``<state>/tasks/``:

* ``<XX>/<UPID>``: the task's log, written line by line while it runs (``XX`` is
  the low byte of the start time in hex, to keep folders small). The last line
  is ``TASK OK``, ``TASK WARNINGS: n`` or ``TASK ERROR: message``.
* ``active``: one UPID a line, the tasks that were started and have not ended.
* ``archive``: ``UPID ENDTIME STATUS`` lines of ended tasks, oldest first; it is
  rotated (oldest entries and their logs removed) to keep at most
  ``max_tasks`` tasks and about ``max_log_bytes`` of logs.
* ``stop/<UPID>``: a stop request from another process (see below).
* ``.lock``: serialises changes to ``active`` and ``archive`` between processes.

A running task holds an exclusive ``flock`` on its log file. That is the truth
about "running": a task whose process died (``kill -9``, power loss) loses the
lock and is shown (and archived) as ``unknown``, whatever ``active`` says, and
a reused pid cannot fool it.

Stopping: inside the process that runs a task, :meth:`TaskManager.stop`
cancels its asyncio task. From another process, :func:`request_stop` writes
``stop/<UPID>`` and sends ``SIGUSR2`` to the task's pid; a :class:`TaskManager`
catches that signal and cancels its tasks that have a stop request. (Not
``SIGTERM``: the task may run inside the server, which must keep serving.) The
cancelled task body sees :class:`asyncio.CancelledError`; the pull's own
cancellation guarantees (no half snapshot, no temp files) then hold, and the
task ends with the state ``task aborted``.

Blocking: the plain functions here touch files; callers on an event loop run
them in a worker thread. :class:`TaskManager` and :class:`TaskLog` do that
themselves.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import logging
import os
import re
import signal
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from ..config.paths import Paths
from ..datastore.chunkstore import tmp_name
from ..errors import AsyncSyncError, InvalidInput, NotFound, StorageError

log = logging.getLogger(__name__)

TASKS_DIR = "tasks"
#: default bound on archived tasks (their logs are removed with them)
MAX_TASKS = 1000
#: default bound on the total size of archived task logs
MAX_LOG_BYTES = 256 * 1024 * 1024
#: lines a task may queue for its log before further lines are dropped (and counted)
MAX_PENDING_LINES = 10_000
#: the signal :func:`request_stop` sends to the process running a task
STOP_SIGNAL = signal.SIGUSR2

_ESCAPE_RE = re.compile(r"[:/\\\x00-\x20\x7f]")
_UNESCAPE_RE = re.compile(r"\\x([0-9a-f]{2})")
_HEX8 = re.compile(r"[0-9A-F]{8}")
_TYPE_RE = re.compile(r"[a-z][a-z0-9-]{0,31}")
# an escaped field: no separator, slash or blank (backslashes only as escapes)
_FIELD_RE = re.compile(r"[^:/\x00-\x20\x7f]*")


def escape_field(value: str) -> str:
    """Escape ``:``, ``/``, ``\\``, blanks and control characters as ``\\xNN``."""
    return _ESCAPE_RE.sub(lambda m: f"\\x{ord(m.group()):02x}", value)


def unescape_field(value: str) -> str:
    return _UNESCAPE_RE.sub(lambda m: chr(int(m.group(1), 16)), value)


def node_name() -> str:
    """This machine's short host name (what UPIDs record as the node)."""
    return socket.gethostname().split(".", 1)[0] or "localhost"


@dataclass(frozen=True, slots=True)
class Upid:
    """A task id: where, by whom, when and what ran.

    ``worker_id`` and ``auth_id`` are kept unescaped here; :meth:`__str__`
    escapes them and :meth:`parse` undoes that.
    """

    node: str
    pid: int
    serial: int
    starttime: int
    worker_type: str
    worker_id: str
    auth_id: str

    def __post_init__(self) -> None:
        if not self.node or not _FIELD_RE.fullmatch(self.node):
            raise InvalidInput(f"invalid task node {self.node!r}")
        if not _TYPE_RE.fullmatch(self.worker_type):
            raise InvalidInput(f"invalid task type {self.worker_type!r}")
        for v in (self.pid, self.serial, self.starttime):
            if not 0 <= v <= 0xFFFFFFFF:
                raise InvalidInput(f"task id field {v} out of range")

    @classmethod
    def parse(cls, value: str) -> Upid:
        """Parse a UPID; refuses anything that would not format back to itself."""
        if not isinstance(value, str):
            raise InvalidInput(f"invalid task id {value!r}")
        parts = value.split(":")
        if (
            len(parts) != 9
            or parts[0] != "UPID"
            or parts[8] != ""
            or not all(_HEX8.fullmatch(p) for p in parts[2:5])
            or not all(_FIELD_RE.fullmatch(p) for p in parts[1:8])
        ):
            raise InvalidInput(f"invalid task id {value!r} (expected UPID:node:pid:...:)")
        upid = cls(
            parts[1],
            int(parts[2], 16),
            int(parts[3], 16),
            int(parts[4], 16),
            parts[5],
            unescape_field(parts[6]),
            unescape_field(parts[7]),
        )
        if str(upid) != value:
            raise InvalidInput(f"invalid task id {value!r} (not in canonical form)")
        return upid

    def __str__(self) -> str:
        return (
            f"UPID:{self.node}:{self.pid:08X}:{self.serial:08X}:{self.starttime:08X}:"
            f"{self.worker_type}:{escape_field(self.worker_id)}:{escape_field(self.auth_id)}:"
        )

    def rel_path(self) -> str:
        """The log file's path below the tasks folder."""
        return f"{self.starttime & 0xFF:02X}/{self}"


class TaskStateKind(StrEnum):
    OK = "ok"
    WARNINGS = "warnings"
    ERROR = "error"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class TaskState:
    """How a task ended: ``OK``, ``WARNINGS: n``, an error message, or ``unknown`` (process died)."""

    kind: TaskStateKind
    warnings: int = 0
    message: str = ""

    @classmethod
    def ok(cls, warnings: int = 0) -> TaskState:
        return cls(TaskStateKind.WARNINGS, warnings) if warnings else cls(TaskStateKind.OK)

    @classmethod
    def error(cls, message: str) -> TaskState:
        # one line: it goes into a line-based archive and a table cell
        message = " ".join(message.split()) or "error"
        return cls(TaskStateKind.ERROR, message=message)

    @classmethod
    def parse(cls, text: str) -> TaskState:
        """Inverse of :meth:`serialize` (also accepts the log's ``TASK ...`` line body)."""
        if text == "OK":
            return cls(TaskStateKind.OK)
        if text.startswith("WARNINGS: ") and text[10:].isdigit():
            return cls(TaskStateKind.WARNINGS, int(text[10:]))
        if text.startswith("ERROR: "):
            return cls(TaskStateKind.ERROR, message=text[7:])
        return cls(TaskStateKind.UNKNOWN)

    def serialize(self) -> str:
        if self.kind is TaskStateKind.OK:
            return "OK"
        if self.kind is TaskStateKind.WARNINGS:
            return f"WARNINGS: {self.warnings}"
        if self.kind is TaskStateKind.ERROR:
            return f"ERROR: {self.message}"
        return "unknown"

    @property
    def failed(self) -> bool:
        return self.kind in (TaskStateKind.ERROR, TaskStateKind.UNKNOWN)

    def __str__(self) -> str:
        """What a user reads: ``OK``, ``WARNINGS: 2``, the error message, or ``unknown``."""
        return self.message if self.kind is TaskStateKind.ERROR else self.serialize()


@dataclass(frozen=True, slots=True)
class TaskInfo:
    """A task as listed: running, or ended with ``endtime`` and ``state``."""

    upid: Upid
    running: bool
    endtime: int | None = None
    state: TaskState | None = None

    def to_json(self) -> dict[str, Any]:
        u = self.upid
        return {
            "upid": str(u),
            "node": u.node,
            "pid": u.pid,
            "starttime": u.starttime,
            "worker_type": u.worker_type,
            "worker_id": u.worker_id,
            "user": u.auth_id,
            "running": self.running,
            "endtime": self.endtime,
            "status": None if self.state is None else str(self.state),
            "state": "running" if self.running else (self.state.kind.value if self.state else None),
        }


# --------------------------------------------------------------------------- files


def tasks_dir(paths: Paths) -> Path:
    return paths.state / TASKS_DIR


def log_path(paths: Paths, upid: Upid) -> Path:
    return tasks_dir(paths) / upid.rel_path()


def _stop_path(paths: Paths, upid: Upid) -> Path:
    return tasks_dir(paths) / "stop" / str(upid)


@contextlib.contextmanager
def _index_lock(paths: Paths) -> Iterator[Path]:
    d = tasks_dir(paths)
    try:
        d.mkdir(parents=True, exist_ok=True)
        fd = os.open(d / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise StorageError(f"cannot open task index in {d}: {exc.strerror}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield d
    finally:
        os.close(fd)


def _read_lines(path: Path) -> list[str]:
    try:
        return path.read_text().splitlines()
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise StorageError(f"cannot read {path}: {exc.strerror}") from exc


def write_text_atomic(path: Path, text: str) -> None:
    """Replace ``path`` by a file holding ``text`` (temp file + rename): readers see the old
    or the new content, never a part; :class:`StorageError` on failure, and no temp file is
    left behind on any error or interruption."""
    tmp = path.with_name(tmp_name(path.name))
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise StorageError(f"cannot write {path}: {exc.strerror}") from exc
        raise


def _write_lines(path: Path, lines: list[str]) -> None:
    write_text_atomic(path, "".join(f"{line}\n" for line in lines))


def _parse_archive_line(line: str) -> TaskInfo | None:
    parts = line.split(" ", 2)
    if len(parts) != 3:
        return None
    try:
        return TaskInfo(Upid.parse(parts[0]), False, int(parts[1], 16), TaskState.parse(parts[2]))
    except (AsyncSyncError, ValueError):
        return None  # a damaged line must not hide the others


def is_running(paths: Paths, upid: Upid) -> bool:
    """True while the task's process holds the lock on its log file."""
    try:
        fd = os.open(log_path(paths, upid), os.O_RDONLY)
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise StorageError(f"cannot open task log of {upid}: {exc.strerror}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return True
        raise StorageError(f"cannot lock task log of {upid}: {exc.strerror}") from exc
    finally:
        os.close(fd)
    return False


def _last_state_from_log(paths: Paths, upid: Upid) -> TaskState:
    """The end state a dead task's log recorded, else ``unknown``."""
    try:
        with log_path(paths, upid).open("rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 4096))
            tail = f.read().decode(errors="replace").splitlines()
    except OSError:
        return TaskState(TaskStateKind.UNKNOWN)
    for line in reversed(tail):
        _, sep, msg = line.partition(": TASK ")
        if sep:
            return TaskState.parse(msg)
    return TaskState(TaskStateKind.UNKNOWN)


def _archive_entry(upid: Upid, endtime: int, state: TaskState) -> str:
    return f"{upid} {endtime:08X} {state.serialize()}"


def _rotate(paths: Paths, entries: list[str], max_tasks: int, max_log_bytes: int) -> list[str]:
    """Drop the oldest archive entries (and their logs) beyond the bounds; returns the kept ones."""
    sizes: list[int] = []
    for line in entries:
        info = _parse_archive_line(line)
        try:
            sizes.append(log_path(paths, info.upid).stat().st_size if info else 0)
        except OSError:
            sizes.append(0)
    total = sum(sizes)
    drop = 0
    while drop < len(entries) and (len(entries) - drop > max_tasks or total > max_log_bytes):
        total -= sizes[drop]
        drop += 1
    for line in entries[:drop]:
        info = _parse_archive_line(line)
        if info is not None:
            log_path(paths, info.upid).unlink(missing_ok=True)
    return entries[drop:]


def _register(paths: Paths, upid: Upid) -> int:
    """Create and lock the log file, then list the task as active; returns the log's fd."""
    path = log_path(paths, upid)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o640)
    except OSError as exc:
        raise StorageError(f"cannot create task log {path}: {exc.strerror}") from exc
    try:
        # held until the task ends: "running" means "this lock is held"
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with _index_lock(paths) as d:
            _write_lines(d / "active", [*_read_lines(d / "active"), str(upid)])
    except BaseException:
        os.close(fd)
        raise
    return fd


def _finish(
    paths: Paths, upid: Upid, fd: int, endtime: int, state: TaskState, limits: tuple[int, int]
) -> None:
    """Move the task from ``active`` to the archive, rotate, release the log lock."""
    try:
        with _index_lock(paths) as d:
            active = [u for u in _read_lines(d / "active") if u != str(upid)]
            _write_lines(d / "active", active)
            archive = [*_read_lines(d / "archive"), _archive_entry(upid, endtime, state)]
            _write_lines(d / "archive", _rotate(paths, archive, *limits))
            _stop_path(paths, upid).unlink(missing_ok=True)
    finally:
        os.close(fd)


def _cleanup_stale(paths: Paths) -> None:
    """Archive active entries whose process died (lock not held) with the state their log shows."""
    with _index_lock(paths) as d:
        active = _read_lines(d / "active")
        alive: list[str] = []
        dead: list[str] = []
        for line in active:
            try:
                upid = Upid.parse(line)
            except InvalidInput:
                continue
            if is_running(paths, upid):
                alive.append(line)
            else:
                state = _last_state_from_log(paths, upid)
                try:
                    endtime = int(log_path(paths, upid).stat().st_mtime)
                except OSError:
                    endtime = upid.starttime
                dead.append(_archive_entry(upid, endtime, state))
        if dead:
            _write_lines(d / "active", alive)
            _write_lines(d / "archive", [*_read_lines(d / "archive"), *dead])


def list_tasks(paths: Paths, *, running: bool = False, limit: int | None = 50) -> list[TaskInfo]:
    """Tasks newest first: the running ones, then (unless ``running``) the archived ones.

    Tasks whose process died are archived as ``unknown`` on the way.
    """
    if not tasks_dir(paths).exists():
        return []
    _cleanup_stale(paths)
    d = tasks_dir(paths)
    out: list[TaskInfo] = []
    for line in _read_lines(d / "active"):
        with contextlib.suppress(InvalidInput):
            out.append(TaskInfo(Upid.parse(line), True))
    if not running:
        for line in _read_lines(d / "archive"):
            info = _parse_archive_line(line)
            if info is not None:
                out.append(info)
    out.sort(key=lambda t: (t.upid.starttime, t.upid.serial), reverse=True)
    return out if limit is None else out[:limit]


def get_task(paths: Paths, upid: Upid | str) -> TaskInfo:
    """One task's status; :class:`NotFound` if it is not known (any more)."""
    u = upid if isinstance(upid, Upid) else Upid.parse(upid)
    if is_running(paths, u):
        return TaskInfo(u, True)
    d = tasks_dir(paths)
    for line in reversed(_read_lines(d / "archive")):
        if line.startswith(f"{u} "):
            info = _parse_archive_line(line)
            if info is not None:
                return info
    if log_path(paths, u).exists():
        # ended but not archived yet (the ending process is between two steps), or died
        return TaskInfo(u, False, None, _last_state_from_log(paths, u))
    raise NotFound(f"task {u} not found")


def read_log(paths: Paths, upid: Upid | str, offset: int = 0, limit: int = 1 << 20) -> tuple[bytes, int]:
    """Up to ``limit`` bytes of the task's log from ``offset``; returns (data, next offset)."""
    u = upid if isinstance(upid, Upid) else Upid.parse(upid)
    try:
        with log_path(paths, u).open("rb") as f:
            f.seek(offset)
            data = f.read(limit)
    except FileNotFoundError:
        raise NotFound(f"task {u} not found (its log may have been rotated away)") from None
    except OSError as exc:
        raise StorageError(f"cannot read log of task {u}: {exc.strerror}") from exc
    return data, offset + len(data)


def request_stop(paths: Paths, upid: Upid | str) -> None:
    """Ask the process that runs ``upid`` to stop it (see the module docstring).

    Raises :class:`NotFound` if the task is not running.
    """
    u = upid if isinstance(upid, Upid) else Upid.parse(upid)
    if not is_running(paths, u):
        raise NotFound(f"task {u} is not running")
    if u.node != escape_field(node_name()):
        raise InvalidInput(f"task {u} runs on node {u.node!r}, not here")
    req = _stop_path(paths, u)
    try:
        req.parent.mkdir(parents=True, exist_ok=True)
        req.touch()
    except OSError as exc:
        raise StorageError(f"cannot write stop request for {u}: {exc.strerror}") from exc
    try:
        os.kill(u.pid, STOP_SIGNAL)
    except ProcessLookupError:
        req.unlink(missing_ok=True)
        raise NotFound(f"task {u} is not running") from None
    except PermissionError as exc:
        raise StorageError(f"cannot signal task {u}: {exc.strerror}") from exc


async def follow_log(paths: Paths, upid: Upid | str, *, poll: float = 0.25) -> AsyncIterator[bytes]:
    """The task's log from the start, then what it appends while it runs; ends when the task has.

    Polls every ``poll`` seconds while the task runs (log files are small and
    a person watches: inotify would buy nothing here).
    """
    u = upid if isinstance(upid, Upid) else Upid.parse(upid)
    offset = 0
    while True:
        # "running?" before reading: a task that ended before this read has
        # written everything this read returns, so nothing is lost at the end
        running = await asyncio.to_thread(is_running, paths, u)
        while True:
            data, offset = await asyncio.to_thread(read_log, paths, u, offset)
            if not data:
                break
            yield data
        if not running:
            return
        await asyncio.sleep(poll)


async def wait_ended(paths: Paths, upid: Upid | str, *, within: float, poll: float = 0.1) -> bool:
    """Wait up to ``within`` seconds for the task to stop running; True if it has."""
    u = upid if isinstance(upid, Upid) else Upid.parse(upid)
    try:
        async with asyncio.timeout(within):
            # the task runs in another process: its lock is all there is to watch
            while await asyncio.to_thread(is_running, paths, u):  # noqa: ASYNC110
                await asyncio.sleep(poll)
    except TimeoutError:
        return False
    return True


# --------------------------------------------------------------------------- running tasks


def _timestamp(t: float) -> str:
    return datetime.fromtimestamp(t).astimezone().isoformat(timespec="seconds")


class TaskLog:
    """The log of one running task.

    :meth:`log` and :meth:`warn` are plain functions (callable from progress
    callbacks); lines are queued and written to the file (and echoed, if asked)
    by a writer coroutine, one worker-thread hop per batch, flushed as written.
    At most :data:`MAX_PENDING_LINES` lines wait; beyond that lines are dropped
    and the number dropped is logged, so a runaway task cannot eat memory.
    """

    def __init__(
        self,
        fd: int,
        *,
        echo: Callable[[str], None] | None = None,
        now: Callable[[], float] = time.time,
        max_pending: int = MAX_PENDING_LINES,
    ) -> None:
        self._fd = fd
        self._echo = echo
        self._now = now
        self._max_pending = max_pending
        self._pending: list[tuple[str, str]] = []
        self._dropped = 0
        self._wakeup = asyncio.Event()
        self._write_lock = asyncio.Lock()
        self._closed = False
        self.warnings = 0

    def __repr__(self) -> str:
        return f"<TaskLog pending={len(self._pending)} warnings={self.warnings}>"

    def log(self, message: str) -> None:
        """Append one line (multi-line messages become several lines)."""
        for line in message.splitlines() or [""]:
            if len(self._pending) >= self._max_pending:
                self._dropped += 1
                continue
            self._pending.append((f"{_timestamp(self._now())}: {line}\n", line))
        self._wakeup.set()

    def warn(self, message: str) -> None:
        """Log a warning; the task ends with ``WARNINGS: n`` unless it fails."""
        self.warnings += 1
        self.log(f"WARN: {message}")

    def _take(self) -> list[tuple[str, str]]:
        batch, self._pending = self._pending, []
        if self._dropped:
            note = f"... {self._dropped} log lines dropped (writer too slow)"
            batch.append((f"{_timestamp(self._now())}: {note}\n", note))
            self._dropped = 0
        self._wakeup.clear()
        return batch

    def _write(self, batch: list[tuple[str, str]]) -> None:
        data = "".join(b[0] for b in batch).encode()
        try:
            os.write(self._fd, data)
        except OSError as exc:
            # the log is best effort; the task itself carries on
            log.warning("cannot write task log: %s", exc.strerror)
        if self._echo is not None:
            for _, line in batch:
                self._echo(line)

    async def _writer(self) -> None:
        while not self._closed:
            await self._wakeup.wait()
            await self.flush()

    async def flush(self) -> None:
        """Write what is queued now; returns when it is in the file (and echoed)."""
        # one batch in flight at a time, so lines keep their order
        async with self._write_lock:
            batch = self._take()
            if batch:
                await asyncio.to_thread(self._write, batch)


@dataclass(eq=False)
class TaskHandle:
    """A task started by a :class:`TaskManager`: its id, and a way to wait for its end."""

    upid: Upid
    _done: asyncio.Event = field(default_factory=asyncio.Event, repr=False)
    _task: asyncio.Task[None] | None = field(default=None, repr=False)
    state: TaskState | None = None
    #: the exception the task body raised (``CancelledError`` if stopped), else None
    error: BaseException | None = field(default=None, repr=False)
    stop_requested: bool = False

    @property
    def running(self) -> bool:
        return not self._done.is_set()

    async def wait(self) -> TaskState:
        """Wait for the task to end; returns its end state."""
        await self._done.wait()
        assert self.state is not None
        return self.state


TaskBody = Callable[[TaskLog], Awaitable[object]]


class TaskManager:
    """Starts tasks in this process and owns them (an :class:`asyncio.TaskGroup`).

    Use as ``async with TaskManager(paths) as tasks:``; leaving the block waits
    for the running tasks, and cancelling it (or an error in the block) cancels
    them, each ending as ``task aborted`` in its log and the archive. While the
    manager is open it handles :data:`STOP_SIGNAL` (stop requests from other
    processes) if it runs in the main thread.
    """

    _serial = 0

    def __init__(
        self,
        paths: Paths,
        *,
        node: str | None = None,
        now: Callable[[], float] = time.time,
        max_tasks: int = MAX_TASKS,
        max_log_bytes: int = MAX_LOG_BYTES,
    ) -> None:
        self.paths = paths
        self.node = escape_field(node or node_name())
        self._now = now
        self._limits = (max_tasks, max_log_bytes)
        self._tg: asyncio.TaskGroup | None = None
        self._running: dict[Upid, TaskHandle] = {}
        self._signal_installed = False

    def __repr__(self) -> str:
        return f"<TaskManager {self.paths.state} running={len(self._running)}>"

    async def __aenter__(self) -> Self:
        self._tg = asyncio.TaskGroup()
        await self._tg.__aenter__()
        try:
            asyncio.get_running_loop().add_signal_handler(STOP_SIGNAL, self._on_stop_signal)
            self._signal_installed = True
        except (ValueError, RuntimeError, NotImplementedError):
            pass  # not the main thread: stop requests from other processes are not seen
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._tg is not None
        try:
            await self._tg.__aexit__(et, exc, tb)
        finally:
            self._tg = None
            if self._signal_installed:
                asyncio.get_running_loop().remove_signal_handler(STOP_SIGNAL)
                self._signal_installed = False

    def running(self) -> list[TaskHandle]:
        return list(self._running.values())

    def new_upid(self, worker_type: str, worker_id: str, auth_id: str) -> Upid:
        TaskManager._serial = (TaskManager._serial + 1) & 0xFFFFFFFF
        return Upid(
            self.node, os.getpid(), TaskManager._serial, int(self._now()), worker_type, worker_id, auth_id
        )

    async def spawn(
        self,
        worker_type: str,
        worker_id: str,
        auth_id: str,
        body: TaskBody,
        *,
        echo: Callable[[str], None] | None = None,
        on_end: Callable[[TaskHandle], Awaitable[None]] | None = None,
        upid: Upid | None = None,
    ) -> TaskHandle:
        """Register a task and start ``body(task_log)`` in this manager; returns at once.

        The log file exists and the task is listed as running when this
        returns. ``body`` may raise: an :class:`AsyncSyncError` (or any
        exception) ends the task with its message as the error state.
        ``on_end`` is awaited after the end state is recorded (the job runner
        updates job state and releases the job lock there); it runs even when
        the task is cancelled.
        """
        if self._tg is None:
            raise RuntimeError("TaskManager is not open (use 'async with')")
        u = upid or self.new_upid(worker_type, worker_id, auth_id)
        fd = await asyncio.to_thread(_register, self.paths, u)
        handle = TaskHandle(u)
        tlog = TaskLog(fd, echo=echo, now=self._now)
        self._running[u] = handle
        handle._task = self._tg.create_task(self._run(handle, tlog, fd, body, on_end), name=str(u))
        return handle

    async def run(
        self,
        worker_type: str,
        worker_id: str,
        auth_id: str,
        body: TaskBody,
        *,
        echo: Callable[[str], None] | None = None,
    ) -> TaskHandle:
        """:meth:`spawn` and wait for the end; returns the ended handle.

        Cancelling the caller stops the task (it ends as ``task aborted``) and
        waits for it to end before the cancellation goes on.
        """
        h = await self.spawn(worker_type, worker_id, auth_id, body, echo=echo)
        await wait_or_stop(self, h)
        return h

    def stop(self, upid: Upid) -> bool:
        """Cancel a task of this process; False if it does not run here."""
        h = self._running.get(upid)
        if h is None or h._task is None or h._task.done():
            return False
        h.stop_requested = True
        h._task.cancel()
        return True

    def stop_all(self) -> None:
        for u in list(self._running):
            self.stop(u)

    def _on_stop_signal(self) -> None:
        # the stop-request files are checked in a worker thread (file I/O), from a
        # short task that the manager's task group owns
        if self._tg is None:
            return
        with contextlib.suppress(RuntimeError):  # the group is closing: its tasks are being stopped
            self._tg.create_task(self._check_stop_requests(), name="task-stop-requests")

    async def _check_stop_requests(self) -> None:
        wanted = await asyncio.to_thread(
            lambda: [u for u in list(self._running) if _stop_path(self.paths, u).exists()]
        )
        for u in wanted:
            self.stop(u)

    async def _run(
        self,
        handle: TaskHandle,
        tlog: TaskLog,
        fd: int,
        body: TaskBody,
        on_end: Callable[[TaskHandle], Awaitable[None]] | None,
    ) -> None:
        me = asyncio.current_task()
        assert me is not None
        reraise: BaseException | None = None
        try:
            async with asyncio.TaskGroup() as tg:
                writer = tg.create_task(tlog._writer())
                try:
                    tlog.log(f"starting task {handle.upid}")
                    await body(tlog)
                    state = TaskState.ok(tlog.warnings)
                except asyncio.CancelledError as exc:
                    handle.error = exc
                    state = TaskState.error("task aborted")
                    # a stop request is the one cancellation this task absorbs; anything
                    # else (the manager or the server shutting down) travels on
                    if not (handle.stop_requested and me.uncancel() == 0):
                        reraise = exc
                except Exception as exc:
                    handle.error = exc
                    if isinstance(exc, AsyncSyncError):
                        state = TaskState.error(str(exc))
                    else:
                        log.debug("task %s failed", handle.upid, exc_info=True)
                        state = TaskState.error(f"internal error: {type(exc).__name__}: {exc}")
                if state.kind is TaskStateKind.ERROR:
                    tlog.log(f"TASK ERROR: {state.message}")
                else:
                    tlog.log(f"TASK {state.serialize()}")
                tlog._closed = True
                tlog._wakeup.set()
                await writer
                await tlog.flush()
        except asyncio.CancelledError as exc:
            # cancelled again while writing the end lines: record what we know
            state = TaskState.error("task aborted")
            reraise = exc
        handle.state = state
        end = int(self._now())
        finish = asyncio.ensure_future(
            asyncio.to_thread(_finish, self.paths, handle.upid, fd, end, state, self._limits)
        )
        try:
            # the archive entry must be written even if we are cancelled once more
            await asyncio.shield(finish)
        except asyncio.CancelledError as exc:
            await finish
            reraise = exc
        except AsyncSyncError as exc:
            log.error("cannot archive task %s: %s", handle.upid, exc)
        finally:
            self._running.pop(handle.upid, None)
            try:
                if on_end is not None:
                    await on_end(handle)
            finally:
                handle._done.set()
        if reraise is not None:
            raise reraise


async def wait_or_stop(manager: TaskManager, handle: TaskHandle) -> TaskState:
    """Wait for ``handle``; if the waiter is cancelled, stop the task, wait for its end, re-raise."""
    try:
        return await handle.wait()
    except asyncio.CancelledError:
        manager.stop(handle.upid)
        await asyncio.shield(handle._done.wait())
        raise


__all__ = [
    "MAX_LOG_BYTES",
    "MAX_TASKS",
    "STOP_SIGNAL",
    "TaskHandle",
    "TaskInfo",
    "TaskLog",
    "TaskManager",
    "TaskState",
    "TaskStateKind",
    "Upid",
    "follow_log",
    "get_task",
    "is_running",
    "list_tasks",
    "log_path",
    "node_name",
    "read_log",
    "request_stop",
    "tasks_dir",
    "wait_ended",
    "wait_or_stop",
    "write_text_atomic",
]
