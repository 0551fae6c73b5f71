"""Pure planning decisions of a pull: which snapshots to transfer, which are vanished.

Plain functions over listings, so each rule is tested on its own.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from ..names import SnapshotId
from ..protocol import SnapshotItem


def is_finished(item: SnapshotItem) -> bool:
    """A snapshot still being written on the remote lists no files (no manifest yet)."""
    return bool(item.files)


def choose_snapshots(
    remote: Iterable[SnapshotItem],
    local_times: Iterable[int],
    *,
    transfer_last: int | None = None,
    verified_only: bool = False,
) -> list[SnapshotItem]:
    """The remote snapshots to pull, oldest first (Proxmox's rules).

    * unfinished snapshots are skipped; with ``verified_only`` so are those the
      remote has not verified OK;
    * snapshots older than the newest local one are skipped (they were pruned
      here, or never wanted); the newest local one is pulled again, since a log
      or notes may have been added since;
    * with ``transfer_last`` N only the newest N of the candidates are pulled
      (the newest local one is still re-synced if it is among the candidates).
    """
    items = sorted((i for i in remote if is_finished(i)), key=lambda i: i.snapshot.time)
    if verified_only:
        items = [i for i in items if i.verify_state == "ok"]
    newest_local = max(local_times, default=None)
    cutoff = max(0, len(items) - transfer_last) if transfer_last is not None else 0
    out = []
    for pos, item in enumerate(items):
        t = item.snapshot.time
        if newest_local is not None and t < newest_local:
            continue
        if pos < cutoff and t != newest_local:
            continue
        out.append(item)
    return out


def vanished_snapshots(remote: Iterable[SnapshotItem], local: Sequence[SnapshotId]) -> list[SnapshotId]:
    """Local snapshots the remote no longer lists (finished or not)."""
    remote_times = {i.snapshot.time for i in remote}
    return [s for s in local if s.time not in remote_times]


__all__ = ["choose_snapshots", "is_finished", "vanished_snapshots"]
