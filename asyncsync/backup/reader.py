"""Restore an archive of a snapshot, byte for byte, checking every chunk.

* ``.didx`` (a tar stream made by :mod:`asyncsync.backup.writer`): rebuilt as a
  folder with contents, modes, nanosecond mtimes, symbolic links and (as root)
  numeric owners. The folder is built under a hidden temp name beside the
  target and renamed into place at the end, so a failed restore leaves nothing
  half-made. Members that would land outside the target (absolute names,
  ``..``, a path through a symlink of the archive) and member types the writer
  never produces (hard links, devices) are refused.
* ``.fidx``: rebuilt as an image file (temp file, then rename).
* ``.blob``: decoded into a file.

Every chunk is decoded and hashed while it is read (:func:`blob.decode_verified`),
its size checked against the index, and the archive file against the
manifest's checksum. Chunks are read ahead by a small thread pool with a
bounded number in flight.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tarfile
import time
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..datastore import blob
from ..datastore.chunkstore import ChunkStore, tmp_name, write_all
from ..datastore.datastore import Datastore
from ..datastore.index import DynamicIndex, FixedIndex, decode_index
from ..datastore.manifest import FileEntry
from ..datastore.threads import CancelToken, check, run_cancellable
from ..errors import (
    AlreadyExists,
    CorruptBlob,
    CorruptIndex,
    IntegrityError,
    NotFound,
    StorageError,
)
from ..names import Namespace, SnapshotId, check_archive_name
from ..units import format_rate, format_size

_PAX_MTIME_RE = re.compile(r"(-?)(\d+)(?:\.(\d{1,9})\d*)?")


class UnsafeArchive(IntegrityError):
    """The archive holds a member that would escape the restore target, or an unsupported one."""


@dataclass(slots=True)
class RestoreReport:
    archive: str
    target: Path
    size: int = 0
    chunks: int = 0
    files: int = 0
    seconds: float = 0.0

    def summary(self) -> str:
        rate = self.size / self.seconds if self.seconds > 0 else 0.0
        what = f"{self.files} entries, " if self.archive.endswith(".didx") else ""
        return (
            f"restored {self.archive} to {self.target}: {what}{self.chunks} chunks,"
            f" {format_size(self.size)} in {self.seconds:.1f} s ({format_rate(rate)})"
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "archive": self.archive,
            "target": str(self.target),
            "size": self.size,
            "chunks": self.chunks,
            "files": self.files,
            "seconds": round(self.seconds, 3),
        }


def load_chunk(chunks: ChunkStore, digest: str, size: int) -> bytes:
    """Read, decode and verify one chunk; its content must be ``size`` bytes long."""
    try:
        encoded = chunks.read(digest)
    except NotFound:
        # referenced by an index, so its absence is damage, not a user error
        raise IntegrityError(f"chunk {digest} is missing from the chunk store") from None
    try:
        data = blob.decode_verified(encoded, digest)
    except CorruptBlob as exc:
        raise CorruptBlob(f"chunk {digest}: {exc}") from exc
    if len(data) != size:
        raise CorruptIndex(f"chunk {digest} holds {len(data)} bytes, the index says {size}")
    return data


class ChunkReader:
    """A verified byte stream over an index's chunks, read ahead by a thread pool.

    ``read``/``readinto`` make it usable as a file object (``tarfile`` stream
    mode). At most ``max_inflight`` chunks are decoded ahead of the reader.
    Call :meth:`close` (or use ``with``) so no read-ahead outlives it.
    """

    def __init__(
        self,
        chunks: ChunkStore,
        entries: Sequence[tuple[bytes, int]],
        pool: ThreadPoolExecutor,
        *,
        max_inflight: int = 4,
        cancel: CancelToken | None = None,
    ) -> None:
        self._chunks = chunks
        self._it = iter(entries)
        self._pool = pool
        self._max = max(1, max_inflight)
        self._cancel = cancel
        self._pending: deque[Future[bytes]] = deque()
        self._cur = memoryview(b"")
        self.chunks = 0
        self.bytes = 0

    def __repr__(self) -> str:
        return f"ChunkReader(chunks={self.chunks}, bytes={self.bytes})"

    def _fill(self) -> None:
        while len(self._pending) < self._max:
            entry = next(self._it, None)
            if entry is None:
                return
            self._pending.append(self._pool.submit(load_chunk, self._chunks, entry[0].hex(), entry[1]))

    def next_chunk(self) -> bytes | None:
        """The next whole chunk (ignoring partial reads), or ``None`` at the end."""
        self._fill()
        if not self._pending:
            return None
        check(self._cancel)
        data = self._pending.popleft().result()
        self._fill()
        self.chunks += 1
        self.bytes += len(data)
        return data

    def iter_chunks(self) -> Iterator[bytes]:
        while (data := self.next_chunk()) is not None:
            yield data

    def readinto(self, buf: memoryview | bytearray) -> int:
        view = memoryview(buf)
        n = 0
        while n < len(view):
            if not self._cur:
                data = self.next_chunk()
                if data is None:
                    break
                self._cur = memoryview(data)
                continue
            take = min(len(self._cur), len(view) - n)
            view[n : n + take] = self._cur[:take]
            self._cur = self._cur[take:]
            n += take
        return n

    def read(self, n: int = -1) -> bytes:
        if n < 0:
            parts = [bytes(self._cur)]
            self._cur = memoryview(b"")
            parts.extend(self.iter_chunks())
            return b"".join(parts)
        buf = bytearray(n)
        k = self.readinto(buf)
        del buf[k:]
        return bytes(buf)

    def close(self) -> None:
        for fut in self._pending:
            fut.cancel()
        for fut in self._pending:
            if not fut.cancelled():
                with contextlib.suppress(BaseException):
                    fut.result()
        self._pending.clear()

    def __enter__(self) -> ChunkReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------- tar extraction


def _safe_relpath(name: str) -> str | None:
    """The member name as a relative path inside the target; ``None`` for the root (``.``).

    Refuses absolute names, ``..`` components, empty names and NULs.
    """
    if name in (".", "./"):
        return None
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if not parts or name.startswith("/") or "\0" in name or any(p == ".." for p in parts):
        raise UnsafeArchive(f"archive member {name!r} would escape the restore target")
    return "/".join(parts)


def _mtime_ns(member: tarfile.TarInfo) -> int:
    value = member.pax_headers.get("mtime")
    if value is not None:
        m = _PAX_MTIME_RE.fullmatch(value)
        if m:
            ns = int(m.group(2)) * 1_000_000_000 + int((m.group(3) or "").ljust(9, "0"))
            return -ns if m.group(1) else ns
    return int(member.mtime) * 1_000_000_000


@dataclass(slots=True)
class _DirMeta:
    path: Path
    mode: int
    mtime_ns: int
    uid: int
    gid: int


def _extract(tf: tarfile.TarFile, root: Path, report: RestoreReport, cancel: CancelToken | None) -> None:
    as_root = os.geteuid() == 0
    root_real = os.path.realpath(root)
    dirs: list[_DirMeta] = []
    for member in tf:
        check(cancel)
        rel = _safe_relpath(member.name)
        dest = root if rel is None else root / rel
        if rel is not None:
            # A symlink restored earlier must not redirect a later member outside the target.
            parent_real = os.path.realpath(dest.parent)
            if parent_real != root_real and not parent_real.startswith(root_real + os.sep):
                raise UnsafeArchive(f"archive member {member.name!r} would escape the restore target")
        mtime = _mtime_ns(member)
        report.files += 1
        try:
            if member.isdir():
                if rel is not None:
                    if dest.is_symlink() or (dest.exists() and not dest.is_dir()):
                        raise UnsafeArchive(f"archive member {member.name!r} collides with another")
                    dest.mkdir(mode=0o700, exist_ok=True)
                dirs.append(_DirMeta(dest, member.mode, mtime, member.uid, member.gid))
            elif member.isreg():
                if rel is None:
                    raise UnsafeArchive("archive root is not a folder")
                src = tf.extractfile(member)
                if src is None:
                    raise CorruptIndex(f"cannot read archive member {member.name!r}")
                fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
                try:
                    with open(fd, "wb", closefd=False) as out:
                        shutil.copyfileobj(src, out, 1024 * 1024)
                    if as_root:
                        os.fchown(fd, member.uid, member.gid)
                    os.fchmod(fd, member.mode & 0o7777)
                    os.utime(fd, ns=(mtime, mtime))
                finally:
                    os.close(fd)
            elif member.issym():
                if rel is None:
                    raise UnsafeArchive("archive root is not a folder")
                os.symlink(member.linkname, dest)
                if as_root:
                    os.lchown(dest, member.uid, member.gid)
                os.utime(dest, ns=(mtime, mtime), follow_symlinks=False)
            else:
                raise UnsafeArchive(f"archive member {member.name!r} has an unsupported type")
        except FileExistsError:
            raise UnsafeArchive(f"archive member {member.name!r} appears twice") from None
        except OSError as exc:
            raise StorageError(f"cannot restore {member.name!r}: {exc.strerror}") from exc
    # Folders last, deepest first: writing into them changed their mtimes, and a
    # read-only folder would have refused its contents.
    for d in sorted(dirs, key=lambda d: len(d.path.parts), reverse=True):
        if as_root:
            os.lchown(d.path, d.uid, d.gid)
        os.chmod(d.path, d.mode & 0o7777)
        os.utime(d.path, ns=(d.mtime_ns, d.mtime_ns))


# ---------------------------------------------------------------- restore


def _archive_entry(
    store: Datastore, ns: Namespace, snap: SnapshotId, archive: str
) -> tuple[FileEntry, bytes]:
    check_archive_name(archive)
    manifest = store.load_manifest(ns, snap)
    entry = manifest.file(archive)
    if entry is None:
        names = ", ".join(f.filename for f in manifest.files) or "none"
        raise NotFound(f"snapshot {snap} has no archive {archive} (it has: {names})")
    raw = store.read_file(ns, snap, archive)
    if blob.digest_of(raw) != entry.csum:
        raise IntegrityError(f"archive {archive} of snapshot {snap} does not match its manifest checksum")
    return entry, raw


def _check_target(target: Path, *, folder: bool) -> None:
    if folder:
        if target.is_symlink() or (target.exists() and (not target.is_dir() or any(target.iterdir()))):
            raise AlreadyExists(f"restore target {target} exists and is not an empty folder")
    elif target.exists() or target.is_symlink():
        raise AlreadyExists(f"restore target {target} already exists")
    if not target.parent.is_dir():
        raise NotFound(f"folder {target.parent} does not exist")


def run_restore(
    store: Datastore,
    ns: Namespace,
    snap: SnapshotId,
    archive: str,
    target: Path,
    *,
    workers: int = 2,
    max_inflight: int = 4,
    cancel: CancelToken | None = None,
) -> RestoreReport:
    """Restore ``archive`` of ``snap`` to ``target`` (blocking).

    ``target`` must not exist (a folder target may also be an empty folder).
    Raises :class:`IntegrityError` subclasses for damaged data,
    :class:`UnsafeArchive` for hostile members; the target is then left as it was.
    """
    started = time.monotonic()
    entry, raw = _archive_entry(store, ns, snap, archive)
    kind = archive.rsplit(".", 1)[1]
    _check_target(target, folder=kind == "didx")
    report = RestoreReport(archive, target)
    tmp = target.with_name(tmp_name(target.name or "restore"))
    if kind == "blob":
        data = blob.decode(raw)
        if len(data) != entry.size:
            raise IntegrityError(f"blob {archive} holds {len(data)} bytes, the manifest says {entry.size}")
        try:
            tmp.write_bytes(data)
            os.replace(tmp, target)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise StorageError(f"cannot write {target}: {exc.strerror}") from exc
        report.size = len(data)
        report.seconds = time.monotonic() - started
        return report

    index = decode_index(raw)
    if index.total_size != entry.size:
        raise CorruptIndex(f"index {archive} covers {index.total_size} bytes, the manifest says {entry.size}")
    if kind == "fidx" and not isinstance(index, FixedIndex):
        raise CorruptIndex(f"{archive} is not a fixed index")
    if kind == "didx" and not isinstance(index, DynamicIndex):
        raise CorruptIndex(f"{archive} is not a dynamic index")
    entries = list(index.chunk_sizes())

    with ThreadPoolExecutor(max(1, workers), thread_name_prefix="restore") as pool:
        reader = ChunkReader(store.chunks, entries, pool, max_inflight=max_inflight, cancel=cancel)
        try:
            if kind == "fidx":
                _restore_image(reader, tmp, target)
            else:
                _restore_tree(reader, tmp, target, report, cancel)
        except BaseException:
            reader.close()
            if tmp.is_dir() and not tmp.is_symlink():
                _rmtree_writable(tmp)
            else:
                tmp.unlink(missing_ok=True)
            raise
        reader.close()
    report.size = reader.bytes
    report.chunks = reader.chunks
    report.seconds = time.monotonic() - started
    return report


def _restore_image(reader: ChunkReader, tmp: Path, target: Path) -> None:
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            write_all(fd, reader.iter_chunks())
        finally:
            os.close(fd)
        os.replace(tmp, target)
    except OSError as exc:
        raise StorageError(f"cannot write {target}: {exc.strerror}") from exc


def _restore_tree(
    reader: ChunkReader, tmp: Path, target: Path, report: RestoreReport, cancel: CancelToken | None
) -> None:
    tmp.mkdir(mode=0o700)
    try:
        with tarfile.open(fileobj=reader, mode="r|", encoding="utf-8", errors="surrogateescape") as tf:  # type: ignore[call-overload]
            _extract(tf, tmp, report, cancel)
    except tarfile.TarError as exc:
        raise CorruptIndex(f"archive {report.archive} is not a valid tar stream: {exc}") from exc
    # Read (and so verify) the chunks after the end-of-archive marker too.
    while reader.next_chunk() is not None:
        pass
    try:
        os.replace(tmp, target)
    except OSError as exc:
        raise StorageError(f"cannot move restored folder to {target}: {exc.strerror}") from exc


def _rmtree_writable(path: Path) -> None:
    """Remove a partly restored tree, even where restored modes made folders read-only."""
    for dirpath, dirnames, _ in os.walk(path):
        for d in dirnames:
            p = os.path.join(dirpath, d)
            if not os.path.islink(p):
                with contextlib.suppress(OSError):
                    os.chmod(p, 0o700)
    shutil.rmtree(path, ignore_errors=True)


async def restore(
    store: Datastore, ns: Namespace, snap: SnapshotId, archive: str, target: Path, *, workers: int = 2
) -> RestoreReport:
    """Async face of :func:`run_restore` (worker thread; cancelling stops it and cleans up)."""
    return await run_cancellable(
        lambda token: run_restore(store, ns, snap, archive, target, workers=workers, cancel=token)
    )


def read_archive_bytes(store: Datastore, ns: Namespace, snap: SnapshotId, archive: str) -> bytes:
    """Whole content of a (small) archive in memory: tests and ``demo``."""
    entry, raw = _archive_entry(store, ns, snap, archive)
    if archive.endswith(".blob"):
        return blob.decode(raw)
    index = decode_index(raw)
    if index.total_size != entry.size:
        raise CorruptIndex(f"index {archive} covers {index.total_size} bytes, the manifest says {entry.size}")
    with ThreadPoolExecutor(1) as pool, ChunkReader(store.chunks, list(index.chunk_sizes()), pool) as r:
        return r.read()


__all__ = [
    "ChunkReader",
    "RestoreReport",
    "UnsafeArchive",
    "load_chunk",
    "read_archive_bytes",
    "restore",
    "run_restore",
]
