"""Verify snapshots: re-read every archive file and every chunk they reference.

For each snapshot the manifest is decoded, each archive file is checked
against the manifest checksum and decoded (index or blob), the logical sizes
compared, and every referenced chunk read, decoded (CRC, bounded zstd) and
hashed (blake3) and its length compared with the index. A chunk is checked
once per run however many snapshots reference it; the result is remembered.

A damaged chunk is reported by digest and renamed aside
(:meth:`ChunkStore.quarantine`, ``<digest>.bad``), never deleted: a later backup
or sync that has the data writes a good copy again. The outcome of each
snapshot is recorded in its manifest's unprotected part as
``verify_state = {"state": "ok" | "failed", "time": <epoch seconds>}``.

Blocking; chunk checks run in a small thread pool with a bounded number in
flight. :func:`verify` is the async face (worker thread, cancellable).
"""

from __future__ import annotations

import contextlib
import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from ..errors import AsyncSyncError, CorruptBlob, IntegrityError, Locked, NotFound
from ..names import Namespace, SnapshotId, SnapshotRef
from ..units import format_size
from . import blob
from .chunkstore import ChunkStore
from .datastore import Datastore
from .index import decode_index
from .threads import CancelToken, check, run_cancellable


@dataclass(slots=True)
class SnapshotResult:
    """The outcome for one snapshot; ``errors`` name what was wrong."""

    ref: SnapshotRef
    ok: bool = True
    errors: list[str] = field(default_factory=list)

    def fail(self, message: str) -> None:
        self.ok = False
        self.errors.append(message)

    def to_json(self) -> dict[str, Any]:
        return {
            "ns": str(self.ref.ns),
            "snapshot": str(self.ref.snapshot),
            "state": "ok" if self.ok else "failed",
            "errors": self.errors,
        }


@dataclass(slots=True)
class VerifyReport:
    """What one verify run checked and found."""

    snapshots: list[SnapshotResult] = field(default_factory=list)
    chunks_checked: int = 0
    bytes_checked: int = 0
    #: digest -> reason, for chunks that failed decoding or hashing (quarantined)
    bad_chunks: dict[str, str] = field(default_factory=dict)
    missing_chunks: set[str] = field(default_factory=set)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return all(s.ok for s in self.snapshots)

    @property
    def failed(self) -> list[SnapshotResult]:
        return [s for s in self.snapshots if not s.ok]

    def summary(self) -> str:
        failed = len(self.failed)
        return (
            f"verified {len(self.snapshots)} snapshots: {len(self.snapshots) - failed} ok, {failed} failed;"
            f" {self.chunks_checked} chunks ({format_size(self.bytes_checked)}) checked,"
            f" {len(self.bad_chunks)} damaged, {len(self.missing_chunks)} missing in {self.seconds:.1f} s"
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "snapshots": [s.to_json() for s in self.snapshots],
            "chunks-checked": self.chunks_checked,
            "bytes-checked": self.bytes_checked,
            "bad-chunks": dict(sorted(self.bad_chunks.items())),
            "missing-chunks": sorted(self.missing_chunks),
            "seconds": round(self.seconds, 3),
        }


@dataclass(frozen=True, slots=True)
class _ChunkResult:
    digest: str
    size: int | None  # content length when good
    problem: str | None  # None when good
    missing: bool = False


def _check_chunk(chunks: ChunkStore, digest: str) -> _ChunkResult:
    try:
        encoded = chunks.read(digest)
    except NotFound:
        return _ChunkResult(digest, None, "missing", missing=True)
    except AsyncSyncError as exc:
        return _ChunkResult(digest, None, str(exc))
    try:
        data = blob.decode_verified(encoded, digest)
    except IntegrityError as exc:
        # Damaged on disk: move it aside so that a later backup/sync can store a good copy.
        with contextlib.suppress(OSError):
            chunks.quarantine(digest)
        return _ChunkResult(digest, None, str(exc))
    return _ChunkResult(digest, len(data), None)


class _Verifier:
    def __init__(self, store: Datastore, workers: int, max_inflight: int, cancel: CancelToken | None) -> None:
        self.store = store
        self.pool = ThreadPoolExecutor(max(1, workers), thread_name_prefix="verify")
        self.max_inflight = max(1, max_inflight)
        self.cancel = cancel
        self.seen: dict[str, _ChunkResult] = {}
        self.report = VerifyReport()

    def check_chunks(self, digests: Iterable[str]) -> None:
        """Check every digest not checked before in this run, in parallel, bounded."""
        pending: deque[Future[_ChunkResult]] = deque()

        def drain_one() -> None:
            res = pending.popleft().result()
            self.seen[res.digest] = res
            self.report.chunks_checked += 1
            if res.missing:
                self.report.missing_chunks.add(res.digest)
            elif res.problem is not None:
                self.report.bad_chunks[res.digest] = res.problem
            elif res.size is not None:
                self.report.bytes_checked += res.size

        queued: set[str] = set()
        try:
            for d in digests:
                if d in self.seen or d in queued:
                    continue
                check(self.cancel)
                queued.add(d)
                pending.append(self.pool.submit(_check_chunk, self.store.chunks, d))
                while len(pending) >= self.max_inflight:
                    drain_one()
            while pending:
                drain_one()
        finally:
            for fut in pending:
                fut.cancel()

    def verify_snapshot(self, ns: Namespace, snap: SnapshotId) -> SnapshotResult | None:
        res = SnapshotResult(SnapshotRef(ns, snap))
        try:
            manifest = self.store.load_manifest(ns, snap)
        except NotFound:
            return None  # removed while we ran
        except IntegrityError as exc:
            res.fail(f"manifest: {exc}")
            return res
        wanted: list[tuple[str, int, str]] = []  # digest, size, archive
        for entry in manifest.files:
            try:
                raw = self.store.read_file(ns, snap, entry.filename)
            except AsyncSyncError as exc:
                res.fail(f"{entry.filename}: {exc}")
                continue
            if blob.digest_of(raw) != entry.csum:
                res.fail(f"{entry.filename}: checksum does not match the manifest")
                continue
            try:
                if entry.filename.endswith(".blob"):
                    size = len(blob.decode(raw))
                else:
                    index = decode_index(raw)
                    size = index.total_size
                    wanted.extend((d.hex(), n, entry.filename) for d, n in index.chunk_sizes())
            except (CorruptBlob, IntegrityError) as exc:
                res.fail(f"{entry.filename}: {exc}")
                continue
            if size != entry.size:
                res.fail(f"{entry.filename}: holds {size} bytes, the manifest says {entry.size}")
        self.check_chunks(d for d, _, _ in wanted)
        reported: set[str] = set()
        for digest, size, archive in wanted:
            cr = self.seen[digest]
            if cr.problem is not None:
                if digest not in reported:
                    reported.add(digest)
                    res.fail(f"{archive}: chunk {digest}: {cr.problem}")
            elif cr.size != size:
                res.fail(f"{archive}: chunk {digest} holds {cr.size} bytes, the index says {size}")
        return res


def run_verify(
    store: Datastore,
    snapshots: Iterable[tuple[Namespace, SnapshotId]] | None = None,
    *,
    workers: int = 2,
    max_inflight: int = 8,
    record: bool = True,
    cancel: CancelToken | None = None,
    clock: Callable[[], float] = time.time,
    on_result: Callable[[SnapshotResult], None] | None = None,
) -> VerifyReport:
    """Verify ``snapshots`` (default: every snapshot of the store) and return the report.

    With ``record`` the result is written to each manifest's unprotected part
    (under the group lock; a group busy with a backup or pull is reported but
    not recorded); temp files that an earlier, killed rewrite left in the
    snapshot folder are removed first (:meth:`Datastore.cleanup_snapshot_temp`).
    ``on_result`` is called after each snapshot (progress output).
    """
    started = time.monotonic()
    v = _Verifier(store, workers, max_inflight, cancel)
    try:
        for ns, snap in store.iter_snapshots() if snapshots is None else snapshots:
            check(cancel)
            res = v.verify_snapshot(ns, snap)
            if res is None:
                continue
            v.report.snapshots.append(res)
            if record and not any(e.startswith("manifest:") for e in res.errors):
                state = {"state": "ok" if res.ok else "failed", "time": int(clock())}
                # under the group lock, so a pull re-syncing this snapshot cannot lose its
                # manifest to ours; if a writer holds the group, the result is reported only
                with contextlib.suppress(NotFound, Locked), store.group_lock(ns, snap.group):
                    # a verify killed mid-rewrite leaves its temp manifest here: under the same
                    # lock, before our own rewrite, nothing else can be writing one
                    store.cleanup_snapshot_temp(ns, snap)
                    store.update_unprotected(ns, snap, verify_state=state)
            if on_result is not None:
                on_result(res)
    finally:
        v.pool.shutdown(wait=True, cancel_futures=True)
    v.report.seconds = time.monotonic() - started
    return v.report


async def verify(
    store: Datastore,
    snapshots: Iterable[tuple[Namespace, SnapshotId]] | None = None,
    *,
    workers: int = 2,
    record: bool = True,
) -> VerifyReport:
    """Async face of :func:`run_verify` (worker thread; cancelling stops it between chunks)."""
    targets = None if snapshots is None else list(snapshots)
    return await run_cancellable(
        lambda token: run_verify(store, targets, workers=workers, record=record, cancel=token)
    )


__all__ = ["SnapshotResult", "VerifyReport", "run_verify", "verify"]
