"""Datastore: atomic snapshot commit, protection, namespaces, temp-file cleanup, chunk store."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from asyncsync.datastore import blob
from asyncsync.datastore.chunkstore import SyncLevel, tmp_name
from asyncsync.datastore.datastore import Datastore
from asyncsync.datastore.index import DynamicIndex
from asyncsync.datastore.manifest import MANIFEST_NAME
from asyncsync.errors import AlreadyExists, Conflict, InvalidInput, NotFound
from asyncsync.names import ROOT_AUTH_ID, ROOT_NS, BackupType, GroupId, Namespace, SnapshotId

VM = GroupId(BackupType.VM, "100")


def _snap(t: int) -> SnapshotId:
    return SnapshotId(VM, t)


def _write_snapshot(store: Datastore, ns: Namespace, snap: SnapshotId, content: bytes = b"data") -> None:
    digest, _ = store.chunks.insert_data(content)
    with store.begin_snapshot(ns, snap) as w:
        w.add_index("root.didx", DynamicIndex(((len(content), bytes.fromhex(digest)),)))
        w.add_blob("conf.blob", b"config")
        w.commit()


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_commit_is_atomic(store: Datastore) -> None:
    store.ensure_group(ROOT_NS, VM, ROOT_AUTH_ID)
    snap = _snap(1000)
    with store.begin_snapshot(ROOT_NS, snap) as w:
        w.add_blob("conf.blob", b"x")
        # before commit: nothing visible, only a hidden temp folder
        assert not store.snapshot_exists(ROOT_NS, snap)
        assert store.list_snapshots(ROOT_NS, VM) == []
        hidden = [p.name for p in store.group_path(ROOT_NS, VM).iterdir() if p.name.startswith(".tmp.")]
        assert len(hidden) == 1
        w.commit()
    assert store.snapshot_exists(ROOT_NS, snap)
    assert [i.snapshot for i in store.list_snapshots(ROOT_NS, VM)] == [snap]
    assert not any(p.name.startswith(".tmp.") for p in store.group_path(ROOT_NS, VM).iterdir())


def test_abandoned_writer_leaves_nothing(store: Datastore) -> None:
    snap = _snap(1000)
    with pytest.raises(RuntimeError), store.begin_snapshot(ROOT_NS, snap) as w:
        w.add_blob("conf.blob", b"x")
        raise RuntimeError("interrupted")
    assert not store.snapshot_exists(ROOT_NS, snap)
    assert not any(p.name.startswith(".tmp.") for p in store.group_path(ROOT_NS, VM).iterdir())


def test_protected_kept_on_recommit(store: Datastore) -> None:
    snap = _snap(1000)
    _write_snapshot(store, ROOT_NS, snap, b"one")
    store.set_protected(ROOT_NS, snap, True)
    _write_snapshot(store, ROOT_NS, snap, b"two")  # a re-sync replaces the snapshot
    assert store.is_protected(ROOT_NS, snap)
    assert store.snapshot_info(ROOT_NS, snap) is not None
    with pytest.raises(Conflict):
        store.remove_snapshot(ROOT_NS, snap)
    store.set_protected(ROOT_NS, snap, False)
    store.remove_snapshot(ROOT_NS, snap)
    assert not store.snapshot_exists(ROOT_NS, snap)


def test_update_unprotected_keeps_content(store: Datastore) -> None:
    snap = _snap(1000)
    _write_snapshot(store, ROOT_NS, snap)
    before = store.load_manifest(ROOT_NS, snap)
    store.update_unprotected(ROOT_NS, snap, verify_state={"state": "ok", "time": 5})
    after = store.load_manifest(ROOT_NS, snap)
    assert after.content_digest() == before.content_digest()
    assert after.verify_state == "ok"
    assert store.list_snapshots(ROOT_NS, VM)[0].verify_state == "ok"


def test_namespace_rules(store: Datastore) -> None:
    a, ab = Namespace.parse("a"), Namespace.parse("a/b")
    with pytest.raises(NotFound):
        store.create_namespace(ab)
    assert store.create_namespace(ab, parents=True)
    assert not store.create_namespace(ab)
    assert store.list_namespaces() == [ROOT_NS, a, ab]
    assert (store.root / "ns" / "a" / "ns" / "b").is_dir()
    with pytest.raises(InvalidInput):
        store.remove_namespace(ROOT_NS)
    with pytest.raises(NotFound):
        store.remove_namespace(Namespace.parse("zz"))

    _write_snapshot(store, ab, _snap(1000))
    with pytest.raises(Conflict, match="not empty"):
        store.remove_namespace(a)
    assert store.snapshot_exists(ab, _snap(1000))

    store.set_protected(ab, _snap(1000), True)
    _write_snapshot(store, ab, _snap(2000))
    with pytest.raises(Conflict, match="protected"):
        store.remove_namespace(a, delete_groups=True)
    # the protected snapshot survives, the other one is gone
    assert store.snapshot_exists(ab, _snap(1000))
    assert not store.snapshot_exists(ab, _snap(2000))

    store.set_protected(ab, _snap(1000), False)
    store.remove_namespace(a, delete_groups=True)
    assert store.list_namespaces() == [ROOT_NS]


def test_namespace_removal_leaves_a_group_another_operation_holds(store: Datastore) -> None:
    """Groups are removed under their locks: a group a backup or sync holds stays, with its
    snapshots, and the error names it; the others go. Once released it can be removed."""
    a = Namespace.parse("a")
    store.create_namespace(a)
    other = SnapshotId(GroupId.parse("ct/7"), 1000)
    _write_snapshot(store, a, _snap(1000))
    _write_snapshot(store, a, other, b"other")
    with store.group_lock(a, VM), pytest.raises(Conflict, match=r"1 group\(s\) locked .*vm/100"):
        store.remove_namespace(a, delete_groups=True)
    assert store.snapshot_exists(a, _snap(1000))
    assert not store.snapshot_exists(a, other)
    store.remove_namespace(a, delete_groups=True)
    assert store.list_namespaces() == [ROOT_NS]


def test_cleanup_temp_removes_only_dead_writers(store: Datastore) -> None:
    digest, _ = store.chunks.insert_data(b"chunk")
    prefix = store.chunks.path(digest).parent
    dead = _dead_pid()
    stale_chunk = prefix / f".tmp.{dead}.abc123.{digest}"
    stale_chunk.write_bytes(b"half")
    live_chunk = prefix / tmp_name(digest)  # ours: still "running"
    live_chunk.write_bytes(b"in progress")
    _write_snapshot(store, ROOT_NS, _snap(1000))
    group = store.group_path(ROOT_NS, VM)
    stale_snap = group / f".tmp.{dead}.ffff.2026-01-01T00:00:00Z"
    stale_snap.mkdir()
    (stale_snap / "root.didx").write_bytes(b"x")

    assert store.cleanup_temp() == 2
    assert not stale_chunk.exists() and not stale_snap.exists()
    assert live_chunk.exists()
    assert store.chunks.exists(digest)
    assert store.snapshot_exists(ROOT_NS, _snap(1000))


def test_chunk_insert_is_idempotent(store: Datastore) -> None:
    digest, new = store.chunks.insert_data(b"abc" * 1000)
    assert new
    assert store.chunks.insert_data(b"abc" * 1000) == (digest, False)
    assert store.chunks.read_data(digest) == b"abc" * 1000
    assert blob.decode(store.chunks.path(digest).read_bytes()) == b"abc" * 1000
    assert store.chunks.missing([digest, "0" * 64, digest]) == ["0" * 64]
    assert not [n for n in os.listdir(store.chunks.path(digest).parent) if n.startswith(".tmp.")]


def test_create_and_open(tmp_path: Path) -> None:
    s = Datastore.create(tmp_path / "d", "d", SyncLevel.FILE)
    _write_snapshot(s, ROOT_NS, _snap(1000))  # fsync everything path
    assert Datastore.open(tmp_path / "d").snapshot_exists(ROOT_NS, _snap(1000))
    with pytest.raises(AlreadyExists):
        Datastore.create(tmp_path / "d")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(InvalidInput):
        Datastore.create(tmp_path / "full")
    with pytest.raises(NotFound):
        Datastore.open(tmp_path / "full")


def test_manifest_is_written_last(store: Datastore) -> None:
    snap = _snap(1000)
    _write_snapshot(store, ROOT_NS, snap)
    path = store.snapshot_path(ROOT_NS, snap)
    assert (path / MANIFEST_NAME).is_file()
    assert store.read_file(ROOT_NS, snap, "conf.blob")
    with pytest.raises(NotFound):
        store.read_file(ROOT_NS, snap, "other.blob")


def test_cheap_snapshot_listing_matches_the_full_one(store: Datastore) -> None:
    store.ensure_group(ROOT_NS, VM, ROOT_AUTH_ID)
    for t in (3000, 1000, 2000):
        _write_snapshot(store, ROOT_NS, _snap(t), content=str(t).encode())
    # an uncommitted writer and a folder without manifest are not snapshots
    pending = store.begin_snapshot(ROOT_NS, _snap(4000))
    (store.group_path(ROOT_NS, VM) / _snap(5000).time_str).mkdir()
    ids = store.list_snapshot_ids(ROOT_NS, VM)
    assert (
        ids
        == [i.snapshot for i in store.list_snapshots(ROOT_NS, VM)]
        == [_snap(t) for t in (1000, 2000, 3000)]
    )
    newest = store.list_snapshots(ROOT_NS, VM)[-1]
    assert store.manifest_digest(ROOT_NS, ids[-1]) == newest.manifest_digest is not None
    assert store.manifest_digest(ROOT_NS, _snap(5000)) is None
    pending.abort()
