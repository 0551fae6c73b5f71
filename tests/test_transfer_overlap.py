"""Work a pull does side by side, with outcomes as if done in sequence.

A snapshot's chunks: the ones no local snapshot references are fetched at once, while the
trusted local ones are checked (one utime each) in a worker thread; the trusted ones found
missing are fetched after the check. The quick temp cleanup runs beside the listings."""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest
from pullutil import (
    T0,
    FaultySource,
    add_snapshot,
    archive_bytes,
    chunk_files,
    leftovers,
    new_store,
    store_tree,
)

from asyncsync import PullOptions, PullReport, pull
from asyncsync.datastore import blob
from asyncsync.datastore.datastore import Datastore
from asyncsync.datastore.gc import GcReport, run_gc
from asyncsync.errors import Locked
from asyncsync.names import ROOT_NS as ROOT
from asyncsync.names import GroupId, Namespace, SnapshotId
from asyncsync.sync import pull as pull_mod
from asyncsync.sync.report import GroupStatus
from asyncsync.sync.source import LocalSource

DAY = 86_400
GROUP = GroupId.parse("vm/100")


@pytest.fixture
def src(tmp_path: Path) -> Datastore:
    return new_store(tmp_path / "src", "src")


@pytest.fixture
def dst(tmp_path: Path) -> Datastore:
    return new_store(tmp_path / "dst", "dst")


def _two_snapshots(src: Datastore) -> list[bytes]:
    """Snapshot 1 of vm/100; returns the shared contents, for snapshot 2 (added by the test)."""
    shared = [random.Random(i).randbytes(3000) for i in range(40)]
    add_snapshot(src, "", GROUP, T0, shared=shared, chunks=2)
    return shared


def _pull(source: object, dst: Datastore) -> PullReport:
    return asyncio.run(pull(source, dst, PullOptions()))  # type: ignore[arg-type]


def test_missing_trusted_chunk_is_fetched_and_the_rest_reused(src: Datastore, dst: Datastore) -> None:
    shared = _two_snapshots(src)
    first = _pull(LocalSource(src), dst)
    assert first.ok, first.failure_message()
    add_snapshot(src, "", GROUP, T0 + DAY, shared=shared, chunks=3)
    # one chunk the previous snapshot references is gone here: it must be fetched again
    victim = blob.digest_of(shared[5])
    os.unlink(dst.chunks.path(victim))

    lacking = chunk_files(src) - chunk_files(dst)
    assert victim in lacking and len(lacking) > 1

    faulty = FaultySource(LocalSource(src))
    second = _pull(faulty, dst)
    assert second.ok, second.failure_message()
    # exactly what was lacking crossed, each chunk once (the trusted victim after the check)
    assert sorted(faulty.fetched) == sorted(lacking)
    assert second.chunks_downloaded == len(lacking)
    assert second.chunks_reused >= len(shared) - 1
    assert store_tree(dst) == store_tree(src)
    assert chunk_files(dst) == chunk_files(src)
    assert leftovers(dst) == []


def test_reused_trusted_chunks_are_touched_for_gc(src: Datastore, dst: Datastore) -> None:
    """The presence check is the touch: every reused chunk's mtime is refreshed, so a garbage
    collection running meanwhile keeps it; a chunk that is not reused keeps its old mtime."""
    shared = _two_snapshots(src)
    assert _pull(LocalSource(src), dst).ok
    add_snapshot(src, "", GROUP, T0 + DAY, shared=shared, chunks=3)
    old = 1_000_000_000  # 2001
    for digest in chunk_files(dst):
        os.utime(dst.chunks.path(digest), (old, old))
    reused = {blob.digest_of(c) for c in shared}
    report = _pull(LocalSource(src), dst)
    assert report.ok, report.failure_message()
    assert report.chunks_reused >= len(reused)
    for digest in chunk_files(dst):
        mtime = os.stat(dst.chunks.path(digest)).st_mtime
        if digest in reused:
            assert mtime > old + DAY, digest
    untouched = [d for d in chunk_files(dst) if os.stat(dst.chunks.path(d)).st_mtime == old]
    assert untouched  # snapshot 1's own chunks, not in snapshot 2: not touched


OTHER = GroupId.parse("vm/200")
OLD = 1_000_000_000  # 2001


def test_gc_during_the_transfer_keeps_every_reused_chunk(src: Datastore, dst: Datastore) -> None:
    """vm/100's snapshot 2 reuses chunks of its own snapshot 1 and of vm/200 (a clone).
    Mid-transfer, after the reused chunks were checked: vm/200's snapshot is forgotten
    (its group is not locked; vm/100's is, by the pull) and a gc runs with a 1 h grace
    period, every chunk's mtime having been set to 2001 before the pull. The clone's
    chunks are then referenced by nothing committed; the touch is what keeps them. The
    new snapshot is complete."""
    own = [random.Random(i).randbytes(3000) for i in range(30)]
    cloned = [random.Random(1000 + i).randbytes(3000) for i in range(20)]
    add_snapshot(src, "", GROUP, T0, shared=own, chunks=2)
    add_snapshot(src, "", OTHER, T0, shared=cloned, chunks=2, rng=random.Random(7))
    assert _pull(LocalSource(src), dst).ok
    add_snapshot(src, "", GROUP, T0 + DAY, shared=own + cloned, chunks=3)
    for digest in chunk_files(dst):
        os.utime(dst.chunks.path(digest), (OLD, OLD))
    victim = blob.digest_of(own[0])  # missing here: fetched after the check, which is when we strike
    os.unlink(dst.chunks.path(victim))
    seen: list[GcReport] = []

    def strike() -> None:  # blocking: runs in a worker thread, as a gc job would
        with dst.group_lock(ROOT, OTHER):
            dst.remove_snapshot(ROOT, SnapshotId(OTHER, T0))
        with pytest.raises(Locked), dst.group_lock(ROOT, GROUP):
            pass
        seen.append(run_gc(dst, grace_seconds=3600))

    async def at_victim(digest: str) -> None:
        if digest == victim:
            await asyncio.to_thread(strike)

    faulty = FaultySource(LocalSource(src))
    faulty.before_chunk = at_victim
    report = _pull(faulty, dst)
    assert report.ok, report.failure_message()
    [gc_report] = seen
    assert gc_report.removed > 0  # vm/200's own chunks went
    new = SnapshotId(GROUP, T0 + DAY)
    referenced = dst.snapshot_digests(ROOT, new)
    assert {blob.digest_of(c) for c in own + cloned} <= referenced
    assert [d for d in referenced if not dst.chunks.path(d).is_file()] == []
    assert archive_bytes(dst, ROOT, new, "root.didx") == archive_bytes(src, ROOT, new, "root.didx")


def test_a_failing_presence_check_fails_the_group_and_leaves_nothing(
    src: Datastore, dst: Datastore, monkeypatch: pytest.MonkeyPatch
) -> None:
    shared = _two_snapshots(src)
    assert _pull(LocalSource(src), dst).ok
    add_snapshot(src, "", GROUP, T0 + DAY, shared=shared, chunks=3)
    before = store_tree(dst)

    def broken(store: Datastore, digests: Sequence[bytes]) -> set[bytes]:
        raise PermissionError(13, "injected: chunk folder unreadable")

    monkeypatch.setattr(pull_mod, "_present_and_touch", broken)
    report = _pull(LocalSource(src), dst)
    assert not report.ok
    [group] = [g for g in report.groups if g.group == GROUP]
    assert group.status is GroupStatus.FAILED
    assert "injected" in (group.error or "")
    assert store_tree(dst) == before  # the new snapshot was not committed
    assert leftovers(dst) == []


def test_a_corrupt_new_chunk_fails_the_group_while_the_check_runs(src: Datastore, dst: Datastore) -> None:
    shared = _two_snapshots(src)
    assert _pull(LocalSource(src), dst).ok
    add_snapshot(src, "", GROUP, T0 + DAY, shared=shared, chunks=3)
    before = store_tree(dst)
    faulty = FaultySource(LocalSource(src))

    def corrupt(digest: str, data: bytes) -> bytes:
        return data[:-1] + bytes([data[-1] ^ 1])

    faulty.on_chunk = corrupt
    report = _pull(faulty, dst)
    assert not report.ok
    [group] = [g for g in report.groups if g.group == GROUP]
    assert group.status is GroupStatus.FAILED
    assert group.error
    assert store_tree(dst) == before
    assert leftovers(dst) == []
    # nothing corrupt was stored under a digest
    for digest in chunk_files(dst):
        assert blob.digest_of(blob.decode(dst.chunks.read(digest))) == digest


def test_first_error_prefers_a_real_error_to_cancellations() -> None:
    real = OSError("disk")
    eg = BaseExceptionGroup("x", [asyncio.CancelledError(), ExceptionGroup("y", [real])])
    assert pull_mod._first_error(eg) is real
    only = asyncio.CancelledError()
    assert pull_mod._first_error(BaseExceptionGroup("z", [only])) is only


@pytest.mark.parametrize("clean", [True, False])
def test_a_pull_removes_what_dead_writers_left_while_it_lists(
    src: Datastore, dst: Datastore, clean: bool
) -> None:
    """The quick temp cleanup runs beside the listings: a dead process's chunk temp file and
    snapshot temp folder are gone after the pull (kept with clean_temp off); the pull's own
    work is complete either way."""
    shared = _two_snapshots(src)
    assert _pull(LocalSource(src), dst).ok
    add_snapshot(src, "", GROUP, T0 + DAY, shared=shared, chunks=3)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    dst.chunks.tmp_dir.mkdir(exist_ok=True)
    stale_chunk = dst.chunks.tmp_dir / f".tmp.{dead.pid}.abc123.{'0' * 64}"
    stale_chunk.write_bytes(b"half")
    stale_snap = dst.group_path(Namespace.parse(""), GROUP) / f".tmp.{dead.pid}.ffff.2026-01-01T00:00:00Z"
    stale_snap.mkdir()
    (stale_snap / "root.didx").write_bytes(b"x")

    report = asyncio.run(pull(LocalSource(src), dst, PullOptions(clean_temp=clean)))
    assert report.ok, report.failure_message()
    assert report.snapshots_synced == 1
    assert stale_chunk.exists() is not clean
    assert stale_snap.exists() is not clean
    assert chunk_files(dst) == chunk_files(src)
