"""The server's snapshot listing fast path: the manifest cache and cached time parsing.

The listing must say exactly what :meth:`Datastore.list_snapshots` says, also
while writers change manifests between two listings (the cache is keyed by
the manifest's content, so it can never serve the facts of an older one).
"""

from __future__ import annotations

import os
import random
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st
from pullutil import T0, add_snapshot, new_store

from asyncsync import protocol
from asyncsync.datastore.datastore import Datastore, snapshot_time
from asyncsync.datastore.manifest import MANIFEST_NAME
from asyncsync.errors import InvalidName
from asyncsync.names import ROOT_NS, GroupId, Namespace, SnapshotId, format_time, parse_time
from asyncsync.server.datastore_api import ManifestCache, _groups_blocking, _snapshots_blocking

G = GroupId.parse("vm/100")
H = GroupId.parse("ct/7")


def reference_listing(ds: Datastore, ns: Namespace) -> list[protocol.SnapshotItem]:
    """The listing as the uncached Datastore methods give it."""
    out = []
    for g in ds.list_groups(ns):
        owner = ds.get_owner(ns, g)
        out.extend(protocol.SnapshotItem.from_info(i, owner) for i in ds.list_snapshots(ns, g))
    return out


def build(tmp_path: Path) -> Datastore:
    ds = new_store(tmp_path / "src", "src")
    rng = random.Random(5)
    add_snapshot(ds, ROOT_NS, G, T0, rng=rng, chunks=1)
    add_snapshot(ds, ROOT_NS, G, T0 + 3600, rng=rng, chunks=1, verified=True, protected=True)
    add_snapshot(ds, ROOT_NS, H, T0, rng=rng, chunks=1, log=b"a log\n")
    ds.update_unprotected(ROOT_NS, SnapshotId(H, T0), notes="first line\nsecond")
    # not snapshots: an uncommitted folder, a non-canonical name, a hidden folder
    gdir = ds.group_path(ROOT_NS, G)
    (gdir / format_time(T0 + 7200)).mkdir()
    (gdir / "2025-11-26T08:00:00+00:00").mkdir()
    (gdir / ".tmp.x").mkdir()
    return ds


def test_listing_equals_the_uncached_datastore_listing(tmp_path: Path) -> None:
    ds = build(tmp_path)
    cache = ManifestCache()
    first = _snapshots_blocking(ds, ROOT_NS, None, None, cache)
    assert first == reference_listing(ds, ROOT_NS)
    assert [i.snapshot for i in first] == [
        SnapshotId(H, T0),
        SnapshotId(G, T0),
        SnapshotId(G, T0 + 3600),
    ]
    assert cache.misses == 3 and cache.hits == 0
    second = _snapshots_blocking(ds, ROOT_NS, None, None, cache)
    assert second == first
    assert cache.hits == 3
    # one group, and the group listing's counts
    assert _snapshots_blocking(ds, ROOT_NS, G, None, cache) == first[1:]
    groups = {g.group: g for g in _groups_blocking(ds, ROOT_NS, None)}
    assert groups[G].backup_count == 2 and groups[G].last_backup == T0 + 3600
    assert groups[H].backup_count == 1


def test_a_rewritten_manifest_is_never_served_from_the_cache(tmp_path: Path) -> None:
    ds = build(tmp_path)
    cache = ManifestCache()
    _snapshots_blocking(ds, ROOT_NS, None, None, cache)
    snap = SnapshotId(G, T0)
    # a writer changes notes and verify state (a new manifest renamed into place)
    ds.update_unprotected(ROOT_NS, snap, notes="changed", verify_state={"state": "failed", "time": 1})
    ds.set_protected(ROOT_NS, snap, True)
    listed = {i.snapshot: i for i in _snapshots_blocking(ds, ROOT_NS, None, None, cache)}
    assert listed[snap].comment == "changed"
    assert listed[snap].verify_state == "failed"
    assert listed[snap].protected
    assert listed[snap].manifest_digest == ds.snapshot_info(ROOT_NS, snap).manifest_digest  # type: ignore[union-attr]
    assert list(listed.values()) == reference_listing(ds, ROOT_NS)
    # the same bytes written back (same content, new inode and mtime) hit again
    raw = ds.read_file(ROOT_NS, snap, MANIFEST_NAME)
    path = ds.snapshot_path(ROOT_NS, snap) / MANIFEST_NAME
    tmp = path.with_name("x")
    tmp.write_bytes(raw)
    os.replace(tmp, path)
    hits = cache.hits
    assert _snapshots_blocking(ds, ROOT_NS, G, None, cache) == reference_listing(ds, ROOT_NS)[1:]
    assert cache.hits == hits + 2


def test_a_removed_or_corrupt_manifest(tmp_path: Path) -> None:
    ds = build(tmp_path)
    cache = ManifestCache()
    _snapshots_blocking(ds, ROOT_NS, None, None, cache)
    snap = SnapshotId(G, T0)
    path = ds.snapshot_path(ROOT_NS, snap) / MANIFEST_NAME
    path.write_bytes(b"not a blob")
    items = _snapshots_blocking(ds, ROOT_NS, G, None, cache)
    assert items == reference_listing(ds, ROOT_NS)[1:]
    assert items[0].verify_state == "corrupt" and items[0].files == () and items[0].manifest_digest is None
    path.unlink()  # no manifest: no snapshot
    assert [i.snapshot for i in _snapshots_blocking(ds, ROOT_NS, G, None, cache)] == [
        SnapshotId(G, T0 + 3600)
    ]


def test_cache_is_bounded(tmp_path: Path) -> None:
    ds = build(tmp_path)
    cache = ManifestCache(max_entries=2)
    _snapshots_blocking(ds, ROOT_NS, None, None, cache)
    assert len(cache) == 2
    assert _snapshots_blocking(ds, ROOT_NS, None, None, cache) == reference_listing(ds, ROOT_NS)


def test_owner_file_unreadable_means_no_owner(tmp_path: Path) -> None:
    ds = build(tmp_path)
    (ds.group_path(ROOT_NS, H) / "owner").write_bytes(b"\xff\xfe not text")
    items = _snapshots_blocking(ds, ROOT_NS, H, None, ManifestCache())
    assert items and items[0].owner is None


def _old_snapshot_time(name: str) -> int | None:
    """What the listings did before the cached helper."""
    try:
        snap = SnapshotId(G, parse_time(name))
    except InvalidName:
        return None
    return snap.time if snap.time_str == name else None


@given(
    st.one_of(
        st.text(max_size=30),
        st.integers(min_value=-(10**11), max_value=3 * 10**11).map(
            lambda t: format_time(t) if -62135596800 <= t < 253402300800 else str(t)
        ),
        st.from_regex(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(Z|[+-]\d{2}:\d{2})", fullmatch=True),
    )
)
def test_snapshot_time_matches_the_uncached_rule(name: str) -> None:
    assert snapshot_time(name) == _old_snapshot_time(name)
