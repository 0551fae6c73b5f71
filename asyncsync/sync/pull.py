"""The pull engine: one function, :func:`pull`, for the CLI, sync jobs and library callers.

Pipeline (see ``docs/architecture.md`` for the why)::

    clean stale temp files of dead writers
    list remote namespaces under remote-ns → map under ns (refuse too-deep trees
      before any transfer) → create missing local namespaces
    list groups per namespace (or all its snapshots at once) → group filter;
      meanwhile the prescan reads each local group's state under its lock
    pre-check: groups with nothing to do are settled (in memory where prescanned)
    group workers (group-workers at a time), per group:
      take the group lock (a second pull of the same group refuses)
      owner: a new group gets the job owner; another owner → skipped, reported
      list snapshots → choose (skip unfinished; newer than the newest local one
        plus a re-sync of that one; transfer-last; verified-only)
      per snapshot: open reader → manifest (checked: same snapshot; an unchanged
        re-sync stops here) → open a SnapshotWriter (hidden temp folder in the
        group) → each file, one at a time: download, then one thread hop checks
        it (csum from the manifest; indexes decoded) and writes it into the temp
        folder; only the index's (32-byte digest, size) pairs are kept
        → chunks to fetch: all referenced digests except those a local snapshot
        of the same owner already references and that are present
        → shared fetch pool (dedup, batching, rate limit, verify, temp+rename)
        → all chunks durable → write the manifest, sync, rename (the local
          .protected marker survives); any error or cancellation removes the
          temp folder
      remove-vanished snapshots of the group (protected ones stay)
    remove-vanished groups and namespaces in scope (not after errors)
    → PullReport

Per-group failures are recorded in the report and the other groups carry on;
:meth:`PullReport.raise_for_errors` raises :class:`PartialFailure`. Job-level
failures (bad options, the remote unreachable or refusing the listing, a tree
too deep) raise before anything is transferred. Cancelling the task at any
point leaves the store consistent: a snapshot appears whole or not at all, and
no temp file survives (chunk writes, snapshot file writes and commits are
single thread hops that finish or clean up, and the snapshot's temp folder is
removed on the way out; the temp folder of a killed process is removed by the
next run).

Memory per snapshot is one file at a time (each at most
:data:`~asyncsync.protocol.MAX_FILE_SIZE`, as every source enforces) plus the
needed-chunk map (32-byte digest → size), and the fetch pool's own bounds.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import os
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from ..datastore import blob as blobcodec
from ..datastore import fastread
from ..datastore.datastore import LOCK_FILE, OWNER_FILE, Datastore, FileLock, SnapshotWriter
from ..datastore.index import decode_index
from ..datastore.manifest import MANIFEST_NAME, FileEntry, Manifest
from ..errors import (
    AsyncSyncError,
    Conflict,
    CorruptBlob,
    CorruptIndex,
    CorruptManifest,
    IntegrityError,
    InvalidInput,
    Locked,
    StorageError,
)
from ..names import ROOT_AUTH_ID, ROOT_NS, AuthId, GroupId, Namespace, SnapshotId
from ..protocol import GroupItem, SnapshotItem
from ..units import format_rate, format_size
from . import checkpoint as cpt
from .checkpoint import KeyRecorder
from .defaults import DEFAULT_FETCH_WORKERS, DEFAULT_GROUP_WORKERS, DEFAULT_MAX_INFLIGHT
from .groupfilter import GroupFilters
from .journal import ResumeJournal
from .nsmap import NamespaceMap
from .plan import choose_snapshots, manifest_unchanged, unchanged_count, vanished_snapshots
from .ratelimit import Clock, RateLimiter
from .report import GroupResult, GroupStatus, LogCallback, ProgressCallback, PullProgress, PullReport
from .source import BulkListing, LocalSource, SnapshotSource, Source, TaggedListing
from .threads import run_acquire, run_write

if TYPE_CHECKING:
    from ..config.syncjobs import SyncJobConfig
    from .fetch import FetchOutcome, FetchPool

logger = logging.getLogger("asyncsync.sync")

MiB = 1024 * 1024

#: groups checked per thread hop by the unchanged-group pre-check and read per hop by its
#: prescan (bounds one hop's duration)
SETTLE_BATCH = 256

#: most local snapshots the prescan keeps in memory per run (a group counts at least one;
#: measured: ≈ 600 bytes per group of one snapshot, ≈ 75 per snapshot of larger groups, so
#: at most ≈ 10 MB); groups beyond it are read by the pre-check once the listing is here
PRESCAN_MAX_SNAPSHOTS = 16384

#: chunks handed to the fetch pool per call: bounds the hex digest lists the pool
#: works with (its API takes hex); large enough that the pause between calls is rare
FETCH_SLICE = 16384


@dataclass(frozen=True, slots=True)
class PullOptions:
    """What to pull and how. Every limit is explicit; defaults suit a 2-core machine.

    ``rate_in``/``burst_in`` are bytes per second / bucket bytes (``None`` = no
    limit; burst defaults to the rate). ``clock`` drives the rate limiter (tests).
    """

    ns: Namespace = ROOT_NS
    remote_ns: Namespace = ROOT_NS
    max_depth: int | None = None
    group_filter: GroupFilters = field(default_factory=GroupFilters)
    remove_vanished: bool = False
    owner: AuthId = ROOT_AUTH_ID
    transfer_last: int | None = None
    verified_only: bool = False
    rate_in: int | None = None
    burst_in: int | None = None
    group_workers: int = DEFAULT_GROUP_WORKERS
    fetch_workers: int = DEFAULT_FETCH_WORKERS
    max_inflight: int = DEFAULT_MAX_INFLIGHT
    batch_bytes: int = 4 * MiB
    batch_chunks: int = 64
    retries: int = 3
    clean_temp: bool = True
    clock: Clock | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        def positive(name: str, value: int | None, *, allow_none: bool = False) -> None:
            if value is None and allow_none:
                return
            if value is None or value < 1:
                raise InvalidInput(f"must be a positive number, not {value!r}", field=name)

        positive("transfer-last", self.transfer_last, allow_none=True)
        positive("rate-in", self.rate_in, allow_none=True)
        positive("burst-in", self.burst_in, allow_none=True)
        positive("group-workers", self.group_workers)
        positive("fetch-workers", self.fetch_workers)
        positive("max-inflight", self.max_inflight)
        positive("batch-bytes", self.batch_bytes)
        positive("batch-chunks", self.batch_chunks)
        if self.burst_in is not None and self.rate_in is None:
            raise InvalidInput("needs rate-in", field="burst-in")
        if self.retries < 0:
            raise InvalidInput("must not be negative", field="retries")
        if self.max_inflight < blobcodec.MAX_CHUNK_SIZE:
            raise InvalidInput(
                f"must be at least {format_size(blobcodec.MAX_CHUNK_SIZE)} (one largest chunk)",
                field="max-inflight",
            )
        self.namespace_map()  # refuses a static depth overflow at construction

    @classmethod
    def from_job(cls, job: SyncJobConfig, **overrides: Any) -> PullOptions:
        """The options of a configured sync job (``overrides`` replace single fields)."""
        values: dict[str, Any] = {
            "ns": job.ns,
            "remote_ns": job.remote_ns,
            "max_depth": job.max_depth,
            "group_filter": job.group_filter,
            "remove_vanished": job.remove_vanished,
            "owner": job.owner,
            "transfer_last": job.transfer_last,
            "verified_only": job.verified_only,
            "rate_in": job.rate_in,
            "burst_in": job.burst_in,
            "group_workers": job.group_workers,
            "fetch_workers": job.fetch_workers,
            "max_inflight": job.max_inflight,
        }
        values.update(overrides)
        return cls(**values)

    def namespace_map(self) -> NamespaceMap:
        return NamespaceMap(self.remote_ns, self.ns, self.max_depth)

    def to_json(self) -> dict[str, object]:
        return {
            "ns": str(self.ns),
            "remote-ns": str(self.remote_ns),
            "max-depth": self.max_depth,
            "group-filter": [str(f) for f in self.group_filter.filters],
            "remove-vanished": self.remove_vanished,
            "owner": str(self.owner),
            "transfer-last": self.transfer_last,
            "verified-only": self.verified_only,
            "rate-in": self.rate_in,
            "burst-in": self.burst_in,
        }


# ---- blocking helpers (each called in one thread hop) ------------------------------


def _check_and_add(writer: SnapshotWriter, entry: FileEntry, data: bytes, needed: dict[bytes, int]) -> None:
    """Check one downloaded file against its manifest entry, then write it into ``writer``.

    One thread hop per file. The chunks an index references are added to
    ``needed`` (raw digest → size; first occurrence keeps its place). The caller
    does not touch ``needed`` while this runs (it awaits the hop, also when
    cancelled: :func:`run_write`).
    """
    actual = blobcodec.digest_of(data)
    if actual != entry.csum:
        raise IntegrityError(f"file {entry.filename}: checksum {actual} does not match the manifest")
    index = None
    if entry.filename.endswith((".fidx", ".didx")):
        index = decode_index(data)
        if index.total_size != entry.size:
            raise CorruptIndex(
                f"index {entry.filename} describes {index.total_size} bytes, the manifest says {entry.size}"
            )
    else:
        content = blobcodec.decode(data)  # a .blob: CRC and bounded decompression
        if len(content) != entry.size:
            raise CorruptBlob(
                f"blob {entry.filename} holds {len(content)} bytes, the manifest says {entry.size}"
            )
        del content
    writer.add_file(entry.filename, data, size=entry.size, csum=actual)
    if index is not None:
        # the map is only updated once the whole file is known good and written
        for digest, size in index.chunk_sizes():
            needed.setdefault(digest, size)


def _first_error(eg: BaseExceptionGroup[BaseException]) -> BaseException:
    """The first error of ``eg`` that is not a cancellation (the others' consequence), else its first."""
    leaves: list[BaseException] = []

    def walk(group: BaseExceptionGroup[BaseException]) -> None:
        for exc in group.exceptions:
            if isinstance(exc, BaseExceptionGroup):
                walk(exc)
            else:
                leaves.append(exc)

    walk(eg)
    for exc in leaves:
        if not isinstance(exc, asyncio.CancelledError):
            return exc
    return leaves[0]


@contextlib.asynccontextmanager
async def _task_group() -> AsyncIterator[asyncio.TaskGroup]:
    """An :class:`asyncio.TaskGroup` whose failure surfaces as its first real error
    (:func:`_first_error`), not as an exception group: the callers report one error."""
    try:
        async with asyncio.TaskGroup() as tg:
            yield tg
    except BaseExceptionGroup as eg:
        raise _first_error(eg) from None


def _present_and_touch(store: Datastore, digests: Sequence[bytes]) -> set[bytes]:
    """Those of ``digests`` present in the chunk store; their mtime is refreshed so that
    a garbage collection running concurrently keeps them (as Proxmox does).

    Presence is the touch itself: one ``utime`` per chunk, no ``stat`` (Proxmox's
    ``cond_touch_chunk`` likewise). ``digests`` are *trusted* chunks, referenced by
    the owner's newest local snapshot and written whole by an atomic rename; a
    file damaged since is the verify job's to find, as it already is for that
    snapshot. (The write path, for every other chunk, still treats a file of
    implausible size as absent and replaces it.) Measured on the incremental
    rig: 8,300 chunks, stat + utime 60 ms, utime alone 36 ms, on the critical
    path of an incremental pull.
    """
    # raw digests made into paths directly (thousands of chunks per snapshot: validation and
    # Path objects would cost more than the syscalls); paths relative to the chunk folder, so
    # the kernel walks two components per chunk, not the whole path (-7 % on the rig)
    out: set[bytes] = set()
    try:
        folder = os.open(store.chunks.base, os.O_RDONLY | os.O_DIRECTORY)
    except FileNotFoundError:  # no chunk folder: no chunk is present
        return out
    try:
        for d in digests:
            h = d.hex()
            try:
                os.utime(f"{h[:4]}/{h}", dir_fd=folder)
            except FileNotFoundError:
                continue
            out.add(d)
    finally:
        os.close(folder)
    return out


def _trusted_digests(store: Datastore, owner: AuthId) -> set[bytes]:
    """Chunks the newest local snapshot of every group owned by ``owner`` references.

    A chunk in this set may be reused without download: the job owner can read
    those snapshots already, so a remote that lists such a digest learns nothing
    and gains nothing (the forged-reference attack Proxmox guards against needs a
    chunk the owner could not read). Newest snapshot only: that bounds the work to
    one snapshot per group while still covering the previous snapshot of the
    group (Proxmox's rule) and chunks shared between groups (cloned VMs).
    """
    out: set[bytes] = set()
    for ns in store.list_namespaces():
        for g in store.list_groups(ns):
            if store.get_owner(ns, g) != owner:
                continue
            # ids only (one stat each): list_snapshots would decode every manifest of the group
            ids = store.list_snapshot_ids(ns, g)
            if not ids:
                continue
            with contextlib.suppress(AsyncSyncError, OSError):
                manifest = store.load_manifest(ns, ids[-1])
                for f in manifest.files:
                    if f.filename.endswith((".fidx", ".didx")):
                        out.update(store.load_index(ns, ids[-1], f.filename).digests)
    return out


@contextlib.asynccontextmanager
async def _snapshot_writer(
    store: Datastore, ns: Namespace, snap: SnapshotId
) -> AsyncIterator[SnapshotWriter]:
    """:meth:`Datastore.begin_snapshot` as an async context manager, every blocking call
    in a worker thread: leaving without a commit (an error, a cancellation) removes the
    temp folder, and so does a cancellation while the folder is being created."""
    writer = await run_acquire(functools.partial(store.begin_snapshot, ns, snap), SnapshotWriter.abort)
    try:
        yield writer
    finally:
        await run_write(writer.abort)  # no-op after a commit


def _same_folder(a: Path, b: Path) -> bool:
    return a.resolve() == b.resolve()


def _create_namespaces(store: Datastore, namespaces: Sequence[Namespace]) -> int:
    created = 0
    for ns in namespaces:
        if store.create_namespace(ns, parents=True):
            created += 1
    return created


def _remove_snapshots(store: Datastore, ns: Namespace, snaps: Sequence[SnapshotId]) -> int:
    removed = 0
    for s in snaps:
        if store.is_protected(ns, s):
            continue
        store.remove_snapshot(ns, s)
        removed += 1
    return removed


def _remove_group(store: Datastore, ns: Namespace, group: GroupId) -> tuple[int, bool]:
    """Remove a vanished group's unprotected snapshots (and the group if none remain)."""
    with store.group_lock(ns, group):
        count = sum(1 for i in store.list_snapshots(ns, group) if not i.protected)
        gone = store.remove_group(ns, group)
    return count, gone


@dataclass(frozen=True, slots=True)
class LocalSnapshot:
    """A committed local snapshot as a pull sees it (``manifest_digest`` only for the newest)."""

    snapshot: SnapshotId
    manifest_digest: str | None


def _begin_group(
    store: Datastore, ns: Namespace, group: GroupId, owner: AuthId
) -> tuple[FileLock, AuthId, list[LocalSnapshot]]:
    """A group's local bookkeeping in one thread hop: take its lock, make sure it exists
    (a new group gets ``owner``), and list its local snapshots (only if it is ours).

    Returns (the held lock, the group's owner, the local snapshots); on any error
    the lock is released before raising.
    """
    lock = store.group_lock(ns, group).acquire()
    try:
        actual = store.ensure_group(ns, group, owner)
        local: list[LocalSnapshot] = []
        if actual == owner:
            ids = store.list_snapshot_ids(ns, group)
            # only the newest local snapshot is ever re-synced: only its manifest is read
            local = [LocalSnapshot(s, None) for s in ids[:-1]]
            if ids:
                local.append(LocalSnapshot(ids[-1], store.manifest_digest(ns, ids[-1])))
    except BaseException:
        lock.release()
        raise
    return lock, actual, local


#: what the unchanged-group check knows of one local group: time of each committed snapshot
#: (the newest only without remove-vanished) → manifest digest (known for the newest only)
LocalState = dict[int, str | None]

#: no group's local state known beforehand (see :func:`_settle_unchanged`)
_NOTHING_KNOWN: Mapping[GroupId, LocalState] = MappingProxyType({})


def _local_state(gdir: str, older: bool = True, keys: KeyRecorder | None = None) -> LocalState:
    """The committed local snapshots of the group folder ``gdir``, oldest first: time →
    manifest digest, known for the newest only (all :func:`unchanged_count` needs).

    The newest manifest is read directly (its read replaces its stat; if it has none, the
    next older one is tried); the older ones get one stat each. Without ``older`` only the
    newest committed snapshot is returned: without remove-vanished that is all
    :func:`unchanged_count` looks at (:func:`~asyncsync.sync.plan.choose_snapshots` goes
    by the newest local time alone), and it saves a stat per older snapshot.

    ``keys`` (only without ``older``) records the stat of the manifest of each snapshot
    tried, newest first (missing ones as missing), each before its read, for a pull
    checkpoint (:mod:`.checkpoint`); the caller has recorded the group folder's.
    """
    assert keys is None or not older, "a checkpoint covers only reads without remove-vanished"
    temp: list[str] | None = None if keys is None else []
    folders = fastread.snapshot_folders(gdir, temp)
    if temp and keys is not None:
        keys.spoil()
    local: LocalState = {}
    for i in range(len(folders) - 1, -1, -1):
        name, t = folders[i]
        raw = _read_recorded(gdir, f"{name}/{MANIFEST_NAME}", keys)
        digest = None if raw is None else blobcodec.digest_of(raw)
        if digest is not None:
            if older:
                local = {t: None for name, t in folders[:i] if fastread.is_committed(f"{gdir}/{name}")}
            local[t] = digest
            break
    return local


def _read_recorded(gdir: str, rel: str, keys: KeyRecorder | None) -> bytes | None:
    """The bytes of the small file ``rel`` of the group folder ``gdir`` (None if there is
    none: :func:`~asyncsync.datastore.fastread.read_small`), its stat recorded in ``keys``."""
    if keys is None:
        return fastread.read_small(f"{gdir}/{rel}")
    got = fastread.read_small_stat(f"{gdir}/{rel}")
    keys.add(rel, None if got is None else got[1])
    return None if got is None else got[0]


@dataclass(frozen=True, slots=True)
class _SettleRules:
    """The job's rules for the unchanged-group check (the same for every group of a run)."""

    owner: AuthId
    transfer_last: int | None
    verified_only: bool
    remove_vanished: bool


def _read_group(gdir: str, owner: AuthId, older: bool, keys: KeyRecorder | None = None) -> LocalState | None:
    """The local state of the group folder ``gdir`` (:func:`_local_state`, ``older`` as
    there), read under the group lock, which is released before returning; None if the
    group is missing here, locked (another pull or backup), owned by someone other than
    ``owner``, or unreadable.

    Blocking. Per group: one open + flock of the lock file (a missing group folder makes
    that open fail: no separate exists check, and nothing is created), one try-open of
    ``owner``, one scandir, one try-open + fstat of the newest manifest and one stat per
    older snapshot. It changes nothing (at most the group's lock file is created, as any
    pull does). ``keys`` records what was read for a pull checkpoint (:func:`_local_state`),
    the owner file's stat after the group folder's.
    """
    try:
        # the group lock without group_lock's mkdir and Path objects: a group folder that
        # does not exist here fails the open (new here: the full path creates it)
        lock = FileLock(f"{gdir}/{LOCK_FILE}", "group").acquire()
    except (AsyncSyncError, OSError):
        return None  # missing, unusable, or locked: the full path reports it
    try:
        if keys is not None:
            keys.add("", os.stat(gdir))  # before the owner file is read, as any entry of it
        raw = _read_recorded(gdir, OWNER_FILE, keys)
        found = None if raw is None else fastread.parse_owner(raw.decode("utf-8").strip())
        if found != owner:
            return None
        return _local_state(gdir, older, keys)
    except (AsyncSyncError, OSError, ValueError):
        return None  # the full path meets the same problem and reports it as before
    finally:
        lock.release()


def _settle_unchanged(
    store: Datastore,
    ns: Namespace,
    groups: Sequence[tuple[GroupId, list[SnapshotItem]]],
    rules: _SettleRules,
    known: Mapping[GroupId, LocalState] = _NOTHING_KNOWN,
    keys: dict[GroupId, KeyRecorder] | None = None,
) -> list[tuple[GroupId, int]]:
    """The groups of ``groups`` (with their remote snapshots) that need nothing, each with
    its count of unchanged snapshots; blocking, one thread hop for many groups.

    For each group this does what :func:`_begin_group` and the start of the full
    path do, under the group lock (:func:`_read_group`: lock, owner, local snapshot
    ids, the newest local manifest's digest, release), and decides with the same
    rules (:func:`~asyncsync.sync.plan.unchanged_count`). A group whose state
    ``known`` holds (the prescan read it under its lock while the listing was
    on its way) is decided from that state without reading again. A group that does
    not exist here, is owned by someone else, is locked, or cannot be read is left
    out, and the full path handles (and reports) it as before. With ``keys`` each group
    read here has its read's stat keys recorded there (for a pull checkpoint).

    The answer is final for this run: a group settled here gets no writes, and its
    state was read under its lock, so the run is as if its full path had run at
    that moment and found nothing to do (a local change after the read, such as a
    backup adding a snapshot, is then simply later than this pull). A group left
    out takes the full path, which re-reads everything under its own lock.
    """
    out: list[tuple[GroupId, int]] = []
    ns_dir = str(store.ns_path(ns))
    for group, remote in groups:
        state = known.get(group)
        if state is None:
            # plain string paths: the same files as group_lock, get_owner, list_snapshot_ids and
            # manifest_digest use, without their per-call Path objects
            rec = None if keys is None else keys.setdefault(group, KeyRecorder())
            state = _read_group(fastread.group_dir(ns_dir, group), rules.owner, rules.remove_vanished, rec)
            if state is None:
                continue
        n = unchanged_count(
            remote,
            state,
            transfer_last=rules.transfer_last,
            verified_only=rules.verified_only,
            remove_vanished=rules.remove_vanished,
        )
        if n is not None:
            out.append((group, n))
    return out


def _prescan_groups(
    store: Datastore,
    ns: Namespace,
    groups: Sequence[GroupId],
    owner: AuthId,
    older: bool,
    budget: int,
    keys: dict[GroupId, KeyRecorder] | None = None,
) -> tuple[dict[GroupId, LocalState], int]:
    """The local state of those of ``groups`` that :func:`_read_group` can read (``older``
    as there), each read under its lock (released before the next); blocking, one thread hop.

    Stops once the states hold ``budget`` snapshots (a group counts at least one);
    returns the states and how many of the budget they used. With ``keys`` each read
    group's stat keys are recorded there (for a pull checkpoint).
    """
    out: dict[GroupId, LocalState] = {}
    used = 0
    ns_dir = str(store.ns_path(ns))
    for group in groups:
        if used >= budget:
            break
        rec = None if keys is None else KeyRecorder()
        state = _read_group(fastread.group_dir(ns_dir, group), owner, older, rec)
        if state is not None:
            if keys is not None and rec is not None:
                keys[group] = rec
            out[group] = state
            used += max(1, len(state))
    return out, used


def _local_groups(store: Datastore, ns: Namespace) -> list[tuple[GroupId, AuthId | None]]:
    if not store.namespace_exists(ns):
        return []
    return [(g, store.get_owner(ns, g)) for g in store.list_groups(ns)]


def _by_group(items: Sequence[SnapshotItem]) -> dict[GroupId, list[SnapshotItem]]:
    """A namespace-wide listing's items by group, in listing order."""
    out: dict[GroupId, list[SnapshotItem]] = {}
    for item in items:
        out.setdefault(item.snapshot.group, []).append(item)
    return out


def _bulk_plan(remote: Namespace, local: Namespace, snapshots: dict[GroupId, list[SnapshotItem]]) -> _NsPlan:
    """The plan of a namespace-wide listing: its groups are those it names."""
    items = [
        GroupItem(g, None, len(listed), max(i.snapshot.time for i in listed))
        for g, listed in snapshots.items()
    ]
    return _NsPlan(remote, local, items, snapshots)


@dataclass(slots=True)
class _NsPlan:
    remote: Namespace
    local: Namespace
    groups: list[GroupItem] | None  # None: the listing failed
    #: snapshots per group from one namespace-wide listing (None: list per group)
    snapshots: dict[GroupId, list[SnapshotItem]] | None = None
    #: unchanged snapshots per group, from a checkpoint whose listing tag and local keys matched
    settled: dict[GroupId, int] | None = None


class _PullRun:
    """State of one pull; :func:`pull` is the public face."""

    def __init__(
        self,
        source: Source,
        target: Datastore,
        options: PullOptions,
        progress: ProgressCallback | None,
        log: LogCallback | None,
    ) -> None:
        self.source = source
        self.target = target
        self.options = options
        self._progress = progress
        self._log_cb = log
        self.report = PullReport(source=source.description, target=target.name, started=time.time())
        self.limiter = (
            RateLimiter(options.rate_in, options.burst_in, clock=options.clock) if options.rate_in else None
        )
        self.journal = ResumeJournal(target.root, options.owner)
        self._pool: FetchPool | None = None
        self._t0 = time.monotonic()
        self._trusted: set[bytes] | None = None
        self._trusted_lock = asyncio.Lock()
        self._logical_done = 0
        self._logical_total = 0
        self._current_group: str | None = None
        #: this run's checkpoint file, None if the run can neither use nor write one
        self._cp_path = self._checkpoint_path()
        #: (remote, local) namespace → its entry in this run's checkpoint (not yet checked)
        self._cp_entries: dict[tuple[Namespace, Namespace], cpt.NamespaceEntry] = {}
        #: the check of those entries' local keys (:meth:`_check_entries`), run beside the listings
        self._cp_check: asyncio.Task[dict[tuple[Namespace, Namespace], cpt.NamespaceEntry]] | None = None
        #: (remote, local) namespace → the tag of the snapshot listing received this run
        self._tags: dict[tuple[Namespace, Namespace], str] = {}
        #: local namespace → group → the stat keys of its unchanged-group read this run
        self._cp_keys: dict[Namespace, dict[GroupId, KeyRecorder]] = {}

    def _checkpoint_path(self) -> Path | None:
        """Where this run's checkpoint lives, if it may have one: a source with tagged
        namespace-wide listings, no group filter and no remove-vanished (those runs read
        more than the checkpoint records). The file name digests every option the
        unchanged-group decision depends on, so another job's checkpoint is never used."""
        opts = self.options
        if opts.group_filter.filters or opts.remove_vanished or not isinstance(self.source, TaggedListing):
            return None
        options = {
            "remote-ns": str(opts.remote_ns),
            "ns": str(opts.ns),
            "max-depth": opts.max_depth,
            "owner": str(opts.owner),
            "transfer-last": opts.transfer_last,
            "verified-only": opts.verified_only,
        }
        return cpt.path_for(self.target.root, cpt.run_key(self.source.description, options))

    @property
    def pool(self) -> FetchPool:
        """The run's shared fetch pool, made on first use: a pull that settles every group
        without transferring never imports the fetch machinery (≈ 4 ms of its start)."""
        if self._pool is None:
            from .fetch import FetchPool

            opts = self.options
            self._pool = FetchPool(
                self.target.chunks,
                workers=opts.fetch_workers,
                max_inflight=opts.max_inflight,
                limiter=self.limiter,
                batch_bytes=opts.batch_bytes,
                batch_chunks=opts.batch_chunks,
                retries=opts.retries,
                on_chunk=self._on_chunk,
                on_queued=self._on_queued,
                journal=self.journal.append,
            )
        return self._pool

    # ---- reporting ----------------------------------------------------------

    def _log(self, message: str) -> None:
        if self._log_cb is not None:
            self._log_cb(message)
        else:
            logger.info("%s", message)

    def _emit(self) -> None:
        if self._progress is None:
            return
        r = self.report
        self._progress(
            PullProgress(
                bytes=r.bytes_downloaded,
                chunks=r.chunks_downloaded,
                chunks_reused=r.chunks_reused,
                logical_bytes=self._logical_done,
                total_logical_bytes=self._logical_total,
                snapshots_synced=r.snapshots_synced,
                current_group=self._current_group,
                elapsed=time.monotonic() - self._t0,
            )
        )

    def _on_chunk(self, wire: int, logical: int) -> None:
        self.report.bytes_downloaded += wire
        self.report.chunk_bytes += logical
        self.report.chunks_downloaded += 1
        self._logical_done += logical
        self._emit()

    def _on_queued(self, logical: int) -> None:
        self._logical_total += logical

    async def _received(self, nbytes: int) -> None:
        """Account (and rate-limit) a downloaded file."""
        self.report.bytes_downloaded += nbytes
        if self.limiter is not None:
            await self.limiter.acquire(nbytes)

    # ---- the run ------------------------------------------------------------

    async def run(self) -> PullReport:
        try:
            report = await self._run()
        finally:
            await run_write(self.journal.close)
        if report.ok:
            await run_write(self.journal.clear)
        return report

    async def _run(self) -> PullReport:
        opts = self.options
        nsmap = opts.namespace_map()
        if isinstance(self.source, LocalSource):
            same = await asyncio.to_thread(_same_folder, self.source.store.root, self.target.root)
            if same and (nsmap.in_scope(opts.ns) or nsmap.local_in_scope(opts.remote_ns)):
                raise InvalidInput(
                    f"source and target are the same datastore with overlapping namespaces "
                    f"({opts.remote_ns!s} and {opts.ns!s})",
                    field="ns",
                )
        plans, work, prescanned = await self._plan(nsmap)

        order = {(p.local, g): i for i, (p, g) in enumerate(work)}
        work = await self._settle_unchanged(work, prescanned)
        if self.report.groups_from_checkpoint:
            self._emit()
        todo = iter(work)

        async def group_worker() -> None:
            for plan, group in todo:
                listed = plan.snapshots.get(group) if plan.snapshots is not None else None
                await self._pull_group(plan.remote, plan.local, group, listed)

        try:
            if work:  # every group settled: no pool, no workers
                async with asyncio.TaskGroup() as tg:
                    tg.create_task(self.pool.run())
                    # the first snapshot with chunks needs the trusted set: read it while that
                    # snapshot's reader, manifest and indexes are on their way
                    tg.create_task(self._warm_trusted())
                    try:
                        async with asyncio.TaskGroup() as groups_tg:
                            for _ in range(min(opts.group_workers, len(work))):
                                groups_tg.create_task(group_worker())
                    finally:
                        self.pool.close()
        except BaseExceptionGroup as eg:
            # only a bug gets here (groups and batches catch their own errors): unwrap one
            leaves = eg.exceptions
            if len(leaves) == 1 and not isinstance(leaves[0], BaseExceptionGroup):
                raise leaves[0] from None
            raise

        # one order whatever the workers' timing and the pre-check took: the run's order
        self.report.groups.sort(key=lambda r: order.get((r.local_ns, r.group), len(order)))
        if self._cp_path is not None:
            await run_write(self._save_checkpoint, plans, work)
        if opts.remove_vanished:
            await self._remove_vanished(nsmap, plans)
        self.report.duration = time.monotonic() - self._t0
        self._current_group = None
        self._emit()
        return self.report

    async def _clean_temp(
        self, check: asyncio.Task[dict[tuple[Namespace, Namespace], cpt.NamespaceEntry]] | None
    ) -> None:
        """Remove dead writers' temp files (:meth:`Datastore.cleanup_temp`, not the full
        pass). With a checkpoint ``check``, after it: the groups of an entry whose keys all
        matched hold none (a group folder is recorded only if it held no temp entry, and
        it has not changed since), so they are not looked into."""
        clean: set[str] = set()
        if check is not None:
            for (_, local), entry in (await check).items():
                ns_dir = str(self.target.ns_path(local))
                clean.update(fastread.group_dir(ns_dir, g.group) for g in entry.groups)
        await run_write(functools.partial(self.target.cleanup_temp, full=False, clean=clean))

    async def _plan(
        self, nsmap: NamespaceMap
    ) -> tuple[list[_NsPlan], list[tuple[_NsPlan, GroupId]], dict[Namespace, dict[GroupId, LocalState]]]:
        """List the remote namespaces, create their local counterparts, and plan each one:
        the plans, the selected (plan, group) pairs in the run's order, and the local
        groups' states the prescan read meanwhile (:meth:`_prescan`)."""
        opts = self.options
        remote_nss = await self.source.list_namespaces(opts.remote_ns, opts.max_depth)
        pairs = nsmap.map_all(remote_nss)  # raises before any transfer if a namespace does not fit
        if not any(r == opts.remote_ns for r, _ in pairs):
            pairs.insert(0, (opts.remote_ns, nsmap.map(opts.remote_ns)))
        self.report.namespaces_created = await run_write(
            _create_namespaces, self.target, [local for _, local in pairs]
        )
        if self._cp_path is not None:
            cp = await asyncio.to_thread(cpt.load, self._cp_path)
            entries = ((pair, cp.entry(*pair) if cp is not None else None) for pair in pairs)
            self._cp_entries = {pair: e for pair, e in entries if e is not None}
        plans: list[_NsPlan] = []
        work: list[tuple[_NsPlan, GroupId]] = []
        prescanned: dict[Namespace, dict[GroupId, LocalState]] = {}
        async with _task_group() as tg:
            if self._cp_entries:
                # stat keys, while the listings are on their way: far cheaper than the
                # prescan, which skips the namespaces the checkpoint covers
                self._cp_check = tg.create_task(run_write(self._check_entries, dict(self._cp_entries)))
            if opts.clean_temp:
                # only the temp folders (O(temp files)); gc does the full O(chunks) scan. It
                # runs while the listings are on their way: it removes only what dead
                # processes left, which neither the listings nor creating namespaces touch
                tg.create_task(self._clean_temp(self._cp_check))
            if isinstance(self.source, BulkListing):
                # the local groups' state does not depend on the listings: read it while they
                # are on their way (the client idles meanwhile); used where a namespace-wide
                # snapshot listing arrives (a per-group listing goes the full path anyway).
                # Namespaces a valid checkpoint covers are read only if their listing changed
                scan = [local for remote, local in pairs if (remote, local) not in self._cp_entries]
                tg.create_task(self._prescan(scan, prescanned))
            for remote, local in pairs:
                p = await self._plan_namespace(remote, local)
                plans.append(p)
                selected = [g.group for g in sorted(p.groups or [], key=lambda g: g.group)]
                selected = [g for g in selected if opts.group_filter.matches(g)]
                work.extend((p, g) for g in selected)
        return plans, work, prescanned

    async def _prescan(
        self, namespaces: Sequence[Namespace], out: dict[Namespace, dict[GroupId, LocalState]]
    ) -> None:
        """Read the local state of the groups of ``namespaces`` the group filter selects into
        ``out`` (namespace → group → state), for :func:`_settle_unchanged` to decide from
        once the remote listing is here.

        Each group is read under its lock, released within the hop (:func:`_read_group`);
        a group it cannot read (missing, locked, another owner, unreadable) is left out
        and the pre-check or the full path reads it again as before. At most
        :data:`PRESCAN_MAX_SNAPSHOTS` local snapshots are kept; :data:`SETTLE_BATCH`
        groups per thread hop, each hop awaited also when cancelled (:func:`run_write`),
        so a cancelled or failed plan leaves no thread reading and no lock held. Never
        raises for the store's errors (the full path meets and reports them).
        """
        opts = self.options
        budget = PRESCAN_MAX_SNAPSHOTS
        for ns in namespaces:
            if ns in out:
                continue
            try:
                groups = await run_write(self.target.list_groups, ns)
            except (AsyncSyncError, OSError):
                continue
            known = out[ns] = {}
            keys = self._cp_keys.setdefault(ns, {}) if self._cp_path is not None else None
            groups = [g for g in groups if opts.group_filter.matches(g)]
            for start in range(0, len(groups), SETTLE_BATCH):
                if budget <= 0:
                    return
                batch = groups[start : start + SETTLE_BATCH]
                read, used = await run_write(
                    _prescan_groups, self.target, ns, batch, opts.owner, opts.remove_vanished, budget, keys
                )
                known.update(read)
                budget -= used

    async def _plan_namespace(self, remote: Namespace, local: Namespace) -> _NsPlan:
        """List the groups of ``remote`` (and, when most are wanted, all its snapshots at once).

        With no group filter and no remove-vanished, the namespace-wide snapshot listing
        alone is asked for and the groups are those it names: the group listing would
        add only groups without snapshots, which carry nothing to pull (such a group is
        not created here), and it cost the server as much again. With a filter the
        group listing comes first; with remove-vanished it is needed to tell an empty
        group from a vanished one, and the snapshot listing is asked for in parallel.
        If the snapshot listing fails, the group listing and per-group listings are used.
        """
        opts = self.options
        bulk_source = isinstance(self.source, BulkListing)
        unfiltered = bulk_source and not opts.group_filter.filters
        if unfiltered and not opts.remove_vanished:
            if self._cp_path is not None:
                plan = await self._tagged_plan(remote, local)
            else:
                snapshots = await self._bulk_snapshots(remote)
                plan = None if snapshots is None else _bulk_plan(remote, local, snapshots)
            if plan is not None:
                return plan
            bulk_source = False  # it failed once: list per group, do not ask again
        async with asyncio.TaskGroup() as tg:
            # ask for the snapshot listing while the group listing is on its way (the server
            # answers both in parallel) when every group is selected
            bulk = tg.create_task(self._bulk_snapshots(remote)) if unfiltered and bulk_source else None
            try:
                groups: list[GroupItem] | None = await self.source.list_groups(remote)
            except AsyncSyncError as exc:
                self.report.errors.append(f"namespace {remote!s}: cannot list groups: {exc}")
                self._log(f"namespace {remote!s}: cannot list groups: {exc}")
                groups = None
        p = _NsPlan(remote, local, groups)
        selected = sum(1 for g in groups or [] if opts.group_filter.matches(g.group))
        # one listing per namespace instead of one per group, when most groups are wanted
        if bulk_source and selected >= 2 and 2 * selected >= len(groups or []):
            p.snapshots = bulk.result() if bulk is not None else await self._bulk_snapshots(remote)
        return p

    async def _settle_unchanged(
        self,
        work: list[tuple[_NsPlan, GroupId]],
        prescanned: Mapping[Namespace, Mapping[GroupId, LocalState]],
    ) -> list[tuple[_NsPlan, GroupId]]:
        """Record the groups of ``work`` that need nothing (see :func:`_settle_unchanged`)
        and return the rest, in order.

        Only groups whose remote snapshots are already known (namespace-wide
        listing) are checked, :data:`SETTLE_BATCH` per thread hop instead of one
        hop per group: on a pull with nothing new that is most of the local work.
        Groups of ``prescanned`` (local state read by :meth:`_prescan`) are decided
        from that state, in memory.
        """
        opts = self.options
        rules = _SettleRules(opts.owner, opts.transfer_last, opts.verified_only, opts.remove_vanished)
        settled: set[tuple[Namespace, GroupId]] = set()
        by_plan: dict[int, tuple[_NsPlan, list[tuple[GroupId, list[SnapshotItem]]]]] = {}
        for p, g in work:
            if p.settled is not None and g in p.settled:  # unchanged since the checkpoint
                unchanged = p.settled[g]
                self.report.groups.append(GroupResult(p.remote, g, p.local, snapshots_unchanged=unchanged))
                self.report.snapshots_unchanged += unchanged
                self.report.groups_from_checkpoint += 1
                settled.add((p.local, g))
                continue
            # a group missing from the namespace-wide listing is listed on its own by the full path
            if p.snapshots is not None and g in p.snapshots:
                by_plan.setdefault(id(p), (p, []))[1].append((g, p.snapshots[g]))
        for p, candidates in by_plan.values():
            known = prescanned.get(p.local, _NOTHING_KNOWN)
            for start in range(0, len(candidates), SETTLE_BATCH):
                batch = candidates[start : start + SETTLE_BATCH]
                # read-only; it takes group locks (released within the hop), so a cancellation
                # waits for it like for a write
                keys = self._cp_keys.setdefault(p.local, {}) if self._cp_path is not None else None
                done = await run_write(_settle_unchanged, self.target, p.local, batch, rules, known, keys)
                for group, unchanged in done:
                    res = GroupResult(p.remote, group, p.local, snapshots_unchanged=unchanged)
                    self.report.groups.append(res)
                    self.report.snapshots_unchanged += unchanged
                    settled.add((p.local, group))
                if done:
                    self._emit()
        return [(p, g) for p, g in work if (p.local, g) not in settled]

    async def _tagged_plan(self, remote: Namespace, local: Namespace) -> _NsPlan | None:
        """:meth:`_plan_namespace` through the tagged listing (see :class:`TaggedListing`):
        the plan of the listing, or of the checkpoint if its tag is the checkpoint's (the
        groups then settled from it, see :meth:`_settle_unchanged`); None if the listing
        failed (then the caller lists per group)."""
        assert isinstance(self.source, TaggedListing)
        entry = self._cp_entries.get((remote, local))
        try:
            tag, items = await self.source.list_namespace_snapshots_tagged(
                remote, entry.tag if entry else None
            )
            if items is None and entry is not None and tag == entry.tag:
                assert self._cp_check is not None
                if (remote, local) in await self._cp_check:
                    logger.debug("namespace %s: unchanged since the last pull (checkpoint)", remote)
                    self._tags[(remote, local)] = tag
                    groups = [GroupItem(g.group, None, g.unchanged, None) for g in entry.groups]
                    return _NsPlan(
                        remote, local, groups, settled={g.group: g.unchanged for g in entry.groups}
                    )
            if items is None:
                # the listing is the checkpoint's but the local groups changed (or a source
                # answered "unchanged" unasked): the usual way needs the listing itself
                tag, items = await self.source.list_namespace_snapshots_tagged(remote, None)
        except AsyncSyncError as exc:
            logger.debug("namespace %s: bulk snapshot listing failed, listing per group: %s", remote, exc)
            return None
        if items is None:
            return None  # a source that answers "unchanged" to nothing known: list per group
        # the usual way: the pre-check reads this namespace's local groups (the prescan
        # skipped it if the checkpoint covered it), recording their keys for the next run
        self._tags[(remote, local)] = tag
        self._cp_entries.pop((remote, local), None)
        return _bulk_plan(remote, local, _by_group(items))

    def _check_entries(
        self, entries: Mapping[tuple[Namespace, Namespace], cpt.NamespaceEntry]
    ) -> dict[tuple[Namespace, Namespace], cpt.NamespaceEntry]:
        """Those of ``entries`` whose every group is as its keys say
        (:func:`.checkpoint.still_valid`). Blocking."""
        return {
            (remote, local): entry
            for (remote, local), entry in entries.items()
            if cpt.still_valid(str(self.target.ns_path(local)), entry.groups)
        }

    def _save_checkpoint(self, plans: Sequence[_NsPlan], rest: Sequence[tuple[_NsPlan, GroupId]]) -> None:
        """Write this run's checkpoint: one entry per namespace whose every group the
        pre-check settled (none of ``rest``, the groups that took the full path), through a
        listing it has the tag of and group reads whose keys are all recorded and valid.
        Each entry stands on its own (its tag and its groups' keys), so a namespace that
        transferred or failed only goes unrecorded. No entry (or too many groups): any
        checkpoint of this run's key is removed. Blocking."""
        path = self._cp_path
        assert path is not None
        worked = {id(p) for p, _ in rest}
        results = {(r.local_ns, r.group): r for r in self.report.groups}
        entries = [
            e for p in plans if id(p) not in worked and (e := self._checkpoint_entry(p, results)) is not None
        ]
        try:
            if not entries or sum(len(e.groups) for e in entries) > cpt.MAX_CHECKPOINT_GROUPS:
                cpt.remove(path)
            elif len(entries) < len(plans) or any(p.settled is None for p in plans):
                cpt.save(path, cpt.Checkpoint(tuple(entries)))
            # else every namespace was settled from the checkpoint: it is the file as read
        except OSError as exc:
            # the pull itself is done: a checkpoint that cannot be written only costs the
            # next pull its full path (the temp file is gone, the old checkpoint untouched)
            logger.warning("cannot write the pull checkpoint %s: %s", path, exc)

    def _checkpoint_entry(
        self, p: _NsPlan, results: Mapping[tuple[Namespace, GroupId], GroupResult]
    ) -> cpt.NamespaceEntry | None:
        """The checkpoint entry of a namespace whose every group was settled, or None if a
        group's read is not recorded or not valid (racy, or its folder held a temp entry)."""
        tag = self._tags.get((p.remote, p.local))
        if tag is None or p.groups is None:
            return None
        if p.settled is not None:
            return self._cp_entries[(p.remote, p.local)]
        recorded = self._cp_keys.get(p.local, {})
        groups = []
        for item in p.groups:
            rec = recorded.get(item.group)
            res = results.get((p.local, item.group))
            if rec is None or not rec.valid or res is None or res.status is not GroupStatus.OK:
                return None
            groups.append(cpt.GroupEntry(item.group, res.snapshots_unchanged, tuple(rec.entries)))
        return cpt.NamespaceEntry(p.remote, p.local, tag, tuple(groups))

    async def _bulk_snapshots(self, ns: Namespace) -> dict[GroupId, list[SnapshotItem]] | None:
        """All snapshots of ``ns`` by group, or None (list per group) if that listing fails."""
        assert isinstance(self.source, BulkListing)
        try:
            items = await self.source.list_namespace_snapshots(ns)
        except AsyncSyncError as exc:
            logger.debug("namespace %s: bulk snapshot listing failed, listing per group: %s", ns, exc)
            return None
        return _by_group(items)

    # ---- groups -------------------------------------------------------------

    async def _pull_group(
        self,
        remote_ns: Namespace,
        local_ns: Namespace,
        group: GroupId,
        listed: list[SnapshotItem] | None = None,
    ) -> None:
        """Pull one group; ``listed`` are its remote snapshots if already known (else listed here)."""
        res = GroupResult(remote_ns, group, local_ns)
        self.report.groups.append(res)
        self._current_group = res.label
        self._emit()
        try:
            lock, owner, local = await _begin_group_hop(self.target, local_ns, group, self.options.owner)
        except Locked as exc:
            res.status = GroupStatus.LOCKED
            res.error = f"{exc} (another pull or backup of this group is running)"
            self._log(f"group {res.label}: skipped: {res.error}")
            return
        except (AsyncSyncError, OSError) as exc:
            res.status, res.error = GroupStatus.FAILED, _describe(exc)
            self._log(f"group {res.label}: failed: {res.error}")
            return
        try:
            if owner != self.options.owner:
                res.status = GroupStatus.OWNER_CONFLICT
                res.error = f"owned by {owner}, not by the job owner {self.options.owner}: not touched"
                self._log(f"group {res.label}: skipped: {res.error}")
                return
            await self._sync_group(res, local, listed)
        except (AsyncSyncError, OSError) as exc:
            res.status, res.error = GroupStatus.FAILED, _describe(exc)
            self._log(f"group {res.label}: failed: {res.error}")
        else:
            if res.snapshots_synced or res.removed_snapshots:
                self._log(
                    f"group {res.label}: {res.snapshots_synced} snapshots synced, "
                    f"{format_size(res.bytes)} downloaded"
                    + (
                        f", {res.removed_snapshots} vanished snapshots removed"
                        if res.removed_snapshots
                        else ""
                    )
                )
        finally:
            lock.release()

    async def _sync_group(
        self, res: GroupResult, local: list[LocalSnapshot], listed: list[SnapshotItem] | None
    ) -> None:
        remote_snaps = listed if listed is not None else await self.source.list_snapshots(res.ns, res.group)
        for item in remote_snaps:
            if item.snapshot.group != res.group:
                raise InvalidInput(f"remote listed snapshot {item.snapshot} for group {res.group}")
        local_by_time = {i.snapshot.time: i for i in local}
        chosen = choose_snapshots(
            remote_snaps,
            local_by_time.keys(),
            transfer_last=self.options.transfer_last,
            verified_only=self.options.verified_only,
        )
        for item in chosen:
            here = local_by_time.get(item.snapshot.time)
            if here is not None and manifest_unchanged(item, here.manifest_digest):
                # byte-equal manifests: the re-sync would change nothing; no reader is opened
                res.snapshots_unchanged += 1
                self.report.snapshots_unchanged += 1
                continue
            await self._pull_snapshot(res, item, here is not None)
        if self.options.remove_vanished:
            gone = vanished_snapshots(remote_snaps, [i.snapshot for i in local])
            if gone:
                n = await run_write(_remove_snapshots, self.target, res.local_ns, gone)
                res.removed_snapshots += n
                self.report.removed_snapshots += n

    # ---- snapshots ----------------------------------------------------------

    async def _trusted_set(self) -> set[bytes]:
        async with self._trusted_lock:
            if self._trusted is None:
                trusted = await asyncio.to_thread(_trusted_digests, self.target, self.options.owner)
                trusted |= await asyncio.to_thread(self.journal.load)
                self._trusted = trusted
            return self._trusted

    async def _warm_trusted(self) -> None:
        """Compute the trusted set ahead of the first snapshot that needs it (errors are left
        for that snapshot's own call to meet and report)."""
        with contextlib.suppress(AsyncSyncError, OSError):
            await self._trusted_set()

    async def _transfer_chunks(
        self, reader: SnapshotSource, needed: dict[bytes, int]
    ) -> tuple[FetchOutcome, int]:
        """Make every chunk of ``needed`` present: reuse the trusted local ones, fetch the rest;
        return the fetch's outcome and how many local chunks were reused.

        Only trusted local chunks are reused (and touched, so a concurrent gc keeps them).
        A chunk outside the trusted set is fetched whatever the store holds, so those
        transfers start at once, while the trusted ones are checked in a worker thread
        (one utime each: on an incremental pull of a 98 %-shared snapshot that check
        takes about as long as fetching the new chunks); the trusted chunks found
        missing are fetched after it.
        """
        trusted = await self._trusted_set()
        fresh: dict[bytes, int] = {}
        known: list[bytes] = []
        for d, size in needed.items():
            if d in trusted:
                known.append(d)
            else:
                fresh[d] = size
        # chunks this run already stored stay in the fetch, which counts them as deduplicated
        candidates = [d for d in known if not self.pool.is_done(d)]
        async with _task_group() as tg:
            first = tg.create_task(self._fetch_needed(reader, fresh))
            present: set[bytes] = set()
            if candidates:
                present = await run_write(_present_and_touch, self.target, candidates)
            outcome = await self._fetch_needed(reader, {d: needed[d] for d in known if d not in present})
        outcome.add(first.result())
        self.report.chunks_reused += len(present) + outcome.deduplicated
        return outcome, len(present)

    async def _fetch_needed(self, reader: SnapshotSource, needed: dict[bytes, int]) -> FetchOutcome:
        """Fetch every chunk of ``needed`` through the pool, :data:`FETCH_SLICE` at a time."""
        from .fetch import FetchOutcome  # loaded with the pool (see :attr:`pool`)

        total = FetchOutcome()
        items = iter(needed.items())
        while batch := [(d.hex(), size) for d, size in itertools.islice(items, FETCH_SLICE)]:
            total.add(await self.pool.fetch(reader, batch))
        return total

    async def _pull_snapshot(self, res: GroupResult, item: SnapshotItem, exists_locally: bool) -> None:
        snap = item.snapshot
        label = f"{res.local_ns}:{snap}" if res.local_ns.parts else str(snap)
        t0 = time.monotonic()
        reader: SnapshotSource = await self.source.open_reader(res.ns, snap)
        try:
            raw = await reader.download(MANIFEST_NAME)
            await self._received(len(raw))
            if len(raw) > blobcodec.MAX_CHUNK_SIZE:
                raise CorruptManifest(f"manifest of {snap} is too large")
            manifest = await asyncio.to_thread(Manifest.decode, raw)
            if manifest.snapshot != snap:
                raise CorruptManifest(f"manifest of {snap} describes {manifest.snapshot}")
            if exists_locally:
                local = await asyncio.to_thread(self.target.load_manifest, res.local_ns, snap)
                if local.to_json() == manifest.to_json():
                    res.snapshots_unchanged += 1
                    self.report.snapshots_unchanged += 1
                    return
            needed: dict[bytes, int] = {}
            file_bytes = len(raw)
            async with _snapshot_writer(self.target, res.local_ns, snap) as writer:
                for entry in manifest.files:
                    # one file in memory at a time: written to the temp folder, then dropped
                    data = await reader.download(entry.filename)
                    await self._received(len(data))
                    file_bytes += len(data)
                    await run_write(_check_and_add, writer, entry, data, needed)
                    del data
                outcome, reused = await self._transfer_chunks(reader, needed)
                needed.clear()
                await run_write(writer.commit, manifest=manifest)
        finally:
            await reader.aclose()
        res.snapshots_synced += 1
        res.chunks += outcome.chunks
        res.bytes += outcome.bytes + file_bytes
        self.report.snapshots_synced += 1
        elapsed = max(time.monotonic() - t0, 1e-6)
        total = outcome.bytes + file_bytes
        self._log(
            f"{label}: downloaded {format_size(total)} ({format_rate(total / elapsed)}), "
            f"{outcome.chunks} chunks new, {reused + outcome.deduplicated} reused"
            + (" (re-sync)" if exists_locally else "")
        )
        self._emit()

    # ---- remove-vanished ------------------------------------------------------

    async def _remove_vanished(self, nsmap: NamespaceMap, plans: list[_NsPlan]) -> None:
        opts = self.options
        errors_before = bool(self.report.errors) or bool(self.report.failed_groups)
        for p in plans:
            if p.groups is None:
                continue  # the listing failed: we cannot know what vanished
            remote_groups = {g.group for g in p.groups}
            local = await asyncio.to_thread(_local_groups, self.target, p.local)
            for g, owner in local:
                if g in remote_groups or owner != opts.owner or not opts.group_filter.matches(g):
                    continue
                await self._remove_local_group(p.local, g)
        if errors_before:
            # as Proxmox: namespaces are only removed after a run without errors
            return
        mapped = {p.local for p in plans}
        local_nss = await asyncio.to_thread(self.target.list_namespaces, opts.ns, opts.max_depth)
        vanished = sorted(
            (ns for ns in local_nss if ns not in mapped and nsmap.local_in_scope(ns)),
            key=lambda n: n.depth,
            reverse=True,
        )
        for ns in vanished:
            for g, owner in await asyncio.to_thread(_local_groups, self.target, ns):
                if owner == opts.owner and opts.group_filter.matches(g):
                    await self._remove_local_group(ns, g)
            try:
                await run_write(self.target.remove_namespace, ns)
            except Conflict:
                self._log(f"namespace {ns!s}: vanished but kept (it still holds groups)")
                continue
            except (AsyncSyncError, OSError) as exc:
                self.report.errors.append(f"namespace {ns!s}: cannot remove: {_describe(exc)}")
                continue
            self.report.removed_namespaces += 1
            self._log(f"namespace {ns!s}: vanished, removed")

    async def _remove_local_group(self, ns: Namespace, group: GroupId) -> None:
        label = f"{ns}:{group}" if ns.parts else str(group)
        try:
            n, gone = await run_write(_remove_group, self.target, ns, group)
        except (AsyncSyncError, OSError) as exc:
            self.report.errors.append(f"group {label}: cannot remove vanished group: {_describe(exc)}")
            return
        self.report.removed_snapshots += n
        if gone:
            self.report.removed_groups += 1
            self._log(f"group {label}: vanished, removed")
        else:
            self._log(f"group {label}: vanished, kept (protected snapshots)")


async def _begin_group_hop(
    store: Datastore, ns: Namespace, group: GroupId, owner: AuthId
) -> tuple[FileLock, AuthId, list[LocalSnapshot]]:
    """:func:`_begin_group` in one thread hop. If we are cancelled meanwhile, the hop is
    waited for (it writes the owner file) and the lock it may have taken is released
    (a leaked flock would block every later pull of the group in a long-running server)."""
    return await run_acquire(
        functools.partial(_begin_group, store, ns, group, owner), lambda begun: begun[0].release()
    )


def _describe(exc: BaseException) -> str:
    if isinstance(exc, AsyncSyncError):
        return str(exc)
    if isinstance(exc, OSError):
        return str(StorageError(f"{exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else "")))
    return f"{type(exc).__name__}: {exc}"


async def pull(
    source: Source,
    target: Datastore,
    options: PullOptions | None = None,
    *,
    progress: ProgressCallback | None = None,
    log: LogCallback | None = None,
) -> PullReport:
    """Pull ``source`` (or the part ``options`` selects) into ``target``; return the report.

    Raises for job-level failures before anything is transferred (invalid
    options, a namespace tree that would exceed 7 levels, the source refusing
    the namespace listing). A failing group is recorded in the report and the
    others carry on: call :meth:`PullReport.raise_for_errors` to turn that into
    :class:`~asyncsync.errors.PartialFailure`. ``progress`` receives a
    :class:`PullProgress` after each chunk and snapshot; ``log`` receives one
    line per snapshot and group (default: the ``asyncsync.sync`` logger).
    Cancel the calling task at any time: the target stays consistent and a
    later run resumes. The source is not closed.
    """
    return await _PullRun(source, target, options or PullOptions(), progress, log).run()


__all__ = ["PullOptions", "pull"]
