"""Content-addressed chunk store: ``<store>/.chunks/<first 4 hex>/<64 hex>``.

Every method is blocking (file system I/O, hashing): async callers run them in
a worker thread. The store is safe for concurrent writers (threads and
processes): a chunk is written to an unnamed file in its prefix folder
(``O_TMPFILE``) and linked into place, or, where that is not supported, to a
temporary file in ``.chunks/.tmp/`` (same file system) renamed into place; an
existing chunk of a plausible size is never rewritten, only touched (its mtime
is what garbage collection's grace period looks at).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
from collections.abc import Iterable, Iterator, Sequence
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import InvalidInput, NotFound, StorageError
from ..names import check_digest
from . import blob

TMP_PREFIX = ".tmp."
#: folder (under ``.chunks``) of the temp files of chunk writers: a pull's start-up clean-up
#: scans only this folder instead of every prefix folder (O(temp files), not O(chunks))
TMP_DIR = ".tmp"


class SyncLevel(StrEnum):
    """How hard writes are pushed to stable storage."""

    NONE = "none"
    FILESYSTEM = "filesystem"
    FILE = "file"

    @classmethod
    def parse(cls, value: str) -> SyncLevel:
        try:
            return cls(value)
        except ValueError:
            raise InvalidInput(
                f"invalid sync-level {value!r} (none, filesystem or file)", field="sync-level"
            ) from None


if TYPE_CHECKING:
    import ctypes

#: libc, loaded on first use (ctypes is imported only then: every pull imports this module)
_libc: ctypes.CDLL | None = None


def _load_libc() -> ctypes.CDLL:
    """The process's own libc (``dlopen(NULL)``: no ``ctypes.util.find_library``, 18 ms to import)."""
    global _libc
    if _libc is None:
        import ctypes

        _libc = ctypes.CDLL(None, use_errno=True)
    return _libc


@functools.cache
def _fallocate() -> Any:
    """libc's 64-bit-offset ``fallocate``, typed; None if libc has none. glibc has both names
    (plain ``fallocate`` takes a 32-bit ``off_t`` on 32-bit builds); musl has only
    ``fallocate``, with a 64-bit ``off_t`` everywhere."""
    import ctypes

    libc = _load_libc()
    fn = getattr(libc, "fallocate64", None) or getattr(libc, "fallocate", None)
    if fn is not None:
        fn.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
        fn.restype = ctypes.c_int
    return fn


def syncfs(path: Path) -> None:
    """Flush the file system holding ``path`` (``syncfs(2)``, else ``sync(2)``)."""
    libc = _load_libc()
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if getattr(libc, "syncfs", None) is None or libc.syncfs(fd) != 0:
            os.sync()
    finally:
        os.close(fd)


#: ``FALLOC_FL_KEEP_SIZE`` (linux/falloc.h): allocate the blocks, leave the file's size alone
_FALLOC_FL_KEEP_SIZE = 1
#: errnos of a reservation that mean "the disk is full": the writes would fail too
_FULL = (errno.ENOSPC, errno.EDQUOT)


def reserve_blocks(fd: int, length: int) -> bool:
    """Allocate ``length`` bytes of blocks for the file open as ``fd``, its size unchanged
    (``fallocate(2)`` with ``FALLOC_FL_KEEP_SIZE``). Blocking.

    True if done; False if this system cannot (no ``fallocate`` in libc, or the file
    system refuses: ``EOPNOTSUPP`` and the like). Never emulated by writing (as
    ``posix_fallocate`` may). Raises :class:`OSError` for ``ENOSPC`` / ``EDQUOT``.
    """
    fallocate = _fallocate()
    if fallocate is None:
        return False
    if fallocate(fd, _FALLOC_FL_KEEP_SIZE, 0, length) == 0:
        return True
    import ctypes

    err = ctypes.get_errno()
    if err in _FULL:
        raise OSError(err, os.strerror(err))
    return False


def fsync_dir(path: str | Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


#: the most one ``write`` call hands the kernel. Why: ext4 on Linux 6.x sizes the page-cache
#: folios of a buffered write by the write's length, and on this VM (whose free memory the host
#: takes back) filling large folios costs several times more system time than small ones. In
#: interleaved 2 GiB cold pulls the client spent 4.4-5.9 s of system time in 512 KiB writes
#: (the received piece whole), 1.6-2.6 s in 64 KiB writes (128 KiB: 2.6-3.5 s); 4 MiB writes
#: had cost 3.6-4.7 s per GiB (session 3).
#: See docs/performance.md, "Page-cache folios" and "Session 8".
WRITE_PIECE = 64 * 1024


def write_all(fd: int, parts: Iterable[bytes | memoryview], *, fsync: bool = False) -> None:
    """Write ``parts`` to ``fd`` in order, each whole (``os.write`` may write less than
    asked), in calls of at most :data:`WRITE_PIECE` bytes, then ``fsync`` it if asked.
    The caller owns (and closes) ``fd``."""
    for part in parts:
        view = memoryview(part)
        while view:
            view = view[os.write(fd, view[:WRITE_PIECE]) :]
    if fsync:
        os.fsync(fd)


#: errnos of an ``O_TMPFILE`` open that mean "not supported here" (the store then uses named temps)
_NO_TMPFILE = (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL)
#: errnos of linking an unnamed file that mean "refused here" (likewise)
_NO_LINK = (errno.EXDEV, errno.EOPNOTSUPP, errno.EPERM)


def _link_unnamed(fd: int, path: str) -> None:
    """Give the unnamed (``O_TMPFILE``) file open as ``fd`` the name ``path``; errors as ``linkat``.

    linkat(…, AT_SYMLINK_FOLLOW) is what links an unnamed file; Python only calls linkat
    (not link, which would link the /proc symlink itself) when a dir fd is given: the
    source path is absolute, so the kernel ignores that fd.
    """
    os.link(f"/proc/self/fd/{fd}", path, src_dir_fd=fd, follow_symlinks=True)


def _touch_if_present(final: str) -> bool:
    """True (and the chunk's mtime set to now, for gc's grace period) if a chunk of a
    plausible size is at ``final``; False if there is none, or a damaged one to rewrite."""
    try:
        if blob.encoded_size_ok(os.stat(final).st_size):
            os.utime(final)
            return True
    except FileNotFoundError:
        pass
    return False


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def tmp_name(stem: str) -> str:
    """A temp-file name that records the writing process (see :func:`is_stale_tmp`)."""
    # os.urandom, as secrets.token_hex uses (importing secrets costs ~8 ms per process)
    return f"{TMP_PREFIX}{os.getpid()}.{os.urandom(6).hex()}.{stem}"


def is_stale_tmp(name: str) -> bool:
    """True for a temp name whose writing process no longer runs."""
    if not name.startswith(TMP_PREFIX):
        return False
    try:
        pid = int(name[len(TMP_PREFIX) :].split(".", 1)[0])
    except ValueError:
        return True
    return pid != os.getpid() and not _pid_alive(pid)


class ChunkStore:
    """The ``.chunks`` folder of one datastore."""

    def __init__(self, root: Path, sync_level: SyncLevel = SyncLevel.FILESYSTEM) -> None:
        self.root = root
        self.base = root / ".chunks"
        self.sync_level = sync_level
        self.tmp_dir = self.base / TMP_DIR
        self._base_str = str(self.base)
        self._prefixes: set[str] = set()
        #: unnamed temp files (O_TMPFILE + link) work here; cleared at the first sign they do not
        self._tmpfile_ok = hasattr(os, "O_TMPFILE")
        #: piecewise blob files get their blocks reserved (:func:`reserve_blocks`); cleared
        #: at the first refusal
        self._reserve_ok = True

    def __repr__(self) -> str:
        return f"ChunkStore({str(self.base)!r}, sync_level={self.sync_level.value!r})"

    def path(self, digest: str) -> Path:
        check_digest(digest)
        return self.base / digest[:4] / digest

    def create(self) -> None:
        self.base.mkdir(parents=True, exist_ok=True)

    def exists(self, digest: str) -> bool:
        try:
            return blob.encoded_size_ok(self.path(digest).stat().st_size)
        except FileNotFoundError:
            return False

    def missing(self, digests: Iterable[str]) -> list[str]:
        """Those of ``digests`` (deduplicated, in first-seen order) that the store lacks."""
        seen: set[str] = set()
        out = []
        for d in digests:
            if d not in seen:
                seen.add(d)
                if not self.exists(d):
                    out.append(d)
        return out

    def touch(self, digest: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.utime(self.path(digest))

    def read(self, digest: str) -> bytes:
        """The chunk's blob bytes; :class:`NotFound` if absent."""
        try:
            return self.path(digest).read_bytes()
        except FileNotFoundError:
            raise NotFound(f"chunk {digest} not found") from None
        except OSError as exc:
            raise StorageError(f"cannot read chunk {digest}: {exc.strerror}") from exc

    def read_data(self, digest: str) -> bytes:
        """The chunk's content, decoded and checked against its digest."""
        return blob.decode_verified(self.read(digest), digest)

    def insert(self, digest: str, encoded: bytes | memoryview) -> bool:
        """Store an already verified blob; returns False if the chunk was already present.

        The caller guarantees that ``encoded`` decodes to content with ``digest``.
        """
        return self.insert_parts(digest, [encoded])

    def insert_parts(
        self, digest: str, parts: Sequence[bytes | memoryview], *, replace: bool = False
    ) -> bool:
        """As :meth:`insert`, the blob given as pieces in order (written without joining them).

        With ``replace`` the blob is written even if a file is there already and
        atomically takes its place (returns True): for a caller that has just
        verified the blob and does not trust what the store holds (a pull
        fetching a chunk whose local copy it may not reuse). It also saves the
        ``stat`` for a chunk the caller knows to be missing.
        """
        # plain strings, not Path objects: with small chunks pathlib was ~15 % of the
        # writer threads' time holding the GIL
        check_digest(digest)
        prefix = digest[:4]
        folder = f"{self._base_str}/{prefix}"
        final = f"{folder}/{digest}"
        if not replace and _touch_if_present(final):
            return False
        self._ensure_prefix(prefix, folder)
        if self._tmpfile_ok:
            linked = self._insert_anonymous(final, folder, digest, parts, replace=replace)
            if linked is not None:
                if linked and self.sync_level is SyncLevel.FILE:
                    fsync_dir(folder)
                return linked
        tmp = self._temp_path(digest)
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                write_all(fd, parts, fsync=self.sync_level is SyncLevel.FILE)
            finally:
                os.close(fd)
            os.replace(tmp, final)
        except BaseException as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            if isinstance(exc, OSError):
                raise StorageError(f"cannot write chunk {digest}: {exc.strerror}") from exc
            raise
        if self.sync_level is SyncLevel.FILE:
            fsync_dir(folder)
        return True

    def _ensure_prefix(self, prefix: str, folder: str) -> None:
        """Create the prefix folder ``folder`` unless this store already made or saw it."""
        if prefix not in self._prefixes:
            try:
                os.mkdir(folder)
            except FileExistsError:
                pass
            except FileNotFoundError:  # .chunks itself is missing
                os.makedirs(folder, exist_ok=True)
            self._prefixes.add(prefix)

    def _temp_path(self, digest: str) -> str:
        """A fresh temp name for ``digest`` in ``.chunks/.tmp/`` (the folder made if needed)."""
        if TMP_DIR not in self._prefixes:
            self.tmp_dir.mkdir(parents=True, exist_ok=True)
            self._prefixes.add(TMP_DIR)
        return f"{self.tmp_dir}/{tmp_name(digest)}"

    def open_blob_writer(self, digest: str, length: int = 0) -> ChunkFileWriter:
        """A file for ``digest``'s blob, written piece by piece, invisible until committed.

        ``length``: the blob's whole length, if known. The file's blocks are then
        reserved when it is opened (:func:`reserve_blocks`; skipped where the file
        system cannot): ext4 allocates the file in one go instead of reserving
        delayed blocks on every write (docs/performance.md, session 11). A disk
        too full for ``length`` fails there, before any byte is written.

        For a caller that receives a blob in pieces and verifies it as they pass
        (a pull's threaded transfer): :meth:`ChunkFileWriter.write` each piece,
        then :meth:`ChunkFileWriter.commit` once the whole blob is verified, which
        puts it in place *replacing* any file there (as :meth:`insert_parts` with
        ``replace=True``), or :meth:`ChunkFileWriter.discard` to drop it. Blocking;
        nothing is opened before the first ``write``. Errors: :class:`StorageError`.
        """
        check_digest(digest)
        return ChunkFileWriter(self, digest, length)

    def _insert_anonymous(
        self,
        final: str,
        folder: str,
        digest: str,
        parts: Sequence[bytes | memoryview],
        *,
        replace: bool = False,
    ) -> bool | None:
        """Write the blob as an unnamed file in ``final``'s folder (``O_TMPFILE``), then link it.

        Why: a named temp file in ``.tmp/`` renamed into a prefix folder takes the
        file system's rename lock and the ``.tmp`` folder's lock for every chunk;
        with small chunks writer threads spent most of their CPU spinning on
        them. An unnamed file needs neither, and a crash or cancellation leaves
        nothing behind (the inode disappears with its descriptor).
        Returns True if linked, False if a plausible chunk is already there, None
        when this path cannot be used (no ``O_TMPFILE`` or ``/proc``; the store
        then uses temp files from now on) or an implausible file must be replaced.
        With ``replace``, a file already there is always replaced: None (the caller
        writes it through a named temp file and a rename, which can replace).
        """
        try:
            fd = os.open(folder, os.O_TMPFILE | os.O_WRONLY, 0o644)
        except OSError as exc:
            if exc.errno in _NO_TMPFILE:
                self._tmpfile_ok = False
                return None
            raise StorageError(f"cannot write chunk {digest}: {exc.strerror}") from exc
        try:
            write_all(fd, parts, fsync=self.sync_level is SyncLevel.FILE)
            _link_unnamed(fd, final)
        except FileExistsError:
            if replace:  # rare: an untrusted copy is there; link cannot overwrite, rename can
                return None
            # a concurrent writer was faster; a damaged file there is replaced by the temp-file path
            try:
                if not blob.encoded_size_ok(os.stat(final).st_size):
                    return None
                os.utime(final)  # as for a chunk found present before the write
            except FileNotFoundError:
                return None
            return False
        except FileNotFoundError:
            if not os.path.isdir("/proc/self/fd"):
                self._tmpfile_ok = False
                return None
            raise StorageError(f"cannot write chunk {digest}: folder vanished") from None
        except OSError as exc:
            if exc.errno in _NO_LINK:
                self._tmpfile_ok = False
                return None
            raise StorageError(f"cannot write chunk {digest}: {exc.strerror}") from exc
        finally:
            os.close(fd)
        return True

    def insert_data(self, data: bytes | memoryview, *, compress: bool = True) -> tuple[str, bool]:
        """Hash, encode and store ``data``; returns (digest, newly written)."""
        digest = blob.digest_of(data)
        # checked before encoding: a chunk already stored is not compressed again
        if _touch_if_present(str(self.path(digest))):
            return digest, False
        return digest, self.insert(digest, blob.encode(data, compress=compress))

    def iter_digests(self) -> Iterator[tuple[str, os.stat_result]]:
        """Every stored chunk with its stat; temp files are skipped."""
        if not self.base.is_dir():
            return
        with os.scandir(self.base) as prefixes:
            for p in prefixes:
                if not p.is_dir() or len(p.name) != 4 or p.name.startswith("."):
                    continue
                with os.scandir(p.path) as entries:
                    for e in entries:
                        if len(e.name) == 64 and not e.name.startswith("."):
                            yield e.name, e.stat()

    def remove(self, digest: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path(digest).unlink()

    def quarantine(self, digest: str) -> Path:
        """Rename a damaged chunk aside (``<digest>.bad``, ``.bad.1``...) and return its new path."""
        src = self.path(digest)
        n = 0
        while True:
            dst = src.with_name(f"{digest}.bad" + (f".{n}" if n else ""))
            if not dst.exists():
                break
            n += 1
        os.replace(src, dst)
        return dst

    def cleanup_temp(self, *, full: bool = True) -> int:
        """Remove temp files left by writers that no longer run; returns how many.

        Writers put temp files in ``.chunks/.tmp/`` only; that folder is always
        cleaned. ``full`` also scans every prefix folder (where older versions
        put them): O(chunks), for garbage collection; a pull passes False.
        """
        removed = 0
        if not self.base.is_dir():
            return 0
        try:
            with os.scandir(self.tmp_dir) as entries:
                for e in entries:
                    if is_stale_tmp(e.name):
                        with contextlib.suppress(FileNotFoundError):
                            os.unlink(e.path)
                            removed += 1
        except FileNotFoundError:
            pass
        if not full:
            return removed
        with os.scandir(self.base) as prefixes:
            for p in prefixes:
                if not p.is_dir() or p.name == TMP_DIR:
                    continue
                with os.scandir(p.path) as entries:
                    for e in entries:
                        if is_stale_tmp(e.name):
                            with contextlib.suppress(FileNotFoundError):
                                os.unlink(e.path)
                                removed += 1
        return removed


class ChunkFileWriter:
    """One chunk blob being written by :meth:`ChunkStore.open_blob_writer`; not thread-safe.

    Where the bytes go: an unnamed file (``O_TMPFILE``) in the chunk's prefix
    folder while the store's unnamed files work, else a named temp file in
    ``.chunks/.tmp/`` (the same fallback as :meth:`ChunkStore.insert_parts`).
    Neither is visible under the chunk's name before :meth:`commit`; an unnamed
    file vanishes with its descriptor (discard, crash), a named temp is unlinked
    by :meth:`discard` and, after a crash, by :meth:`ChunkStore.cleanup_temp`.

    :meth:`commit` links the unnamed file into place; ``linkat`` cannot replace
    a file, so when one is there already (an untrusted copy the pull was meant to
    replace) the file is linked under a temp name in ``.tmp/`` and renamed over
    it. Where linking an unnamed file is refused (no ``/proc``, ``EPERM``...),
    its bytes are copied into a named temp which is renamed, and the store uses
    named temps from then on. With ``SyncLevel.FILE`` the file is fsynced before
    it is linked and the prefix folder after.
    """

    __slots__ = ("_fd", "_folder", "_store", "_tmp", "digest", "expected", "final", "size")

    def __init__(self, store: ChunkStore, digest: str, expected: int = 0) -> None:
        self._store = store
        self.digest = digest
        #: the blob's announced length, whose blocks are reserved at the open (0: unknown)
        self.expected = expected
        self._folder = f"{store._base_str}/{digest[:4]}"
        self.final = f"{self._folder}/{digest}"
        self._fd = -1
        #: the named temp file in use (fallback path), None for an unnamed file
        self._tmp: str | None = None
        #: bytes written so far
        self.size = 0

    def __repr__(self) -> str:
        where = "closed" if self._fd < 0 else ("unnamed" if self._tmp is None else "named temp")
        return f"ChunkFileWriter({self.digest[:12]}..., {self.size} bytes, {where})"

    def _error(self, exc: OSError) -> StorageError:
        return StorageError(f"cannot write chunk {self.digest}: {exc.strerror or exc}")

    def _open(self) -> None:
        store = self._store
        store._ensure_prefix(self.digest[:4], self._folder)
        if store._tmpfile_ok:
            try:
                self._fd = os.open(self._folder, os.O_TMPFILE | os.O_RDWR, 0o644)
            except OSError as exc:
                if exc.errno not in _NO_TMPFILE:
                    raise self._error(exc) from exc
                store._tmpfile_ok = False
        if self._fd < 0:
            self._open_named()
        if self.expected > 0 and store._reserve_ok:
            try:
                store._reserve_ok = reserve_blocks(self._fd, self.expected)
            except OSError as exc:
                self.discard()  # nothing written yet: the file goes now, not at the caller's abort
                raise self._error(exc) from exc

    def _open_named(self) -> None:
        try:
            tmp = self._store._temp_path(self.digest)
            self._fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except OSError as exc:
            raise self._error(exc) from exc
        self._tmp = tmp

    def write(self, piece: bytes | memoryview) -> None:
        """Append ``piece`` (opening the file on the first call)."""
        if self._fd < 0:
            self._open()
        try:
            write_all(self._fd, [piece])
        except OSError as exc:
            raise self._error(exc) from exc
        self.size += len(piece)

    def commit(self) -> None:
        """Make the written blob the chunk's file, replacing any file there; then closed.

        The caller has verified every byte. On an error nothing new is visible
        under the chunk's name and the writer is discarded.
        """
        if self._fd < 0:
            self._open()  # an empty blob: still a file (never valid, but not this layer's call)
        fsync = self._store.sync_level is SyncLevel.FILE
        try:
            if self.size < self.expected:  # fewer bytes than reserved: give the rest back
                os.ftruncate(self._fd, self.size)
            if fsync:
                os.fsync(self._fd)
            if self._tmp is None:
                self._link_unnamed()
            if self._tmp is not None:
                os.replace(self._tmp, self.final)
                self._tmp = None
            if fsync:
                fsync_dir(self._folder)
        except OSError as exc:
            raise self._error(exc) from exc
        finally:
            self.discard()

    def _link_unnamed(self) -> None:
        """Link the unnamed file at its final name, or under a temp name (``self._tmp``) to rename."""
        try:
            _link_unnamed(self._fd, self.final)
            return
        except FileExistsError:
            pass  # an (untrusted) file is there: link aside, then rename over it
        except FileNotFoundError:
            if os.path.isdir("/proc/self/fd"):
                raise StorageError(f"cannot write chunk {self.digest}: folder vanished") from None
            self._copy_to_named()
            return
        except OSError as exc:
            if exc.errno not in _NO_LINK:
                raise
            self._copy_to_named()
            return
        tmp = self._store._temp_path(self.digest)
        _link_unnamed(self._fd, tmp)
        self._tmp = tmp

    def _copy_to_named(self) -> None:
        """Linking unnamed files is refused here: copy this one into a named temp (rare)."""
        self._store._tmpfile_ok = False
        src = self._fd
        self._fd = -1
        try:
            self._open_named()
            offset = 0
            while offset < self.size:
                data = os.pread(src, min(WRITE_PIECE, self.size - offset), offset)
                if not data:
                    raise StorageError(f"cannot write chunk {self.digest}: temp file shrank")
                write_all(self._fd, [data])
                offset += len(data)
            if self._store.sync_level is SyncLevel.FILE:
                os.fsync(self._fd)
        finally:
            os.close(src)

    def discard(self) -> None:
        """Close and drop what was written (a named temp is unlinked). Idempotent, never raises."""
        fd, self._fd = self._fd, -1
        if fd >= 0:
            with contextlib.suppress(OSError):
                os.close(fd)
        tmp, self._tmp = self._tmp, None
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


__all__ = [
    "TMP_DIR",
    "ChunkFileWriter",
    "ChunkStore",
    "SyncLevel",
    "fsync_dir",
    "is_stale_tmp",
    "reserve_blocks",
    "syncfs",
    "tmp_name",
    "write_all",
]
