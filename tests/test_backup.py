"""Backup and restore of real files, verify, gc, and interruption (killed CLI, cancelled task)."""

from __future__ import annotations

import asyncio
import io
import json
import os
import random
import signal
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Generator
from pathlib import Path

import pytest

from asyncsync.backup.chunker import DynamicChunker, FixedChunker
from asyncsync.backup.reader import UnsafeArchive, read_archive_bytes, run_restore
from asyncsync.backup.writer import ArchiveSource, BackupOptions, backup, run_backup
from asyncsync.config.datastores import create_datastore
from asyncsync.config.paths import Paths
from asyncsync.datastore.chunkstore import SyncLevel
from asyncsync.datastore.datastore import Datastore
from asyncsync.datastore.gc import DEFAULT_GRACE_SECONDS, run_gc
from asyncsync.datastore.index import DynamicIndex
from asyncsync.datastore.threads import CancelToken, OperationCancelled, run_cancellable
from asyncsync.datastore.verify import run_verify
from asyncsync.errors import (
    AlreadyExists,
    Conflict,
    IntegrityError,
    InvalidInput,
    InvalidName,
    NotFound,
    PermissionDenied,
)
from asyncsync.names import ROOT_NS, AuthId, BackupType, GroupId, Namespace, SnapshotId
from asyncsync.units import parse_duration

SMALL = BackupOptions(chunk_size=64 * 1024, avg_chunk_size=16 * 1024)
HOST = GroupId(BackupType.HOST, "web1")


# ---------------------------------------------------------------- helpers


def make_tree(root: Path, seed: int = 1) -> None:
    """Empty files, a 0-filled 9 MiB file, random data, text, symlinks, nested folders, odd modes/mtimes."""
    rnd = random.Random(seed)
    (root / "a" / "b" / "c").mkdir(parents=True)
    (root / "empty-dir").mkdir()
    (root / "empty.txt").write_bytes(b"")
    (root / "a" / "empty2").write_bytes(b"")
    (root / "zeros.img").write_bytes(bytes(9 * 1024 * 1024))
    (root / "a" / "random.bin").write_bytes(rnd.randbytes(300_000))
    (root / "a" / "b" / "text.txt").write_text("".join(f"line {i} {rnd.random()}\n" for i in range(5000)))
    (root / "a" / "b" / "c" / "deep.bin").write_bytes(rnd.randbytes(5000))
    (root / "name with spaces & ünïcode").write_text("x")
    os.symlink("a/random.bin", root / "link-rel")
    os.symlink("/nonexistent/target", root / "link-dangling")
    os.symlink("b", root / "a" / "link-dir")
    os.chmod(root / "a" / "random.bin", 0o600)
    os.chmod(root / "a" / "b" / "text.txt", 0o751)
    os.chmod(root / "a" / "b" / "c", 0o705)
    os.utime(root / "a" / "b" / "text.txt", ns=(1, 1_500_000_000_123_456_789))
    os.utime(root / "link-rel", ns=(1, 1_400_000_000_000_000_007), follow_symlinks=False)
    os.utime(root / "a" / "b" / "c", ns=(1, 1_300_000_000_999_999_999))


def snapshot_tree(root: Path) -> dict[str, tuple[object, ...]]:
    """Everything a restore must reproduce, keyed by relative path."""
    out: dict[str, tuple[object, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames, "."] if dirpath == str(root) else [*dirnames, *filenames]:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            st = os.lstat(p)
            if os.path.islink(p):
                out[rel] = ("link", os.readlink(p), st.st_mtime_ns)
            elif p.is_dir():
                out[rel] = ("dir", st.st_mode, st.st_mtime_ns)
            else:
                out[rel] = ("file", st.st_mode, st.st_mtime_ns, p.read_bytes())
    return out


def sources(tmp_path: Path) -> list[ArchiveSource]:
    img = tmp_path / "disk.raw"
    if not img.exists():
        img.write_bytes(random.Random(7).randbytes(200_000) + bytes(100_000))
        (tmp_path / "small.conf").write_text("memory: 2048\n")
    return [
        ArchiveSource.parse(f"root.didx={tmp_path / 'src'}"),
        ArchiveSource.parse(f"disk.fidx={img}"),
        ArchiveSource.parse(f"vm.conf.blob={tmp_path / 'small.conf'}"),
    ]


def temp_entries(root: Path) -> list[Path]:
    return [Path(d) / n for d, ds, fs in os.walk(root) for n in [*ds, *fs] if n.startswith(".tmp.")]


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    make_tree(tmp_path / "src")
    return tmp_path / "src"


def run_cli(env: dict[str, str], *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "asyncsync", *args], env=env, capture_output=True, text=True, timeout=120
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"asyncsync {' '.join(args)} failed ({proc.returncode}): {proc.stderr}")
    assert "Traceback" not in proc.stderr
    return proc


@pytest.fixture
def cli_store(paths: Paths, tmp_path: Path) -> Datastore:
    cfg = create_datastore(paths, "s1", tmp_path / "store1", sync_level=SyncLevel.NONE)
    return cfg.open()


# ---------------------------------------------------------------- chunkers


def test_chunkers_cover_the_stream_exactly() -> None:
    data = random.Random(3).randbytes(500_000)
    fixed = [bytes(c) for c in FixedChunker(65536).cut_stream(io.BytesIO(data))]
    assert b"".join(fixed) == data
    assert all(len(c) == 65536 for c in fixed[:-1])
    dyn = DynamicChunker(4096)
    pieces = [bytes(c) for c in dyn.cut_stream(io.BytesIO(data))]
    assert b"".join(pieces) == data
    assert all(len(c) <= dyn.max_size for c in pieces)
    assert [bytes(c) for c in dyn.cut_buf(data)] == pieces
    # an insertion near the start moves only the cut points next to it
    shifted = [bytes(c) for c in dyn.cut_stream(io.BytesIO(b"XYZ" + data))]
    assert len(set(shifted) & set(pieces)) >= len(pieces) - 3
    with pytest.raises(InvalidInput):
        DynamicChunker(100)
    with pytest.raises(InvalidInput):
        FixedChunker(32 * 1024 * 1024)


# ---------------------------------------------------------------- backup / restore


def test_backup_restore_byte_for_byte(store: Datastore, tree: Path, tmp_path: Path) -> None:
    report = run_backup(store, ROOT_NS, HOST, sources(tmp_path), backup_time=1000, options=SMALL)
    assert [a.name for a in report.archives] == ["root.didx", "disk.fidx", "vm.conf.blob"]
    assert report.new_chunks > 0
    snap = report.ref.snapshot
    assert store.get_owner(ROOT_NS, HOST) == AuthId.parse("root@pam")
    # the 9 MiB of zeros dedups into few chunks
    assert report.chunks < report.size // SMALL.avg_chunk_size

    run_restore(store, ROOT_NS, snap, "root.didx", tmp_path / "out")
    assert snapshot_tree(tmp_path / "out") == snapshot_tree(tree)
    run_restore(store, ROOT_NS, snap, "disk.fidx", tmp_path / "disk.out")
    assert (tmp_path / "disk.out").read_bytes() == (tmp_path / "disk.raw").read_bytes()
    run_restore(store, ROOT_NS, snap, "vm.conf.blob", tmp_path / "conf.out")
    assert (tmp_path / "conf.out").read_text() == "memory: 2048\n"
    assert read_archive_bytes(store, ROOT_NS, snap, "disk.fidx") == (tmp_path / "disk.raw").read_bytes()

    # targets are never overwritten
    with pytest.raises(AlreadyExists):
        run_restore(store, ROOT_NS, snap, "root.didx", tmp_path / "out")
    with pytest.raises(NotFound, match="has no archive"):
        run_restore(store, ROOT_NS, snap, "other.didx", tmp_path / "x")


def test_second_backup_writes_no_new_chunks(store: Datastore, tree: Path, tmp_path: Path) -> None:
    first = run_backup(store, ROOT_NS, HOST, sources(tmp_path), backup_time=1000, options=SMALL)
    second = run_backup(store, ROOT_NS, HOST, sources(tmp_path), backup_time=2000, options=SMALL)
    assert first.new_chunks > 0
    assert second.new_chunks == 0
    assert second.chunks == first.chunks
    # a small change writes only a few chunks
    (tree / "a" / "b" / "text.txt").write_text("changed\n" + (tree / "a" / "b" / "text.txt").read_text())
    third = run_backup(store, ROOT_NS, HOST, sources(tmp_path), backup_time=3000, options=SMALL)
    assert 0 < third.new_chunks <= 4


def test_backup_refusals(store: Datastore, tree: Path, tmp_path: Path) -> None:
    src = sources(tmp_path)
    with pytest.raises(NotFound, match="namespace create"):
        run_backup(store, Namespace.parse("nope"), HOST, src, options=SMALL)
    assert not (store.root / "ns").exists()  # nothing created
    with pytest.raises(NotFound):
        run_backup(store, ROOT_NS, HOST, [ArchiveSource.parse(f"x.didx={tmp_path / 'missing'}")])
    with pytest.raises(InvalidInput):
        run_backup(store, ROOT_NS, HOST, [ArchiveSource.parse(f"x.fidx={tree}")])
    with pytest.raises(InvalidInput, match="16 MiB"):
        big = tmp_path / "big"
        with open(big, "wb") as f:
            f.truncate(17 * 1024 * 1024)
        run_backup(store, ROOT_NS, HOST, [ArchiveSource.parse(f"x.blob={big}")])
    with pytest.raises(InvalidName):
        ArchiveSource.parse("../x.didx=/tmp")
    with pytest.raises(InvalidInput):
        ArchiveSource.parse("x.didx")
    assert store.list_groups(ROOT_NS) == []

    run_backup(store, ROOT_NS, HOST, src, backup_time=2000, options=SMALL)
    with pytest.raises(AlreadyExists):
        run_backup(store, ROOT_NS, HOST, src, backup_time=2000, options=SMALL)
    with pytest.raises(Conflict, match="not newer"):
        run_backup(store, ROOT_NS, HOST, src, backup_time=1000, options=SMALL)
    with pytest.raises(PermissionDenied, match="owned by root@pam"):
        run_backup(store, ROOT_NS, HOST, src, backup_time=3000, owner=AuthId.parse("bob@pbs"), options=SMALL)
    assert len(store.list_snapshots(ROOT_NS, HOST)) == 1


def test_backup_into_namespace_with_owner(store: Datastore, tree: Path, tmp_path: Path) -> None:
    ns = Namespace.parse("site/rack1")
    store.create_namespace(ns, parents=True)
    bob = AuthId.parse("bob@pbs")
    r = run_backup(store, ns, HOST, sources(tmp_path)[:1], backup_time=1000, owner=bob, options=SMALL)
    assert store.get_owner(ns, HOST) == bob
    assert (store.root / "ns/site/ns/rack1/host/web1/1970-01-01T00:16:40Z/index.json.blob").is_file()
    assert str(r.ref) == "site/rack1:host/web1/1970-01-01T00:16:40Z"


def _hostile_snapshot(store: Datastore, members: list[tarfile.TarInfo], t: int) -> SnapshotId:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for m in members:
            tf.addfile(m, io.BytesIO(b"evil" * (m.size // 4 + 1)) if m.isreg() else None)
    data = buf.getvalue()
    digest, _ = store.chunks.insert_data(data)
    snap = SnapshotId(HOST, t)
    with store.group_lock(ROOT_NS, HOST), store.begin_snapshot(ROOT_NS, snap) as w:
        w.add_index("root.didx", DynamicIndex(((len(data), bytes.fromhex(digest)),)))
        w.commit()
    return snap


def _member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.type = kind
    ti.linkname = link
    ti.size = 4 if kind == tarfile.REGTYPE else 0
    return ti


@pytest.mark.parametrize(
    "members",
    [
        [_member("../escaped")],
        [_member("/tmp/absolute-escape")],
        [_member("a/../../escaped")],
        [_member("sub", tarfile.SYMTYPE, ".."), _member("sub/escaped")],
        [_member("hard", tarfile.LNKTYPE, "/etc/passwd")],
        [_member("dev", tarfile.CHRTYPE)],
        [_member("x"), _member("x")],
    ],
)
def test_restore_refuses_hostile_members(
    store: Datastore, tmp_path: Path, members: list[tarfile.TarInfo]
) -> None:
    snap = _hostile_snapshot(store, members, 1000)
    target = tmp_path / "deep" / "target"
    target.parent.mkdir()
    with pytest.raises(UnsafeArchive):
        run_restore(store, ROOT_NS, snap, "root.didx", target)
    assert not (tmp_path / "escaped").exists()
    assert not (tmp_path / "deep" / "escaped").exists()
    assert not target.exists()
    assert list(target.parent.iterdir()) == []  # the temp folder is gone too


# ---------------------------------------------------------------- verify


def test_verify_finds_and_quarantines_a_corrupt_chunk(store: Datastore, tree: Path, tmp_path: Path) -> None:
    r1 = run_backup(store, ROOT_NS, HOST, sources(tmp_path), backup_time=1000, options=SMALL)
    (tree / "new.bin").write_bytes(random.Random(9).randbytes(50_000))
    r2 = run_backup(store, ROOT_NS, HOST, sources(tmp_path), backup_time=2000, options=SMALL)
    only_second = store.snapshot_digests(ROOT_NS, r2.ref.snapshot) - store.snapshot_digests(
        ROOT_NS, r1.ref.snapshot
    )
    victim = sorted(only_second)[0]
    path = store.chunks.path(victim)
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0xFF
    path.write_bytes(bytes(raw))

    report = run_verify(store, clock=lambda: 12345)
    assert not report.ok
    assert set(report.bad_chunks) == {victim}
    assert [str(s.ref.snapshot) for s in report.failed] == [str(r2.ref.snapshot)]
    assert any(victim in e for e in report.failed[0].errors)
    # each chunk is checked once though both snapshots share most of them
    assert report.chunks_checked == len(
        store.snapshot_digests(ROOT_NS, r1.ref.snapshot) | store.snapshot_digests(ROOT_NS, r2.ref.snapshot)
    )
    assert not path.exists()
    assert path.with_name(victim + ".bad").exists()  # renamed aside, not deleted
    states = {i.snapshot.time: i.verify_state for i in store.list_snapshots(ROOT_NS, HOST)}
    assert states == {1000: "ok", 2000: "failed"}
    assert store.load_manifest(ROOT_NS, r2.ref.snapshot).unprotected["verify_state"] == {
        "state": "failed",
        "time": 12345,
    }
    with pytest.raises(IntegrityError):
        run_restore(store, ROOT_NS, r2.ref.snapshot, "root.didx", tmp_path / "out")
    assert not (tmp_path / "out").exists()

    # the next backup of the same data heals the store; verify then passes
    run_backup(store, ROOT_NS, HOST, sources(tmp_path), backup_time=3000, options=SMALL)
    assert store.chunks.exists(victim)
    assert run_verify(store).ok


def test_verify_detects_tampered_index(store: Datastore, tree: Path, tmp_path: Path) -> None:
    r = run_backup(store, ROOT_NS, HOST, sources(tmp_path), backup_time=1000, options=SMALL)
    idx = store.snapshot_path(ROOT_NS, r.ref.snapshot) / "disk.fidx"
    raw = bytearray(idx.read_bytes())
    raw[-1] ^= 1
    idx.write_bytes(bytes(raw))
    report = run_verify(store)
    assert not report.ok
    assert any("disk.fidx" in e and "checksum" in e for e in report.failed[0].errors)


# ---------------------------------------------------------------- gc


def test_gc_keeps_referenced_removes_rest_after_grace(store: Datastore, tree: Path, tmp_path: Path) -> None:
    r1 = run_backup(store, ROOT_NS, HOST, sources(tmp_path), backup_time=1000, options=SMALL)
    (tree / "only-in-2.bin").write_bytes(random.Random(11).randbytes(80_000))
    r2 = run_backup(store, ROOT_NS, HOST, sources(tmp_path), backup_time=2000, options=SMALL)
    keep = store.snapshot_digests(ROOT_NS, r1.ref.snapshot)
    doomed = store.snapshot_digests(ROOT_NS, r2.ref.snapshot) - keep
    assert doomed
    store.remove_snapshot(ROOT_NS, r2.ref.snapshot)

    now = time.time()
    # within the grace period: nothing is removed (a running backup may still need them)
    rep = run_gc(store, grace_seconds=DEFAULT_GRACE_SECONDS, clock=lambda: now)
    assert rep.removed == 0
    assert rep.pending == len(doomed)
    assert all(store.chunks.exists(d) for d in doomed)

    # a day later: the unreferenced ones go, every referenced one stays
    rep = run_gc(store, grace_seconds=3600, clock=lambda: now + 2 * 86400)
    assert rep.removed == len(doomed)
    assert rep.referenced == len(keep)
    assert rep.missing == 0
    assert not any(store.chunks.exists(d) for d in doomed)
    assert all(store.chunks.exists(d) for d in keep)
    run_restore(store, ROOT_NS, r1.ref.snapshot, "root.didx", tmp_path / "out")
    assert run_verify(store).ok


def test_gc_lock_and_durations(store: Datastore) -> None:
    with store.lock(), pytest.raises(Conflict):
        run_gc(store)
    assert parse_duration("24h5m") == DEFAULT_GRACE_SECONDS
    assert parse_duration("0") == 0
    assert parse_duration("1d 2h") == 93600
    with pytest.raises(InvalidInput):
        parse_duration("soon")


# ---------------------------------------------------------------- interruption


def test_cancelled_backup_leaves_nothing(
    store: Datastore, tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cancel token set mid-way stops the backup; no snapshot, no temp folder."""

    class CancelAfter(CancelToken):
        __slots__ = ("left",)

        def __init__(self, n: int) -> None:
            super().__init__()
            self.left = n

        def check(self) -> None:
            self.left -= 1
            if self.left <= 0:
                self.cancel()
            super().check()

    with pytest.raises(OperationCancelled):
        run_backup(
            store, ROOT_NS, HOST, sources(tmp_path), backup_time=1000, options=SMALL, cancel=CancelAfter(20)
        )
    assert store.list_snapshots(ROOT_NS, HOST) == []
    assert temp_entries(store.root) == []
    assert sum(1 for _ in store.chunks.iter_digests()) > 0  # it was mid-way
    # the same backup now runs fine
    run_backup(store, ROOT_NS, HOST, sources(tmp_path), backup_time=1000, options=SMALL)


async def test_cancelled_backup_task(
    store: Datastore, tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cancelling the asyncio task stops the worker thread and cleans up before the task ends."""
    os.mkfifo(tree / "a" / "fifo")  # the backup warns about it mid-way: our sync point
    reached = threading.Event()
    cancelled = threading.Event()
    original = CancelToken.cancel

    def cancel(self: CancelToken) -> None:
        original(self)
        cancelled.set()

    monkeypatch.setattr(CancelToken, "cancel", cancel)

    def warn(message: str) -> None:
        reached.set()
        assert cancelled.wait(30)

    task = asyncio.create_task(
        backup(store, ROOT_NS, HOST, sources(tmp_path), backup_time=1000, options=SMALL, warn=warn)
    )
    assert await asyncio.to_thread(reached.wait, 30)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await asyncio.to_thread(store.list_snapshots, ROOT_NS, HOST) == []
    assert await asyncio.to_thread(temp_entries, store.root) == []


async def test_run_cancellable_waits_for_the_thread() -> None:
    started = threading.Event()
    finished: list[str] = []

    def work(token: CancelToken) -> None:
        started.set()
        try:
            while True:
                token.check()
                time.sleep(0.001)
        finally:
            finished.append("cleaned")

    task = asyncio.create_task(run_cancellable(work))
    assert await asyncio.to_thread(started.wait, 30)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert finished == ["cleaned"]  # the thread ended before the task did


def _stuck_backup(env: dict[str, str], src: Path) -> Generator[subprocess.Popen[bytes], None, None]:
    # stderr is a pipe nobody reads: after enough warnings the CLI blocks writing them,
    # deterministically in the middle of the archive.
    proc = subprocess.Popen(
        [sys.executable, "-m", "asyncsync", "backup", "--store", "s1", "--avg-chunk-size", "16K",
         "--backup-time", "2026-01-01T00:00:00Z", "host/web1", f"root.didx={src}"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        assert proc.stderr is not None
        proc.stderr.close()


def test_killed_backup_leaves_no_snapshot_and_is_cleaned(
    cli_env: dict[str, str], cli_store: Datastore, tmp_path: Path
) -> None:
    src = tmp_path / "big"
    src.mkdir()
    (src / "a-data.bin").write_bytes(random.Random(5).randbytes(2 * 1024 * 1024))
    for i in range(3000):
        os.mkfifo(src / f"z-fifo-with-a-long-name-to-fill-the-pipe-{i:05d}")
    group = cli_store.group_path(ROOT_NS, HOST)
    gen = _stuck_backup(cli_env, src)
    proc = next(gen)
    deadline = time.monotonic() + 60
    while not (group.is_dir() and [p for p in group.iterdir() if p.name.startswith(".tmp.")]):
        assert proc.poll() is None, "backup ended instead of blocking"
        assert time.monotonic() < deadline
        time.sleep(0.02)
    while sum(1 for _ in cli_store.chunks.iter_digests()) == 0:
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    gen.close()

    # no visible snapshot, but leftovers of the dead writer
    assert cli_store.list_snapshots(ROOT_NS, HOST) == []
    out = run_cli(cli_env, "snapshot", "list", "--store", "s1", "--output-format", "json")
    assert json.loads(out.stdout) == []
    assert temp_entries(cli_store.root)
    orphans = sum(1 for _ in cli_store.chunks.iter_digests())
    assert orphans > 0

    # gc removes the dead writer's temp files; with no grace also its orphan chunks
    rep = json.loads(
        run_cli(cli_env, "gc", "--store", "s1", "--grace", "0", "--output-format", "json").stdout
    )
    assert rep["temp-removed"] >= 1
    assert rep["removed"] == orphans
    assert temp_entries(cli_store.root) == []

    # and the next backup works
    (src / "a-data.bin").unlink()
    for p in src.iterdir():
        p.unlink()
    (src / "f").write_text("ok")
    run_cli(cli_env, "backup", "--store", "s1", "host/web1", f"root.didx={src}")
    assert len(cli_store.list_snapshots(ROOT_NS, HOST)) == 1


def test_next_backup_cleans_leftovers_of_dead_writer(store: Datastore, tree: Path, tmp_path: Path) -> None:
    run_backup(store, ROOT_NS, HOST, sources(tmp_path), backup_time=1000, options=SMALL)
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    leftover = store.group_path(ROOT_NS, HOST) / f".tmp.{p.pid}.abcd.1970-01-01T00:33:20Z"
    leftover.mkdir()
    (leftover / "root.didx").write_bytes(b"partial")
    run_backup(store, ROOT_NS, HOST, sources(tmp_path), backup_time=2000, options=SMALL)
    assert not leftover.exists()


# ---------------------------------------------------------------- CLI end to end


def test_cli_backup_restore_verify_gc(
    cli_env: dict[str, str], cli_store: Datastore, tree: Path, tmp_path: Path
) -> None:
    env = cli_env
    r = run_cli(env, "backup", "--store", "s1", "--ns", "a", "vm/100", f"root.didx={tree}", check=False)
    assert r.returncode == 3 and "namespace create" in r.stderr
    run_cli(env, "namespace", "create", "--store", "s1", "a")
    src = sources(tmp_path)
    args = ["--store", "s1", "--ns", "a", "--avg-chunk-size", "16K", "--chunk-size", "64K", "vm/100"]
    args += [f"{s.name}={s.path}" for s in src]
    out = run_cli(env, "backup", "--backup-time", "2026-01-01T00:00:00Z", *args)
    assert out.stdout.startswith("backup a:vm/100/2026-01-01T00:00:00Z: 3 archives,")
    rep = json.loads(
        run_cli(
            env, "backup", "--backup-time", "2026-01-02T00:00:00Z", "--output-format", "json", *args
        ).stdout
    )
    assert rep["new-chunks"] == 0 and rep["chunks"] > 0

    listing = json.loads(
        run_cli(env, "snapshot", "list", "--store", "s1", "--ns", "a", "--output-format", "json").stdout
    )
    assert [s["time"] for s in listing] == ["2026-01-01T00:00:00Z", "2026-01-02T00:00:00Z"]
    assert listing[0]["verify-state"] is None and listing[0]["protected"] is False

    run_cli(
        env,
        "restore",
        "--store",
        "s1",
        "--ns",
        "a",
        "vm/100/2026-01-01T00:00:00Z",
        "root.didx",
        str(tmp_path / "r"),
    )
    assert snapshot_tree(tmp_path / "r") == snapshot_tree(tree)

    first = "vm/100/2026-01-01T00:00:00Z"
    out = run_cli(env, "snapshot", "protected", "--store", "s1", "--ns", "a", first, "1")
    assert out.stdout == f"{first}: protected\n"
    r = run_cli(env, "snapshot", "forget", "--store", "s1", "--ns", "a", first, check=False)
    assert r.returncode == 5 and "protected" in r.stderr
    r = run_cli(env, "namespace", "remove", "--store", "s1", "a", check=False)
    assert r.returncode == 5 and "--delete-groups" in r.stderr

    v = run_cli(env, "verify", "--store", "s1")
    assert "2 ok, 0 failed" in v.stdout
    listing = json.loads(
        run_cli(env, "snapshot", "list", "--store", "s1", "--ns", "a", "--output-format", "json").stdout
    )
    assert {s["verify-state"] for s in listing} == {"ok"}

    # damage one chunk: verify reports it by digest and exits 6
    digest = sorted(cli_store.snapshot_digests(Namespace.parse("a"), SnapshotId.parse(first)))[0]
    cli_store.chunks.path(digest).write_bytes(b"garbage")
    v = run_cli(env, "verify", "--store", "s1", "--ns", "a", first, check=False)
    assert v.returncode == 6
    assert digest in v.stderr and "1 failed" in v.stdout

    gc = json.loads(run_cli(env, "gc", "--store", "s1", "--output-format", "json").stdout)
    assert gc["removed"] == 0

    hostile = [
        ["backup", "--store", "s1", "vm/../x", f"root.didx={tree}"],
        ["backup", "--store", "s1", "--ns", "../a", "vm/1", f"root.didx={tree}"],
        ["backup", "--store", "s1", "vm/1", f"../root.didx={tree}"],
        ["restore", "--store", "s1", "vm/100/../../etc", "root.didx", str(tmp_path / "z")],
    ]
    for bad in hostile:
        r = run_cli(env, *bad, check=False)
        assert r.returncode == 2, (bad, r.stderr)
        assert r.stderr.startswith("error: invalid") and r.stderr.count("\n") == 1
