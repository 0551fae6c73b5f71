"""A pull with nothing new, made cheaper on both sides: the same answers as before.

Server: the group and snapshot listings are built from plain string paths and
answered as compact JSON assembled from pieces the content-keyed manifest cache
holds. The answer must be exactly what encoding the listing items' ``to_json``
gives, on stores with every oddity (other owners, odd owner names, no owner,
uncommitted or corrupt snapshots, protected ones, notes, temp folders,
namespaces, owner-only visibility).

Client: the wire models parse through cached validators (same checks: refused
values are refused every time), and the unchanged-group pre-check reads the
local store with fewer syscalls: it must settle exactly the groups the full
per-group path finds unchanged, and leave everything else (another owner, a
locked group, a snapshot without manifest, a changed manifest, a new group) to
that path, with the same report and the same store afterwards.
"""

# ruff: noqa: F811  (pytest fixtures imported from serverutil are parameters here)

from __future__ import annotations

import asyncio
import itertools
import json
import os
import random
import shutil
import threading
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pullutil import T0, add_snapshot, new_store, store_tree
from serverutil import Installation, RunningServer, http_pull, remote, remote_server  # noqa: F401

from asyncsync import LocalSource, PullOptions, PullReport, protocol, pull
from asyncsync.datastore import blob, fastread
from asyncsync.datastore.datastore import LOCK_FILE, Datastore
from asyncsync.datastore.manifest import MANIFEST_NAME, FileEntry
from asyncsync.errors import InvalidInput, NotFound, PermissionDenied
from asyncsync.names import ROOT_NS, AuthId, BackupType, GroupId, Namespace, SnapshotId, check_archive_name
from asyncsync.protocol import GroupItem, SnapshotItem
from asyncsync.server import datastore_api as api
from asyncsync.sync import pull as pull_mod
from asyncsync.sync.report import GroupStatus

ALICE = AuthId.parse("alice@pbs")
# a valid user name that needs JSON escaping (quote, backslash, non-ASCII)
ODD = AuthId.parse('o"d\\dé@pbs!tok')
NS_A = Namespace.parse("a")
NS_AB = Namespace.parse("a/b")


def compact(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


# ---- server listings -------------------------------------------------------------------------


def tricky_source(root: Path) -> Datastore:
    """A store with every case a listing must get right, in three namespaces."""
    ds = new_store(root, "src")
    rng = random.Random(11)
    for ns in (ROOT_NS, NS_A, NS_AB):
        add_snapshot(ds, ns, "vm/100", T0, rng=rng, chunks=1, chunk_size=256)
        add_snapshot(ds, ns, "vm/100", T0 + 3600, rng=rng, chunks=1, chunk_size=256, verified=True)
        add_snapshot(ds, ns, "ct/7", T0, rng=rng, chunks=1, chunk_size=256, owner=ALICE, protected=True)
        add_snapshot(ds, ns, "host/h-1", T0, rng=rng, chunks=1, chunk_size=256, owner=ODD, verified=False)
    ds.update_unprotected(ROOT_NS, SnapshotId(GroupId.parse("vm/100"), T0), notes='ünï "line"\nsecond')
    gdir = ds.group_path(ROOT_NS, GroupId.parse("vm/100"))
    (gdir / "2025-11-26T10:00:00Z").mkdir()  # a snapshot folder without manifest: not listed
    (gdir / ".tmp.x").mkdir()  # a temp folder
    (gdir / "not-a-time").mkdir()
    # a corrupt manifest: listed with verify state "corrupt" and no digest
    add_snapshot(ds, ROOT_NS, "vm/101", T0, rng=rng, chunks=1, chunk_size=256)
    (ds.snapshot_path(ROOT_NS, SnapshotId(GroupId.parse("vm/101"), T0)) / MANIFEST_NAME).write_bytes(b"junk")
    # a group without owner file, one with an unreadable owner, one with no committed snapshot
    add_snapshot(ds, ROOT_NS, "vm/102", T0, rng=rng, chunks=1, chunk_size=256)
    (ds.group_path(ROOT_NS, GroupId.parse("vm/102")) / "owner").unlink()
    add_snapshot(ds, ROOT_NS, "vm/103", T0, rng=rng, chunks=1, chunk_size=256)
    (ds.group_path(ROOT_NS, GroupId.parse("vm/103")) / "owner").write_bytes(b"\xff not text")
    ds.ensure_group(ROOT_NS, GroupId.parse("vm/104"), ALICE)
    return ds


def reference_snapshots(ds: Datastore, ns: Namespace, only_for: AuthId | None) -> list[SnapshotItem]:
    """The snapshot listing as the plain Datastore methods give it."""
    out = []
    for g in ds.list_groups(ns):
        try:
            owner = ds.get_owner(ns, g)
        except (ValueError, InvalidInput):  # unreadable: the listing says "no owner"
            owner = None
        if only_for is not None and not api.owns(owner, only_for):
            continue
        out.extend(SnapshotItem.from_info(i, owner) for i in ds.list_snapshots(ns, g))
    return out


def reference_groups(ds: Datastore, ns: Namespace, only_for: AuthId | None) -> list[GroupItem]:
    out = []
    for g in ds.list_groups(ns):
        try:
            owner = ds.get_owner(ns, g)
        except (ValueError, InvalidInput):  # unreadable: the listing says "no owner"
            owner = None
        if only_for is not None and not api.owns(owner, only_for):
            continue
        ids = ds.list_snapshot_ids(ns, g)
        if ids:
            out.append(GroupItem(g, owner, len(ids), ids[-1].time))
    return out


@pytest.mark.parametrize("ns", [ROOT_NS, NS_A, NS_AB], ids=str)
@pytest.mark.parametrize("only_for", [None, ALICE, ODD.userid], ids=str)
def test_listings_answer_exactly_as_before(tmp_path: Path, ns: Namespace, only_for: AuthId | None) -> None:
    ds = tricky_source(tmp_path / "src")
    cache = api.ManifestCache()
    for _ in range(2):  # cold and warm cache
        snaps = api._snapshots_blocking(ds, ns, None, only_for, cache)
        assert snaps == reference_snapshots(ds, ns, only_for)
        body = api._snapshots_json(ds, ns, None, only_for, cache)
        assert body == compact({"data": [s.to_json() for s in snaps]})
        assert [SnapshotItem.from_json(o) for o in json.loads(body)["data"]] == snaps
        groups = api._groups_blocking(ds, ns, None if only_for is None else only_for)
        assert groups == reference_groups(ds, ns, only_for)
        gbody = api._groups_json(ds, ns, only_for)
        assert gbody == compact({"data": [g.to_json() for g in groups]})
        assert [GroupItem.from_json(o) for o in json.loads(gbody)["data"]] == groups
    assert cache.hits > 0
    if only_for is None and ns == ROOT_NS:
        listed = {(s.snapshot.group.id, s.verify_state, s.manifest_digest is None) for s in snaps}
        assert ("101", "corrupt", True) in listed
        assert {g.group.id for g in groups} == {"100", "101", "102", "103", "7", "h-1"}  # no 104
        assert {g.group.id: g.owner for g in groups}["103"] is None


def test_one_group_listing_and_its_errors(tmp_path: Path) -> None:
    ds = tricky_source(tmp_path / "src")
    cache = api.ManifestCache()
    g = GroupId.parse("vm/100")
    items = api._snapshots_blocking(ds, ROOT_NS, g, None, cache)
    assert [i.snapshot for i in items] == [SnapshotId(g, T0), SnapshotId(g, T0 + 3600)]
    assert api._snapshots_json(ds, ROOT_NS, g, None, cache) == compact({"data": [i.to_json() for i in items]})
    # a group without committed snapshots lists nothing; a missing one is not found
    assert api._snapshots_json(ds, ROOT_NS, GroupId.parse("vm/104"), None, cache) == b'{"data":[]}'
    with pytest.raises(NotFound):
        api._snapshots_json(ds, ROOT_NS, GroupId.parse("vm/999"), None, cache)
    with pytest.raises(PermissionDenied):
        api._snapshots_json(ds, ROOT_NS, g, ALICE, cache)
    with pytest.raises(NotFound):
        api._groups_json(ds, Namespace.parse("nope"), None)


def test_a_manifest_rewritten_between_listings_is_never_served_stale(tmp_path: Path) -> None:
    ds = tricky_source(tmp_path / "src")
    cache = api.ManifestCache()
    snap = SnapshotId(GroupId.parse("vm/100"), T0 + 3600)
    before = api._snapshots_json(ds, NS_A, None, None, cache)
    ds.update_unprotected(NS_A, snap, notes="now with notes", verify_state={"state": "failed", "time": 5})
    ds.set_protected(NS_A, snap, True)
    after = api._snapshots_json(ds, NS_A, None, None, cache)
    assert after != before
    assert after == compact({"data": [s.to_json() for s in reference_snapshots(ds, NS_A, None)]})
    entry = next(
        o for o in json.loads(after)["data"] if o["backup-time"] == snap.time and o["backup-id"] == "100"
    )
    assert entry["comment"] == "now with notes" and entry["verification"] == {"state": "failed"}
    assert entry["protected"] is True
    assert entry["manifest-digest"] == ds.manifest_digest(NS_A, snap)


def _listed(ds: Datastore, cache: api.ManifestCache) -> list[SnapshotItem]:
    items = api._snapshots_blocking(ds, ROOT_NS, None, None, cache)
    assert items == reference_snapshots(ds, ROOT_NS, None)
    return items


def test_manifests_unchanged_since_the_last_listing_are_served_by_their_stat(tmp_path: Path) -> None:
    ds = tricky_source(tmp_path / "src")
    cache = api.ManifestCache(racy_ns=0)  # the files were just written: trust their times at once
    first = _listed(ds, cache)
    assert cache.stat_hits == 0
    misses, hits = cache.misses, cache.hits
    second = _listed(ds, cache)
    assert second == first
    # every committed manifest (the corrupt one included) came from its stat: none was read
    assert cache.stat_hits == len(first)
    assert (cache.misses, cache.hits) == (misses, hits)


def test_manifests_written_moments_ago_are_read_every_time(tmp_path: Path) -> None:
    # the default racy interval: files younger than it may still change within one clock tick
    ds = tricky_source(tmp_path / "src")
    cache = api.ManifestCache()
    _listed(ds, cache)
    hits = cache.hits
    items = _listed(ds, cache)
    assert cache.stat_hits == 0
    assert cache.hits == hits + len(items)  # read again, decoded from the content cache


def test_a_changed_manifest_is_never_served_by_a_stale_stat(tmp_path: Path) -> None:
    ds = tricky_source(tmp_path / "src")
    cache = api.ManifestCache(racy_ns=0)
    _listed(ds, cache)
    snap = SnapshotId(GroupId.parse("vm/100"), T0 + 3600)
    # replaced by rename (new inode), as every asyncsync writer does
    ds.update_unprotected(ROOT_NS, snap, notes="renamed into place")
    # changed in place (same inode, other size): a hand edit
    other = SnapshotId(GroupId.parse("host/h-1"), T0)
    with open(ds.snapshot_path(ROOT_NS, other) / MANIFEST_NAME, "ab") as f:
        f.write(b"!")
    items = {i.snapshot: i for i in _listed(ds, cache)}
    assert items[snap].comment == "renamed into place"
    assert items[snap].manifest_digest == ds.manifest_digest(ROOT_NS, snap)
    assert items[other].verify_state == "corrupt" and items[other].manifest_digest is None


def test_the_stat_layer_is_bounded(tmp_path: Path) -> None:
    ds = tricky_source(tmp_path / "src")
    cache = api.ManifestCache(2, racy_ns=0)
    items = _listed(ds, cache)
    assert len(items) > 2
    assert len(cache._by_path) == 2 and len(cache) <= 2
    _listed(ds, cache)
    with pytest.raises(InvalidInput):
        api.ManifestCache(racy_ns=-1)


_names = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,12}\.(fidx|didx|blob)", fullmatch=True)


@given(
    files=st.lists(
        st.builds(FileEntry, _names, st.integers(0, 2**53), st.from_regex(r"[0-9a-f]{64}", fullmatch=True)),
        max_size=4,
    ),
    size=st.integers(0, 2**60),
    verify_state=st.one_of(st.none(), st.just(""), st.text(max_size=8)),
    comment=st.one_of(st.none(), st.text(max_size=20)),
    digest=st.one_of(st.none(), st.from_regex(r"[0-9a-f]{64}", fullmatch=True)),
    protected=st.booleans(),
    t=st.integers(0, 253402300799),
)
def test_the_cached_json_pieces_encode_like_to_json(
    files: list[FileEntry],
    size: int,
    verify_state: str | None,
    comment: str | None,
    digest: str | None,
    protected: bool,
    t: int,
) -> None:
    facts = api.ManifestFacts(tuple(files), size, verify_state, comment, digest)
    g = GroupId(BackupType.HOST, "h-1")
    item = SnapshotItem(SnapshotId(g, t), tuple(files), size, protected, verify_state, ODD, comment, digest)
    piece = (
        f'{api._group_head(g)},"backup-time":{t},{facts.json_files},'
        f'"protected":{"true" if protected else "false"},"verification":{facts.json_verification},'
        f'"owner":{api._owner_json(ODD)}{facts.json_tail}'
    )
    assert piece.encode() == compact(item.to_json())


# ---- client parsing ------------------------------------------------------------------------


def old_snapshot_from_json(obj: Any) -> SnapshotItem:
    """SnapshotItem.from_json before the cached validators (the reference)."""
    try:
        files = tuple(
            FileEntry(check_archive_name(f["filename"]), int(f["size"]), str(f["csum"]))
            for f in obj.get("files") or []
        )
        verification = obj.get("verification")
        owner = obj.get("owner")
        return SnapshotItem(
            SnapshotId(
                GroupId(BackupType.parse(obj["backup-type"]), obj["backup-id"]), int(obj["backup-time"])
            ),
            files,
            int(obj.get("size") or 0),
            bool(obj.get("protected", False)),
            verification.get("state") if isinstance(verification, dict) else None,
            AuthId.parse(owner) if owner else None,
            obj.get("comment"),
            protocol._optional_digest(obj.get("manifest-digest")),
        )
    except Exception as exc:  # any refusal: the new code must refuse too
        raise InvalidInput(str(exc)) from exc


def good_snapshot() -> dict[str, Any]:
    return {
        "backup-type": "vm",
        "backup-id": "100",
        "backup-time": T0,
        "files": [{"filename": "a.blob", "size": 1, "csum": "c"}],
        "size": 1,
        "protected": False,
        "verification": {"state": "ok"},
        "owner": "root@pam",
        "comment": None,
        "manifest-digest": "ab" * 32,
    }


_junk = st.one_of(
    st.none(), st.integers(-3, 3), st.text(max_size=6), st.lists(st.integers(), max_size=1),
    st.sampled_from(["vm", "ct", "x", "../x", "index.json.blob", "a.fidx", "u@pbs", "u@pbs!t", "@pbs", ".."]),
)  # fmt: skip


@given(
    field=st.sampled_from(["backup-type", "backup-id", "backup-time", "owner", "filename", "size"]),
    value=_junk,
)
def test_snapshot_parsing_refuses_and_accepts_exactly_as_before(field: str, value: Any) -> None:
    obj = good_snapshot()
    if field == "filename":
        obj["files"] = [{**obj["files"][0], "filename": value}]
    else:
        obj[field] = value
    for _ in range(2):  # the second time through the caches
        try:
            expected: SnapshotItem | None = old_snapshot_from_json(obj)
        except InvalidInput:
            expected = None
        if expected is None:
            with pytest.raises(InvalidInput):
                SnapshotItem.from_json(obj)
        else:
            assert SnapshotItem.from_json(obj) == expected


def test_group_parsing_refuses_bad_names_every_time() -> None:
    good = {"backup-type": "ct", "backup-id": "7", "owner": "alice@pbs", "backup-count": 2, "last-backup": 5}
    assert GroupItem.from_json(good) == GroupItem(GroupId.parse("ct/7"), ALICE, 2, 5)
    for bad in ({"backup-id": "../7"}, {"backup-type": "zz"}, {"owner": "nobody"}, {"backup-id": ["7"]}):
        for _ in range(2):
            with pytest.raises(InvalidInput):
                GroupItem.from_json({**good, **bad})


# ---- the client's unchanged-group pre-check ----------------------------------------------------

GROUPS = [GroupId.parse(f"vm/{200 + i}") for i in range(8)]
_copies = itertools.count()


def reference_local_state(store: Datastore, ns: Namespace, g: GroupId) -> dict[int, str | None]:
    """What the pre-check knew before: committed ids, the newest one's manifest digest."""
    ids = store.list_snapshot_ids(ns, g)
    local: dict[int, str | None] = {s.time: None for s in ids[:-1]}
    if ids:
        local[ids[-1].time] = store.manifest_digest(ns, ids[-1])
    return local


def test_local_state_matches_the_datastore_on_odd_groups(tmp_path: Path) -> None:
    ds = new_store(tmp_path / "dst", "dst")
    rng = random.Random(2)
    for g in GROUPS[:5]:
        for k in range(3):
            add_snapshot(ds, NS_A, g, T0 + 3600 * k, rng=rng, chunks=1, chunk_size=256)
    newest = T0 + 7200

    def manifest(g: GroupId, t: int) -> Path:
        return ds.snapshot_path(NS_A, SnapshotId(g, t)) / MANIFEST_NAME

    manifest(GROUPS[0], newest).unlink()  # newest without manifest: the next one is newest
    manifest(GROUPS[1], T0).unlink()  # an older one without manifest
    manifest(GROUPS[2], newest).unlink()
    os.mkfifo(manifest(GROUPS[2], newest))  # not a regular file: not committed, and no hang
    manifest(GROUPS[3], newest).unlink()
    manifest(GROUPS[3], newest).mkdir()  # a folder: not committed either
    (ds.group_path(NS_A, GROUPS[4]) / ".tmp.dead").mkdir()
    ds.group_path(NS_A, GROUPS[5]).mkdir(parents=True)  # empty group folder
    ns_dir = str(ds.ns_path(NS_A))
    for g in GROUPS:  # GROUPS[6], [7]: no folder at all
        gdir = f"{ns_dir}/{g}"
        assert pull_mod._local_state(gdir) == reference_local_state(ds, NS_A, g), g
    assert list(pull_mod._local_state(f"{ns_dir}/{GROUPS[0]}")) == [T0, T0 + 3600]
    # the lock the pre-check takes is the group lock
    assert Path(f"{ns_dir}/{GROUPS[0]}/{LOCK_FILE}") == ds.group_lock(NS_A, GROUPS[0]).path


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Datastore, Datastore]:
    src = new_store(tmp_path / "src", "src")
    rng = random.Random(7)
    for ns in (NS_A, NS_AB):
        for g in GROUPS:
            for k in range(2):
                add_snapshot(src, ns, g, T0 + 3600 * k, rng=rng, chunks=1, chunk_size=256)
    return src, new_store(tmp_path / "dst", "dst")


def outcome(report: PullReport) -> list[tuple[str, str, str, int, int, int]]:
    return [
        (str(g.local_ns), str(g.group), g.status.value, g.snapshots_synced, g.snapshots_unchanged,
         g.removed_snapshots)
        for g in report.groups
    ]  # fmt: skip


async def pull_both(
    src: Datastore, dst: Datastore, tmp_path: Path, hold: tuple[Namespace, GroupId] | None, **kw: Any
) -> tuple[PullReport, PullReport, Datastore]:
    """Pull into a copy of ``dst`` with the per-group path only, then into ``dst`` with the
    pre-check; returns both reports and the copy (for comparing the stores)."""
    copy_root = tmp_path / f"copy-{next(_copies)}"
    await asyncio.to_thread(shutil.copytree, dst.root, copy_root, symlinks=True)
    copy = await asyncio.to_thread(Datastore.open, copy_root, "dst")
    opts = PullOptions(remote_ns=NS_A, ns=NS_A, **kw)

    async def run(store: Datastore) -> PullReport:
        lock = await asyncio.to_thread(lambda: store.group_lock(*hold).acquire()) if hold else None
        try:
            return await pull(LocalSource(src), store, opts)
        finally:
            if lock is not None:
                lock.release()

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(pull_mod, "_settle_unchanged", lambda *a: [])  # every group takes the full path
        full = await run(copy)
    fast = await run(dst)
    return full, fast, copy


@pytest.mark.parametrize("remove_vanished", [False, True])
async def test_pre_check_decides_like_the_full_path_on_tricky_stores(
    pair: tuple[Datastore, Datastore], tmp_path: Path, remove_vanished: bool
) -> None:
    src, dst = pair
    assert (await pull(LocalSource(src), dst, PullOptions(remote_ns=NS_A, ns=NS_A))).ok
    newest = T0 + 3600

    def damage() -> None:
        dst.set_owner(NS_A, GROUPS[0], ALICE)  # another owner
        (
            dst.snapshot_path(NS_A, SnapshotId(GROUPS[2], newest)) / MANIFEST_NAME
        ).unlink()  # newest uncommitted
        (dst.snapshot_path(NS_A, SnapshotId(GROUPS[3], T0)) / MANIFEST_NAME).unlink()  # older uncommitted
        dst.update_unprotected(NS_A, SnapshotId(GROUPS[4], newest), notes="local edit")  # newest changed here
        src.update_unprotected(NS_A, SnapshotId(GROUPS[5], newest), notes="remote edit")  # ... and there
        shutil.rmtree(dst.group_path(NS_A, GROUPS[6]))  # a group new here
        (dst.group_path(NS_AB, GROUPS[7]) / ".tmp.123.dead").mkdir()  # a temp folder
        src.remove_snapshot(NS_AB, SnapshotId(GROUPS[7], T0))  # vanished remotely

    await asyncio.to_thread(damage)
    full, fast, copy = await pull_both(src, dst, tmp_path, (NS_A, GROUPS[1]), remove_vanished=remove_vanished)
    assert outcome(fast) == outcome(full)
    assert (fast.snapshots_synced, fast.snapshots_unchanged, fast.removed_snapshots) == (
        full.snapshots_synced,
        full.snapshots_unchanged,
        full.removed_snapshots,
    )
    status = {(str(g.local_ns), str(g.group)): g.status for g in fast.groups}
    assert status[(str(NS_A), str(GROUPS[0]))] is GroupStatus.OWNER_CONFLICT
    assert status[(str(NS_A), str(GROUPS[1]))] is GroupStatus.LOCKED
    synced = {str(g.group) for g in fast.groups if g.snapshots_synced and g.local_ns == NS_A}
    assert synced == {str(GROUPS[i]) for i in (2, 4, 5, 6)}
    assert await asyncio.to_thread(store_tree, dst) == await asyncio.to_thread(store_tree, copy)
    # a second run: everything left is settled by the pre-check, as the full path would
    full2, fast2, _ = await pull_both(src, dst, tmp_path, None, remove_vanished=remove_vanished)
    assert outcome(fast2) == outcome(full2)


def test_pre_check_creates_nothing_for_a_new_group(tmp_path: Path) -> None:
    dst = new_store(tmp_path / "dst", "dst")
    dst.create_namespace(NS_A)
    item = SnapshotItem(SnapshotId(GROUPS[0], T0), (), 0, False, None, None, None, "ab" * 32)
    rules = pull_mod._SettleRules(AuthId.parse("root@pam"), None, False, False)
    assert pull_mod._settle_unchanged(dst, NS_A, [(GROUPS[0], [item])], rules) == []
    assert not dst.group_path(NS_A, GROUPS[0]).exists()


# ---- end to end over TLS -----------------------------------------------------------------------


async def test_noop_over_the_wire_settles_every_group(
    remote: Installation, remote_server: RunningServer, tmp_path: Path
) -> None:
    dst = await asyncio.to_thread(new_store, tmp_path / "dst", "dst")

    async def once() -> PullReport:
        return await http_pull(remote_server, remote, dst, remote_ns=ROOT_NS)

    first = await once()
    assert first.ok and first.snapshots_synced > 0
    settled: list[int] = []
    real = pull_mod._settle_unchanged

    def counting(*args: Any) -> list[tuple[GroupId, int]]:
        done = real(*args)
        settled.append(len(done))
        return done

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(pull_mod, "_settle_unchanged", counting)
        again = await once()
    assert again.ok and again.snapshots_synced == 0 and again.chunks_downloaded == 0
    # with no filter and no remove-vanished every namespace is listed in bulk (one request),
    # so every group was settled by the pre-check: no reader, no per-group listing
    assert sum(settled) == len(first.groups) > 0
    assert len(again.groups) == len(first.groups)
    assert all(g.status is GroupStatus.OK and g.snapshots_unchanged == 1 for g in again.groups)


def test_listing_skips_a_fifo_manifest_and_bounds_an_oversized_one(tmp_path: Path) -> None:
    """Hostile local files: a FIFO in place of a manifest would block a reading thread
    forever; it is "no manifest" (the snapshot is not listed). An oversized manifest is read
    only up to the bound and listed as corrupt, as any undecodable manifest."""
    ds = tricky_source(tmp_path / "src")
    g = GroupId.parse("vm/100")
    newest = ds.snapshot_path(ROOT_NS, SnapshotId(g, T0 + 3600)) / MANIFEST_NAME
    newest.unlink()
    os.mkfifo(newest)
    done: list[list[SnapshotItem]] = []
    t = threading.Thread(
        target=lambda: done.append(api._snapshots_blocking(ds, ROOT_NS, g, None, api.ManifestCache()))
    )
    t.start()
    t.join(20)
    assert not t.is_alive(), "the listing blocked on a FIFO"
    assert [i.snapshot for i in done[0]] == [SnapshotId(g, T0)]

    newest.unlink()
    with open(newest, "wb") as f:
        f.truncate(blob.MAX_BLOB_SIZE + 10 * 1024 * 1024)  # sparse: 26 MiB claimed, none on disk
    assert len(fastread.read_small(str(newest)) or b"") == blob.MAX_BLOB_SIZE + 1
    items = api._snapshots_blocking(ds, ROOT_NS, g, None, api.ManifestCache())
    assert [(i.snapshot.time, i.verify_state, i.manifest_digest is None) for i in items][-1] == (
        T0 + 3600,
        "corrupt",
        True,
    )
