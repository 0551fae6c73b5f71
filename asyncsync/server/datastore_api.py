"""Datastore routes: listings, reader sessions, file and chunk downloads.

Order of checks in every handler: parse and validate every parameter first
(400, nothing touched), then the caller's privileges (403), then the data
(404). All datastore file access runs in a worker thread, one hop per request
(or per batch piece).

Visibility follows Proxmox Backup Server. On the ACL path of the datastore and
namespace (``/datastore/{store}[/{ns...}]``):

* ``Datastore.Audit`` or ``Datastore.Read``: every group is listed;
* ``Datastore.Backup`` alone: only groups the caller owns (owner == caller, or
  the owner is an API token of the calling user);
* nothing of these: 403.

Reading a snapshot (opening a reader) needs ``Datastore.Read``, or
``Datastore.Backup`` plus ownership of the group.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import stat
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Final, TypeVar

from aiohttp import hdrs, web
from aiohttp.abc import AbstractStreamWriter

from .. import protocol
from ..access import Privilege, datastore_acl_path
from ..config.datastores import DatastoreConfig, list_datastores
from ..datastore import blob, fastread
from ..datastore.datastore import PROTECTED_MARKER, Datastore
from ..datastore.index import decode_index
from ..datastore.manifest import MANIFEST_NAME, FileEntry, Manifest
from ..errors import CorruptManifest, InvalidInput, InvalidName, NotFound, PermissionDenied, StorageError
from ..names import (
    MAX_NAMESPACE_DEPTH,
    AuthId,
    BackupType,
    GroupId,
    Namespace,
    SnapshotId,
    check_archive_name,
    check_digest,
    parse_time,
    safe_id,
)
from .common import OPTIONS, READERS, get_access, get_auth_id, ok, read_json
from .keys import PATHS
from .listing_cache import ListingCache
from .readers import ReaderSession

log = logging.getLogger("asyncsync.server")
P = Privilege
_A = protocol.API_PREFIX
#: a batch answer is read from disk in pieces of about this many bytes (one thread hop each)
BATCH_PIECE_BYTES = 8 * 1024 * 1024
#: small frames are coalesced into writes of about this size
_WRITE_COALESCE = 256 * 1024


_TYPES = frozenset(t.value for t in BackupType)
#: privileges that make a namespace show up in a listing (PBS ``NS_PRIVS_OK``)
_NS_PRIVS = frozenset({P.DATASTORE_AUDIT, P.DATASTORE_READ, P.DATASTORE_BACKUP, P.DATASTORE_MODIFY})


class Visibility(Enum):
    ALL = "all"
    OWNED = "owned"


def owns(owner: AuthId | None, auth_id: AuthId) -> bool:
    """PBS's ownership rule: the owner is the caller, or an API token of the calling user."""
    if owner is None:
        return False
    return owner == auth_id or (owner.is_token and not auth_id.is_token and owner.userid == auth_id)


# ---- parameter parsing (400 before anything else) ---------------------------------------


def _store_name(request: web.Request) -> str:
    return safe_id(request.match_info["store"], "datastore name")


def _ns(value: Any, field: str = "ns") -> Namespace:
    if value is not None and not isinstance(value, str):
        raise InvalidInput("must be a string", field=field)
    try:
        return Namespace.parse(value)
    except InvalidName as exc:
        raise InvalidName(exc.message, field=field) from None


def _group(params: Any, *, required: bool) -> GroupId | None:
    btype, bid = params.get("backup-type"), params.get("backup-id")
    if btype is None and bid is None and not required:
        return None
    if not isinstance(btype, str) or not isinstance(bid, str):
        raise InvalidInput("backup-type and backup-id must be given together")
    try:
        return GroupId(BackupType.parse(btype), bid)
    except InvalidName as exc:
        raise InvalidName(exc.message, field="backup-id" if btype in _TYPES else "backup-type") from None


def _snapshot(params: Any) -> SnapshotId:
    group = _group(params, required=True)
    assert group is not None
    raw = params.get("backup-time")
    try:
        if isinstance(raw, int) and not isinstance(raw, bool):
            t = raw
        elif isinstance(raw, str) and raw.isascii() and raw.isdigit():
            if len(raw) > 12:  # beyond year 9999; also keeps int() away from huge inputs
                raise InvalidInput("backup-time out of range", field="backup-time")
            t = int(raw)
        elif isinstance(raw, str):
            t = parse_time(raw)
        else:
            raise InvalidInput("backup-time is required", field="backup-time")
        return SnapshotId(group, t)
    except InvalidName as exc:
        raise InvalidName(exc.message, field="backup-time") from None


def _max_depth(value: str | None) -> int | None:
    if value is None or value == "":
        return None
    if not (value.isascii() and value.isdigit()) or len(value) > 1 or int(value) > MAX_NAMESPACE_DEPTH:
        raise InvalidInput(f"must be an integer from 0 to {MAX_NAMESPACE_DEPTH}", field="max-depth")
    return int(value)


# ---- privileges ----------------------------------------------------------------------------


def _visibility(request: web.Request, store: str, ns: Namespace) -> tuple[AuthId, Visibility]:
    auth_id = get_auth_id(request)
    privs = get_access(request).privileges(auth_id, datastore_acl_path(store, ns))
    if P.DATASTORE_AUDIT in privs or P.DATASTORE_READ in privs:
        return auth_id, Visibility.ALL
    if P.DATASTORE_BACKUP in privs:
        return auth_id, Visibility.OWNED
    raise PermissionDenied(f"no permission on datastore {store}" + (f" namespace {ns}" if ns.parts else ""))


# ---- blocking parts (run in worker threads) --------------------------------------------------


class ServerConfigError(StorageError):
    """The server's configuration is broken (see the server log)."""


def _configs(request: web.Request) -> list[DatastoreConfig]:
    """Every configured datastore; a broken ``datastore.cfg`` is a server error, not a bad request."""
    try:
        return list_datastores(request.app[PATHS])
    except InvalidInput as exc:
        log.error("datastore.cfg: %s", exc)
        raise ServerConfigError() from exc


def _open(request: web.Request, store: str) -> Datastore:
    cfg = next((c for c in _configs(request) if c.name == store), None)
    if cfg is None:
        raise NotFound(f"datastore {store!r} is not configured")
    try:
        return cfg.open()
    except NotFound:
        # the configured folder is gone: say so without naming the local path
        raise NotFound(f"datastore {store} is not available") from None


def _snapshot_times(ds: Datastore, ns: Namespace, group: GroupId) -> list[int]:
    """Times of the group's committed snapshots (cheap: one stat each, no manifest is read)."""
    return _committed_times(fastread.group_dir(str(ds.ns_path(ns)), group))


def _committed_times(gdir: str) -> list[int]:
    """Times of the committed snapshots in the group folder ``gdir`` (one stat each)."""
    return [t for name, t in fastread.snapshot_folders(gdir) if fastread.is_committed(f"{gdir}/{name}")]


#: called with each directory a listing reads, before it scans it or reads a file in it
#: (the listing cache's watches: :class:`~asyncsync.server.listing_cache.ListingCache`)
Watch = Callable[[str], None]


def _list_groups(ns_dir: str, watch: Watch | None = None) -> list[GroupId]:
    """:meth:`Datastore.list_groups` of the namespace folder ``ns_dir`` (same groups, same
    order), sorted by plain string keys instead of comparing GroupId objects. ``watch``
    is called with each backup-type folder before it is scanned."""
    found: list[tuple[str, str, BackupType]] = []
    for t in BackupType:
        tdir = f"{ns_dir}/{t.value}"
        if watch is not None:
            watch(tdir)
        try:
            with os.scandir(tdir) as it:
                found.extend((t.value, e.name, t) for e in it if e.is_dir() and not e.name.startswith("."))
        except FileNotFoundError:
            continue
    found.sort()  # (type, id): GroupId's own order
    out = []
    for _, name, t in found:
        try:
            out.append(GroupId(t, name))
        except InvalidName:
            continue  # not a group folder (as Datastore.list_groups)
    return out


def _owner(ds: Datastore, ns: Namespace, group: GroupId) -> AuthId | None:
    """The group's owner, None if it has none or it is unreadable (as :meth:`Datastore.get_owner`)."""
    return _owner_at(fastread.group_dir(str(ds.ns_path(ns)), group))


def _owner_at(gdir: str) -> AuthId | None:
    """The owner of the group folder ``gdir`` (see :func:`_owner`); one try-open."""
    try:
        return fastread.read_owner(gdir)
    except (InvalidName, OSError, ValueError):
        return None


# ---- JSON, built once per listing --------------------------------------------------------------

#: compact JSON (no blanks after separators), otherwise as ``json.dumps``: ASCII only
_COMPACT = json.JSONEncoder(separators=(",", ":"))
_enc = _COMPACT.encode


@functools.lru_cache(maxsize=4096)
def _owner_json(owner: AuthId | None) -> str:
    """The ``owner`` value of a listing entry (as the items' ``to_json``), encoded."""
    return _enc(str(owner) if owner else None)


def _group_head(group: GroupId) -> str:
    """The opening of a listing entry of ``group``: ``{"backup-type":..,"backup-id":..``."""
    return '{"backup-type":' + _enc(group.type.value) + ',"backup-id":' + _enc(group.id)


@dataclass(frozen=True, slots=True)
class ManifestFacts:
    """What a snapshot listing tells about one manifest (see :meth:`Datastore.snapshot_info`).

    Also carries the JSON pieces of these facts in a snapshot listing entry, encoded
    once when the facts are made (a cache entry serves every listing of the same
    manifest content): ``json_files`` is ``"files":[..],"size":N``,
    ``json_verification`` the ``verification`` value, ``json_tail``
    ``,"comment":..[,"manifest-digest":..]}``. They are exactly what
    :meth:`protocol.SnapshotItem.to_json` gives for these facts, compactly encoded.
    """

    files: tuple[FileEntry, ...]
    size: int
    verify_state: str | None
    comment: str | None
    #: blake3 of the manifest bytes; None for a corrupt manifest
    digest: str | None
    json_files: str = field(init=False, repr=False, compare=False)
    json_verification: str = field(init=False, repr=False, compare=False)
    json_tail: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # the same values, in the same key order, as SnapshotItem.to_json
        files = _enc([f.to_json() for f in self.files])
        object.__setattr__(self, "json_files", f'"files":{files},"size":{_enc(self.size)}')
        verification = {"state": self.verify_state} if self.verify_state else None
        object.__setattr__(self, "json_verification", _enc(verification))
        tail = ',"comment":' + _enc(self.comment)
        if self.digest is not None:
            tail += ',"manifest-digest":' + _enc(self.digest)
        object.__setattr__(self, "json_tail", tail + "}")


def manifest_facts(raw: bytes, digest: str) -> ManifestFacts:
    """Decode ``raw`` (a stored manifest whose blake3 is ``digest``) into listing facts.

    The same values as :meth:`Datastore.snapshot_info`: a corrupt manifest lists no
    files, size 0, verify state ``corrupt`` and no digest. Blocking (zstd, JSON).
    """
    try:
        manifest = Manifest.decode(raw)
    except CorruptManifest:
        return ManifestFacts((), 0, "corrupt", None, None)
    notes = manifest.unprotected.get("notes")
    comment = notes.splitlines()[0] if isinstance(notes, str) and notes else None
    return ManifestFacts(tuple(manifest.files), manifest.size, manifest.verify_state, comment, digest)


class ManifestCache:
    """Decoded listing facts of manifests, keyed by the blake3 of the manifest's bytes.

    A snapshot listing reads every manifest of a namespace; decoding one (zstd,
    JSON, names) costs ≈ 0.2 ms, hashing its few hundred bytes ≈ 2 µs. The key is
    the *content*, so the cache cannot serve stale facts, whatever writers do
    meanwhile: a backup committing, a pull replacing a snapshot, notes or a
    verify state rewritten (each writes a whole new manifest and renames it into
    place, so a read sees one complete manifest, old or new), a hand edit, a
    file restored with an old mtime. The caller reads the bytes; the facts then
    describe exactly the bytes read, as an uncached decode would. Nothing here
    depends on the snapshot's path, so equal manifests in two datastores share
    an entry, which is right for the same reason.

    A second, path-keyed layer (:meth:`facts_at`) spares a listing the read and
    the hash of manifests that have not changed since an earlier listing: one
    ``stat`` per manifest instead of open, fstat, read, close and blake3. Its key
    is the file's (device, inode, size, mtime, ctime), and it is only trusted
    for files whose times were at least :data:`RACY_NS` old when they were read
    (see :meth:`facts_at` for why that cannot serve stale facts either).

    Bounded to ``max_entries`` in each layer (least recently used out; ≈ 1 KiB
    each for manifests with a few archives, their encoded JSON included; the
    path layer adds a path and a key). A listing larger than the bound still
    works, with fewer hits. Thread-safe: listings run in worker threads
    concurrently.
    """

    #: a file changed less than this long (ns) before it is read is never served by its
    #: stat alone: file times come from a coarse clock, so two writes within one tick may
    #: leave the same times (the rule git uses for "racily clean" index entries)
    RACY_NS: Final = 2_000_000_000

    def __init__(self, max_entries: int = 32768, *, racy_ns: int = RACY_NS) -> None:
        if max_entries < 1:
            raise InvalidInput("must be at least 1", field="max-entries")
        if racy_ns < 0:
            raise InvalidInput("must not be negative", field="racy-ns")
        self.max_entries = max_entries
        #: see RACY_NS (tests lower it to exercise the path layer on files they just wrote)
        self.racy_ns = racy_ns
        self._entries: dict[str, ManifestFacts] = {}
        #: path -> (stat key, facts): the path layer (see facts_at)
        self._by_path: dict[str, tuple[_StatKey, ManifestFacts]] = {}
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0
        #: listings' manifests served by their stat alone
        self.stat_hits = 0

    def __repr__(self) -> str:
        size = f"{len(self._entries)}/{self.max_entries}"
        return f"ManifestCache({size}, hits={self.hits}, misses={self.misses}, stat_hits={self.stat_hits})"

    def __len__(self) -> int:
        return len(self._entries)

    def facts(self, raw: bytes) -> ManifestFacts:
        """The listing facts of the manifest bytes ``raw``; blocking (decodes on a miss)."""
        digest = blob.digest_of(raw)
        with self._lock:
            hit = _lru_take(self._entries, digest)
            if hit is not None:
                self.hits += 1
                return hit
            self.misses += 1
        facts = manifest_facts(raw, digest)  # outside the lock: decoding is the slow part
        with self._lock:
            _lru_put(self._entries, digest, facts, self.max_entries)
        return facts

    def facts_at(self, path: str) -> ManifestFacts | None:
        """The listing facts of the manifest file at ``path``; None if there is none there
        (not committed, removed meanwhile, not a regular file). Blocking.

        Served by one ``stat`` when the file's key (device, inode, size, mtime,
        ctime) is the one recorded when these facts were read from it; otherwise
        the bytes are read and go through :meth:`facts`, as without this layer.
        A read is recorded only if the file's key was the same before and after
        the read (it did not change meanwhile) and both its times were more than
        :attr:`racy_ns` (default :data:`RACY_NS`) old before it. Any later change
        to the file, in place or by a rename over it, sets its ctime to the clock
        at that moment, which is then later than the recorded ctime by more than
        a clock tick; and ctime cannot be set by users. So a recorded key never matches changed content
        (barring the system clock being set back, and on NFS a change made by
        another client while this one's attribute cache still holds the old
        times: see docs/architecture.md).
        """
        now = time.time_ns()
        try:
            before = os.stat(path)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError:
            before = None  # the read below meets the same problem and reports it as before
        key = _stat_key(before) if before is not None and stat.S_ISREG(before.st_mode) else None
        if key is not None:
            with self._lock:
                hit = self._by_path.pop(path, None)  # a version no longer there is dropped
                if hit is not None and hit[0] == key:
                    _lru_put(self._by_path, path, hit, self.max_entries)  # most recently used
                    self.stat_hits += 1
                    return hit[1]
        raw = fastread.read_small(path)
        if raw is None:
            return None
        facts = self.facts(raw)
        if key is not None and before is not None:
            settled = max(before.st_mtime_ns, before.st_ctime_ns) < now - self.racy_ns
            try:
                unchanged = settled and _stat_key(os.stat(path)) == key
            except OSError:
                unchanged = False
            if unchanged:
                with self._lock:
                    _lru_put(self._by_path, path, (key, facts), self.max_entries)
        return facts


K = TypeVar("K")
V = TypeVar("V")


def _lru_take(entries: dict[K, V], key: K) -> V | None:
    """``entries[key]`` made the most recently used (moved last), or None; call under the lock."""
    hit = entries.pop(key, None)
    if hit is not None:
        entries[key] = hit
    return hit


def _lru_put(entries: dict[K, V], key: K, value: V, bound: int) -> None:
    """Set ``entries[key]`` as the most recently used, dropping the least recently used
    (first) entries beyond ``bound``; call under the lock."""
    entries[key] = value
    while len(entries) > bound:
        del entries[next(iter(entries))]


#: what identifies one version of a file: (device, inode, size, mtime ns, ctime ns)
_StatKey = tuple[int, int, int, int, int]


def _stat_key(st: os.stat_result) -> _StatKey:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


#: the server's manifest cache (one per application; see :class:`ManifestCache`)
MANIFEST_CACHE: web.AppKey[ManifestCache] = web.AppKey("manifest_cache", ManifestCache)


#: one group of a group listing: (group, owner, times of its committed snapshots)
_GroupRow = tuple[GroupId, AuthId | None, list[int]]
#: one group of a snapshot listing: (group, owner, [(time, manifest facts, protected)])
_SnapshotRow = tuple[GroupId, AuthId | None, list[tuple[int, ManifestFacts, bool]]]


def _group_rows(ds: Datastore, ns: Namespace, only_for: AuthId | None) -> list[_GroupRow]:
    """The groups of ``ns`` the caller may see that hold a committed snapshot. Per group:
    one try-open of ``owner``, one scandir, one stat per snapshot folder."""
    if not ds.namespace_exists(ns):
        raise NotFound(f"namespace {ns} does not exist")
    ns_dir = str(ds.ns_path(ns))
    out: list[_GroupRow] = []
    for g in _list_groups(ns_dir):
        gdir = fastread.group_dir(ns_dir, g)
        owner = _owner_at(gdir)
        if only_for is not None and not owns(owner, only_for):
            continue
        times = _committed_times(gdir)
        if times:
            out.append((g, owner, times))
    return out


def _groups_blocking(ds: Datastore, ns: Namespace, only_for: AuthId | None) -> list[protocol.GroupItem]:
    """The group listing as items (see :func:`_groups_json` for the wire form)."""
    return [
        protocol.GroupItem(g, owner, len(times), times[-1])
        for g, owner, times in _group_rows(ds, ns, only_for)
    ]


def _groups_json(ds: Datastore, ns: Namespace, only_for: AuthId | None) -> bytes:
    """The group listing's answer body: exactly ``{"data": [item.to_json(), ...]}`` of
    :func:`_groups_blocking`, compactly encoded, built as one string."""
    parts = [
        f'{_group_head(g)},"owner":{_owner_json(owner)},"backup-count":{len(times)},"last-backup":{times[-1]}}}'
        for g, owner, times in _group_rows(ds, ns, only_for)
    ]
    return ('{"data":[' + ",".join(parts) + "]}").encode()


def _snapshot_rows(
    ds: Datastore,
    ns: Namespace,
    group: GroupId | None,
    only_for: AuthId | None,
    cache: ManifestCache,
    watch: Watch | None = None,
) -> list[_SnapshotRow]:
    """The committed snapshots of one group (or all groups of ``ns``) the caller may see, per
    group; manifests decoded through ``cache``. Per group: one try-open of ``owner``, one
    scandir; per snapshot: one stat of the manifest (and a read of it unless the cache
    knows that version: :meth:`ManifestCache.facts_at`), one access() for ``.protected``.

    ``watch``, if given, is called with every directory this reads (the namespace
    folder, the backup-type folders, the group folders, the snapshot folders), each
    before that directory is scanned or a file in it is read; it changes nothing read."""
    ns_dir = str(ds.ns_path(ns))
    if watch is not None:
        watch(ns_dir)
    if not ds.namespace_exists(ns):
        raise NotFound(f"namespace {ns} does not exist")
    if group is None:
        groups = _list_groups(ns_dir, watch)
    else:
        groups = [group]
        if watch is not None:
            watch(f"{ns_dir}/{group.type.value}")  # the group folder's entry (and the 404 below)
    out: list[_SnapshotRow] = []
    facts_at = cache.facts_at
    exists = os.access
    for g in groups:
        gdir = fastread.group_dir(ns_dir, g)
        if watch is not None:
            watch(gdir)
        owner = _owner_at(gdir)
        if only_for is not None and not owns(owner, only_for):
            if group is not None:
                raise PermissionDenied(f"no permission on backup group {g}")
            continue
        # what Datastore.list_snapshots gives, with the manifests decoded through the cache
        snaps = []
        for name, t in fastread.snapshot_folders(gdir):
            folder = f"{gdir}/{name}"
            if watch is not None:
                watch(folder)
            fx = facts_at(f"{folder}/{MANIFEST_NAME}")
            if fx is None:
                continue  # not committed (or removed meanwhile)
            # access(): no exception object for the usual absent marker (as os.path.exists)
            snaps.append((t, fx, exists(f"{folder}/{PROTECTED_MARKER}", os.F_OK)))
        if snaps:
            out.append((g, owner, snaps))
    if group is not None and not out and not os.path.isdir(fastread.group_dir(ns_dir, group)):
        raise NotFound(f"backup group {group} not found")
    return out


def _snapshots_blocking(
    ds: Datastore,
    ns: Namespace,
    group: GroupId | None,
    only_for: AuthId | None,
    cache: ManifestCache,
) -> list[protocol.SnapshotItem]:
    """The snapshot listing of one group (or all groups of ``ns``) the caller may see, as items
    (manifests decoded through ``cache``; see :func:`_snapshots_json` for the wire form)."""
    return [
        protocol.SnapshotItem(
            SnapshotId(g, t), fx.files, fx.size, protected, fx.verify_state, owner, fx.comment, fx.digest
        )
        for g, owner, snaps in _snapshot_rows(ds, ns, group, only_for, cache)
        for t, fx, protected in snaps
    ]


def _snapshots_json(
    ds: Datastore,
    ns: Namespace,
    group: GroupId | None,
    only_for: AuthId | None,
    cache: ManifestCache,
    watch: Watch | None = None,
) -> bytes:
    """The snapshot listing's answer body: exactly ``{"data": [item.to_json(), ...]}`` of
    :func:`_snapshots_blocking`, compactly encoded, built as one string from the JSON
    pieces the cached :class:`ManifestFacts` carry (no per-snapshot objects or dicts).
    ``watch``: see :func:`_snapshot_rows` (the body does not depend on it)."""
    parts = []
    for g, owner, snaps in _snapshot_rows(ds, ns, group, only_for, cache, watch):
        head = _group_head(g) + ',"backup-time":'
        owner_json = _owner_json(owner)
        for t, fx, protected in snaps:
            parts.append(
                f'{head}{t},{fx.json_files},"protected":{"true" if protected else "false"},'
                f'"verification":{fx.json_verification},"owner":{owner_json}{fx.json_tail}'
            )
    return ('{"data":[' + ",".join(parts) + "]}").encode()


def _open_reader_blocking(ds: Datastore, ns: Namespace, snap: SnapshotId, only_for: AuthId | None) -> None:
    if only_for is not None and not owns(_owner(ds, ns, snap.group), only_for):
        raise PermissionDenied(f"no permission on backup group {snap.group}")
    if not ds.snapshot_exists(ns, snap):
        raise NotFound(f"snapshot {snap} not found")


@dataclass(frozen=True, slots=True)
class _FilePlan:
    data: bytes | None  # bytes to send (manifest, index), or None: send ``path``
    path: Path
    digests: Sequence[bytes]


def _file_blocking(session: ReaderSession, name: str) -> _FilePlan:
    ds, ns, snap = session.store, session.ns, session.snapshot
    folder = ds.snapshot_path(ns, snap)
    try:
        raw_manifest = (folder / MANIFEST_NAME).read_bytes()
    except FileNotFoundError:
        raise NotFound(f"snapshot {snap} not found (removed?)") from None
    if name == MANIFEST_NAME:
        return _FilePlan(raw_manifest, folder / name, ())
    manifest = Manifest.decode(raw_manifest)
    if manifest.file(name) is None:
        raise NotFound(f"file {name} not found in snapshot {snap}")
    path = folder / name
    if name.endswith(".blob"):
        if not path.is_file():
            raise NotFound(f"file {name} not found in snapshot {snap}")
        return _FilePlan(None, path, ())
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise NotFound(f"file {name} not found in snapshot {snap}") from None
    except OSError as exc:
        raise StorageError(f"cannot read {name} of snapshot {snap}") from exc
    return _FilePlan(data, path, decode_index(data).digests)


def _read_blob(path: str, digest: str) -> bytes | None:
    """A chunk file's bytes; None if it is missing or not of a plausible blob size (then
    it is not read at all, so a bogus huge file costs nothing). Blocking."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StorageError(f"cannot read chunk {digest}") from exc
    try:
        size = os.fstat(fd).st_size
        if not blob.encoded_size_ok(size):
            return None
        parts = []
        left = size
        while left > 0:
            piece = os.read(fd, left)
            if not piece:
                break  # shrank while read: what is there is sent, the client checks it
            parts.append(piece)
            left -= len(piece)
        return parts[0] if len(parts) == 1 else b"".join(parts)
    except OSError as exc:
        raise StorageError(f"cannot read chunk {digest}") from exc
    finally:
        os.close(fd)


def _read_frames(root: str, digests: Sequence[str], start: int, target: int) -> tuple[list[bytes], int]:
    """The framed answer for ``digests[start:]``, up to about ``target`` blob bytes. Blocking.

    Returns the byte strings to write, in order (small frames coalesced into
    pieces of about :data:`_WRITE_COALESCE`, a large blob as a piece of its own),
    and the index of the first digest not yet framed. At least one digest is
    framed per call. Built in a worker thread so that the event loop only writes:
    with 64 KiB chunks, framing and reading on the loop were a per-chunk cost.
    """
    out: list[bytes] = []
    buf = bytearray()
    size = 0
    i = start
    header = protocol.FRAME_HEADER
    while i < len(digests) and (i == start or size < target):
        d = digests[i]
        i += 1
        data = _read_blob(f"{root}/{d[:4]}/{d}", d)
        raw = bytes.fromhex(d)
        if data is None:
            buf += header.pack(raw, protocol.FRAME_MISSING)
            continue
        size += len(data)
        buf += header.pack(raw, len(data))
        if len(data) < _WRITE_COALESCE:
            buf += data
        else:
            out.append(bytes(buf))
            buf.clear()
            out.append(data)
        if len(buf) >= _WRITE_COALESCE:
            out.append(bytes(buf))
            buf.clear()
    if buf:
        out.append(bytes(buf))
    return out, i


def _json_body(body: bytes) -> web.Response:
    """A 200 answer of ``body`` as is: aiohttp sends these bytes (no compression is enabled)."""
    return web.Response(body=body, content_type="application/json", charset="utf-8")


def _tag_matches(request: web.Request, etag: str) -> bool:
    """Whether an ``If-None-Match`` of ``request`` names ``etag`` (a quoted strong tag):
    the tag itself, alone or in a comma-separated list, or ``*``. Weak tags (``W/"..."``)
    never match: the listing's tags are strong, and a weak comparison is not asked for."""
    for value in request.headers.getall(hdrs.IF_NONE_MATCH, ()):
        for item in value.split(","):
            tag = item.strip()
            if tag == etag or tag == "*":
                return True
    return False


def _tagged_body(request: web.Request, body: bytes, etag: str) -> web.Response:
    """The 200 answer of ``body`` with its ``ETag``, or ``304 Not Modified`` (no body, the
    same ``ETag``) when the request's ``If-None-Match`` names that tag."""
    if _tag_matches(request, etag):
        return web.Response(status=304, headers={hdrs.ETAG: etag})
    resp = _json_body(body)
    resp.headers[hdrs.ETAG] = etag
    return resp


# ---- handlers --------------------------------------------------------------------------------


async def list_stores(request: web.Request) -> web.Response:
    """``GET /admin/datastore``: the datastores the caller has any privilege on."""
    auth_id = get_auth_id(request)
    access = get_access(request)
    configs = await asyncio.to_thread(_configs, request)
    return ok(
        [
            {"store": c.name, "comment": c.comment}
            for c in sorted(configs, key=lambda c: c.name)
            if access.has_any_below(auth_id, f"/datastore/{c.name}")
        ]
    )


async def list_namespaces(request: web.Request) -> web.Response:
    """``GET .../namespace?parent=&max-depth=``: namespaces where the caller has a datastore privilege.

    As in PBS, a namespace is listed if the caller has Audit, Read, Backup or
    Modify on it (directly or inherited); asking below a parent under which the
    caller has nothing at all is refused (403).
    """
    store = _store_name(request)
    parent = _ns(request.query.get("parent"), "parent")
    depth = _max_depth(request.query.get("max-depth"))
    auth_id = get_auth_id(request)
    access = get_access(request)
    if not access.has_any_below(auth_id, datastore_acl_path(store, parent)):
        raise PermissionDenied(f"no permission on datastore {store}")

    def work() -> list[Namespace]:
        return _open(request, store).list_namespaces(parent, depth)

    found = await asyncio.to_thread(work)
    return ok(
        [
            protocol.ns_to_json(ns)
            for ns in found
            if access.privileges(auth_id, datastore_acl_path(store, ns)) & _NS_PRIVS
        ]
    )


async def list_groups(request: web.Request) -> web.Response:
    """``GET .../groups?ns=``: the groups the caller may see."""
    store = _store_name(request)
    ns = _ns(request.query.get("ns"))
    auth_id, vis = _visibility(request, store, ns)
    only_for = auth_id if vis is Visibility.OWNED else None

    def work() -> bytes:
        return _groups_json(_open(request, store), ns, only_for)

    return _json_body(await asyncio.to_thread(work))


async def list_snapshots(request: web.Request) -> web.Response:
    """``GET .../snapshots?ns=&backup-type=&backup-id=``: the snapshots the caller may see.

    Served through the app's :class:`ListingCache` (a repeated listing of an unchanged
    namespace costs no file system walk). The answer carries an ``ETag``; a matching
    ``If-None-Match`` gets 304, decided only after every check a 200 would pass (400,
    403 and 404 answers are the same with or without it)."""
    store = _store_name(request)
    ns = _ns(request.query.get("ns"))
    group = _group(request.query, required=False)
    auth_id, vis = _visibility(request, store, ns)
    only_for = auth_id if vis is Visibility.OWNED else None
    manifests = request.app[MANIFEST_CACHE]

    def locate() -> tuple[str, str, Datastore]:
        ds = _open(request, store)
        return os.path.realpath(ds.root), str(ds.ns_path(ns)), ds

    def build(ds: Datastore, watch: Watch | None) -> bytes:
        return _snapshots_json(ds, ns, group, only_for, manifests, watch)

    scope = (str(ns), None if group is None else str(group), None if only_for is None else str(only_for))
    listing = await request.app[LISTING_CACHE].get(scope, locate, build)
    return _tagged_body(request, listing.body, listing.etag)


async def open_reader(request: web.Request) -> web.Response:
    """``POST .../reader`` with ``ns``, ``backup-type``, ``backup-id``, ``backup-time``."""
    store = _store_name(request)
    body = await read_json(request)
    ns = _ns(body.get("ns"))
    snap = _snapshot(body)
    auth_id = get_auth_id(request)
    privs = get_access(request).privileges(auth_id, datastore_acl_path(store, ns))
    if P.DATASTORE_READ in privs:
        only_for = None
    elif P.DATASTORE_BACKUP in privs:
        only_for = auth_id
    else:
        raise PermissionDenied(f"no permission to read from datastore {store}")

    def work() -> Datastore:
        ds = _open(request, store)
        _open_reader_blocking(ds, ns, snap, only_for)
        return ds

    ds = await asyncio.to_thread(work)
    session = request.app[READERS].open(auth_id, ds, ns, snap)
    return ok({"reader": session.id})


async def close_reader(request: web.Request) -> web.Response:
    """``DELETE .../reader/{reader}``."""
    store = _store_name(request)
    request.app[READERS].close(request.match_info["reader"], get_auth_id(request), store)
    return ok(None)


def _session(request: web.Request, store: str) -> ReaderSession:
    return request.app[READERS].get(request.match_info["reader"], get_auth_id(request), store)


class _SentFileResponse(web.FileResponse):
    """A file response the handler sends itself (under the write timeout).

    aiohttp calls ``prepare`` again after the handler returns; for this class
    that second call is a no-op.
    """

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        if self.prepared:
            return None
        return await super().prepare(request)


async def _send_file(request: web.Request, path: Path) -> web.StreamResponse:
    """Send a file (an archive of a snapshot) as aiohttp's file answer, within the write timeout."""
    resp = _SentFileResponse(path, chunk_size=blob.MAX_BLOB_SIZE)
    resp.content_type = "application/octet-stream"
    async with asyncio.timeout(request.app[OPTIONS].write_timeout):
        await resp.prepare(request)
    return resp


async def download_file(request: web.Request) -> web.StreamResponse:
    """``GET .../reader/{reader}/file/{name}``: the manifest, an index (registers its digests) or a blob."""
    store = _store_name(request)
    name = request.match_info["name"]
    if name != MANIFEST_NAME:
        check_archive_name(name)
    session = _session(request, store)
    plan = await asyncio.to_thread(_file_blocking, session, name)
    if plan.digests:
        request.app[READERS].register(session, name, plan.digests)
    if plan.data is None:
        return await _send_file(request, plan.path)
    return web.Response(body=plan.data, content_type="application/octet-stream")


async def fetch_chunk(request: web.Request) -> web.StreamResponse:
    """``GET .../reader/{reader}/chunk/{digest}``: one chunk blob, if an index of the session lists it."""
    store = _store_name(request)
    digest = check_digest(request.match_info["digest"])
    session = _session(request, store)
    if not session.allows(digest):
        raise PermissionDenied(f"chunk {digest} is not referenced by an index of this reader session")
    data = await asyncio.to_thread(_read_blob, str(session.store.chunks.path(digest)), digest)
    if data is None:  # missing, or a file of no plausible blob size (not read at all)
        raise NotFound(f"chunk {digest} not found")
    return await _send_blob(request, data)


async def _send_blob(request: web.Request, data: bytes) -> web.StreamResponse:
    """Send ``data`` as the whole ``application/octet-stream`` answer, within the write timeout.

    The headers leave in a write of their own, then the blob in one write. Why not
    :class:`aiohttp.web.FileResponse` for a chunk: on uvloop it has no ``sendfile``
    and falls back to executor hops (open and stat, read, close) per chunk, and a
    chunk's first byte waited behind all of them (docs/performance.md, session 11).
    """
    resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
    resp.content_length = len(data)
    async with asyncio.timeout(request.app[OPTIONS].write_timeout):
        writer = await resp.prepare(request)
        # aiohttp >= 3.12 holds the headers back to coalesce them with the first write; here
        # they leave first, the form measured (docs/performance.md, session 11: within the
        # noise of coalescing); older versions have sent them already
        send_headers = getattr(writer, "send_headers", None)
        if send_headers is not None:
            send_headers()
        await resp.write(data)
    return resp


async def fetch_chunks(request: web.Request) -> web.StreamResponse:
    """``POST .../reader/{reader}/chunks`` with ``{"digests": [...]}``: a framed stream of blobs."""
    store = _store_name(request)
    opts = request.app[OPTIONS]
    body = await read_json(request)
    digests = body.get("digests")
    if not isinstance(digests, list) or not digests:
        raise InvalidInput("must be a non-empty list", field="digests")
    if len(digests) > opts.max_batch_digests:
        raise InvalidInput(f"at most {opts.max_batch_digests} digests per request", field="digests")
    for d in digests:
        if not isinstance(d, str):
            raise InvalidInput("must be a list of strings", field="digests")
        check_digest(d)
    session = _session(request, store)
    for d in digests:
        if not session.allows(d):
            raise PermissionDenied(f"chunk {d} is not referenced by an index of this reader session")
    root = str(session.store.chunks.base)  # digests were checked above: safe path parts

    resp = web.StreamResponse(headers={"Content-Type": protocol.CHUNKS_CONTENT_TYPE})
    timeout = opts.write_timeout

    async def write(data: bytes) -> None:
        async with asyncio.timeout(timeout):
            await resp.write(data)

    async with asyncio.TaskGroup() as tg:
        # read and frame the next piece while the current one is written: one piece of read-ahead
        pending = tg.create_task(asyncio.to_thread(_read_frames, root, digests, 0, BATCH_PIECE_BYTES))
        await resp.prepare(request)
        while True:
            pieces, nxt = await pending
            if nxt < len(digests):
                pending = tg.create_task(
                    asyncio.to_thread(_read_frames, root, digests, nxt, BATCH_PIECE_BYTES)
                )
            for piece in pieces:
                await write(piece)
            if nxt >= len(digests):
                break
    await resp.write_eof()
    return resp


#: the server's snapshot listing cache (one per application; see :class:`ListingCache`)
LISTING_CACHE: web.AppKey[ListingCache] = web.AppKey("listing_cache", ListingCache)


async def _close_listing_cache(app: web.Application) -> None:
    """App cleanup: the listing cache's loop reader and inotify descriptor go."""
    app[LISTING_CACHE].close()


def setup(app: web.Application) -> None:
    """Add the datastore routes and the caches (a test may replace ``app[LISTING_CACHE]``
    before the app starts; cleanup closes whichever is there)."""
    app[MANIFEST_CACHE] = ManifestCache()
    app[LISTING_CACHE] = ListingCache(enabled=app[OPTIONS].listing_cache)
    app.on_cleanup.append(_close_listing_cache)
    base = _A + "/admin/datastore"
    r = app.router
    r.add_get(_A + protocol.p_datastores(), list_stores)
    r.add_get(base + "/{store}/namespace", list_namespaces)
    r.add_get(base + "/{store}/groups", list_groups)
    r.add_get(base + "/{store}/snapshots", list_snapshots)
    r.add_post(base + "/{store}/reader", open_reader)
    r.add_delete(base + "/{store}/reader/{reader}", close_reader)
    r.add_get(base + "/{store}/reader/{reader}/file/{name}", download_file)
    r.add_get(base + "/{store}/reader/{reader}/chunk/{digest}", fetch_chunk)
    r.add_post(base + "/{store}/reader/{reader}/chunks", fetch_chunks)


__all__ = [
    "LISTING_CACHE",
    "MANIFEST_CACHE",
    "ManifestCache",
    "ManifestFacts",
    "manifest_facts",
    "owns",
    "setup",
]
