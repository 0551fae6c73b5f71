"""A datastore on disk: namespaces, groups, snapshots, and its chunk store.

Layout (format v1)::

    <root>/.asyncsync-datastore        {"format": 1}
    <root>/.chunks/<4 hex>/<64 hex>    chunk blobs
    <root>/.lock                        datastore lock file (flock)
    <root>/[ns/<a>/[ns/<b>/...]]<type>/<id>/owner
    <root>/.../<type>/<id>/<RFC 3339 time>/index.json.blob, *.fidx, *.didx, *.blob, [.protected]

A snapshot exists if and only if its final folder holds a manifest. It is
built in a hidden temp folder inside its group (:class:`SnapshotWriter`) and
renamed into place by :meth:`SnapshotWriter.commit`.

Every method is blocking; async callers use ``asyncio.to_thread``. All names
arrive as validated value objects from :mod:`asyncsync.names`.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import os
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import (
    AlreadyExists,
    Conflict,
    CorruptManifest,
    InvalidInput,
    InvalidName,
    Locked,
    NotFound,
    StorageError,
)
from ..names import (
    MAX_NAMESPACE_DEPTH,
    ROOT_NS,
    AuthId,
    BackupType,
    GroupId,
    Namespace,
    SnapshotId,
    check_archive_name,
    parse_time,
)
from . import blob
from .chunkstore import ChunkStore, SyncLevel, fsync_dir, is_stale_tmp, syncfs, tmp_name, write_all
from .index import Index, decode_index
from .manifest import MANIFEST_NAME, FileEntry, Manifest

FORMAT_VERSION = 1
MARKER = ".asyncsync-datastore"
PROTECTED_MARKER = ".protected"
OWNER_FILE = "owner"
#: any group: :func:`snapshot_time` only needs a SnapshotId to format a time back
_TIME_CHECK_GROUP = GroupId(BackupType.HOST, "x")


def remove_tree(path: str | os.PathLike[str], *, ignore_errors: bool = False) -> None:
    """:func:`shutil.rmtree`, imported on first use: :mod:`shutil` (with the compression
    modules it loads) cost every process that opens a datastore ~2 ms of start-up. The
    one place the datastore and its configuration remove a tree."""
    import shutil

    shutil.rmtree(path, ignore_errors=ignore_errors)


@functools.lru_cache(maxsize=65536)
def snapshot_time(name: str) -> int | None:
    """The time of a snapshot folder named ``name``, or None if ``name`` is not the
    canonical name of one (``YYYY-MM-DDTHH:MM:SSZ`` that formats back to itself).

    Pure, so cached: listings meet the same few thousand names again and again,
    and ``strptime`` plus the round trip cost ≈ 15 µs per name.
    """
    try:
        t = parse_time(name)
        return t if SnapshotId(_TIME_CHECK_GROUP, t).time_str == name else None
    except InvalidName:
        return None


@dataclass(frozen=True, slots=True)
class SnapshotInfo:
    """What a listing tells about one committed snapshot."""

    ns: Namespace
    snapshot: SnapshotId
    files: list[FileEntry]
    size: int
    protected: bool
    verify_state: str | None
    comment: str | None
    #: blake3 (hex) of the stored manifest blob's bytes; equal digests mean byte-equal
    #: manifests (a pull skips an unchanged re-sync on it). None for a corrupt manifest.
    manifest_digest: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "ns": str(self.ns),
            "backup-type": self.snapshot.group.type.value,
            "backup-id": self.snapshot.group.id,
            "backup-time": self.snapshot.time,
            "time": self.snapshot.time_str,
            "files": [f.to_json() for f in self.files],
            "size": self.size,
            "protected": self.protected,
            "verify-state": self.verify_state,
            "comment": self.comment,
        }


#: the lock file of a datastore (in its root) and of a group (in the group folder)
LOCK_FILE = ".lock"


class FileLock:
    """A non-blocking exclusive ``flock`` on a file; raises :class:`Locked` if held elsewhere.

    :meth:`acquire` creates the lock file, never its folder: a missing folder is a
    :class:`FileNotFoundError`."""

    def __init__(self, path: str | Path, what: str) -> None:
        self.path = path
        self.what = what
        self._fd: int | None = None

    def acquire(self) -> FileLock:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise Locked(f"{self.what} is locked by another operation") from None
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> FileLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


class Datastore:
    """One datastore folder. Construct with :meth:`open` or :meth:`create`."""

    def __init__(self, root: Path, name: str = "", sync_level: SyncLevel = SyncLevel.FILESYSTEM) -> None:
        self.root = root
        self.name = name or root.name
        self.sync_level = sync_level
        self.chunks = ChunkStore(root, sync_level)

    def __repr__(self) -> str:
        return f"Datastore({self.name!r}, {str(self.root)!r})"

    # ---- lifecycle -------------------------------------------------------

    @classmethod
    def create(cls, root: Path, name: str = "", sync_level: SyncLevel = SyncLevel.FILESYSTEM) -> Datastore:
        """Make a new datastore at ``root`` (an empty or missing folder)."""
        if root.exists() and any(root.iterdir()):
            if (root / MARKER).exists():
                raise AlreadyExists(f"{root} already holds a datastore")
            raise InvalidInput(f"{root} is not empty", field="path")
        root.mkdir(parents=True, exist_ok=True)
        store = cls(root, name, sync_level)
        store.chunks.create()
        (root / MARKER).write_text(json.dumps({"format": FORMAT_VERSION}) + "\n")
        return store

    @classmethod
    def open(cls, root: Path, name: str = "", sync_level: SyncLevel = SyncLevel.FILESYSTEM) -> Datastore:
        try:
            meta = json.loads((root / MARKER).read_text())
        except FileNotFoundError:
            raise NotFound(f"no datastore at {root}") from None
        except (OSError, ValueError) as exc:
            raise StorageError(f"cannot read datastore marker in {root}: {exc}") from exc
        if meta.get("format") != FORMAT_VERSION:
            raise StorageError(f"datastore {root} has unsupported format {meta.get('format')!r}")
        return cls(root, name, sync_level)

    # ---- paths -----------------------------------------------------------

    def ns_path(self, ns: Namespace) -> Path:
        rel = ns.rel_path()
        return self.root / rel if rel else self.root

    def group_path(self, ns: Namespace, group: GroupId) -> Path:
        return self.ns_path(ns) / group.rel_path()

    def snapshot_path(self, ns: Namespace, snap: SnapshotId) -> Path:
        return self.ns_path(ns) / snap.rel_path()

    def lock(self) -> FileLock:
        """The datastore-wide lock (for gc and other exclusive maintenance)."""
        return FileLock(self.root / LOCK_FILE, f"datastore {self.name}")

    def group_lock(self, ns: Namespace, group: GroupId) -> FileLock:
        """Lock one group against concurrent writers (backup, pull, forget)."""
        path = self.group_path(ns, group)
        path.mkdir(parents=True, exist_ok=True)
        return FileLock(path / LOCK_FILE, f"group {group}" + (f" in namespace {ns}" if ns.parts else ""))

    # ---- namespaces ------------------------------------------------------

    def namespace_exists(self, ns: Namespace) -> bool:
        return self.ns_path(ns).is_dir()

    def create_namespace(self, ns: Namespace, *, parents: bool = False) -> bool:
        """Create ``ns``; returns False if it existed. Without ``parents`` the parent must exist."""
        if ns.is_root or self.namespace_exists(ns):
            return False
        if not parents and not self.namespace_exists(ns.parent):
            raise NotFound(f"parent namespace {ns.parent!s} does not exist")
        if parents:
            self.create_namespace(ns.parent, parents=True)
        path = self.ns_path(ns)
        path.parent.mkdir(exist_ok=True)  # the parent's "ns" folder may not exist yet
        path.mkdir(parents=False, exist_ok=True)
        return True

    def list_namespaces(self, parent: Namespace = ROOT_NS, max_depth: int | None = None) -> list[Namespace]:
        """``parent`` and the namespaces below it, down to ``max_depth`` levels, sorted."""
        if not self.namespace_exists(parent):
            raise NotFound(f"namespace {parent!s} does not exist")
        limit = MAX_NAMESPACE_DEPTH if max_depth is None else max_depth
        out = [parent]

        def walk(ns: Namespace, depth: int) -> None:
            if depth >= limit or ns.depth >= MAX_NAMESPACE_DEPTH:
                return
            base = self.ns_path(ns) / "ns"
            try:
                names = sorted(e.name for e in os.scandir(base) if e.is_dir())
            except FileNotFoundError:
                return
            for n in names:
                try:
                    child = ns.child(n)
                except InvalidName:
                    continue
                out.append(child)
                walk(child, depth + 1)

        walk(parent, 0)
        return out

    def remove_namespace(self, ns: Namespace, *, delete_groups: bool = False) -> None:
        """Remove ``ns`` and its sub-namespaces. Refuses a non-empty one unless ``delete_groups``;
        even then a protected snapshot keeps its namespace, and so does a group another
        operation holds locked (a backup or sync writing into it): both raise
        :class:`Conflict` after the rest was removed.

        Each group is removed under its lock, as forget and remove-vanished remove
        snapshots, so a backup or pull writing into it keeps it."""
        if ns.is_root:
            raise InvalidInput("the root namespace cannot be removed", field="ns")
        if not self.namespace_exists(ns):
            raise NotFound(f"namespace {ns!s} does not exist")
        all_ns = self.list_namespaces(ns)
        groups = [(n, g) for n in all_ns for g in self.list_groups(n)]
        if groups and not delete_groups:
            raise Conflict(f"namespace {ns!s} is not empty ({len(groups)} groups); use --delete-groups")
        kept: list[GroupId] = []
        busy: list[GroupId] = []
        for n, g in groups:
            try:
                with self.group_lock(n, g):
                    if not self.remove_group(n, g):
                        kept.append(g)
            except Locked:
                busy.append(g)
        if kept or busy:
            why = []
            if kept:
                why.append(f"{len(kept)} group(s) with protected snapshots")
            if busy:
                first = f"{busy[0]}, ..." if len(busy) > 1 else str(busy[0])
                why.append(f"{len(busy)} group(s) locked by a running backup or sync ({first})")
            raise Conflict(f"namespace {ns!s} keeps " + " and ".join(why) + "; the rest was removed")
        remove_tree(self.ns_path(ns))

    # ---- groups ----------------------------------------------------------

    def list_groups(self, ns: Namespace) -> list[GroupId]:
        base = self.ns_path(ns)
        out: list[GroupId] = []
        for t in BackupType:
            try:
                entries = list(os.scandir(base / t.value))
            except FileNotFoundError:
                continue
            for e in entries:
                if e.is_dir() and not e.name.startswith("."):
                    with contextlib.suppress(InvalidName):
                        out.append(GroupId(t, e.name))
        return sorted(out)

    def get_owner(self, ns: Namespace, group: GroupId) -> AuthId | None:
        try:
            return AuthId.parse((self.group_path(ns, group) / OWNER_FILE).read_text().strip())
        except FileNotFoundError:
            return None

    def set_owner(self, ns: Namespace, group: GroupId, owner: AuthId) -> None:
        path = self.group_path(ns, group)
        path.mkdir(parents=True, exist_ok=True)
        atomic_write(path / OWNER_FILE, f"{owner}\n".encode(), self.sync_level)

    def ensure_group(self, ns: Namespace, group: GroupId, owner: AuthId) -> AuthId:
        """Create the group with ``owner`` if new; return its (possibly other) owner."""
        if not self.namespace_exists(ns):
            raise NotFound(f"namespace {ns!s} does not exist")
        current = self.get_owner(ns, group)
        if current is None:
            self.set_owner(ns, group, owner)
            return owner
        return current

    def remove_group(self, ns: Namespace, group: GroupId) -> bool:
        """Remove a group and its snapshots, except protected ones; True if it is gone."""
        kept = False
        for info in self.list_snapshots(ns, group):
            if info.protected:
                kept = True
            else:
                self.remove_snapshot(ns, info.snapshot)
        if kept:
            return False
        remove_tree(self.group_path(ns, group), ignore_errors=True)
        return True

    # ---- snapshots -------------------------------------------------------

    def _snapshot_folders(self, ns: Namespace, group: GroupId) -> list[tuple[str, SnapshotId]]:
        """(folder name, id) of the group's snapshot folders, oldest first; committed or not."""
        base = self.group_path(ns, group)
        try:
            names = [e.name for e in os.scandir(base) if e.is_dir() and not e.name.startswith(".")]
        except FileNotFoundError:
            return []
        out = []
        for name in sorted(names):
            t = snapshot_time(name)
            if t is not None:
                out.append((name, SnapshotId(group, t)))
        return out

    def _snapshot_candidates(self, ns: Namespace, group: GroupId) -> list[SnapshotId]:
        return [snap for _, snap in self._snapshot_folders(ns, group)]

    def list_snapshots(self, ns: Namespace, group: GroupId) -> list[SnapshotInfo]:
        """Committed snapshots of a group, oldest first (each manifest is read and decoded)."""
        out = []
        for snap in self._snapshot_candidates(ns, group):
            info = self.snapshot_info(ns, snap)
            if info is not None:
                out.append(info)
        return out

    def list_snapshot_ids(self, ns: Namespace, group: GroupId) -> list[SnapshotId]:
        """Committed snapshots of a group, oldest first, without reading their manifests
        (one stat each): what a pull needs to choose snapshots."""
        base = str(self.group_path(ns, group))
        # as snapshot_exists, with the folder's own name (formatting each time back costs more)
        return [
            snap
            for name, snap in self._snapshot_folders(ns, group)
            if os.path.isfile(f"{base}/{name}/{MANIFEST_NAME}")
        ]

    def manifest_digest(self, ns: Namespace, snap: SnapshotId) -> str | None:
        """blake3 of the stored manifest file (None if the snapshot is gone)."""
        try:
            return blob.digest_of((self.snapshot_path(ns, snap) / MANIFEST_NAME).read_bytes())
        except FileNotFoundError:
            return None

    def snapshot_info(self, ns: Namespace, snap: SnapshotId) -> SnapshotInfo | None:
        path = self.snapshot_path(ns, snap)
        try:
            raw = (path / MANIFEST_NAME).read_bytes()
            manifest = Manifest.decode(raw)
        except FileNotFoundError:
            return None
        except CorruptManifest:
            return SnapshotInfo(ns, snap, [], 0, (path / PROTECTED_MARKER).exists(), "corrupt", None)
        notes = manifest.unprotected.get("notes")
        comment = notes.splitlines()[0] if isinstance(notes, str) and notes else None
        return SnapshotInfo(
            ns,
            snap,
            manifest.files,
            manifest.size,
            (path / PROTECTED_MARKER).exists(),
            manifest.verify_state,
            comment,
            blob.digest_of(raw),
        )

    def snapshot_exists(self, ns: Namespace, snap: SnapshotId) -> bool:
        return (self.snapshot_path(ns, snap) / MANIFEST_NAME).is_file()

    def load_manifest(self, ns: Namespace, snap: SnapshotId) -> Manifest:
        try:
            return Manifest.decode((self.snapshot_path(ns, snap) / MANIFEST_NAME).read_bytes())
        except FileNotFoundError:
            raise NotFound(f"snapshot {snap} not found") from None

    def read_file(self, ns: Namespace, snap: SnapshotId, name: str) -> bytes:
        """Bytes of one archive file (or the manifest) of a committed snapshot."""
        if name != MANIFEST_NAME:
            check_archive_name(name)
        if not self.snapshot_exists(ns, snap):
            raise NotFound(f"snapshot {snap} not found")
        try:
            return (self.snapshot_path(ns, snap) / name).read_bytes()
        except FileNotFoundError:
            raise NotFound(f"file {name} not found in snapshot {snap}") from None

    def load_index(self, ns: Namespace, snap: SnapshotId, name: str) -> Index:
        return decode_index(self.read_file(ns, snap, name))

    def snapshot_digests(self, ns: Namespace, snap: SnapshotId) -> set[str]:
        """Hex digests referenced by the snapshot's indexes."""
        manifest = self.load_manifest(ns, snap)
        out: set[str] = set()
        for f in manifest.files:
            if f.filename.endswith((".fidx", ".didx")):
                out.update(d.hex() for d in self.load_index(ns, snap, f.filename).digests)
        return out

    def update_unprotected(self, ns: Namespace, snap: SnapshotId, **values: Any) -> Manifest:
        """Merge ``values`` into the manifest's unprotected part (atomic replace)."""
        manifest = self.load_manifest(ns, snap)
        manifest.unprotected.update(values)
        atomic_write(self.snapshot_path(ns, snap) / MANIFEST_NAME, manifest.encode(), self.sync_level)
        return manifest

    def is_protected(self, ns: Namespace, snap: SnapshotId) -> bool:
        return (self.snapshot_path(ns, snap) / PROTECTED_MARKER).exists()

    def set_protected(self, ns: Namespace, snap: SnapshotId, protected: bool) -> None:
        if not self.snapshot_exists(ns, snap):
            raise NotFound(f"snapshot {snap} not found")
        marker = self.snapshot_path(ns, snap) / PROTECTED_MARKER
        if protected:
            marker.touch()
        else:
            marker.unlink(missing_ok=True)

    def remove_snapshot(self, ns: Namespace, snap: SnapshotId, *, force: bool = False) -> None:
        """Remove a snapshot; a protected one is refused unless ``force``.

        The folder is first renamed to a hidden name so that the snapshot
        disappears atomically, then deleted.
        """
        path = self.snapshot_path(ns, snap)
        if not path.is_dir():
            raise NotFound(f"snapshot {snap} not found")
        if not force and (path / PROTECTED_MARKER).exists():
            raise Conflict(f"snapshot {snap} is protected")
        doomed = path.with_name(tmp_name("removing"))
        os.replace(path, doomed)
        remove_tree(doomed, ignore_errors=True)

    def begin_snapshot(self, ns: Namespace, snap: SnapshotId) -> SnapshotWriter:
        """Start writing a snapshot (the caller holds the group lock)."""
        return SnapshotWriter(self, ns, snap)

    def iter_snapshots(self) -> Iterator[tuple[Namespace, SnapshotId]]:
        for ns in self.list_namespaces():
            for g in self.list_groups(ns):
                for info in self.list_snapshots(ns, g):
                    yield ns, info.snapshot

    def referenced_digests(self) -> set[str]:
        """Every chunk referenced by any snapshot (also unreadable ones fail loudly)."""
        out: set[str] = set()
        for ns, snap in self.iter_snapshots():
            out |= self.snapshot_digests(ns, snap)
        return out

    def cleanup_temp(self, *, full: bool = True, clean: Collection[str] = ()) -> int:
        """Remove temp files and half-written snapshot folders of dead writers.

        ``full=False`` skips the O(chunks) scan of the chunk prefix folders for
        temp files of older versions (see :meth:`ChunkStore.cleanup_temp`), and the
        scan of each snapshot folder. ``clean``: group folders (as plain string paths,
        ``<namespace folder>/<type>/<id>``) the caller knows hold no temp entry, which
        are not looked into (a pull whose checkpoint matched: see
        :mod:`asyncsync.sync.checkpoint`).
        """
        removed = self.chunks.cleanup_temp(full=full)
        for ns in self.list_namespaces():
            ns_dir = str(self.ns_path(ns))
            for t in BackupType:
                # every group folder, by plain string paths and unsorted: a pull runs this on
                # every start, and GroupId objects (validated, then sorted) cost it ~10 ms
                # per 1,000 groups; a folder whose name is no valid id holds no writer's temp
                # files but is harmless to look into
                try:
                    with os.scandir(f"{ns_dir}/{t.value}") as it:
                        gdirs = [e.path for e in it if not e.name.startswith(".") and e.is_dir()]
                except FileNotFoundError:
                    continue
                for gdir in gdirs:
                    if gdir not in clean:
                        removed += remove_stale_tmp(gdir)
            if full:
                # one scandir per snapshot: only the full (gc) pass pays for it
                for g in self.list_groups(ns):
                    for snap in self._snapshot_candidates(ns, g):
                        removed += self.cleanup_snapshot_temp(ns, snap)
        return removed

    def cleanup_snapshot_temp(self, ns: Namespace, snap: SnapshotId) -> int:
        """Remove temp files of dead processes from one snapshot's folder; returns how many.

        They are left by a manifest rewrite (:meth:`update_unprotected`) killed between
        writing its temp file and renaming it. Such a file is harmless (its name is never
        an archive name, and listings and pulls go by the manifest), this only reclaims
        the space. A temp file whose process still runs is left alone. Call under the
        group lock.
        """
        return remove_stale_tmp(str(self.snapshot_path(ns, snap)), folders=False)

    def flush(self) -> None:
        """Make everything written so far durable according to the sync level."""
        if self.sync_level is SyncLevel.FILESYSTEM:
            syncfs(self.root)


class SnapshotWriter:
    """Builds one snapshot in a hidden temp folder; :meth:`commit` makes it appear.

    Use as a context manager: leaving the block without :meth:`commit` (an
    error, a cancellation) removes the temp folder.
    """

    def __init__(self, store: Datastore, ns: Namespace, snap: SnapshotId) -> None:
        self.store = store
        self.ns = ns
        self.snap = snap
        self.final = store.snapshot_path(ns, snap)
        self.final.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.final.parent / tmp_name(snap.time_str)
        self.tmp.mkdir()
        self.files: list[FileEntry] = []
        self.committed = False

    def __repr__(self) -> str:
        return f"SnapshotWriter({self.snap!s}, files={len(self.files)})"

    def add_file(
        self, name: str, data: bytes, *, size: int | None = None, csum: str | None = None
    ) -> FileEntry:
        """Write one archive file; ``size`` is its logical size (default: len(data)).

        ``csum`` is the blake3 of ``data`` when the caller has already computed it
        (a pull checks it against the manifest): it is trusted, not recomputed.
        """
        check_archive_name(name)
        if any(f.filename == name for f in self.files):
            raise InvalidInput(f"archive {name} given twice")
        _write_file(self.tmp / name, data, self.store.sync_level)
        entry = FileEntry(name, len(data) if size is None else size, csum or blob.digest_of(data))
        self.files.append(entry)
        return entry

    def add_blob(self, name: str, content: bytes) -> FileEntry:
        """Store a small file as ``name`` (must end in ``.blob``), encoded as a blob."""
        if not name.endswith(".blob"):
            raise InvalidInput(f"blob archive name must end in .blob: {name}")
        return self.add_file(name, blob.encode(content), size=len(content))

    def add_index(self, name: str, index: Index) -> FileEntry:
        return self.add_file(name, index.encode(), size=index.total_size)

    def commit(
        self, unprotected: dict[str, Any] | None = None, *, manifest: Manifest | None = None
    ) -> Manifest:
        """Write the manifest and rename the folder into place.

        Replaces an existing snapshot of the same time (a re-sync) while keeping
        its ``.protected`` marker. All chunks the indexes reference must already
        be durable: that is the caller's contract.
        """
        if manifest is None:
            manifest = Manifest(self.snap, list(self.files), dict(unprotected or {}))
        else:
            names = {f.filename for f in self.files}
            if {f.filename for f in manifest.files} != names:
                raise CorruptManifest("manifest does not list exactly the written files")
        _write_file(self.tmp / MANIFEST_NAME, manifest.encode(), self.store.sync_level)
        level = self.store.sync_level
        if level is SyncLevel.FILE:
            fsync_dir(self.tmp)
        elif level is SyncLevel.FILESYSTEM:
            syncfs(self.store.root)
        old: Path | None = None
        if self.final.exists():
            if (self.final / PROTECTED_MARKER).exists():
                (self.tmp / PROTECTED_MARKER).touch()
            old = self.final.with_name(tmp_name("replaced"))
            os.replace(self.final, old)
        try:
            os.replace(self.tmp, self.final)
        except OSError as exc:
            if old is not None:
                os.replace(old, self.final)
            raise StorageError(f"cannot commit snapshot {self.snap}: {exc.strerror}") from exc
        if level is SyncLevel.FILE:
            fsync_dir(self.final.parent)
        if old is not None:
            remove_tree(old, ignore_errors=True)
        self.committed = True
        return manifest

    def abort(self) -> None:
        if not self.committed:
            remove_tree(self.tmp, ignore_errors=True)

    def __enter__(self) -> SnapshotWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.abort()


def remove_stale_tmp(folder: str, *, folders: bool = True) -> int:
    """Remove the temp files (and, with ``folders``, temp folders) of dead writers directly
    in ``folder``; how many. A folder that vanished meanwhile has none."""
    removed = 0
    try:
        with os.scandir(folder) as it:
            stale = [(e.path, e.is_dir(follow_symlinks=False)) for e in it if is_stale_tmp(e.name)]
    except (FileNotFoundError, NotADirectoryError):
        return 0
    for path, is_dir in stale:
        if is_dir:
            if not folders:
                continue
            remove_tree(path, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        removed += 1
    return removed


def _write_file(path: Path, data: bytes, level: SyncLevel) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        write_all(fd, (data,), fsync=level is SyncLevel.FILE)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes, level: SyncLevel) -> None:
    """Replace ``path`` with ``data`` whole (temp file in the same folder, then rename), synced
    as ``level`` asks; on any failure the temp file is removed and ``path`` is untouched."""
    tmp = path.with_name(tmp_name(path.name))
    try:
        _write_file(tmp, data, level)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if level is SyncLevel.FILE:
        fsync_dir(path.parent)


__all__ = [
    "FORMAT_VERSION",
    "Datastore",
    "FileLock",
    "SnapshotInfo",
    "SnapshotWriter",
    "remove_tree",
    "snapshot_time",
]
