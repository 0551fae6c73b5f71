"""Make one snapshot from local files.

Three kinds of archive, chosen by the archive name's extension:

* ``NAME.didx=DIR_OR_FILE``: the folder (or single file) becomes a streamed
  POSIX.1-2001 (pax) tar archive, cut into content-defined chunks (FastCDC);
* ``NAME.fidx=IMAGE``: a disk image cut into fixed pieces (4 MiB by default);
* ``NAME.blob=SMALLFILE``: a small file (at most 16 MiB) stored as one blob in
  the snapshot folder.

Only chunks the store lacks are written; the chunks are hashed, compressed and
written by a small thread pool while the calling thread reads and cuts the next
ones, with a bounded number of chunks in flight (memory stays flat). The
snapshot is built in a hidden folder and appears atomically on commit; a
failure or cancellation leaves no visible snapshot and removes its temp folder.

Nothing here prints: a caller that wants to show progress passes a
``progress`` callback, which receives a :class:`BackupProgress` per chunk cut.

The tar stream is deterministic (sorted entries, numeric ids, no user/group
names, no access times), so a second backup of unchanged data produces the same
chunks and writes none.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import shutil
import stat
import tarfile
import time
from collections import deque
from collections.abc import Callable, Generator, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..datastore.blob import MAX_CHUNK_SIZE
from ..datastore.chunkstore import ChunkStore, is_stale_tmp
from ..datastore.datastore import Datastore, SnapshotWriter
from ..datastore.index import DynamicIndex, FixedIndex
from ..datastore.threads import CancelToken, check, run_cancellable
from ..errors import AlreadyExists, Conflict, InvalidInput, NotFound, PermissionDenied, StorageError
from ..names import ROOT_AUTH_ID, AuthId, GroupId, Namespace, SnapshotId, SnapshotRef, check_archive_name
from ..units import format_rate, format_size
from .chunker import DEFAULT_CHUNK_SIZE, DynamicChunker, FixedChunker

_BLOCK = tarfile.BLOCKSIZE
_ZEROS = bytes(_BLOCK * 2)

Warn = Callable[[str], None]


def _ignore(_: str) -> None:
    return None


# ---------------------------------------------------------------- sources


@dataclass(frozen=True, slots=True)
class ArchiveSource:
    """One ``NAME.ext=PATH`` argument of a backup."""

    name: str
    path: Path

    @classmethod
    def parse(cls, spec: str) -> ArchiveSource:
        """Parse ``NAME.didx=PATH``; the archive name is validated, the path is not touched."""
        name, sep, path = spec.partition("=")
        if not sep or not path:
            raise InvalidInput(f"invalid archive {spec!r} (expected NAME.didx|NAME.fidx|NAME.blob=PATH)")
        return cls(check_archive_name(name), Path(path))

    @property
    def kind(self) -> str:
        """``didx``, ``fidx`` or ``blob``."""
        return self.name.rsplit(".", 1)[1]

    def check(self) -> None:
        """Refuse a source that does not exist or does not fit its archive kind."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            raise NotFound(f"{self.name}: {self.path} does not exist") from None
        except OSError as exc:
            raise StorageError(f"{self.name}: cannot access {self.path}: {exc.strerror}") from exc
        if self.kind == "didx":
            if not (stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode)):
                raise InvalidInput(f"{self.name}: {self.path} is neither a folder nor a file")
        elif self.kind == "fidx":
            if not (stat.S_ISREG(st.st_mode) or stat.S_ISBLK(st.st_mode)):
                raise InvalidInput(f"{self.name}: {self.path} is not an image file or block device")
        elif not stat.S_ISREG(st.st_mode):
            raise InvalidInput(f"{self.name}: {self.path} is not a file")
        elif st.st_size > MAX_CHUNK_SIZE:
            raise InvalidInput(
                f"{self.name}: {self.path} is {format_size(st.st_size)}, a blob holds at most 16 MiB;"
                " use a .didx or .fidx archive"
            )


# ---------------------------------------------------------------- reports


@dataclass(slots=True)
class ArchiveStats:
    """What backing up one archive did."""

    name: str
    size: int = 0
    chunks: int = 0
    new_chunks: int = 0
    new_bytes: int = 0
    files: int = 0
    skipped: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "size": self.size,
            "chunks": self.chunks,
            "new-chunks": self.new_chunks,
            "new-bytes": self.new_bytes,
            "files": self.files,
            "skipped": self.skipped,
        }


@dataclass(slots=True)
class BackupReport:
    """The result of one backup: the snapshot made and per-archive numbers."""

    ref: SnapshotRef
    archives: list[ArchiveStats] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def size(self) -> int:
        return sum(a.size for a in self.archives)

    @property
    def chunks(self) -> int:
        return sum(a.chunks for a in self.archives)

    @property
    def new_chunks(self) -> int:
        return sum(a.new_chunks for a in self.archives)

    @property
    def new_bytes(self) -> int:
        return sum(a.new_bytes for a in self.archives)

    def summary(self) -> str:
        """One line: ``backup vm/100/…: 3 archives, 12 chunks new / 30, 1.2 GiB in 2.1 s (…)``."""
        rate = self.size / self.seconds if self.seconds > 0 else 0.0
        return (
            f"backup {self.ref}: {len(self.archives)} archives, {self.new_chunks} chunks new / {self.chunks},"
            f" {format_size(self.size)} in {self.seconds:.1f} s ({format_rate(rate)})"
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "ns": str(self.ref.ns),
            "snapshot": str(self.ref.snapshot),
            "size": self.size,
            "chunks": self.chunks,
            "new-chunks": self.new_chunks,
            "new-bytes": self.new_bytes,
            "seconds": round(self.seconds, 3),
            "archives": [a.to_json() for a in self.archives],
        }


@dataclass(frozen=True, slots=True)
class BackupProgress:
    """How far a running backup is; counts are totals over all archives so far."""

    #: the archive being read
    archive: str
    #: archive bytes read and cut into chunks (blob contents included): ``BackupReport.size`` at the end
    bytes_read: int
    #: bytes of file content read: at the end, the sum of the sizes of the source files
    #: (a tree's regular files, an image, a blob), without tar headers and padding
    file_bytes: int
    #: chunks cut so far (new or already stored)
    chunks: int


#: receives a :class:`BackupProgress` after each chunk and at the end of each archive
ProgressCallback = Callable[[BackupProgress], None]


# ---------------------------------------------------------------- chunk sink


class _ChunkSink:
    """Stores chunks through a thread pool, keeping index order and at most ``max_inflight`` pending."""

    def __init__(
        self, chunks: ChunkStore, pool: ThreadPoolExecutor, stats: ArchiveStats, max_inflight: int
    ) -> None:
        self._chunks = chunks
        self._pool = pool
        self._stats = stats
        self._max = max_inflight
        self._pending: deque[tuple[Future[tuple[str, bool]], int]] = deque()
        self.entries: list[tuple[bytes, int]] = []

    def add(self, data: memoryview) -> None:
        # The chunker reuses its buffer: the worker gets a private copy.
        self._pending.append((self._pool.submit(self._chunks.insert_data, bytes(data)), len(data)))
        while len(self._pending) > self._max:
            self._drain_one()

    def _drain_one(self) -> None:
        fut, size = self._pending.popleft()
        digest, new = fut.result()
        self.entries.append((bytes.fromhex(digest), size))
        self._stats.chunks += 1
        if new:
            self._stats.new_chunks += 1
            self._stats.new_bytes += size

    def finish(self) -> list[tuple[bytes, int]]:
        while self._pending:
            self._drain_one()
        return self.entries

    def abandon(self) -> None:
        """Cancel queued work and wait for running work (no thread writes after we return)."""
        for fut, _ in self._pending:
            fut.cancel()
        for fut, _ in self._pending:
            if not fut.cancelled():
                with contextlib.suppress(BaseException):
                    fut.result()
        self._pending.clear()


# ---------------------------------------------------------------- tar stream


def _mtime_fields(mtime_ns: int) -> tuple[int, dict[str, str]]:
    """Whole seconds for the ustar field plus an exact pax ``mtime`` when there is a fraction."""
    sec, frac = divmod(mtime_ns, 1_000_000_000)
    if not frac:
        return sec, {}
    sign = "-" if mtime_ns < 0 else ""
    a_sec, a_frac = divmod(abs(mtime_ns), 1_000_000_000)
    return sec, {"mtime": f"{sign}{a_sec}.{a_frac:09d}"}


class _FileRange:
    __slots__ = ("file", "left", "name")

    def __init__(self, file: Any, left: int, name: str) -> None:
        self.file = file
        self.left = left
        self.name = name


class TarStream:
    """A deterministic pax tar archive of a folder (or one file), read with ``readinto``.

    The folder itself is the member ``.``; members below it are relative
    paths in sorted order. Regular files, folders and symbolic links are
    archived with mode, numeric owner and nanosecond mtime; hard links become
    separate files; sockets, FIFOs and devices are skipped with a warning.
    A file that shrinks while it is read is padded with zeros (and warned
    about), one that grows is cut at the size recorded in its header.
    """

    def __init__(self, root: Path, *, warn: Warn = _ignore, stats: ArchiveStats | None = None) -> None:
        self.root = root
        self.warn = warn
        self.stats = stats or ArchiveStats("")
        self.bytes_out = 0
        #: bytes of file content read so far (bytes_out minus headers, padding and end marker)
        self.file_bytes = 0
        self._pieces: Generator[bytes | _FileRange, None, None] = self._generate()
        self._cur: memoryview = memoryview(b"")
        self._file: _FileRange | None = None

    def __repr__(self) -> str:
        return f"TarStream({str(self.root)!r}, out={self.bytes_out})"

    # Members are produced lazily: a generator of header bytes and file ranges.
    def _generate(self) -> Generator[bytes | _FileRange, None, None]:
        st = os.lstat(self.root)
        if stat.S_ISDIR(st.st_mode):
            yield from self._member(self.root, ".", st)
            yield from self._walk(self.root, "")
        else:
            yield from self._member(self.root, self.root.name, st)
        yield _ZEROS

    def _walk(self, folder: Path, prefix: str) -> Iterator[bytes | _FileRange]:
        try:
            with os.scandir(folder) as it:
                names = sorted(e.name for e in it)
        except OSError as exc:
            self.warn(f"cannot list {folder}: {exc.strerror}")
            self.stats.skipped += 1
            return
        for name in names:
            path = folder / name
            try:
                st = os.lstat(path)
            except OSError as exc:
                self.warn(f"cannot stat {path}: {exc.strerror}")
                self.stats.skipped += 1
                continue
            arcname = f"{prefix}{name}"
            yield from self._member(path, arcname, st)
            if stat.S_ISDIR(st.st_mode):
                yield from self._walk(path, arcname + "/")

    def _member(self, path: Path, arcname: str, st: os.stat_result) -> Iterator[bytes | _FileRange]:
        ti = tarfile.TarInfo(arcname)
        file = None
        if stat.S_ISREG(st.st_mode):
            try:
                file = open(path, "rb", buffering=0)  # noqa: SIM115 - closed when its range is consumed
            except OSError as exc:
                self.warn(f"cannot read {path}: {exc.strerror}")
                self.stats.skipped += 1
                return
            st = os.fstat(file.fileno())
            ti.type = tarfile.REGTYPE
            ti.size = st.st_size
        elif stat.S_ISDIR(st.st_mode):
            ti.type = tarfile.DIRTYPE
        elif stat.S_ISLNK(st.st_mode):
            ti.type = tarfile.SYMTYPE
            try:
                ti.linkname = os.readlink(path)
            except OSError as exc:
                self.warn(f"cannot read link {path}: {exc.strerror}")
                self.stats.skipped += 1
                return
        else:
            self.warn(f"skipping special file {path}")
            self.stats.skipped += 1
            return
        ti.mode = stat.S_IMODE(st.st_mode)
        ti.uid, ti.gid = st.st_uid, st.st_gid
        ti.uname = ti.gname = ""
        ti.mtime, ti.pax_headers = _mtime_fields(st.st_mtime_ns)
        self.stats.files += 1
        yield ti.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
        if file is not None:
            yield _FileRange(file, ti.size, str(path))
            pad = -ti.size % _BLOCK
            if pad:
                yield _ZEROS[:pad]

    def readinto(self, buf: memoryview) -> int:
        """Fill ``buf`` with the next bytes of the archive; 0 at the end."""
        n, total = 0, len(buf)
        while n < total:
            if self._cur:
                take = min(len(self._cur), total - n)
                buf[n : n + take] = self._cur[:take]
                self._cur = self._cur[take:]
                n += take
                continue
            if self._file is not None:
                fr = self._file
                want = min(fr.left, total - n)
                if want == 0:
                    fr.file.close()
                    self._file = None
                    continue
                try:
                    got = fr.file.readinto(buf[n : n + want])
                except OSError as exc:
                    raise StorageError(f"cannot read {fr.name}: {exc.strerror}") from exc
                if not got:
                    self.warn(f"{fr.name} shrank while it was read; padded with zeros")
                    buf[n : n + want] = bytes(want)
                    got = want
                fr.left -= got
                n += got
                self.file_bytes += got
                continue
            piece = next(self._pieces, None)
            if piece is None:
                break
            if isinstance(piece, _FileRange):
                self._file = piece
            else:
                self._cur = memoryview(piece)
        self.bytes_out += n
        return n

    def close(self) -> None:
        if self._file is not None:
            self._file.file.close()
            self._file = None
        self._pieces.close()


# ---------------------------------------------------------------- backup


@dataclass(frozen=True, slots=True)
class BackupOptions:
    """Tunables of a backup; the defaults suit real data."""

    chunk_size: int = DEFAULT_CHUNK_SIZE
    avg_chunk_size: int = DEFAULT_CHUNK_SIZE
    workers: int = 2
    max_inflight: int = 4


def _check_sources(sources: Sequence[ArchiveSource]) -> None:
    if not sources:
        raise InvalidInput("no archives given (NAME.didx=DIR, NAME.fidx=IMAGE or NAME.blob=FILE)")
    seen: set[str] = set()
    for s in sources:
        if s.name in seen:
            raise InvalidInput(f"archive {s.name} given twice")
        seen.add(s.name)
        s.check()


def _cleanup_group_temp(store: Datastore, ns: Namespace, group: GroupId) -> None:
    """Remove what killed writers left in this group (we hold its lock)."""
    base = store.group_path(ns, group)
    with os.scandir(base) as it:
        stale = [e.path for e in it if is_stale_tmp(e.name)]
    for p in stale:
        if os.path.isdir(p) and not os.path.islink(p):
            shutil.rmtree(p, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(p)


#: called after each chunk cut with the archive bytes and the file bytes read so far
_ChunkCut = Callable[[int, int], None]


def _store_image(
    src: ArchiveSource,
    fixed: FixedChunker,
    sink: _ChunkSink,
    writer: SnapshotWriter,
    stats: ArchiveStats,
    cut: _ChunkCut,
    cancel: CancelToken | None,
) -> int:
    """Cut the image ``src`` into fixed chunks, add its index and fill ``stats``; returns file bytes read."""
    try:
        image = open(src.path, "rb", buffering=0)  # noqa: SIM115
    except OSError as exc:
        raise StorageError(f"cannot read {src.path}: {exc.strerror}") from exc
    with image:
        size = image.seek(0, os.SEEK_END)
        image.seek(0)
        read = 0
        for piece in fixed.cut_stream(image):
            check(cancel)
            sink.add(piece)
            read += len(piece)
            cut(read, read)
    entries = sink.finish()
    if sum(s for _, s in entries) != size:
        raise StorageError(f"{src.path} changed size while it was read")
    index = FixedIndex(tuple(d for d, _ in entries), size, fixed.chunk_size, ctime=writer.snap.time)
    writer.add_index(src.name, index)
    stats.size, stats.files = size, 1
    return size


def _store_tree(
    src: ArchiveSource,
    dynamic: DynamicChunker,
    sink: _ChunkSink,
    writer: SnapshotWriter,
    stats: ArchiveStats,
    cut: _ChunkCut,
    cancel: CancelToken | None,
    warn: Warn,
) -> int:
    """Archive the folder or file ``src`` as a tar stream cut into dynamic chunks, add its index
    and fill ``stats``; returns the file content bytes read."""
    tar = TarStream(src.path, warn=warn, stats=stats)
    read = 0
    try:
        for piece in dynamic.cut_stream(tar):
            check(cancel)
            sink.add(piece)
            read += len(piece)
            # file_bytes runs up to one chunker buffer ahead of ``read``
            cut(read, tar.file_bytes)
    finally:
        tar.close()
    ends: list[tuple[int, bytes]] = []
    offset = 0
    for digest, n in sink.finish():
        offset += n
        ends.append((offset, digest))
    writer.add_index(src.name, DynamicIndex(tuple(ends), ctime=writer.snap.time))
    stats.size = offset
    return tar.file_bytes


def run_backup(
    store: Datastore,
    ns: Namespace,
    group: GroupId,
    sources: Sequence[ArchiveSource],
    *,
    backup_time: int | None = None,
    owner: AuthId = ROOT_AUTH_ID,
    options: BackupOptions = BackupOptions(),
    warn: Warn = _ignore,
    cancel: CancelToken | None = None,
    clock: Callable[[], float] = time.time,
    progress: ProgressCallback | None = None,
) -> BackupReport:
    """Make one snapshot of ``sources`` in ``group`` of namespace ``ns`` (blocking).

    Refuses (before writing anything) missing sources, a namespace that does
    not exist, a group owned by someone else, and a backup time that is not
    newer than the group's newest snapshot. Takes the group lock for the whole
    backup. On success the snapshot is committed; on any error or
    cancellation nothing becomes visible and the temp folder is removed.

    ``progress`` is called in this (the calling) thread after each chunk and at
    the end of each archive; it should return quickly. An exception it raises
    aborts the backup like any other error.
    """
    started = time.monotonic()
    # totals of the archives finished so far, and of the one being read
    read_before = files_before = chunks = 0

    def report_progress(archive: str, read: int, files: int) -> None:
        if progress is not None:
            progress(BackupProgress(archive, read_before + read, files_before + files, chunks))

    def chunk_cut(archive: str, read: int, files: int) -> None:
        nonlocal chunks
        chunks += 1
        report_progress(archive, read, files)

    _check_sources(sources)
    fixed = FixedChunker(options.chunk_size)
    dynamic = DynamicChunker(options.avg_chunk_size)
    if not store.namespace_exists(ns):
        raise NotFound(
            f"namespace {ns!s} does not exist in datastore {store.name}; "
            f"create it first (asyncsync namespace create --store {store.name} {ns!s})"
        )
    snap = SnapshotId(group, int(clock()) if backup_time is None else backup_time)
    report = BackupReport(SnapshotRef(ns, snap))
    with store.group_lock(ns, group):
        current = store.ensure_group(ns, group, owner)
        if current != owner:
            raise PermissionDenied(f"backup group {group} is owned by {current}, not {owner}")
        existing = store.list_snapshots(ns, group)
        if existing and existing[-1].snapshot.time >= snap.time:
            last = existing[-1].snapshot
            if last.time == snap.time:
                raise AlreadyExists(f"snapshot {snap} already exists")
            raise Conflict(f"backup time {snap.time_str} is not newer than the last snapshot {last}")
        _cleanup_group_temp(store, ns, group)
        with (
            ThreadPoolExecutor(max(1, options.workers), thread_name_prefix="backup") as pool,
            store.begin_snapshot(ns, snap) as writer,
        ):
            for src in sources:
                check(cancel)
                stats = ArchiveStats(src.name)
                report.archives.append(stats)
                if src.kind == "blob":
                    try:
                        content = src.path.read_bytes()
                    except OSError as exc:
                        raise StorageError(f"cannot read {src.path}: {exc.strerror}") from exc
                    writer.add_blob(src.name, content)
                    stats.size = len(content)
                    stats.files = 1
                    report_progress(src.name, stats.size, stats.size)
                    read_before += stats.size
                    files_before += stats.size
                    continue
                sink = _ChunkSink(store.chunks, pool, stats, max(1, options.max_inflight))
                try:
                    cut = functools.partial(chunk_cut, src.name)
                    if src.kind == "fidx":
                        file_bytes = _store_image(src, fixed, sink, writer, stats, cut, cancel)
                    else:
                        file_bytes = _store_tree(src, dynamic, sink, writer, stats, cut, cancel, warn)
                    report_progress(src.name, stats.size, file_bytes)
                    read_before += stats.size
                    files_before += file_bytes
                except BaseException:
                    sink.abandon()
                    raise
            check(cancel)
            writer.commit()
    report.seconds = time.monotonic() - started
    return report


async def backup(
    store: Datastore,
    ns: Namespace,
    group: GroupId,
    sources: Sequence[ArchiveSource],
    *,
    backup_time: int | None = None,
    owner: AuthId = ROOT_AUTH_ID,
    options: BackupOptions = BackupOptions(),
    warn: Warn = _ignore,
    progress: ProgressCallback | None = None,
) -> BackupReport:
    """Async face of :func:`run_backup`: runs in a worker thread; cancelling stops it cleanly.

    ``progress`` is called on the event loop (in order, each call before this
    coroutine returns); it must not block.
    """
    on_progress: ProgressCallback | None = None
    if progress is not None:
        loop = asyncio.get_running_loop()
        cb = progress

        def on_progress(p: BackupProgress) -> None:
            # one small callback per chunk (MiBs of data): the loop's queue stays short
            loop.call_soon_threadsafe(cb, p)

    return await run_cancellable(
        lambda token: run_backup(
            store,
            ns,
            group,
            sources,
            backup_time=backup_time,
            owner=owner,
            options=options,
            warn=warn,
            cancel=token,
            progress=on_progress,
        )
    )


__all__ = [
    "ArchiveSource",
    "ArchiveStats",
    "BackupOptions",
    "BackupProgress",
    "BackupReport",
    "ProgressCallback",
    "TarStream",
    "backup",
    "run_backup",
]
