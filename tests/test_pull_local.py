"""The pull engine with a local datastore as source (same engine as over HTTP).

Covers the Proxmox semantics (namespaces, group filters, snapshot choice, owner,
remove-vanished, protected), dedup and the forged-reference rule, faults from a
misbehaving source, and cancellation at several points.
"""

from __future__ import annotations

import asyncio
import json
import random
import struct
import zlib
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest
import zstandard
from pullutil import (
    MANIFEST_NAME,
    T0,
    FaultySource,
    add_snapshot,
    archive_bytes,
    chunk_files,
    leftovers,
    new_store,
    store_tree,
)

from asyncsync import PullOptions, PullReport, protocol, pull
from asyncsync.datastore import blob
from asyncsync.datastore.datastore import Datastore
from asyncsync.errors import InvalidInput, PartialFailure, RemoteError, TransientRemoteError
from asyncsync.names import AuthId, GroupId, Namespace, SnapshotId
from asyncsync.protocol import SnapshotItem
from asyncsync.sync.groupfilter import GroupFilters
from asyncsync.sync.report import GroupStatus, PullProgress
from asyncsync.sync.source import BlobData, LocalSource, SnapshotSource

N = Namespace.parse
G = GroupId.parse
DAY = 86400


@pytest.fixture
def src(tmp_path: Path) -> Datastore:
    return new_store(tmp_path / "src", "src")


@pytest.fixture
def dst(tmp_path: Path) -> Datastore:
    return new_store(tmp_path / "dst", "dst")


def populate(store: Datastore) -> None:
    """Two namespaces, four groups, a few snapshots each, chunks shared between groups."""
    rng = random.Random(7)
    shared = [rng.randbytes(3000) for _ in range(3)]
    for i in range(3):
        add_snapshot(store, "", "vm/100", T0 + i * DAY, shared=shared, verified=True)
    add_snapshot(store, "", "vm/101", T0, shared=shared)
    add_snapshot(store, "", "ct/200", T0 + DAY, log=b"backup log\n")
    add_snapshot(store, "prod", "host/web", T0, chunks=6)
    add_snapshot(store, "prod/db", "vm/300", T0 + 2 * DAY)


def run(src: Datastore, dst: Datastore, **kw: object) -> PullReport:
    lines: list[str] = []
    report = asyncio.run(pull(LocalSource(src), dst, PullOptions(**kw), log=lines.append))  # type: ignore[arg-type]
    return report


def test_pull_everything_then_nothing(src: Datastore, dst: Datastore) -> None:
    populate(src)
    progress: list[PullProgress] = []
    lines: list[str] = []
    report = asyncio.run(pull(LocalSource(src), dst, progress=progress.append, log=lines.append))
    assert report.ok, report.failure_message()
    assert report.snapshots_synced == 7
    assert report.namespaces_created == 2
    assert store_tree(dst) == store_tree(src)
    assert report.chunks_downloaded > 0
    # shared chunks crossed once though three groups/snapshots reference them
    assert report.chunks_downloaded == len(chunk_files(src))
    assert progress[-1].chunks == report.chunks_downloaded
    assert progress[-1].logical_bytes == progress[-1].total_logical_bytes == report.chunk_bytes
    assert any("downloaded" in line and "vm/100/" in line for line in lines)
    assert report.summary().startswith(f"pulled {report.chunks_downloaded} chunks")
    json.dumps(report.to_json())

    again = asyncio.run(pull(LocalSource(src), dst))
    assert again.ok
    assert again.chunks_downloaded == 0 and again.snapshots_synced == 0
    assert again.snapshots_unchanged == 5  # the newest snapshot of each group was re-checked
    assert again.summary() == "no new data to pull"
    assert leftovers(dst) == []


def test_proxmox_namespace_example(src: Datastore, dst: Datastore) -> None:
    for ns in [
        "location_a",
        "location_a/department_x",
        "location_a/department_x/team_one",
        "location_a/department_x/team_two",
        "location_a/department_y",
        "location_a/department_y/team_one",
        "location_a/department_y/team_two",
        "location_b",
    ]:
        add_snapshot(src, ns, f"host/{ns.replace('/', '-')}", T0, chunks=1)
    report = run(src, dst, remote_ns=N("location_a/department_x"), ns=N("location_a_dep_x"))
    assert report.ok
    nss = dst.list_namespaces()
    assert [str(n) for n in nss] == [
        "",
        "location_a_dep_x",
        "location_a_dep_x/team_one",
        "location_a_dep_x/team_two",
    ]
    assert dst.list_groups(N("location_a_dep_x")) == [G("host/location_a-department_x")]
    assert dst.list_groups(N("location_a_dep_x/team_two")) == [G("host/location_a-department_x-team_two")]
    assert dst.list_groups(N("")) == []


def test_max_depth_zero_and_too_deep_mapping(src: Datastore, dst: Datastore) -> None:
    add_snapshot(src, "a", "vm/1", T0, chunks=1)
    add_snapshot(src, "a/b", "vm/2", T0, chunks=1)
    add_snapshot(src, "a/b/c", "vm/3", T0, chunks=1)
    report = run(src, dst, remote_ns=N("a"), max_depth=0)
    assert [str(g.group) for g in report.groups] == ["vm/1"]
    assert dst.list_groups(N("")) == [G("vm/1")]
    # root mapped under a 5-level anchor: a/b/c would land 8 deep: refused before any transfer
    before = chunk_files(dst)
    with pytest.raises(InvalidInput, match="a/b/c"):
        run(src, dst, ns=N("x1/x2/x3/x4/x5"))
    assert chunk_files(dst) == before
    assert not dst.namespace_exists(N("x1"))


GROUPS = ["vm/100", "vm/101", "ct/200", "host/web"]


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ([], GROUPS),
        (["type:vm"], ["vm/100", "vm/101"]),
        (["group:ct/200"], ["ct/200"]),
        (["regex:^(ct|host)/"], ["ct/200", "host/web"]),
        (["exclude:type:vm"], ["ct/200", "host/web"]),
        (["type:vm", "exclude:group:vm/101"], ["vm/100"]),
        (["type:vm", "type:ct", "exclude:regex:^vm/10[01]$"], ["ct/200"]),
    ],
)
def test_group_filter_rules(src: Datastore, dst: Datastore, filters: list[str], expected: list[str]) -> None:
    for g in GROUPS:
        add_snapshot(src, "", g, T0, chunks=1)
    report = run(src, dst, group_filter=GroupFilters.parse(filters))
    assert report.ok
    assert sorted(str(g) for g in dst.list_groups(N(""))) == sorted(expected)


def test_transfer_last_and_newer_than_newest_local(src: Datastore, dst: Datastore) -> None:
    for i in range(5):
        add_snapshot(src, "", "vm/1", T0 + i * DAY, chunks=1)
    report = run(src, dst, transfer_last=2)
    times = [i.snapshot.time for i in dst.list_snapshots(N(""), G("vm/1"))]
    assert times == [T0 + 3 * DAY, T0 + 4 * DAY]
    assert report.snapshots_synced == 2
    # a new remote snapshot: with transfer-last 1 the newest local is still re-checked, the new one pulled
    add_snapshot(src, "", "vm/1", T0 + 5 * DAY, chunks=1)
    report = run(src, dst, transfer_last=1)
    assert report.snapshots_synced == 1 and report.snapshots_unchanged == 1
    times = [i.snapshot.time for i in dst.list_snapshots(N(""), G("vm/1"))]
    assert times == [T0 + 3 * DAY, T0 + 4 * DAY, T0 + 5 * DAY]
    # older remote snapshots missing locally are not pulled back (they are older than the newest local)
    report = run(src, dst)
    assert report.snapshots_synced == 0


def test_verified_only(src: Datastore, dst: Datastore) -> None:
    add_snapshot(src, "", "vm/1", T0, chunks=1, verified=True)
    add_snapshot(src, "", "vm/1", T0 + DAY, chunks=1, verified=False)
    add_snapshot(src, "", "vm/1", T0 + 2 * DAY, chunks=1)
    add_snapshot(src, "", "vm/1", T0 + 3 * DAY, chunks=1, verified=True)
    run(src, dst, verified_only=True)
    times = [i.snapshot.time for i in dst.list_snapshots(N(""), G("vm/1"))]
    assert times == [T0, T0 + 3 * DAY]


def test_unfinished_snapshots_are_skipped(src: Datastore, dst: Datastore) -> None:
    add_snapshot(src, "", "vm/1", T0, chunks=1)
    faulty = FaultySource(LocalSource(src))
    faulty.extra_snapshots.append(SnapshotItem(SnapshotId(G("vm/1"), T0 + DAY), (), 0, False, None))
    report = asyncio.run(pull(faulty, dst))
    assert report.ok
    assert [i.snapshot.time for i in dst.list_snapshots(N(""), G("vm/1"))] == [T0]


def test_owner_conflict_is_reported_and_not_touched(src: Datastore, dst: Datastore) -> None:
    add_snapshot(src, "", "vm/1", T0, chunks=1)
    add_snapshot(src, "", "vm/2", T0, chunks=1)
    dst.ensure_group(N(""), G("vm/1"), AuthId.parse("alice@pbs"))
    report = run(src, dst, owner=AuthId.parse("sync@pbs"))
    assert not report.ok
    by = {str(g.group): g for g in report.groups}
    assert by["vm/1"].status is GroupStatus.OWNER_CONFLICT
    assert "alice@pbs" in (by["vm/1"].error or "")
    assert by["vm/2"].status is GroupStatus.OK
    assert dst.list_snapshots(N(""), G("vm/1")) == []
    assert dst.get_owner(N(""), G("vm/2")) == AuthId.parse("sync@pbs")
    with pytest.raises(PartialFailure, match="vm/1"):
        report.raise_for_errors()


def test_remove_vanished_keeps_protected(src: Datastore, dst: Datastore) -> None:
    for i in range(3):
        add_snapshot(src, "", "vm/1", T0 + i * DAY, chunks=1)
    add_snapshot(src, "", "vm/2", T0, chunks=1)
    add_snapshot(src, "", "ct/3", T0, chunks=1)
    add_snapshot(src, "old", "vm/4", T0, chunks=1)
    add_snapshot(src, "keep", "vm/5", T0, chunks=1)
    add_snapshot(src, "", "host/excluded", T0, chunks=1)
    assert (run(src, dst)).ok
    # local protections
    dst.set_protected(N(""), SnapshotId(G("vm/1"), T0 + DAY), True)
    dst.set_protected(N("keep"), SnapshotId(G("vm/5"), T0), True)
    # the remote loses: two snapshots of vm/1, group vm/2, group ct/3, namespaces old and keep
    src.remove_snapshot(N(""), SnapshotId(G("vm/1"), T0))
    src.remove_snapshot(N(""), SnapshotId(G("vm/1"), T0 + DAY))
    src.remove_group(N(""), G("vm/2"))
    src.remove_group(N(""), G("ct/3"))
    src.remove_group(N(""), G("host/excluded"))
    src.remove_namespace(N("old"), delete_groups=True)
    src.remove_namespace(N("keep"), delete_groups=True)
    report = run(src, dst, remove_vanished=True, group_filter=GroupFilters.parse(["exclude:type:host"]))
    assert report.ok, report.failure_message()
    assert [i.snapshot.time for i in dst.list_snapshots(N(""), G("vm/1"))] == [T0 + DAY, T0 + 2 * DAY]
    assert dst.list_groups(N("")) == [G("host/excluded"), G("vm/1")]  # out of the filter's scope: kept
    assert not dst.namespace_exists(N("old"))
    assert dst.namespace_exists(N("keep"))  # holds a protected snapshot
    assert dst.list_snapshots(N("keep"), G("vm/5"))[0].protected
    assert report.removed_snapshots == 1 + 1 + 1 + 1  # vm/1@T0, vm/2, ct/3, old:vm/4
    assert report.removed_groups == 3  # vm/2, ct/3, old:vm/4
    assert report.removed_namespaces == 1
    assert "removed vanished: 4 snapshots, 3 groups, 1 namespaces" in report.summary()


def test_remove_vanished_spares_other_owners(src: Datastore, dst: Datastore) -> None:
    add_snapshot(src, "", "vm/1", T0, chunks=1)
    add_snapshot(dst, "", "vm/9", T0, chunks=1, owner=AuthId.parse("alice@pbs"))
    report = run(src, dst, remove_vanished=True)
    assert report.ok
    assert dst.list_groups(N("")) == [G("vm/1"), G("vm/9")]


def test_resync_picks_up_a_changed_log_and_keeps_protected(src: Datastore, dst: Datastore) -> None:
    snap = add_snapshot(src, "", "vm/1", T0, chunks=3)
    assert (run(src, dst)).ok
    dst.set_protected(N(""), snap, True)

    def add_log() -> None:
        old = src.load_manifest(N(""), snap)
        files = {f.filename: src.read_file(N(""), snap, f.filename) for f in old.files}
        with src.begin_snapshot(N(""), snap) as w:
            for f in old.files:
                w.add_file(f.filename, files[f.filename], size=f.size)
            w.add_blob("client.log.blob", b"task log: ok\n")
            w.commit(old.unprotected)

    add_log()
    report = run(src, dst)
    assert report.ok and report.snapshots_synced == 1 and report.chunks_downloaded == 0
    assert archive_bytes(dst, N(""), snap, "client.log.blob") == b"task log: ok\n"
    assert dst.is_protected(N(""), snap)
    assert store_tree(dst) == store_tree(src)


def test_second_pull_of_a_locked_group_refuses(src: Datastore, dst: Datastore) -> None:
    add_snapshot(src, "", "vm/1", T0, chunks=1)
    add_snapshot(src, "", "vm/2", T0, chunks=1)
    with dst.group_lock(N(""), G("vm/1")):
        report = run(src, dst)
    by = {str(g.group): g for g in report.groups}
    assert by["vm/1"].status is GroupStatus.LOCKED
    assert "locked" in (by["vm/1"].error or "")
    assert by["vm/2"].status is GroupStatus.OK
    assert not report.ok


def test_local_chunk_reused_only_when_trusted(src: Datastore, dst: Datastore) -> None:
    rng = random.Random(1)
    shared = [rng.randbytes(3500) for _ in range(4)]
    add_snapshot(src, "", "vm/1", T0, shared=shared, chunks=1)
    add_snapshot(src, "", "vm/2", T0, shared=shared, chunks=1)
    shared_digests = {blob.digest_of(c) for c in shared}
    # a stranger's copy of the shared chunks sits in the target, referenced by no snapshot of ours
    for c in shared:
        dst.chunks.insert_data(c)
    faulty = FaultySource(LocalSource(src))
    report = asyncio.run(pull(faulty, dst, PullOptions(group_filter=GroupFilters.parse(["group:vm/1"]))))
    assert report.ok
    # downloaded and verified anyway: the remote could have forged the references
    assert shared_digests <= set(faulty.fetched)
    faulty.fetched.clear()
    report = asyncio.run(pull(faulty, dst))
    assert report.ok
    # now a snapshot of the same owner references them: vm/2 reuses them without download
    assert not shared_digests & set(faulty.fetched)
    assert report.chunks_reused >= len(shared)


def test_no_chunk_downloaded_twice_in_a_run(src: Datastore, dst: Datastore) -> None:
    rng = random.Random(2)
    shared = [rng.randbytes(2000) for _ in range(10)]
    for g in ["vm/1", "vm/2", "vm/3", "ct/4"]:
        for i in range(2):
            add_snapshot(src, "", g, T0 + i, shared=shared, chunks=2)
    faulty = FaultySource(LocalSource(src))
    report = asyncio.run(pull(faulty, dst, PullOptions(group_workers=4, fetch_workers=3, batch_chunks=3)))
    assert report.ok
    assert len(faulty.fetched) == len(set(faulty.fetched)) == report.chunks_downloaded
    assert all(len(r) <= 3 for r in faulty.requests)
    assert store_tree(dst) == store_tree(src)


# ---- faults -------------------------------------------------------------------------


def two_groups(src: Datastore) -> SnapshotId:
    add_snapshot(src, "", "vm/2", T0, chunks=2, rng=random.Random(99))
    return add_snapshot(src, "", "vm/1", T0, chunks=2)


def pull_with_chunk_fault(src: Datastore, dst: Datastore, hook: object) -> tuple[PullReport, set[str]]:
    faulty = FaultySource(LocalSource(src))
    victims: set[str] = set()
    idx = src.load_index(N(""), SnapshotId(G("vm/1"), T0), "root.didx")
    victim = idx.digests[0].hex()
    victims.add(victim)

    def on_chunk(d: str, b: bytes) -> bytes:
        return hook(d, b) if d == victim else b  # type: ignore[operator]

    faulty.on_chunk = on_chunk
    report = asyncio.run(pull(faulty, dst))
    return report, victims


def assert_group_failed_cleanly(report: PullReport, dst: Datastore, victims: set[str], match: str) -> None:
    by = {str(g.group): g for g in report.groups}
    assert by["vm/1"].status is GroupStatus.FAILED
    assert match in (by["vm/1"].error or ""), by["vm/1"].error
    assert by["vm/2"].status is GroupStatus.OK
    assert not victims & chunk_files(dst)  # never written
    assert dst.list_snapshots(N(""), G("vm/1")) == []  # no half snapshot
    assert leftovers(dst) == []
    assert not report.ok


def test_corrupt_chunk_is_reported_and_never_written(src: Datastore, dst: Datastore) -> None:
    two_groups(src)

    def flip(d: str, b: bytes) -> bytes:
        return b[:-1] + bytes([b[-1] ^ 1])

    report, victims = pull_with_chunk_fault(src, dst, flip)
    assert_group_failed_cleanly(report, dst, victims, "CRC")


def test_raw_chunk_with_only_a_wrong_crc_is_not_stored(src: Datastore, dst: Datastore) -> None:
    """Right content, wrong CRC header: storing it would leave a chunk that local verify flags."""
    two_groups(src)

    def bad_crc(d: str, b: bytes) -> bytes:
        raw = blob.RAW_MAGIC + struct.pack("<I", 0) + blob.decode(b)
        return raw

    report, victims = pull_with_chunk_fault(src, dst, bad_crc)
    assert_group_failed_cleanly(report, dst, victims, "CRC")


def test_substituted_chunk_fails_the_digest_check(src: Datastore, dst: Datastore) -> None:
    two_groups(src)
    report, victims = pull_with_chunk_fault(src, dst, lambda d, b: blob.encode(b"x" * 100))
    assert_group_failed_cleanly(report, dst, victims, "has digest")


def test_decompression_bomb_is_refused(src: Datastore, dst: Datastore) -> None:
    two_groups(src)
    frame = zstandard.ZstdCompressor(level=19, write_content_size=True).compress(b"\0" * (64 << 20))
    bomb = blob.ZSTD_MAGIC + struct.pack("<I", zlib.crc32(frame)) + frame
    assert len(bomb) < 64 * 1024
    report, victims = pull_with_chunk_fault(src, dst, lambda d, b: bomb)
    assert_group_failed_cleanly(report, dst, victims, "declares")


def test_chunk_larger_than_the_limit_is_refused(src: Datastore, dst: Datastore) -> None:
    two_groups(src)
    huge = blob.RAW_MAGIC + b"\0\0\0\0" + bytes(blob.MAX_BLOB_SIZE)
    report, victims = pull_with_chunk_fault(src, dst, lambda d, b: huge)
    assert_group_failed_cleanly(report, dst, victims, "exceeds the limit")


def test_transient_failure_is_retried(src: Datastore, dst: Datastore) -> None:
    two_groups(src)
    failures = {"left": 2}

    def flaky(d: str, b: bytes) -> bytes:
        if failures["left"]:
            failures["left"] -= 1
            raise TransientRemoteError("connection reset by peer")
        return b

    report, _ = pull_with_chunk_fault(src, dst, flaky)
    assert report.ok, report.failure_message()
    assert failures["left"] == 0
    assert store_tree(dst) == store_tree(src)


def test_hostile_file_name_in_manifest_is_refused(src: Datastore, dst: Datastore, tmp_path: Path) -> None:
    two_groups(src)
    faulty = FaultySource(LocalSource(src))

    def hostile(name: str, data: bytes) -> bytes:
        if name != MANIFEST_NAME:
            return data
        obj = json.loads(blob.decode(data))
        if obj["backup-id"] == "1":
            obj["files"][0]["filename"] = "../../../escape.blob"
        return blob.encode(json.dumps(obj).encode())

    faulty.on_download = hostile
    report = asyncio.run(pull(faulty, dst))
    by = {str(g.group): g for g in report.groups}
    assert by["vm/1"].status is GroupStatus.FAILED
    assert "invalid" in (by["vm/1"].error or "")
    assert by["vm/2"].status is GroupStatus.OK
    assert not list(tmp_path.rglob("escape.blob"))


def test_tampered_index_fails_the_manifest_checksum(src: Datastore, dst: Datastore) -> None:
    two_groups(src)
    faulty = FaultySource(LocalSource(src))
    faulty.on_download = lambda name, data: data + b"\0" * 40 if name == "root.didx" else data
    report = asyncio.run(pull(faulty, dst))
    assert {str(g.group): g.status for g in report.groups} == {
        "vm/1": GroupStatus.FAILED,
        "vm/2": GroupStatus.FAILED,
    }
    assert "checksum" in (report.groups[0].error or "")
    assert dst.list_snapshots(N(""), G("vm/1")) == []


# ---- cancellation ----------------------------------------------------------------------


@pytest.mark.parametrize("after_chunks", [0, 3, 9, 15])
def test_cancelled_pull_leaves_no_trace_and_resumes(
    src: Datastore, dst: Datastore, after_chunks: int
) -> None:
    populate(src)
    faulty = FaultySource(LocalSource(src))
    reached = asyncio.Event()
    count = {"n": 0}

    def on_chunk(d: str, b: bytes) -> bytes:
        count["n"] += 1
        if count["n"] > after_chunks:
            reached.set()
        return b

    faulty.on_chunk = on_chunk

    async def cancel_midway() -> None:
        task = asyncio.create_task(pull(faulty, dst, PullOptions(fetch_workers=2, batch_chunks=2)))
        await reached.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(cancel_midway())
    assert leftovers(dst) == []
    # every snapshot that is visible is complete
    tree = store_tree(dst)
    assert all(not k.startswith("restore:") or v for k, v in tree.items())
    before = set(faulty.fetched)
    faulty.fetched.clear()
    report = asyncio.run(pull(faulty, dst))
    assert report.ok
    assert not before & set(faulty.fetched) - set(), "a chunk stored before the cancel was fetched again"
    assert store_tree(dst) == store_tree(src)
    assert leftovers(dst) == []


def test_local_pull_into_the_same_namespace_is_refused(src: Datastore) -> None:
    add_snapshot(src, "", "vm/1", T0, chunks=1)
    with pytest.raises(InvalidInput, match="same datastore"):
        asyncio.run(pull(LocalSource(src), src))
    report = asyncio.run(pull(LocalSource(src), src, PullOptions(remote_ns=N(""), ns=N("copy"), max_depth=0)))
    assert report.ok
    assert src.list_groups(N("copy")) == [G("vm/1")]


class FakeClock:
    """Virtual time for the rate limiter: ``sleep`` advances it."""

    def __init__(self) -> None:
        self.t = 0.0

    def now(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        self.t += max(0.0, seconds)
        await asyncio.sleep(0)


def test_every_received_byte_passes_the_rate_limiter(src: Datastore, dst: Datastore) -> None:
    populate(src)
    clock = FakeClock()
    rate = 64 * 1024
    report = asyncio.run(pull(LocalSource(src), dst, PullOptions(rate_in=rate, fetch_workers=4, clock=clock)))
    assert report.ok
    # the bucket starts empty and each wait ends when the tokens are there: virtual time = bytes / rate
    expected = report.bytes_downloaded / rate
    assert abs(clock.t - expected) <= 0.02 * expected


def test_journal_is_kept_after_a_failure_and_cleared_after_success(src: Datastore, dst: Datastore) -> None:
    snap = two_groups(src)
    vm1 = src.snapshot_digests(N(""), snap)
    victim = src.load_index(N(""), snap, "disk.fidx").digests[-1].hex()  # fetched last
    faulty = FaultySource(LocalSource(src))
    faulty.on_chunk = lambda d, b: blob.encode(b"forged") if d == victim else b
    opts = PullOptions(batch_chunks=1, fetch_workers=1, group_workers=1)
    report = asyncio.run(pull(faulty, dst, opts))
    assert not report.ok
    journal = dst.root / ".pull-journal"
    assert [p.stat().st_size % 32 for p in journal.iterdir()] == [0]
    # vm/1's other chunks were verified and stored, but no committed snapshot references them
    orphans = vm1 - {victim}
    assert orphans <= chunk_files(dst)
    assert dst.list_snapshots(N(""), G("vm/1")) == []
    faulty.on_chunk = None
    faulty.fetched.clear()
    assert asyncio.run(pull(faulty, dst, opts)).ok
    assert faulty.fetched == [victim]  # the journal vouches for the others: not fetched again
    assert list(journal.iterdir()) == []


def test_public_api_exports_the_engine() -> None:
    import asyncsync

    for name in asyncsync.__all__:
        assert getattr(asyncsync, name) is not None
    assert {
        "pull",
        "PullOptions",
        "PullReport",
        "PullProgress",
        "LocalSource",
        "HttpSource",
        "Source",
    } <= set(asyncsync.__all__)


def test_invalid_options_are_refused_with_the_field_named() -> None:
    with pytest.raises(InvalidInput, match="fetch-workers"):
        PullOptions(fetch_workers=0)
    with pytest.raises(InvalidInput, match="burst-in"):
        PullOptions(burst_in=1000)
    with pytest.raises(InvalidInput, match="max-depth"):
        PullOptions(ns=N("a/b/c/d/e/f"), max_depth=2)


# ---- bounded memory: file size limit, writer open while files download ------------------


def test_local_source_refuses_a_file_over_the_download_limit(
    src: Datastore, dst: Datastore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # an index larger than the manifest, so that the manifest passes and the index does not
    snap = add_snapshot(src, "", "vm/1", T0, chunks=20)
    folder = src.snapshot_path(N(""), snap)
    manifest_size = (folder / MANIFEST_NAME).stat().st_size
    index_size = (folder / "root.didx").stat().st_size
    assert manifest_size < index_size
    monkeypatch.setattr(protocol, "MAX_FILE_SIZE", index_size - 1)

    async def direct() -> None:
        reader = await LocalSource(src).open_reader(N(""), snap)
        assert len(await reader.download(MANIFEST_NAME)) == manifest_size
        with pytest.raises(RemoteError, match="exceeds the limit"):
            await reader.download("root.didx")
        monkeypatch.setattr(protocol, "MAX_FILE_SIZE", index_size)  # exactly at the limit: fine
        assert len(await reader.download("root.didx")) == index_size
        monkeypatch.setattr(protocol, "MAX_FILE_SIZE", index_size - 1)

    asyncio.run(direct())
    report = run(src, dst)
    assert [g.status for g in report.groups] == [GroupStatus.FAILED]
    assert "exceeds the limit" in (report.groups[0].error or "")
    assert dst.list_snapshots(N(""), G("vm/1")) == []
    assert leftovers(dst) == []  # the snapshot's temp folder was open when the index was refused


def _temp_contents(store: Datastore) -> list[str]:
    return sorted(p.name for t in leftovers(store) for p in Path(t).iterdir())


class _GatedSource(FaultySource):
    """Downloads of ``gate_file`` wait (forever, or until failing) once ``reached`` is set."""

    def __init__(self, inner: LocalSource, target: Datastore, gate_file: str, fail: bool) -> None:
        super().__init__(inner)
        self.target = target
        self.reached = asyncio.Event()
        self.gate_file = gate_file
        self.fail = fail
        #: files in the store's temp folders when the gate was reached
        self.temp_seen: list[str] = []

    async def open_reader(self, ns: Namespace, snap: SnapshotId) -> SnapshotSource:
        inner = await super().open_reader(ns, snap)
        outer = self

        class Gated:
            async def download(self, name: str) -> bytes:
                if name == outer.gate_file and not outer.reached.is_set():
                    # the writer is open and the files before this one are in its folder
                    outer.temp_seen = await asyncio.to_thread(_temp_contents, outer.target)
                    outer.reached.set()
                    if outer.fail:
                        raise TransientRemoteError("connection reset while downloading")
                    await asyncio.Event().wait()
                return await inner.download(name)

            def fetch_chunks(self, digests: Sequence[str]) -> AsyncIterator[tuple[str, BlobData]]:
                return inner.fetch_chunks(digests)

            async def aclose(self) -> None:
                await inner.aclose()

        return Gated()


@pytest.mark.parametrize("fail", [False, True], ids=["cancelled", "failed"])
def test_snapshot_temp_folder_is_removed_when_a_file_download_stops(
    src: Datastore, dst: Datastore, fail: bool
) -> None:
    two_groups(src)
    gated = _GatedSource(LocalSource(src), dst, "disk.fidx", fail)  # the second file of the manifest

    async def go() -> PullReport | None:
        task = asyncio.create_task(pull(gated, dst, PullOptions(group_workers=1)))
        if fail:
            return await task
        await gated.reached.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return None

    report = asyncio.run(go())
    assert gated.temp_seen == ["root.didx"]  # written as soon as downloaded, before any chunk
    assert leftovers(dst) == []
    if report is not None:
        assert not report.ok and "connection reset" in (report.groups[0].error or "")
    assert dst.list_snapshots(N(""), G("vm/1")) == []  # the group pulled first, stopped mid-files
    report = asyncio.run(pull(LocalSource(src), dst))
    assert report.ok
    assert store_tree(dst) == store_tree(src)
    assert leftovers(dst) == []
