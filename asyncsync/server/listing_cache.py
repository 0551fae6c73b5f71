"""A cache of snapshot listing answers, invalidated by inotify (Linux), never stale.

A scheduled sync job mostly finds nothing new, yet each of its pulls asks for the
namespace's snapshot listing, and building it reads every group and snapshot folder
of the namespace (≈ 65 ms for 5,000 snapshots). :class:`ListingCache` keeps the
answer bodies, keyed by (resolved datastore root, namespace, group, owner filter),
and serves a repeated listing of an unchanged namespace from memory.

**What is guaranteed.** A body is served from the cache only if no directory the
listing read has changed since the moment that directory was watched, which is
before it was read. The argument (docs/architecture.md, "Snapshot listing cache"):

* the builder adds an inotify watch on every directory it reads (the namespace
  folder, each backup-type folder, each group folder, each snapshot folder)
  *before* it scans the directory or reads a file in it; a watch on a directory
  reports changes of the files in it too (a manifest rewritten in place, an owner
  file, a ``.protected`` marker) and of its own entry (removed, renamed);
* the kernel queues an inotify event before the changing system call returns;
  every watch maps to its datastore root, and any event of a watch bumps that
  root's *generation* (a queue overflow, or an event of a watch not in the map,
  bumps every generation);
* each request first drains the queue (on the event-loop thread, without
  blocking); a miss reads the generation ``gen0`` before building, drains again
  after the build, and stores the body only if the generation is still ``gen0``.
  So a change after a watch was added is either seen by that drain (not stored)
  or bumps the generation later (the entry no longer matches); a change before
  the watch was added is in what the builder read;
* the namespace folder's own path (its ancestors are not watched) is checked on
  every hit: the entry is served only if the path still names the same directory
  (device and inode) as the one watched when it was built.

**Never wrong, only uncached.** Without inotify (not Linux, ``inotify_simple``
missing, no instance to be had), on a file system not known to be local (NFS,
SMB, FUSE, overlayfs: inotify does not see other hosts' changes), when adding a
watch fails (ENOSPC, EACCES, ...), or when the watch budget is spent, the listing is
built and served exactly as without a cache, and not stored.

What inotify cannot see, and the cache therefore cannot either (none of it is done
by asyncsync; docs/architecture.md): a file changed through a hard link that lives
outside the watched folders, a write through a shared memory mapping, a file
system mounted *inside* the datastore's tree that is not local.

Threads: :meth:`ListingCache.get` runs on the event loop; the lookup and the build
run in one worker thread (as the listing did before); the inotify file descriptor
is read only on the event-loop thread (per request and by a loop reader, so the
kernel queue does not overflow on a busy server). :meth:`ListingCache.close` (app
cleanup) removes the reader and closes the descriptor.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import logging
import os
import struct
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Protocol, TypeVar, cast

from .. import protocol

log = logging.getLogger("asyncsync.server")

# inotify(7) event bits
IN_MODIFY: Final = 0x00000002
IN_ATTRIB: Final = 0x00000004
IN_CLOSE_WRITE: Final = 0x00000008
IN_MOVED_FROM: Final = 0x00000040
IN_MOVED_TO: Final = 0x00000080
IN_CREATE: Final = 0x00000100
IN_DELETE: Final = 0x00000200
IN_DELETE_SELF: Final = 0x00000400
IN_MOVE_SELF: Final = 0x00000800
IN_Q_OVERFLOW: Final = 0x00004000
IN_IGNORED: Final = 0x00008000
IN_ONLYDIR: Final = 0x01000000

#: what a watch reports: every change of a directory's entries, of the files in it and of
#: itself; not IN_ACCESS / IN_OPEN / IN_CLOSE_NOWRITE, so listings and readers never
#: invalidate a listing
WATCH_MASK: Final = (
    IN_CREATE
    | IN_DELETE
    | IN_MOVED_FROM
    | IN_MOVED_TO
    | IN_MODIFY
    | IN_CLOSE_WRITE
    | IN_ATTRIB
    | IN_DELETE_SELF
    | IN_MOVE_SELF
    | IN_ONLYDIR
)

#: statfs ``f_type`` of the file systems whose changes inotify sees (all made on this host)
LOCAL_FS_TYPES: Final = frozenset(
    {
        0xEF53,  # ext2, ext3, ext4
        0x58465342,  # xfs
        0x9123683E,  # btrfs
        0x01021994,  # tmpfs
        0x2FC12FC1,  # zfs
        0xF2F52010,  # f2fs
    }
)

DEFAULT_MAX_BYTES: Final = 64 * 1024 * 1024
DEFAULT_MAX_WATCHES: Final = 65536

#: struct inotify_event without its name: wd, mask, cookie, len
_EVENT: Final = struct.Struct("iIII")
_READ_SIZE: Final = 65536

#: a callable the builder calls with each directory before it reads it
WatchFn = Callable[[str], None]
T = TypeVar("T")


class _Inotify(Protocol):
    """What is used of ``inotify_simple.INotify``."""

    def fileno(self) -> int: ...
    def add_watch(self, path: str, mask: int) -> int: ...
    def close(self) -> None: ...


def open_inotify() -> _Inotify:
    """A new non-blocking, close-on-exec inotify instance. Raises :class:`OSError` (or
    :class:`ImportError`) where there is none to be had. Looked up by name at call time
    (tests replace it to simulate a host without inotify)."""
    if sys.platform != "linux":
        raise OSError(errno.ENOSYS, "inotify is Linux only")
    import inotify_simple

    return cast(_Inotify, inotify_simple.INotify(nonblocking=True))


def read_events(fd: int) -> bytes:
    """One non-blocking read of the inotify descriptor (raises :class:`BlockingIOError`
    when nothing is queued). Looked up by name at call time (tests inject events)."""
    return os.read(fd, _READ_SIZE)


_libc: Any = None


def statfs_type(path: str) -> int:
    """The ``f_type`` (file system magic) of ``path``'s file system, by ``statfs(2)``.
    Blocking (one system call). Raises :class:`OSError`."""
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    # struct statfs is 120 bytes on 64-bit Linux (84 on 32-bit); f_type, a long, comes first
    buf = ctypes.create_string_buffer(256)
    if _libc.statfs(os.fsencode(path), buf) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), path)
    return ctypes.c_long.from_buffer(buf).value & 0xFFFFFFFF


def is_local_fs(path: str) -> bool:
    """Whether ``path`` is on a file system in :data:`LOCAL_FS_TYPES`; blocking."""
    return statfs_type(path) in LOCAL_FS_TYPES


def _watch_budget(max_watches: int) -> int:
    """``max_watches``, and never more than half of the user's ``max_user_watches``
    (other programs of the same user need theirs); blocking (reads /proc)."""
    try:
        with open("/proc/sys/fs/inotify/max_user_watches", "rb") as f:
            system = int(f.read().strip())
    except (OSError, ValueError):
        return max_watches
    return max(0, min(max_watches, system // 2))


def etag_of(body: bytes) -> str:
    """The ``ETag`` header value of a listing body: the first 16 bytes of its blake3 as
    lowercase hex, quoted (a strong validator; :func:`asyncsync.protocol.listing_tag`)."""
    return f'"{protocol.listing_tag(body)}"'


@dataclass(frozen=True, slots=True)
class Listing:
    """An answer body, its ``ETag`` value, and whether it came from the cache."""

    body: bytes
    etag: str
    cached: bool


#: (resolved datastore root, namespace, group or None, owner filter or None)
Key = tuple[str, str, str | None, str | None]
#: (device, inode) of a directory
_DirId = tuple[int, int]


@dataclass(frozen=True, slots=True)
class _Entry:
    generation: int
    ns_dir: _DirId
    body: bytes
    etag: str


@dataclass(frozen=True, slots=True)
class _Built:
    """A listing built on a miss, and what decides whether it may be stored."""

    key: Key
    gen0: int
    #: the watched namespace folder; None: not cacheable (see ListingCache.get)
    ns_dir: _DirId | None
    body: bytes
    etag: str


class _Watcher:
    """The ``watch`` callable of one build: adds a watch per directory; after the first
    failure it adds none and the build is not stored (:attr:`ok` is False)."""

    __slots__ = ("_cache", "_root", "ok")

    def __init__(self, cache: ListingCache, root: str) -> None:
        self._cache = cache
        self._root = root
        self.ok = True

    def __call__(self, path: str) -> None:
        if self.ok:
            self.ok = self._cache._watch(path, self._root, missing_ok=True)


class ListingCache:
    """Listing answer bodies of one application (see the module docstring for the contract).

    ``max_bytes`` bounds the stored bodies in total (least recently used out; a body
    larger than the bound is not stored); ``max_watches`` bounds the inotify watches of
    the application (never more than half of ``/proc/sys/fs/inotify/max_user_watches``);
    ``enabled=False`` builds every listing as without a cache and never makes an
    inotify instance. Counters: :attr:`hits`, :attr:`misses` (lookups that built),
    :attr:`stored`, :attr:`discarded` (built while something changed), :attr:`uncached`
    (built with no way to watch: inotify unavailable, non-local file system, watch
    failure, budget spent, body too large, or the cache disabled).
    """

    def __init__(
        self,
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        max_watches: int = DEFAULT_MAX_WATCHES,
        enabled: bool = True,
    ) -> None:
        self.max_bytes = max_bytes
        self.max_watches = max_watches
        self.enabled = enabled
        self._lock = threading.Lock()
        self._entries: dict[Key, _Entry] = {}
        self._bytes = 0
        #: datastore root -> generation (every root a build has started for is here)
        self._generations: dict[str, int] = {}
        #: watch descriptor -> the roots whose listings read its directory
        self._wd_roots: dict[int, tuple[str, ...]] = {}
        #: (root, device) -> the file system is local
        self._local: dict[tuple[str, int], bool] = {}
        self._inotify: _Inotify | None = None
        #: None: not tried yet; False: unavailable, or closed
        self._available: bool | None = None if enabled else False
        self._budget = 0
        self._reader_loop: asyncio.AbstractEventLoop | None = None
        self._reader_fd = -1
        self._closed = False
        self.hits = 0
        self.misses = 0
        self.stored = 0
        self.discarded = 0
        self.uncached = 0

    def __repr__(self) -> str:
        return (
            f"ListingCache({len(self._entries)} entries, {self._bytes} bytes, "
            f"{len(self._wd_roots)} watches, hits={self.hits}, misses={self.misses}, "
            f"stored={self.stored}, discarded={self.discarded}, uncached={self.uncached})"
        )

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def watches(self) -> int:
        """The number of live inotify watches."""
        return len(self._wd_roots)

    @property
    def fileno(self) -> int | None:
        """The inotify descriptor, None if there is none (not made yet, unavailable, closed)."""
        ino = self._inotify
        return None if ino is None else ino.fileno()

    # ---- the request path (event loop) ------------------------------------------------------

    async def get(
        self,
        scope: tuple[str, str | None, str | None],
        locate: Callable[[], tuple[str, str, T]],
        build: Callable[[T, WatchFn | None], bytes],
    ) -> Listing:
        """The listing of ``scope`` (namespace, group, owner filter), cached or built.

        ``locate`` (blocking, in the worker thread) opens the datastore and returns
        (resolved root, namespace folder, handle); ``build(handle, watch)`` (blocking,
        same thread) builds the body, calling ``watch(dir)`` (when not None) for every
        directory before it scans it or reads a file in it. Exceptions of either
        propagate and store nothing. One worker-thread hop per call, hit or miss.
        """
        self.drain()
        outcome = await asyncio.to_thread(self._lookup_or_build, scope, locate, build)
        if isinstance(outcome, Listing):
            return outcome
        self._attach_reader()
        self.drain()  # every change made during the build is now in the generations
        self._store(outcome)
        return Listing(outcome.body, outcome.etag, False)

    def drain(self) -> None:
        """Read every queued inotify event and bump the generations they concern. Event-loop
        thread only (the descriptor is non-blocking: this never waits)."""
        ino = self._inotify
        if ino is None:
            return
        fd = ino.fileno()
        pieces: list[bytes] = []
        while True:
            try:
                data = read_events(fd)
            except BlockingIOError:
                break
            except OSError as exc:  # not expected: treat as a lost queue
                log.warning("listing cache: reading inotify events failed: %s", exc)
                pieces.append(_EVENT.pack(-1, IN_Q_OVERFLOW, 0, 0))
                break
            if not data:
                break
            pieces.append(data)
        if pieces:
            self._handle(b"".join(pieces))

    def _handle(self, data: bytes) -> None:
        """Bump the generations of the roots the events in ``data`` concern."""
        bump: set[str] = set()
        bump_all = False
        pos, end, size = 0, len(data), _EVENT.size
        with self._lock:
            while pos + size <= end:
                wd, mask, _, namelen = _EVENT.unpack_from(data, pos)
                pos += size + namelen
                roots = self._wd_roots.get(wd)
                if mask & IN_Q_OVERFLOW or roots is None:
                    bump_all = True  # events were lost, or a watch we do not know: assume anything
                else:
                    bump.update(roots)
                if mask & IN_IGNORED:
                    self._wd_roots.pop(wd, None)  # the watch is gone (folder removed, unmounted)
            gens = self._generations
            for root in gens if bump_all else bump:
                if root in gens:
                    gens[root] += 1

    def _attach_reader(self) -> None:
        """Install the loop reader that drains in the background (once, after the first
        build made the inotify instance); event-loop thread."""
        ino = self._inotify
        if ino is None or self._reader_loop is not None or self._closed:
            return
        loop = asyncio.get_running_loop()
        fd = ino.fileno()
        loop.add_reader(fd, self.drain)
        self._reader_loop, self._reader_fd = loop, fd

    def _store(self, built: _Built) -> None:
        """Store ``built`` if it may be: watched throughout, and no change since ``gen0``."""
        with self._lock:
            if built.ns_dir is None or self._closed or len(built.body) > self.max_bytes:
                self.uncached += 1
                return
            if self._generations.get(built.key[0]) != built.gen0:
                self.discarded += 1
                return
            old = self._entries.pop(built.key, None)
            if old is not None:
                self._bytes -= len(old.body)
            self._entries[built.key] = _Entry(built.gen0, built.ns_dir, built.body, built.etag)
            self._bytes += len(built.body)
            while self._bytes > self.max_bytes:
                first = next(iter(self._entries))
                self._bytes -= len(self._entries.pop(first).body)
            self.stored += 1

    # ---- the worker thread ---------------------------------------------------------------

    def _lookup_or_build(
        self,
        scope: tuple[str, str | None, str | None],
        locate: Callable[[], tuple[str, str, T]],
        build: Callable[[T, WatchFn | None], bytes],
    ) -> Listing | _Built:
        """A hit (:class:`Listing`) or a built body (:class:`_Built`); blocking."""
        root, ns_dir, handle = locate()
        key: Key = (root, *scope)
        if not self.enabled:
            body = build(handle, None)
            with self._lock:
                self.uncached += 1
            return Listing(body, etag_of(body), False)
        here = _dir_id(ns_dir)
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                if here == entry.ns_dir and entry.generation == self._generations.get(root):
                    del self._entries[key]
                    self._entries[key] = entry  # most recently used
                    self.hits += 1
                    return Listing(entry.body, entry.etag, True)
                del self._entries[key]  # stale: never served again
                self._bytes -= len(entry.body)
            self.misses += 1
            gen0 = self._generations.setdefault(root, 0)
        watched = self._watch_namespace(root, ns_dir, here)
        watch = _Watcher(self, root) if watched is not None else None
        body = build(handle, watch)
        if watch is not None and not watch.ok:
            watched = None
        return _Built(key, gen0, watched, body, etag_of(body))

    def _watch_namespace(self, root: str, ns_dir: str, here: _DirId | None) -> _DirId | None:
        """Watch the namespace folder; its (device, inode) as watched, or None if the
        listing cannot be cached (no inotify, not a local file system, watch failed)."""
        if here is None or not self._ensure_inotify():
            return None
        local = self._local.get((root, here[0]))
        if local is None:
            try:
                local = is_local_fs(ns_dir)
            except OSError:
                local = False
            if not local:
                log.info("listing cache: %s is not on a local file system: listings are not cached", root)
            with self._lock:
                self._local[(root, here[0])] = local
        if not local or not self._watch(ns_dir, root, missing_ok=False):
            return None
        # the inode watched: a swap of the path after the watch was added is an event on it
        return _dir_id(ns_dir)

    def _ensure_inotify(self) -> bool:
        """Make the inotify instance on first use (blocking: reads /proc); False if
        there is none (unavailable, or the cache closed)."""
        if self._available is not None:
            return self._available
        with self._lock:
            if self._available is None:
                try:
                    ino = open_inotify()
                except (OSError, ImportError) as exc:
                    log.info("listing cache off: no inotify (%s)", exc)
                    self._available = False
                else:
                    self._inotify = ino
                    self._budget = _watch_budget(self.max_watches)
                    self._available = True
            return self._available

    def _watch(self, path: str, root: str, *, missing_ok: bool) -> bool:
        """Add a watch on the directory ``path`` for ``root``; False if the listing must
        not be cached. With ``missing_ok``, a path that is not a directory (any more) is
        fine: its parent is watched, so its appearance will be an event."""
        with self._lock:  # the map is updated with the watch, before its events are handled
            ino = self._inotify
            if ino is None:
                return False
            if len(self._wd_roots) >= self._budget:
                return False
            try:
                wd = ino.add_watch(path, WATCH_MASK)
            except OSError as exc:
                if missing_ok and exc.errno in (errno.ENOENT, errno.ENOTDIR):
                    return True
                if exc.errno == errno.ENOSPC:
                    log.info("listing cache: out of inotify watches (max_user_watches)")
                return False
            roots = self._wd_roots.get(wd)
            if roots is None:
                self._wd_roots[wd] = (root,)
            elif root not in roots:
                self._wd_roots[wd] = (*roots, root)
            return True

    # ---- cleanup ----------------------------------------------------------------------------

    def close(self) -> None:
        """Remove the loop reader, close the inotify descriptor, drop every entry. Later
        listings are built uncached. Idempotent; call on the event-loop thread."""
        with self._lock:
            self._closed = True
            self._available = False
            ino, self._inotify = self._inotify, None
            loop, self._reader_loop = self._reader_loop, None
            if loop is not None and not loop.is_closed():
                loop.remove_reader(self._reader_fd)
            if ino is not None:
                ino.close()
            self._entries.clear()
            self._bytes = 0
            self._wd_roots.clear()


def _dir_id(path: str) -> _DirId | None:
    """(device, inode) of the directory at ``path``, None if there is none; blocking."""
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    return (st.st_dev, st.st_ino)


__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_WATCHES",
    "LOCAL_FS_TYPES",
    "WATCH_MASK",
    "Listing",
    "ListingCache",
    "WatchFn",
    "etag_of",
    "is_local_fs",
    "open_inotify",
    "read_events",
    "statfs_type",
]
