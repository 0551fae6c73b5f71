"""What a pull did: :class:`PullReport`, per-group results, and the progress snapshot.

The report is plain data: the CLI prints :meth:`PullReport.summary` or
:meth:`PullReport.to_json`, a task runner stores the JSON, a library caller
reads the fields. :meth:`PullReport.raise_for_errors` turns a run in which some
group failed into :class:`~asyncsync.errors.PartialFailure`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from ..errors import PartialFailure
from ..names import GroupId, Namespace
from ..units import format_rate, format_size


class GroupStatus(StrEnum):
    OK = "ok"
    FAILED = "failed"
    OWNER_CONFLICT = "owner-conflict"
    LOCKED = "locked"


@dataclass(slots=True)
class GroupResult:
    """The outcome for one group."""

    ns: Namespace
    group: GroupId
    local_ns: Namespace
    status: GroupStatus = GroupStatus.OK
    snapshots_synced: int = 0
    snapshots_unchanged: int = 0
    bytes: int = 0
    chunks: int = 0
    removed_snapshots: int = 0
    error: str | None = None

    @property
    def failed(self) -> bool:
        return self.status is not GroupStatus.OK

    @property
    def label(self) -> str:
        return f"{self.local_ns}:{self.group}" if self.local_ns.parts else str(self.group)

    def to_json(self) -> dict[str, Any]:
        return {
            "remote-ns": str(self.ns),
            "ns": str(self.local_ns),
            "group": str(self.group),
            "status": self.status.value,
            "snapshots-synced": self.snapshots_synced,
            "snapshots-unchanged": self.snapshots_unchanged,
            "bytes": self.bytes,
            "chunks": self.chunks,
            "removed-snapshots": self.removed_snapshots,
            "error": self.error,
        }


@dataclass(slots=True)
class PullReport:
    """Counters and results of one pull. ``bytes_downloaded`` counts bytes as received
    (blobs, indexes, manifests); ``chunk_bytes`` the uncompressed size of the chunks."""

    source: str = ""
    target: str = ""
    started: float = 0.0
    duration: float = 0.0
    bytes_downloaded: int = 0
    chunk_bytes: int = 0
    chunks_downloaded: int = 0
    chunks_reused: int = 0
    snapshots_synced: int = 0
    snapshots_unchanged: int = 0
    namespaces_created: int = 0
    removed_snapshots: int = 0
    removed_groups: int = 0
    removed_namespaces: int = 0
    #: groups settled as unchanged from a pull checkpoint, without reading them again
    groups_from_checkpoint: int = 0
    groups: list[GroupResult] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def failed_groups(self) -> list[GroupResult]:
        return [g for g in self.groups if g.failed]

    @property
    def ok(self) -> bool:
        return not self.errors and not self.failed_groups

    @property
    def rate(self) -> float:
        """Bytes per second received over the whole run."""
        return self.bytes_downloaded / self.duration if self.duration > 0 else 0.0

    def summary(self) -> str:
        """One line: ``pulled N chunks, X GiB in T s (R MiB/s); removed vanished: ...``."""
        if self.chunks_downloaded or self.snapshots_synced:
            text = (
                f"pulled {self.chunks_downloaded} chunks, {format_size(self.bytes_downloaded)} "
                f"in {self.duration:.1f} s ({format_rate(self.rate)}); "
                f"{self.snapshots_synced} snapshots synced"
            )
        else:
            text = "no new data to pull"
        if self.removed_snapshots or self.removed_groups or self.removed_namespaces:
            text += (
                f"; removed vanished: {self.removed_snapshots} snapshots, {self.removed_groups} groups, "
                f"{self.removed_namespaces} namespaces"
            )
        failed = self.failed_groups
        if failed or self.errors:
            text += f"; {len(failed) + len(self.errors)} failed"
        return text

    def failure_message(self) -> str:
        parts = [f"{g.label}: {g.error or g.status.value}" for g in self.failed_groups]
        parts += self.errors
        return "pull incomplete: " + "; ".join(parts)

    def raise_for_errors(self) -> None:
        """Raise :class:`PartialFailure` naming what failed, if anything did."""
        if not self.ok:
            raise PartialFailure(self.failure_message())

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "target": self.target,
            "started": self.started,
            "duration": round(self.duration, 3),
            "bytes-downloaded": self.bytes_downloaded,
            "chunk-bytes": self.chunk_bytes,
            "chunks-downloaded": self.chunks_downloaded,
            "chunks-reused": self.chunks_reused,
            "snapshots-synced": self.snapshots_synced,
            "snapshots-unchanged": self.snapshots_unchanged,
            "namespaces-created": self.namespaces_created,
            "removed-snapshots": self.removed_snapshots,
            "removed-groups": self.removed_groups,
            "removed-namespaces": self.removed_namespaces,
            "groups-from-checkpoint": self.groups_from_checkpoint,
            "rate": round(self.rate, 1),
            "ok": self.ok,
            "groups": [g.to_json() for g in self.groups],
            "errors": list(self.errors),
            "summary": self.summary(),
        }


@dataclass(frozen=True, slots=True)
class PullProgress:
    """A small, immutable progress snapshot handed to the progress callback.

    ``bytes`` are received bytes; ``logical_bytes`` / ``total_logical_bytes`` are the
    uncompressed sizes of the chunks done / known to be needed so far (the total
    grows as snapshots are planned), which is what a progress bar and ETA use.
    """

    bytes: int
    chunks: int
    chunks_reused: int
    logical_bytes: int
    total_logical_bytes: int
    snapshots_synced: int
    current_group: str | None
    elapsed: float


ProgressCallback = Callable[[PullProgress], None]
LogCallback = Callable[[str], None]

__all__ = [
    "GroupResult",
    "GroupStatus",
    "LogCallback",
    "ProgressCallback",
    "PullProgress",
    "PullReport",
]
