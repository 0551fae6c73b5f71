"""Pure planning decisions of a pull: which snapshots to transfer, which are vanished.

Plain functions over listings, so each rule is tested on its own.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

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


def manifest_unchanged(item: SnapshotItem, local_digest: str | None) -> bool:
    """True if re-syncing ``item`` would change nothing: the remote's manifest is
    byte-equal to the local one (blake3 ``local_digest``; None: not known)."""
    return item.manifest_digest is not None and item.manifest_digest == local_digest


def unchanged_count(
    remote: Sequence[SnapshotItem],
    local: Mapping[int, str | None],
    *,
    transfer_last: int | None = None,
    verified_only: bool = False,
    remove_vanished: bool = False,
) -> int | None:
    """How many snapshots a pull of this group would find unchanged, if that is all it
    would do; None if it has something to transfer or remove.

    ``local`` maps the times of the group's committed local snapshots to the
    blake3 of their manifest (None where unknown: only the newest is ever
    compared). The rules are those of the full path, so the answer never differs
    from what it would decide: every snapshot :func:`choose_snapshots` picks must
    exist locally with a manifest digest equal to the remote's (byte-equal
    manifests), and with ``remove_vanished`` no local snapshot may be missing
    remotely.
    """
    chosen = choose_snapshots(remote, local.keys(), transfer_last=transfer_last, verified_only=verified_only)
    for item in chosen:
        if item.snapshot.time not in local or not manifest_unchanged(item, local[item.snapshot.time]):
            return None
    if remove_vanished:
        remote_times = {i.snapshot.time for i in remote}
        if any(t not in remote_times for t in local):
            return None
    return len(chosen)


def vanished_snapshots(remote: Iterable[SnapshotItem], local: Sequence[SnapshotId]) -> list[SnapshotId]:
    """Local snapshots the remote no longer lists (finished or not)."""
    remote_times = {i.snapshot.time for i in remote}
    return [s for s in local if s.time not in remote_times]


__all__ = ["choose_snapshots", "is_finished", "manifest_unchanged", "unchanged_count", "vanished_snapshots"]
