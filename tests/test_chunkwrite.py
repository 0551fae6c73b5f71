"""The chunk write path: unnamed files linked into place (O_TMPFILE), its temp-file
fallback, verify-then-write of several received chunks in one thread hop, and the
thread hops of a pull that a cancellation waits for (:mod:`asyncsync.sync.threads`)."""

from __future__ import annotations

import asyncio
import errno
import os
import random
import threading
from pathlib import Path

import pytest

from asyncsync.client.blocking import RECV_PIECE
from asyncsync.datastore import blob, chunkstore
from asyncsync.datastore.chunkstore import (
    TMP_DIR,
    WRITE_PIECE,
    ChunkStore,
    SyncLevel,
    reserve_blocks,
    syncfs,
    write_all,
)
from asyncsync.datastore.datastore import Datastore
from asyncsync.errors import DigestMismatch, StorageError
from asyncsync.sync.fetch import verify_and_write_many
from asyncsync.sync.threads import run_acquire, run_write


def _chunk(n: int, size: int = 4096) -> tuple[str, bytes, int]:
    data = os.urandom(size - 1) + bytes([n % 256])
    return blob.digest_of(data), blob.encode(data), size


def _files(base: Path) -> list[str]:
    return sorted(str(p.relative_to(base)) for p in base.rglob("*") if p.is_file())


def _stores(tmp_path: Path) -> list[ChunkStore]:
    a = Datastore.create(tmp_path / "a", "a", SyncLevel.NONE).chunks
    b = Datastore.create(tmp_path / "b", "b", SyncLevel.FILE).chunks
    b._tmpfile_ok = False  # the fallback: named temp file in .chunks/.tmp + rename
    return [a, b]


def test_insert_stores_exactly_the_blob_and_leaves_no_temp_file(tmp_path: Path) -> None:
    for store in _stores(tmp_path):
        digest, encoded, _ = _chunk(1)
        assert store.insert(digest, encoded) is True
        assert store.read(digest) == encoded
        assert store.read_data(digest) == blob.decode(encoded)
        assert store.insert(digest, encoded) is False  # present: touched, not rewritten
        assert all(not name.startswith(TMP_DIR) for name in _files(store.base)), _files(store.base)


def test_a_damaged_chunk_file_is_replaced(tmp_path: Path) -> None:
    for store in _stores(tmp_path):
        digest, encoded, _ = _chunk(2)
        path = store.path(digest)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")  # implausibly short: not a chunk
        assert store.insert(digest, encoded) is True
        assert store.read(digest) == encoded


def test_many_in_one_hop_stops_at_the_first_bad_chunk(tmp_path: Path) -> None:
    store = _stores(tmp_path)[0]
    good = [_chunk(i) for i in range(3)]
    other_digest, other_blob, size = _chunk(9)
    bad = (good[0][0][::-1], other_blob, size)  # a blob that does not match its digest
    journal: list[list[str]] = []
    done, error = verify_and_write_many(store, [good[0], good[1], bad, good[2]], journal.append)
    assert done == 2
    assert isinstance(error, DigestMismatch)
    assert journal == [[good[0][0], good[1][0]]]  # one journal write for the hop
    assert store.exists(good[0][0]) and store.exists(good[1][0])
    assert not store.exists(good[2][0])  # nothing after the failure is written
    assert not store.exists(other_digest)


def test_many_in_one_hop_all_good(tmp_path: Path) -> None:
    store = _stores(tmp_path)[1]
    items = [_chunk(i, size=1000 + i) for i in range(5)]
    done, error = verify_and_write_many(store, items, None)
    assert (done, error) == (5, None)
    for digest, encoded, _ in items:
        assert store.read(digest) == encoded


class _Entered:
    """Set from a worker thread, awaited on the loop (no polling)."""

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._event = asyncio.Event()

    def set(self) -> None:
        self._loop.call_soon_threadsafe(self._event.set)

    async def wait(self) -> None:
        await self._event.wait()


async def test_run_write_waits_for_the_thread_through_two_cancellations() -> None:
    entered, gate = _Entered(), threading.Event()
    finished: list[str] = []

    def hop() -> None:
        entered.set()
        gate.wait(30)
        finished.append("done")

    task = asyncio.create_task(run_write(hop))
    await entered.wait()
    task.cancel()
    await asyncio.sleep(0)
    task.cancel()  # a second cancellation must not orphan the thread either
    await asyncio.sleep(0)
    assert not task.done()  # still waiting for the thread
    gate.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert finished == ["done"]


@pytest.mark.parametrize("cancel", [False, True])
async def test_run_acquire_releases_what_a_cancelled_hop_acquired(cancel: bool) -> None:
    entered, gate = _Entered(), threading.Event()
    released: list[str] = []

    def acquire() -> str:
        entered.set()
        gate.wait(30)
        return "lock"

    task = asyncio.create_task(run_acquire(acquire, released.append))
    await entered.wait()
    if cancel:
        task.cancel()
        await asyncio.sleep(0)
    gate.set()
    if cancel:
        with pytest.raises(asyncio.CancelledError):
            await task
        assert released == ["lock"]
    else:
        assert await task == "lock"
        assert released == []  # the caller's to release


async def test_run_acquire_releases_nothing_when_the_hop_fails() -> None:
    released: list[object] = []

    def acquire() -> object:
        raise OSError("no")

    with pytest.raises(OSError, match="no"):
        await run_acquire(acquire, released.append)
    assert released == []


def test_write_all_splits_large_parts_and_keeps_every_byte(tmp_path: Path) -> None:
    """Parts larger than WRITE_PIECE go out in several calls; the file is exactly the parts, in order."""
    rng = random.Random(7)
    parts = [rng.randbytes(2 * WRITE_PIECE + 12345), b"", rng.randbytes(17), rng.randbytes(WRITE_PIECE)]
    path = tmp_path / "f"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        write_all(fd, [memoryview(parts[0]), *parts[1:]])
    finally:
        os.close(fd)
    assert path.read_bytes() == b"".join(parts)


def test_piecewise_writer_hands_the_kernel_at_most_write_piece_per_call(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A received piece (the client's RECV_PIECE) reaches ``os.write`` in calls of at most
    WRITE_PIECE bytes: large writes make ext4 allocate large page-cache folios, which cost
    several times more system time here (docs/performance.md, session 8). Both writer kinds."""
    payload = random.Random(3).randbytes(3 * RECV_PIECE + 999)
    raw = blob.encode(payload)
    digest = blob.digest_of(payload)
    sizes: list[int] = []
    real_write = os.write

    def spy(fd: int, data: bytes | memoryview) -> int:
        sizes.append(len(data))
        return real_write(fd, data)

    for store in _stores(tmp_path):
        sizes.clear()
        writer = store.open_blob_writer(digest)
        view = memoryview(raw)
        with monkeypatch.context() as mp:
            mp.setattr(os, "write", spy)
            for off in range(0, len(raw), RECV_PIECE):
                writer.write(view[off : off + RECV_PIECE])
        writer.commit()
        assert sum(sizes) == len(raw)
        assert max(sizes) <= WRITE_PIECE < RECV_PIECE
        assert Path(store.path(digest)).read_bytes() == raw


def _fs_reserves(folder: Path) -> bool:
    """Whether this file system takes a FALLOC_FL_KEEP_SIZE reservation (a probe file)."""
    fd = os.open(folder / "probe", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        return reserve_blocks(fd, 1 << 20)
    finally:
        os.close(fd)
        os.unlink(folder / "probe")


def test_piecewise_writer_reserves_the_whole_blob_at_the_open(tmp_path: Path) -> None:
    """With the blob's length, the file holds blocks for all of it after the first piece (its
    size stays what was written); the committed chunk is exactly the blob, nothing beyond.
    Where the file system refuses the reservation, the store stops asking and writes as before."""
    payload = random.Random(5).randbytes(2 * RECV_PIECE + 777)
    raw = blob.encode(payload)
    digest = blob.digest_of(payload)
    reserves = _fs_reserves(tmp_path)
    for store in _stores(tmp_path):
        writer = store.open_blob_writer(digest, len(raw))
        writer.write(memoryview(raw)[:WRITE_PIECE])
        st = os.fstat(writer._fd)
        assert st.st_size == WRITE_PIECE
        if reserves:
            assert st.st_blocks * 512 >= len(raw)
        assert store._reserve_ok is reserves
        writer.write(memoryview(raw)[WRITE_PIECE:])
        writer.commit()
        final = store.path(digest)
        assert final.read_bytes() == raw
        assert final.stat().st_blocks * 512 < len(raw) + 64 * 1024  # no reservation left over
        assert all(not name.startswith(TMP_DIR) for name in _files(store.base)), _files(store.base)


def test_a_refused_reservation_is_not_asked_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []

    def refuse(fd: int, length: int) -> bool:
        calls.append(length)
        return False  # as EOPNOTSUPP, or a libc without fallocate

    monkeypatch.setattr(chunkstore, "reserve_blocks", refuse)
    store = _stores(tmp_path)[0]
    for n in range(3):
        digest, encoded, _ = _chunk(10 + n, 64 * 1024)
        writer = store.open_blob_writer(digest, len(encoded))
        writer.write(encoded)
        writer.commit()
        assert store.read(digest) == encoded
    assert calls == [len(encoded)] and store._reserve_ok is False


def test_a_full_disk_at_the_reservation_fails_before_any_byte_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(fd: int, length: int) -> bool:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(chunkstore, "reserve_blocks", full)
    for store in _stores(tmp_path):
        digest, encoded, _ = _chunk(20, 64 * 1024)
        writer = store.open_blob_writer(digest, len(encoded))
        with pytest.raises(StorageError, match="No space left"):
            writer.write(encoded)
        assert not store.path(digest).exists()
        assert _files(store.base) == [], _files(store.base)


def test_a_blob_shorter_than_announced_gives_the_reservation_back(tmp_path: Path) -> None:
    """A caller that commits fewer bytes than it announced gets a file of what it wrote."""
    store = _stores(tmp_path)[0]
    digest, encoded, _ = _chunk(30, 64 * 1024)
    writer = store.open_blob_writer(digest, 4 * 1024 * 1024)
    writer.write(encoded)
    writer.commit()
    final = store.path(digest)
    assert final.read_bytes() == encoded
    assert final.stat().st_blocks * 512 < 2 * len(encoded)


def test_reserve_blocks_allocates_and_keeps_the_size(tmp_path: Path) -> None:
    """The real call, where the file system takes it: the blocks are there, the size stays 0,
    and bytes written afterwards read back as written."""
    path = tmp_path / "f"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        if not reserve_blocks(fd, 1 << 20):
            assert not _fs_reserves(tmp_path)  # refused consistently, not by chance
            return
        st = os.fstat(fd)
        assert st.st_size == 0 and st.st_blocks * 512 >= 1 << 20
        os.write(fd, b"abc")
        assert os.fstat(fd).st_size == 3
    finally:
        os.close(fd)
    assert path.read_bytes() == b"abc"


def test_syncfs_reaches_libc_through_the_processs_own_symbols(tmp_path: Path) -> None:
    """The shared libc handle (``dlopen(NULL)``, no ``ctypes.util``) has syncfs and the
    64-bit fallocate on this Linux, and a flush of the file system runs through it."""
    libc = chunkstore._load_libc()
    assert getattr(libc, "syncfs", None) is not None
    assert chunkstore._fallocate() is not None
    (tmp_path / "f").write_bytes(b"x")
    syncfs(tmp_path)
    assert (tmp_path / "f").read_bytes() == b"x"
