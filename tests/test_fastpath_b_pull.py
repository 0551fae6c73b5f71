"""The pull's unchanged-group pre-check: one thread hop for many groups, same decisions.

A group settled by the pre-check must be exactly a group the full path would
have found unchanged; everything else (a changed remote snapshot, a local one
removed by hand, a locked group, another owner, vanished snapshots) goes the
full path and is handled and reported as before.
"""

# ruff: noqa: F811  (pytest fixtures imported from serverutil are parameters here)

from __future__ import annotations

import asyncio
import random
import shutil
from pathlib import Path

import pytest
from pullutil import T0, add_snapshot, new_store, store_tree
from serverutil import Installation, RunningServer, http_pull, remote, remote_server  # noqa: F401

from asyncsync import LocalSource, PullOptions, PullReport, pull
from asyncsync.datastore.datastore import Datastore
from asyncsync.datastore.manifest import FileEntry
from asyncsync.names import ROOT_NS, AuthId, GroupId, Namespace, SnapshotId
from asyncsync.protocol import SnapshotItem
from asyncsync.sync import pull as pull_mod
from asyncsync.sync.plan import unchanged_count
from asyncsync.sync.report import GroupStatus

GROUPS = [GroupId.parse(f"vm/{100 + i}") for i in range(6)]
NS = Namespace.parse("a")


def item(t: int, digest: str | None = "d", *, files: bool = True, verified: bool = True) -> SnapshotItem:
    return SnapshotItem(
        SnapshotId(GROUPS[0], t),
        (FileEntry("x.blob", 1, "c"),) if files else (),
        1,
        False,
        "ok" if verified else None,
        None,
        None,
        digest,
    )


def test_unchanged_count_follows_the_full_path_rules() -> None:
    remote = [item(1), item(2, "d2")]
    # the newest local is re-synced unless byte-equal; older ones are never chosen
    assert unchanged_count(remote, {1: None, 2: "d2"}) == 1
    assert unchanged_count(remote, {1: None, 2: "other"}) is None
    assert unchanged_count(remote, {1: "d"}) is None  # snapshot 2 is new
    assert unchanged_count(remote, {}) is None
    assert unchanged_count([], {}) == 0
    assert unchanged_count([item(2, None)], {2: None}) is None  # no digest listed: compare manifests
    assert unchanged_count([item(2, "d2"), item(3, files=False)], {2: "d2"}) == 1  # unfinished skipped
    assert unchanged_count([item(2, "d2"), item(3, verified=False)], {2: "d2"}, verified_only=True) == 1
    assert unchanged_count([item(3, "d3")], {2: None, 3: "d3"}) == 1
    # remove-vanished: a local snapshot the remote no longer lists is work
    assert unchanged_count([item(3, "d3")], {2: None, 3: "d3"}, remove_vanished=True) is None
    assert unchanged_count(remote, {1: None, 2: "d2"}, remove_vanished=True) == 1
    assert unchanged_count([item(1), item(2), item(3, "d3")], {3: "d3"}, transfer_last=1) == 1


@pytest.fixture
def stores(tmp_path: Path) -> tuple[Datastore, Datastore]:
    src = new_store(tmp_path / "src", "src")
    dst = new_store(tmp_path / "dst", "dst")
    rng = random.Random(3)
    for g in GROUPS:
        for k in range(2):
            add_snapshot(src, NS, g, T0 + 3600 * k, rng=rng, chunks=1, chunk_size=512)
    return src, dst


async def run(src: Datastore, dst: Datastore, **kw: object) -> PullReport:
    return await pull(LocalSource(src), dst, PullOptions(**kw))  # type: ignore[arg-type]


def labels(report: PullReport) -> list[str]:
    return [str(g.group) for g in report.groups]


async def test_noop_is_settled_in_one_hop_and_reports_as_before(
    stores: tuple[Datastore, Datastore], monkeypatch: pytest.MonkeyPatch
) -> None:
    src, dst = stores
    first = await run(src, dst)
    assert first.ok and first.snapshots_synced == 12
    assert labels(first) == [str(g) for g in GROUPS]

    hops: list[int] = []
    real = pull_mod._settle_unchanged

    def counting(store: Datastore, ns: Namespace, groups: list[tuple[GroupId, list[SnapshotItem]]], *rest):  # type: ignore[no-untyped-def]
        hops.append(len(groups))
        return real(store, ns, groups, *rest)

    monkeypatch.setattr(pull_mod, "_settle_unchanged", counting)
    begun: list[GroupId] = []
    real_begin = pull_mod._begin_group

    def begin(store: Datastore, ns: Namespace, group: GroupId, owner: AuthId):  # type: ignore[no-untyped-def]
        begun.append(group)
        return real_begin(store, ns, group, owner)

    monkeypatch.setattr(pull_mod, "_begin_group", begin)
    again = await run(src, dst)
    assert again.ok and again.snapshots_synced == 0 and again.chunks_downloaded == 0
    assert again.snapshots_unchanged == len(GROUPS)
    assert [(g.status, g.snapshots_unchanged) for g in again.groups] == [(GroupStatus.OK, 1)] * len(GROUPS)
    assert labels(again) == [str(g) for g in GROUPS]
    assert hops == [len(GROUPS)]
    assert begun == []  # no group needed the per-group path
    assert again.summary() == "no new data to pull"


async def test_changed_remote_and_removed_local_snapshots_are_synced_again(
    stores: tuple[Datastore, Datastore],
) -> None:
    src, dst = stores
    assert (await run(src, dst)).ok
    newest = T0 + 3600
    # remotely: notes added to the newest snapshot of group 1 (its manifest changes)
    await asyncio.to_thread(src.update_unprotected, NS, SnapshotId(GROUPS[1], newest), notes="hello")
    # locally: the newest snapshot of group 2 removed by hand
    await asyncio.to_thread(shutil.rmtree, dst.snapshot_path(NS, SnapshotId(GROUPS[2], newest)))
    # remotely: a new snapshot in group 3
    await asyncio.to_thread(add_snapshot, src, NS, GROUPS[3], newest + 3600, chunks=1, chunk_size=512)
    report = await run(src, dst)
    assert report.ok, report.failure_message()
    synced = {str(g.group): g.snapshots_synced for g in report.groups if g.snapshots_synced}
    assert synced == {str(GROUPS[1]): 1, str(GROUPS[2]): 1, str(GROUPS[3]): 1}
    assert labels(report) == [str(g) for g in GROUPS]
    tree_src = await asyncio.to_thread(store_tree, src)
    tree_dst = await asyncio.to_thread(store_tree, dst)
    assert {k: v for k, v in tree_dst.items() if not k.startswith("owner:")} == {
        k: v for k, v in tree_src.items() if not k.startswith("owner:")
    }


async def test_locked_and_foreign_groups_are_reported_on_a_noop(stores: tuple[Datastore, Datastore]) -> None:
    src, dst = stores
    assert (await run(src, dst)).ok
    await asyncio.to_thread(dst.set_owner, NS, GROUPS[4], AuthId.parse("someone@pbs"))
    lock = await asyncio.to_thread(lambda: dst.group_lock(NS, GROUPS[0]).acquire())
    try:
        report = await run(src, dst)
    finally:
        lock.release()
    status = {str(g.group): g.status for g in report.groups}
    assert status[str(GROUPS[0])] is GroupStatus.LOCKED
    assert status[str(GROUPS[4])] is GroupStatus.OWNER_CONFLICT
    assert sum(s is GroupStatus.OK for s in status.values()) == len(GROUPS) - 2
    assert not report.ok
    assert labels(report) == [str(g) for g in GROUPS]


async def test_remove_vanished_still_removes_on_an_otherwise_unchanged_group(
    stores: tuple[Datastore, Datastore],
) -> None:
    src, dst = stores
    assert (await run(src, dst)).ok
    await asyncio.to_thread(src.remove_snapshot, NS, SnapshotId(GROUPS[5], T0))
    report = await run(src, dst, remove_vanished=True)
    assert report.ok and report.removed_snapshots == 1
    assert not await asyncio.to_thread(dst.snapshot_exists, NS, SnapshotId(GROUPS[5], T0))


async def test_noop_over_tls_with_the_real_server(
    remote: Installation, remote_server: RunningServer, tmp_path: Path
) -> None:
    dst = await asyncio.to_thread(new_store, tmp_path / "dst", "dst")

    async def once() -> PullReport:
        return await http_pull(remote_server, remote, dst, remote_ns=ROOT_NS)

    first = await once()
    assert first.ok and first.snapshots_synced > 0
    again = await once()
    assert again.ok and again.snapshots_synced == 0 and again.chunks_downloaded == 0
    assert again.snapshots_unchanged == sum(1 for g in again.groups if g.snapshots_unchanged)
    assert [(g.ns, g.group) for g in again.groups] == sorted((g.ns, g.group) for g in first.groups)


async def test_unreadable_owner_goes_the_full_path_and_fails_as_before(
    stores: tuple[Datastore, Datastore],
) -> None:
    src, dst = stores
    assert (await run(src, dst)).ok
    owner_file = dst.group_path(NS, GROUPS[3]) / "owner"
    await asyncio.to_thread(owner_file.write_text, "not an owner\n")
    report = await run(src, dst)
    failed = [(str(g.group), g.status) for g in report.groups if g.failed]
    assert failed == [(str(GROUPS[3]), GroupStatus.FAILED)]
    assert report.snapshots_unchanged == len(GROUPS) - 1
