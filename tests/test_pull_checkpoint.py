"""Pull checkpoints: a noop pull records why it had nothing to do; the next one checks that
in a few stats per group instead of reading every group and parsing the listing again.

Contract (asyncsync.sync.checkpoint, asyncsync.sync.pull._PullRun): a pull over a
tagged source (the HTTP source), with no group filter and no remove-vanished, records
each namespace whose every group it settles as unchanged in
``<target>/.pull-checkpoints/<run key>.json`` (its listing's tag + stat keys of what it
read, none younger than RACY_NS). The next such
pull with the same options settles a namespace from it only if the listing's tag is
the recorded one and every recorded key still matches (no group lock is taken); its
report is then the one the full path gives. Anything else (a remote change,
a local change, other options, a bad file, a failed run) takes the full path, and a
namespace that transferred or failed is left out of the next checkpoint (a run with
none left removes it). Real server over TLS on loopback,
real datastores.
"""

# ruff: noqa: F811  (pytest fixtures imported from serverutil are parameters here)

from __future__ import annotations

import asyncio
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import pytest
from pullutil import new_store
from serverutil import (  # noqa: F401
    Installation,
    RunningServer,
    http_pull,
    http_source,
    remote,
    remote_server,
    write_snapshot,
)

from asyncsync import protocol
from asyncsync.datastore.datastore import Datastore, FileLock
from asyncsync.datastore.manifest import MANIFEST_NAME
from asyncsync.names import ROOT_NS, GroupId, Namespace, SnapshotId
from asyncsync.sync import checkpoint as cpt
from asyncsync.sync.groupfilter import GroupFilters
from asyncsync.sync.pull import PullReport
from asyncsync.sync.report import GroupStatus

NS_A = Namespace.parse("a")
VM100 = GroupId.parse("vm/100")
#: recorded keys must be this old here (instead of 2 s), and files settle that long
RACY_NS = 50_000_000


@pytest.fixture(autouse=True)
def short_racy_window(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cpt, "RACY_NS", RACY_NS)


def settle() -> None:
    """Let every file written so far become older than the racy window (and let a later
    write get a later timestamp than any key recorded after this)."""
    time.sleep(3 * RACY_NS / 1e9)


def checkpoints(dst: Datastore) -> list[Path]:
    d = dst.root / cpt.CHECKPOINT_DIR
    return sorted(d.glob("*.json")) if d.exists() else []


def comparable(report: PullReport) -> dict[str, Any]:
    """The report without what differs between runs by nature (times, rate, the checkpoint count)."""
    out = report.to_json()
    for k in ("started", "duration", "rate", "summary", "groups-from-checkpoint"):
        out.pop(k)
    return out


@pytest.fixture
async def synced(
    remote: Installation, remote_server: RunningServer, tmp_path: Path
) -> tuple[Datastore, PullReport]:
    """A target pulled once (everything transferred), then a noop that writes the checkpoint;
    returns the target and that noop's report."""
    dst = await asyncio.to_thread(new_store, tmp_path / "dst", "dst")
    first = await http_pull(remote_server, remote, dst)
    assert first.ok and first.snapshots_synced > 0
    assert checkpoints(dst) == []  # it transferred: nothing to record
    await asyncio.to_thread(settle)
    noop = await http_pull(remote_server, remote, dst)
    assert noop.ok and noop.snapshots_synced == 0 and noop.groups_from_checkpoint == 0
    assert len(checkpoints(dst)) == 1
    return dst, noop


async def test_a_noop_after_a_noop_is_settled_from_the_checkpoint_with_the_same_report(
    remote: Installation, remote_server: RunningServer, synced: tuple[Datastore, PullReport]
) -> None:
    dst, noop = synced
    again = await http_pull(remote_server, remote, dst)
    assert again.ok
    assert again.groups_from_checkpoint == len(noop.groups) > 0
    assert comparable(again) == comparable(noop)
    assert again.to_json()["groups-from-checkpoint"] == len(noop.groups)
    assert len(checkpoints(dst)) == 1


async def test_a_checkpoint_file_names_tags_and_keys_of_every_group(
    synced: tuple[Datastore, PullReport],
) -> None:
    dst, noop = synced
    cp = cpt.load(checkpoints(dst)[0])
    assert cp is not None
    recorded = {(e.local, g.group): g for e in cp.namespaces for g in e.groups}
    assert set(recorded) == {(r.local_ns, r.group) for r in noop.groups}
    for r in noop.groups:
        entry = recorded[(r.local_ns, r.group)]
        assert entry.unchanged == r.snapshots_unchanged
        rels = [rel for rel, _ in entry.keys]
        assert rels[:2] == ["", "owner"] and rels[-1].endswith("/" + MANIFEST_NAME)
        assert all(k is not None for _, k in entry.keys)
    assert all(len(e.tag) == 32 for e in cp.namespaces)


async def test_the_tag_is_that_of_the_listing_bytes(
    remote: Installation, remote_server: RunningServer
) -> None:
    source = await http_source(remote_server, remote)
    try:
        tag, items = await source.list_namespace_snapshots_tagged(NS_A, None)
        assert items is not None and [i.snapshot for i in items] == [
            i.snapshot for i in await source.list_namespace_snapshots(NS_A)
        ]
        client = source.client
        raw = await client._once(
            "GET", protocol.p_snapshots("store"), params={"ns": "a"}, max_size=1 << 20, parse=False
        )
        assert tag == protocol.listing_tag(raw)
        assert await source.list_namespace_snapshots_tagged(NS_A, tag) == (tag, None)
        other, items2 = await source.list_namespace_snapshots_tagged(NS_A, "0" * 32)
        assert other == tag and items2 is not None
    finally:
        await source.aclose()


def _recorded(dst: Datastore) -> set[Namespace]:
    (path,) = checkpoints(dst)
    cp = cpt.load(path)
    assert cp is not None
    return {e.local for e in cp.namespaces}


async def test_a_new_remote_snapshot_is_pulled_and_only_its_namespace_is_dropped(
    remote: Installation, remote_server: RunningServer, synced: tuple[Datastore, PullReport]
) -> None:
    dst, noop = synced
    everywhere = {g.local_ns for g in noop.groups}
    snap = SnapshotId.parse("vm/300/2026-11-23T08:00:00Z")
    await asyncio.to_thread(write_snapshot, remote.store, NS_A, snap, owner="admin@pbs")
    report = await http_pull(remote_server, remote, dst)
    assert report.ok and report.snapshots_synced == 1
    assert await asyncio.to_thread(dst.snapshot_exists, NS_A, snap)
    # the other namespaces' listings did not change: they are still settled from the checkpoint
    others = [g for g in report.groups if g.local_ns != NS_A]
    assert report.groups_from_checkpoint == len(others) > 0
    # and stay recorded; namespace a transferred, so it is not
    assert _recorded(dst) == everywhere - {NS_A}
    # the next noop reads a (its files are now old enough) and records it again
    await asyncio.to_thread(settle)
    again = await http_pull(remote_server, remote, dst)
    assert again.groups_from_checkpoint == len(others)
    assert _recorded(dst) == everywhere
    assert (await http_pull(remote_server, remote, dst)).groups_from_checkpoint == len(again.groups)


def _overwrite(path: Path, data: bytes) -> None:
    """Replace the bytes of ``path`` in place (same inode), as a hand edit may."""
    with open(path, "r+b") as f:
        f.write(data)
        f.truncate()


def _newest_manifest(dst: Datastore, ns: Namespace, group: GroupId) -> Path:
    newest = max(dst.list_snapshot_ids(ns, group))
    return dst.snapshot_path(ns, newest) / MANIFEST_NAME


async def test_a_manifest_rewritten_in_place_is_seen(
    remote: Installation, remote_server: RunningServer, synced: tuple[Datastore, PullReport]
) -> None:
    dst, _ = synced
    path = await asyncio.to_thread(_newest_manifest, dst, ROOT_NS, VM100)
    good = path.read_bytes()
    await asyncio.to_thread(_overwrite, path, good[:-1] + bytes([good[-1] ^ 0xFF]))  # same length
    report = await http_pull(remote_server, remote, dst)
    root_groups = [g for g in report.groups if g.local_ns == ROOT_NS]
    assert report.groups_from_checkpoint == len(report.groups) - len(root_groups)
    by = {(g.local_ns, g.group): g for g in report.groups}
    # the full path's answer to a corrupt local manifest: the group fails, the others are fine
    vm = by[(ROOT_NS, VM100)]
    assert vm.status is GroupStatus.FAILED and "manifest" in (vm.error or "")
    assert [g for g in report.groups if g.failed] == [vm]


@pytest.mark.parametrize("change", ["remove-newest", "owner-in-place", "new-folder"])
async def test_local_changes_take_the_full_path(
    remote: Installation, remote_server: RunningServer, synced: tuple[Datastore, PullReport], change: str
) -> None:
    dst, noop = synced
    gdir = dst.group_path(ROOT_NS, VM100)
    if change == "remove-newest":
        newest = max(await asyncio.to_thread(dst.list_snapshot_ids, ROOT_NS, VM100))
        await asyncio.to_thread(shutil.rmtree, dst.snapshot_path(ROOT_NS, newest))
    elif change == "owner-in-place":
        await asyncio.to_thread(_overwrite, gdir / "owner", b"other@pbs\n")
    elif change == "new-folder":
        # uncommitted: ignored by the decision, but the group folder changed
        await asyncio.to_thread((gdir / "2030-01-01T00:00:00Z").mkdir)
    report = await http_pull(remote_server, remote, dst)
    by = {(g.local_ns, g.group): g for g in report.groups}
    vm = by[(ROOT_NS, VM100)]
    root_groups = [g for g in report.groups if g.local_ns == ROOT_NS]
    # the root namespace went the full path; namespace a (untouched) is settled from the checkpoint
    assert report.groups_from_checkpoint == len(report.groups) - len(root_groups)
    if change == "remove-newest":
        assert report.ok and vm.snapshots_synced == 1
    elif change == "owner-in-place":
        assert vm.status is GroupStatus.OWNER_CONFLICT
    else:
        assert report.ok and comparable(report) == comparable(noop)


async def test_a_lock_held_without_a_change_does_not_stop_the_checkpoint(
    remote: Installation, remote_server: RunningServer, synced: tuple[Datastore, PullReport]
) -> None:
    """A group another process holds locked (a verify, a backup still uploading chunks) but
    has not changed is unchanged, and is settled so; once the holder changes it, the keys
    show it and the full path meets the lock as before."""
    dst, noop = synced
    gdir = dst.group_path(ROOT_NS, VM100)
    lock = FileLock(f"{gdir}/.lock", "group").acquire()
    try:
        report = await http_pull(remote_server, remote, dst)
        assert report.ok and report.groups_from_checkpoint == len(noop.groups)
        assert comparable(report) == comparable(noop)
        await asyncio.to_thread((gdir / ".tmp.1.0123456789ab.x").mkdir)  # the holder starts writing
        report = await http_pull(remote_server, remote, dst)
    finally:
        lock.release()
    by = {(g.local_ns, g.group): g for g in report.groups}
    assert by[(ROOT_NS, VM100)].status is GroupStatus.LOCKED


async def test_a_manifest_appearing_in_a_newer_uncommitted_folder_is_seen(
    remote: Installation, remote_server: RunningServer, synced: tuple[Datastore, PullReport], tmp_path: Path
) -> None:
    dst, _ = synced
    gdir = dst.group_path(ROOT_NS, VM100)
    await asyncio.to_thread((gdir / "2030-01-01T00:00:00Z").mkdir)
    await asyncio.to_thread(settle)
    noop = await http_pull(remote_server, remote, dst)  # records the newer folder's missing manifest
    root_groups = [g for g in noop.groups if g.local_ns == ROOT_NS]
    assert noop.ok and noop.groups_from_checkpoint == len(noop.groups) - len(root_groups)
    cp = cpt.load(checkpoints(dst)[0])
    assert cp is not None
    vm = next(g for e in cp.namespaces for g in e.groups if e.local == ROOT_NS and g.group == VM100)
    assert ("2030-01-01T00:00:00Z/" + MANIFEST_NAME, None) in vm.keys
    newest = max(await asyncio.to_thread(dst.list_snapshot_ids, ROOT_NS, VM100))
    manifest = dst.snapshot_path(ROOT_NS, newest) / MANIFEST_NAME
    await asyncio.to_thread(shutil.copy, manifest, gdir / "2030-01-01T00:00:00Z" / MANIFEST_NAME)
    report = await http_pull(remote_server, remote, dst)
    assert report.groups_from_checkpoint == len(report.groups) - len(root_groups)


async def test_other_options_use_another_checkpoint(
    remote: Installation, remote_server: RunningServer, synced: tuple[Datastore, PullReport]
) -> None:
    dst, _ = synced
    report = await http_pull(remote_server, remote, dst, transfer_last=1)
    assert report.ok and report.groups_from_checkpoint == 0
    assert len(checkpoints(dst)) == 2
    again = await http_pull(remote_server, remote, dst, transfer_last=1)
    assert again.groups_from_checkpoint == len(again.groups)


@pytest.mark.parametrize("kw", [{"remove_vanished": True}, {"group_filter": GroupFilters.parse(["type:vm"])}])
async def test_remove_vanished_and_group_filters_neither_use_nor_write_one(
    remote: Installation,
    remote_server: RunningServer,
    synced: tuple[Datastore, PullReport],
    kw: dict[str, Any],
) -> None:
    dst, _ = synced
    before = checkpoints(dst)
    report = await http_pull(remote_server, remote, dst, **kw)
    assert report.ok and report.groups_from_checkpoint == 0
    assert checkpoints(dst) == before


def _hostile(path: Path, kind: str) -> None:
    doc = json.loads(path.read_bytes())
    if kind == "garbage":
        path.write_bytes(b"\x00\xff not json")
    elif kind == "truncated":
        path.write_bytes(path.read_bytes()[:-7])
    elif kind == "climbing-path":
        doc["namespaces"][0]["groups"][0][2][0][0] = "../../../etc"
        path.write_text(json.dumps(doc))
    elif kind == "bad-group":
        doc["namespaces"][0]["groups"][0][0] = "vm/../../x"
        path.write_text(json.dumps(doc))
    elif kind == "key-as-text":
        doc["namespaces"][0]["groups"][0][2][0][1] = "1,2,3,4,5"
        path.write_text(json.dumps(doc))
    elif kind == "negative-count":
        doc["namespaces"][0]["groups"][0][1] = -1
        path.write_text(json.dumps(doc))
    elif kind == "wrong-version":
        doc["version"] = 99
        path.write_text(json.dumps(doc))
    else:  # oversized
        path.write_bytes(b" " * (cpt.MAX_CHECKPOINT_BYTES + 1))


@pytest.mark.parametrize(
    "kind",
    [
        "garbage",
        "truncated",
        "climbing-path",
        "bad-group",
        "key-as-text",
        "negative-count",
        "wrong-version",
        "big",
    ],
)
async def test_a_bad_checkpoint_is_ignored_and_replaced(
    remote: Installation, remote_server: RunningServer, synced: tuple[Datastore, PullReport], kind: str
) -> None:
    dst, noop = synced
    (path,) = checkpoints(dst)
    await asyncio.to_thread(_hostile, path, kind)
    assert cpt.load(path) is None
    report = await http_pull(remote_server, remote, dst)
    assert report.ok and report.groups_from_checkpoint == 0
    assert comparable(report) == comparable(noop)
    assert cpt.load(path) is not None  # rewritten by that noop
    assert (await http_pull(remote_server, remote, dst)).groups_from_checkpoint == len(noop.groups)


async def test_keys_younger_than_the_racy_window_are_not_recorded(
    remote: Installation, remote_server: RunningServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cpt, "RACY_NS", 3600 * 10**9)  # everything is "just written"
    dst = await asyncio.to_thread(new_store, tmp_path / "dst", "dst")
    assert (await http_pull(remote_server, remote, dst)).ok
    noop = await http_pull(remote_server, remote, dst)
    assert noop.ok and noop.snapshots_synced == 0
    assert checkpoints(dst) == []


async def test_a_failed_group_leaves_its_namespace_unrecorded(
    remote: Installation, remote_server: RunningServer, synced: tuple[Datastore, PullReport]
) -> None:
    dst, noop = synced
    owner = dst.group_path(ROOT_NS, VM100) / "owner"
    await asyncio.to_thread(owner.write_text, "not an owner\n")  # the group fails to read
    report = await http_pull(remote_server, remote, dst)
    assert not report.ok
    assert _recorded(dst) == {g.local_ns for g in noop.groups} - {ROOT_NS}


async def test_a_run_with_no_namespace_settled_whole_removes_the_checkpoint(
    remote: Installation, remote_server: RunningServer, synced: tuple[Datastore, PullReport]
) -> None:
    dst, noop = synced
    for ns in {g.local_ns for g in noop.groups}:  # one group of each namespace fails to read
        group = next(g.group for g in noop.groups if g.local_ns == ns)
        await asyncio.to_thread((dst.group_path(ns, group) / "owner").write_text, "not an owner\n")
    report = await http_pull(remote_server, remote, dst)
    assert not report.ok
    assert checkpoints(dst) == []


def test_save_writes_atomically_and_clears_dead_writers_temp_files(tmp_path: Path) -> None:
    path = tmp_path / cpt.CHECKPOINT_DIR / "k.json"
    path.parent.mkdir()
    stale = path.parent / ".tmp.999999999.abcdef.k.json"
    stale.write_bytes(b"left by a killed writer")
    entry = cpt.NamespaceEntry(ROOT_NS, NS_A, "a" * 32, (cpt.GroupEntry(VM100, 2, (("", [1, 2, 3, 4, 5]),)),))
    assert cpt.save(path, cpt.Checkpoint((entry,)))
    assert not stale.exists()
    assert [p.name for p in path.parent.iterdir()] == ["k.json"]
    assert cpt.load(path) == cpt.Checkpoint((entry,))


def _temp_entry(folder: Path, pid: int) -> Path:
    """A writer's temp folder (as chunkstore.tmp_name names them) in ``folder``."""
    path = folder / f".tmp.{pid}.0123456789ab.x"
    path.mkdir(parents=True)
    (path / "part").write_bytes(b"half written")
    return path


async def test_a_group_holding_a_temp_entry_is_not_recorded(
    remote: Installation, remote_server: RunningServer, synced: tuple[Datastore, PullReport]
) -> None:
    dst, _ = synced
    live = await asyncio.to_thread(_temp_entry, dst.group_path(ROOT_NS, VM100), os.getpid())
    await asyncio.to_thread(settle)
    report = await http_pull(remote_server, remote, dst)
    assert report.ok and report.snapshots_synced == 0
    assert live.exists()  # a live writer's: left alone
    # the group's folder held a temp entry: cleanup must keep looking there, so its
    # namespace is not recorded (the others still are)
    assert ROOT_NS not in _recorded(dst) and _recorded(dst)


async def test_dead_writers_temp_entries_are_still_removed(
    remote: Installation, remote_server: RunningServer, synced: tuple[Datastore, PullReport]
) -> None:
    dst, noop = synced
    dead = 999_999_999  # no such process
    in_recorded = await asyncio.to_thread(_temp_entry, dst.group_path(ROOT_NS, VM100), dead)
    # a group only the target has (not in any listing, so in no checkpoint entry)
    local_only = await asyncio.to_thread(_temp_entry, dst.group_path(NS_A, GroupId.parse("vm/999")), dead)
    report = await http_pull(remote_server, remote, dst)
    assert report.ok
    assert not in_recorded.exists() and not local_only.exists()
    # namespace a's recorded groups did not change (vm/999 is not one of them): still settled from it
    root_groups = [g for g in report.groups if g.local_ns == ROOT_NS]
    assert report.groups_from_checkpoint == len(report.groups) - len(root_groups)
    assert comparable(report) == comparable(noop)


async def test_an_unreadable_checkpoint_is_as_none(
    remote: Installation,
    remote_server: RunningServer,
    synced: tuple[Datastore, PullReport],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    dst, noop = synced

    def denied(path: str, max_size: int = 0) -> bytes | None:
        raise PermissionError(13, "Permission denied", path)

    monkeypatch.setattr(cpt.fastread, "read_small", denied)  # fault injection: EACCES on read
    report = await http_pull(remote_server, remote, dst)
    assert report.ok and report.groups_from_checkpoint == 0
    assert comparable(report) == comparable(noop)


async def test_a_checkpoint_that_cannot_be_written_does_not_fail_the_pull(
    remote: Installation,
    remote_server: RunningServer,
    synced: tuple[Datastore, PullReport],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    dst, noop = synced
    (path,) = checkpoints(dst)
    before = path.read_bytes()
    await asyncio.to_thread(_overwrite, dst.group_path(ROOT_NS, VM100) / "owner", b"root@pam\n")
    await asyncio.to_thread(settle)

    def full(path: Path, data: bytes, level: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cpt, "atomic_write", full)  # fault injection: ENOSPC on write
    report = await http_pull(remote_server, remote, dst)
    assert report.ok and comparable(report) == comparable(noop)
    assert path.read_bytes() == before  # the old file untouched
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file left
