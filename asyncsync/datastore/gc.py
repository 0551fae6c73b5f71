"""Garbage collection: remove chunks that no snapshot references.

Two phases, under the datastore lock (one gc at a time):

1. **mark**: read every committed snapshot's indexes and touch (set the mtime
   of) each referenced chunk;
2. **sweep**: remove every chunk that is not referenced *and* whose mtime is
   older than the start of this gc minus the grace period.

Why the grace period: a backup or sync running concurrently writes (or, for
chunks it finds present, touches) chunks *before* it commits the snapshot
that references them. Those chunks are unreferenced during the mark phase,
but their mtime is recent, so the sweep keeps them. The default grace of
24 h 5 min is Proxmox's (it also covers file systems mounted with
``relatime``, which may delay time updates by up to 24 h). A writer that holds
a reference for longer than the grace period without touching it is the one
case this cannot protect.

gc also removes temp files and half-written snapshot folders left by writers
that no longer run (:meth:`Datastore.cleanup_temp`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import InvalidInput
from ..units import format_size
from .datastore import Datastore
from .threads import CancelToken, check, run_cancellable

#: Proxmox's default: one day plus five minutes.
DEFAULT_GRACE_SECONDS = 24 * 3600 + 5 * 60


@dataclass(slots=True)
class GcReport:
    """What a garbage collection found and did."""

    referenced: int = 0  # distinct chunks referenced by snapshots
    missing: int = 0  # referenced but absent from the store
    kept: int = 0  # chunks left in the store
    kept_bytes: int = 0
    pending: int = 0  # unreferenced, but within the grace period
    pending_bytes: int = 0
    removed: int = 0
    removed_bytes: int = 0
    temp_removed: int = 0
    seconds: float = 0.0

    def summary(self) -> str:
        return (
            f"gc: removed {self.removed} chunks ({format_size(self.removed_bytes)}),"
            f" kept {self.kept} ({format_size(self.kept_bytes)}), of which {self.pending} unreferenced"
            f" within the grace period; {self.referenced} referenced, {self.missing} missing;"
            f" {self.temp_removed} stale temp files removed in {self.seconds:.1f} s"
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "referenced": self.referenced,
            "missing": self.missing,
            "kept": self.kept,
            "kept-bytes": self.kept_bytes,
            "pending": self.pending,
            "pending-bytes": self.pending_bytes,
            "removed": self.removed,
            "removed-bytes": self.removed_bytes,
            "temp-removed": self.temp_removed,
            "seconds": round(self.seconds, 3),
        }


def run_gc(
    store: Datastore,
    *,
    grace_seconds: float = DEFAULT_GRACE_SECONDS,
    clock: Callable[[], float] = time.time,
    cancel: CancelToken | None = None,
) -> GcReport:
    """Mark and sweep ``store`` (blocking); raises :class:`Locked` if another gc runs.

    ``clock`` gives the gc's start time against which the grace period counts
    (tests pass a controlled clock).
    """
    if grace_seconds < 0:
        raise InvalidInput("grace period must not be negative", field="grace")
    started = time.monotonic()
    report = GcReport()
    with store.lock():
        # The cutoff is fixed before marking: anything written or touched after
        # this moment is newer than the cutoff and survives the sweep.
        cutoff = clock() - grace_seconds
        report.temp_removed = store.cleanup_temp()
        referenced = store.referenced_digests()
        report.referenced = len(referenced)
        for n, digest in enumerate(referenced):
            if n % 1024 == 0:
                check(cancel)
            try:
                os.utime(store.chunks.path(digest))
            except FileNotFoundError:
                report.missing += 1
        for n, (digest, st) in enumerate(store.chunks.iter_digests()):
            if n % 1024 == 0:
                check(cancel)
            if digest in referenced:
                report.kept += 1
                report.kept_bytes += st.st_size
                continue
            if st.st_mtime < cutoff:
                # Re-check right before removing: a concurrent writer may just have touched it.
                try:
                    fresh = os.stat(store.chunks.path(digest))
                except FileNotFoundError:
                    continue
                if fresh.st_mtime < cutoff:
                    store.chunks.remove(digest)
                    report.removed += 1
                    report.removed_bytes += st.st_size
                    continue
            report.kept += 1
            report.kept_bytes += st.st_size
            report.pending += 1
            report.pending_bytes += st.st_size
    report.seconds = time.monotonic() - started
    return report


async def gc(store: Datastore, *, grace_seconds: float = DEFAULT_GRACE_SECONDS) -> GcReport:
    """Async face of :func:`run_gc` (worker thread; cancelling stops it between chunks)."""
    return await run_cancellable(lambda token: run_gc(store, grace_seconds=grace_seconds, cancel=token))


__all__ = ["DEFAULT_GRACE_SECONDS", "GcReport", "gc", "run_gc"]
