"""Backup progress: the library reports it through a callback, the CLI shows it on a terminal only."""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from asyncsync.backup.writer import ArchiveSource, BackupOptions, BackupProgress, backup, run_backup
from asyncsync.config.datastores import create_datastore
from asyncsync.config.paths import Paths
from asyncsync.datastore.chunkstore import SyncLevel
from asyncsync.datastore.datastore import Datastore
from asyncsync.names import ROOT_NS, GroupId

SMALL = BackupOptions(chunk_size=64 * 1024, avg_chunk_size=16 * 1024)
GROUP = GroupId.parse("host/web1")


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A small tree: nested folders, random and compressible files, an empty file, a symlink."""
    rng = random.Random(3)
    root = tmp_path / "tree"
    (root / "a" / "b").mkdir(parents=True)
    (root / "a" / "random.bin").write_bytes(rng.randbytes(200_000))
    (root / "a" / "b" / "text.txt").write_text("".join(f"line {i}\n" for i in range(20_000)))
    (root / "zeros").write_bytes(bytes(300_000))
    (root / "empty").write_bytes(b"")
    os.symlink("a/random.bin", root / "link")
    return root


def file_bytes(root: Path) -> int:
    """The bytes of the tree's regular files (symlinks not followed)."""
    total = 0
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            p = Path(dirpath) / name
            if not p.is_symlink():
                total += p.stat().st_size
    return total


def check_sequence(seen: list[BackupProgress]) -> None:
    assert seen, "no progress reported"
    for before, after in itertools.pairwise(seen):
        assert after.bytes_read >= before.bytes_read
        assert after.file_bytes >= before.file_bytes
        assert after.chunks >= before.chunks


def test_progress_sees_every_byte_of_the_sources(store: Datastore, tree: Path, tmp_path: Path) -> None:
    image = tmp_path / "disk.img"
    image.write_bytes(random.Random(4).randbytes(150_000))
    conf = tmp_path / "vm.conf"
    conf.write_bytes(b"memory: 1024\n")
    sources = [
        ArchiveSource("root.didx", tree),
        ArchiveSource("disk.fidx", image),
        ArchiveSource("vm.conf.blob", conf),
    ]
    seen: list[BackupProgress] = []
    report = run_backup(store, ROOT_NS, GROUP, sources, backup_time=1, options=SMALL, progress=seen.append)

    check_sequence(seen)
    assert {p.archive for p in seen} == {"root.didx", "disk.fidx", "vm.conf.blob"}
    last = seen[-1]
    assert last.bytes_read == report.size
    assert last.chunks == report.chunks
    assert last.file_bytes == file_bytes(tree) + 150_000 + len(b"memory: 1024\n")
    # at the end of the tree archive, exactly the tree's file content was read
    end_of_tree = [p for p in seen if p.archive == "root.didx"][-1]
    assert end_of_tree.file_bytes == file_bytes(tree)
    assert end_of_tree.bytes_read == report.archives[0].size > end_of_tree.file_bytes  # + tar headers
    assert (
        len([p for p in seen if p.archive == "root.didx"]) > 2
    )  # reported while reading, not only at the end


def test_a_failing_callback_aborts_the_backup_and_leaves_nothing(store: Datastore, tree: Path) -> None:
    def boom(p: BackupProgress) -> None:
        raise RuntimeError("display broke")

    with pytest.raises(RuntimeError):
        run_backup(store, ROOT_NS, GROUP, [ArchiveSource("root.didx", tree)], backup_time=1, progress=boom)
    assert store.list_snapshots(ROOT_NS, GROUP) == []


async def test_async_backup_reports_progress_on_the_loop_before_returning(
    store: Datastore, tree: Path
) -> None:
    loop_thread = threading.get_ident()
    seen: list[BackupProgress] = []
    threads: set[int] = set()

    def on_progress(p: BackupProgress) -> None:
        threads.add(threading.get_ident())
        seen.append(p)

    report = await backup(
        store, ROOT_NS, GROUP, [ArchiveSource("root.didx", tree)], options=SMALL, progress=on_progress
    )
    assert threads == {loop_thread}
    check_sequence(seen)
    assert seen[-1].bytes_read == report.size
    assert seen[-1].file_bytes == await asyncio.to_thread(file_bytes, tree)


@pytest.fixture
def cli_store(paths: Paths, tmp_path: Path) -> Datastore:
    return create_datastore(paths, "s1", tmp_path / "s1", sync_level=SyncLevel.NONE).open()


def test_cli_without_a_terminal_prints_only_the_summary(
    cli_env: dict[str, str], cli_store: Datastore, tree: Path
) -> None:
    args = [sys.executable, "-m", "asyncsync", "backup", "--store", "s1", "--avg-chunk-size", "16K"]
    proc = subprocess.run(
        [*args, "host/web1", f"root.didx={tree}"], env=cli_env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("backup host/web1/") and proc.stdout.count("\n") == 1
    assert proc.stderr == ""
    # forced on (not a terminal): the bar still works and stays off stdout
    proc = subprocess.run(
        [*args, "--progress", "--backup-time", "2030-01-01T00:00:00Z", "host/web1", f"root.didx={tree}"],
        env=cli_env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("backup host/web1/2030-01-01T00:00:00Z:") and proc.stdout.count("\n") == 1
    assert "Traceback" not in proc.stderr


def test_cli_on_a_terminal_shows_the_bar_on_stderr(
    cli_env: dict[str, str], cli_store: Datastore, tree: Path
) -> None:
    master, slave = os.openpty()
    env = {**cli_env, "TERM": "xterm-256color", "COLUMNS": "120"}
    env.pop("NO_COLOR", None)
    with subprocess.Popen(
        [sys.executable, "-m", "asyncsync", "backup", "--store", "s1", "host/web1", f"root.didx={tree}"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=slave,
        text=True,
    ) as proc:
        os.close(slave)
        shown = b""
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            shown += data
        assert proc.stdout is not None
        out = proc.stdout.read()
        assert proc.wait(timeout=60) == 0, shown
    os.close(master)
    assert out.startswith("backup host/web1/") and out.count("\n") == 1
    text = shown.decode(errors="replace")
    assert "reading" in text or "root.didx" in text, text
    assert "Traceback" not in text
