"""A manifest rewrite killed between its temp file and the rename: the leftover is cleaned and harmless.

``verify`` records its result by rewriting the snapshot's manifest through a temp file in
the snapshot folder. A child process does exactly that and is SIGKILLed at the rename, so
the leftover is the real one; then the next verify (CLI, in a subprocess) must remove it,
gc must remove it, and neither a listing nor a pull (local or over TLS) may treat it as an
archive.
"""

# ruff: noqa: F811  (pytest fixtures imported from serverutil are parameters here)

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from pullutil import leftovers, new_store, store_tree
from serverutil import Installation, RunningServer, http_pull, remote, remote_server  # noqa: F401

from asyncsync import LocalSource, PullOptions, pull
from asyncsync.datastore.chunkstore import tmp_name
from asyncsync.datastore.datastore import Datastore
from asyncsync.datastore.manifest import MANIFEST_NAME
from asyncsync.errors import InvalidName
from asyncsync.names import Namespace, SnapshotId

N = Namespace.parse
SNAP = SnapshotId.parse("vm/100/2026-11-21T08:00:00Z")

#: rewrites the manifest the way verify does, and dies where a SIGKILL hurts most
_KILLED_REWRITE = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    from asyncsync.datastore.datastore import Datastore
    from asyncsync.names import Namespace, SnapshotId

    def killed(src, dst):
        print(os.path.basename(src), flush=True)
        os.kill(os.getpid(), signal.SIGKILL)

    store = Datastore.open(Path(sys.argv[1]))
    os.replace = killed
    store.update_unprotected(
        Namespace.parse(sys.argv[2]), SnapshotId.parse(sys.argv[3]), verify_state={"state": "ok", "time": 1}
    )
    """
)


def kill_mid_rewrite(store: Datastore, ns: Namespace, snap: SnapshotId) -> Path:
    """The temp manifest a killed rewrite leaves behind (its process is gone)."""
    proc = subprocess.run(
        [sys.executable, "-c", _KILLED_REWRITE, str(store.root), str(ns), str(snap)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    path = store.snapshot_path(ns, snap) / proc.stdout.strip()
    assert path.name.startswith(".tmp.") and path.name.endswith(MANIFEST_NAME) and path.is_file()
    return path


def snapshot_folder(store: Datastore, ns: Namespace, snap: SnapshotId) -> set[str]:
    return set(os.listdir(store.snapshot_path(ns, snap)))


def test_next_verify_removes_the_leftover_and_the_snapshot_still_verifies(remote: Installation) -> None:
    store = remote.store
    leftover = kill_mid_rewrite(store, N(""), SNAP)
    # a temp file of a process that still runs (this one) is not stale: it must stay
    live = store.snapshot_path(N(""), SNAP) / tmp_name(MANIFEST_NAME)
    live.write_bytes(b"in progress")
    assert store.snapshot_info(N(""), SNAP) is not None  # the leftover hides nothing

    proc = subprocess.run(
        [sys.executable, "-m", "asyncsync", "verify", "--store", remote.store_name, str(SNAP)],
        env=remote.env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "1 ok, 0 failed" in proc.stdout
    assert not leftover.exists()
    assert live.exists()
    info = store.snapshot_info(N(""), SNAP)
    assert info is not None and info.verify_state == "ok"
    live.unlink()
    assert leftovers(store) == []


def test_gc_removes_the_leftover_but_the_quick_cleanup_leaves_it(store: Datastore) -> None:
    from serverutil import write_snapshot

    write_snapshot(store, "a", SNAP, owner="root@pam")
    leftover = kill_mid_rewrite(store, N("a"), SNAP)
    assert store.cleanup_temp(full=False) == 0  # what a pull runs first: no scan of every snapshot
    assert leftover.exists()
    assert store.cleanup_temp(full=True) == 1  # gc's pass
    assert not leftover.exists()
    assert store.cleanup_snapshot_temp(N("a"), SNAP) == 0
    assert store.cleanup_snapshot_temp(N("a"), SnapshotId.parse("vm/1/2026-01-01T00:00:00Z")) == 0


async def test_pulls_and_listings_never_take_the_leftover_for_an_archive(
    remote: Installation, remote_server: RunningServer, tmp_path: Path
) -> None:
    src = remote.store
    leftover = await asyncio.to_thread(kill_mid_rewrite, src, N(""), SNAP)
    with pytest.raises(InvalidName):
        await asyncio.to_thread(src.read_file, N(""), SNAP, leftover.name)
    [info] = [i for i in await asyncio.to_thread(src.list_snapshots, N(""), SNAP.group) if i.snapshot == SNAP]
    assert leftover.name not in {f.filename for f in info.files}
    expected = {f.filename for f in info.files} | {MANIFEST_NAME}

    over_tls = await asyncio.to_thread(new_store, tmp_path / "tls", "tls")
    report = await http_pull(remote_server, remote, over_tls)
    assert report.ok, report.failure_message()

    local = await asyncio.to_thread(new_store, tmp_path / "local", "local")
    report = await pull(LocalSource(src), local, PullOptions())
    assert report.ok, report.failure_message()

    for dst in (over_tls, local):
        assert await asyncio.to_thread(snapshot_folder, dst, N(""), SNAP) == expected
        assert await asyncio.to_thread(leftovers, dst) == []
        got, want = await asyncio.gather(
            asyncio.to_thread(store_tree, dst), asyncio.to_thread(store_tree, src)
        )
        assert {k: v for k, v in got.items() if not k.startswith("owner:")} == {
            k: v for k, v in want.items() if not k.startswith("owner:")
        }
    assert leftover.exists()  # a pull reads the source, it does not clean it
