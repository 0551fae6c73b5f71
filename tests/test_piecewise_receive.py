"""Chunks received in pieces on the threaded transfer path, verified as they pass, linked once verified.

Covers :data:`asyncsync.client.blocking.RECV_PIECE` (the per-connection receive
buffer never grows past it), the pull's :class:`~asyncsync.sync.fetch.VerifyingWriter`
(raw blobs hashed, CRC'd and written piece by piece into an unnamed file; zstd
blobs collected and decoded whole) and :meth:`ChunkStore.open_blob_writer`
(nothing visible under a chunk's name before ``commit``, replace semantics,
the named-temp fallback), against the real server on 127.0.0.1 with real TLS.

Faults come from :func:`piece_middleware` in front of the real handlers: for
one victim chunk it flips a byte past the first piece, cuts the stream past the
first piece, stalls there, or serves a blob of another length.
"""

# ruff: noqa: F811  (pytest fixtures imported from serverutil / test_pull_http are parameters here)

from __future__ import annotations

import asyncio
import contextlib
import errno
import itertools
import os
import random
import re
import struct
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pullutil import chunk_files, leftovers, new_store
from serverutil import (
    TEST_OPTIONS,
    Installation,
    RunningServer,
    WrittenSnapshot,
    http_source,
    make_installation,
    running_server,
    write_snapshot,
)
from test_pull_http import content, dst  # noqa: F401

from asyncsync import PullOptions, PullReport, protocol, pull
from asyncsync.client.blocking import RECV_PIECE
from asyncsync.datastore import blob
from asyncsync.datastore.chunkstore import ChunkFileWriter, ChunkStore, SyncLevel
from asyncsync.datastore.datastore import Datastore
from asyncsync.errors import ChunkTooLarge, CorruptBlob, DigestMismatch, StorageError
from asyncsync.names import Namespace, SnapshotId
from asyncsync.server.app import make_app
from asyncsync.sync.fetch import VerifyingWriter
from asyncsync.sync.groupfilter import GroupFilters

BIG = "vm/900/2026-11-23T08:00:00Z"
BIG_ID = SnapshotId.parse(BIG)
ROOT = Namespace.parse("")
#: an odd chunk size: several pieces, not a multiple of the piece size
ODD = 2 * RECV_PIECE + RECV_PIECE // 3 + 1
FOUR_MIB = 4 * 1024 * 1024

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_CHUNK_RE = re.compile(r"/reader/[^/]+/chunk/([0-9a-f]{64})$")
_CHUNKS_RE = re.compile(r"/reader/[^/]+/chunks$")


# ---- a remote with chunks of several pieces ------------------------------------------------------


def add_big_snapshot(inst: Installation) -> WrittenSnapshot:
    """``vm/900``: two 4 MiB chunks and one of :data:`ODD` bytes, incompressible (raw blobs)."""
    data = random.Random(900).randbytes(2 * FOUR_MIB + ODD)
    return write_snapshot(
        inst.store, "", BIG, owner="admin@pbs", archives={"disk.fidx": data}, chunk_size=FOUR_MIB
    )


@pytest.fixture
def big(tmp_path: Path) -> tuple[Installation, list[str]]:
    """The standard remote plus :func:`add_big_snapshot`; the big chunks' digests (4 MiB, 4 MiB, odd)."""
    inst = make_installation(tmp_path / "remote")
    ws = add_big_snapshot(inst)
    digests = ws.digests["disk.fidx"]
    assert len(set(digests)) == 3
    return inst, digests


class Faults:
    """What :func:`piece_middleware` does to ``victim``'s blob (``mode``) and what it saw.

    Modes: ``None`` (real handlers), ``"flip"`` (byte ``at`` of the blob inverted),
    ``"crc"`` (the header's CRC inverted), ``"cut"`` (only ``at`` bytes, then the
    connection is aborted; on the first ``cut_times`` attempts only), ``"stall"``
    (``at`` bytes, then wait for ``release``, then abort), ``"length"`` (the blob
    re-encoded with ``delta`` bytes more or fewer payload, CRC valid).
    """

    def __init__(self, store: Datastore) -> None:
        self.store = store
        self.mode: str | None = None
        self.victim = ""
        self.at = RECV_PIECE + 1000
        self.cut_times = 1
        self.delta = 0
        self.attempts = 0
        self.stalled = asyncio.Event()
        self.release = asyncio.Event()

    def blob_for(self, digest: str, data: bytes) -> bytes:
        if digest != self.victim:
            return data
        if self.mode == "flip":
            return data[: self.at] + bytes([data[self.at] ^ 0xFF]) + data[self.at + 1 :]
        if self.mode == "crc":
            return data[:8] + bytes(b ^ 0xFF for b in data[8:12]) + data[12:]
        if self.mode == "length":
            payload = data[blob.HEADER_SIZE :]
            payload = payload + b"x" * self.delta if self.delta > 0 else payload[: self.delta]
            return blob.RAW_MAGIC + struct.pack("<I", blob.crc32(payload)) + payload
        return data


def piece_middleware(faults: Faults) -> Any:
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        one = _CHUNK_RE.search(request.path) if request.method == "GET" else None
        batch = request.method == "POST" and _CHUNKS_RE.search(request.path) is not None
        if not (one or batch) or faults.mode is None:
            return await handler(request)
        digests = [one.group(1)] if one else list((await request.json())["digests"])
        if faults.victim not in digests:
            return await handler(request)
        transport = request.transport
        assert transport is not None
        blobs = [faults.blob_for(d, await asyncio.to_thread(faults.store.chunks.read, d)) for d in digests]
        resp = web.StreamResponse()
        if one:
            resp.content_length = len(blobs[0])
        await resp.prepare(request)
        for d, data in zip(digests, blobs, strict=True):
            head = protocol.FRAME_HEADER.pack(bytes.fromhex(d), len(data)) if batch else b""
            if d == faults.victim:
                faults.attempts += 1
                cut = faults.mode == "cut" and faults.attempts <= faults.cut_times
                if cut or faults.mode == "stall":
                    await resp.write(head + data[: faults.at])
                    if faults.mode == "stall":
                        faults.stalled.set()
                        with contextlib.suppress(TimeoutError):  # bounded: set on exit at the latest
                            await asyncio.wait_for(faults.release.wait(), 60)
                    transport.abort()
                    return resp
            await resp.write(head + data)
        await resp.write_eof()
        return resp

    return middleware


@asynccontextmanager
async def piece_server(
    inst: Installation, *, tls: bool = True
) -> AsyncIterator[tuple[RunningServer, Faults]]:
    faults = Faults(inst.store)
    app = make_app(inst.paths, options=TEST_OPTIONS)
    app.middlewares.append(piece_middleware(faults))
    try:
        async with running_server(inst.paths, tls=tls, app=app) as srv:
            yield srv, faults
    finally:
        faults.release.set()


async def pull_big(srv: RunningServer, inst: Installation, dst: Datastore, **opts: Any) -> PullReport:
    """Pull only ``vm/900`` (threaded path: no rate limit); ``retries`` for the pull and the client."""
    source = await http_source(srv, inst, tls=srv.tls, retries=opts.get("retries", 4))
    try:
        report = await pull(
            source, dst, PullOptions(group_filter=GroupFilters.parse(["group:vm/900"]), **opts)
        )
        assert source.client._session is None  # aiohttp never started: the threaded path was taken
        return report
    finally:
        await source.aclose()


def group_error(report: PullReport, group: str = "vm/900") -> str:
    by = {str(g.group): g for g in report.groups}
    assert not report.ok
    return by[group].error or ""


def use_tmpfile(store: Datastore, unnamed: bool) -> None:
    """Unnamed files (the default where supported), or the named-temp fallback."""
    store.chunks._tmpfile_ok = unnamed and hasattr(os, "O_TMPFILE")


def tmp_dir_files(store: Datastore) -> list[str]:
    try:
        return sorted(os.listdir(store.chunks.tmp_dir))
    except FileNotFoundError:
        return []


def unnamed_files_open(store: Datastore) -> list[str]:
    """Unnamed (``O_TMPFILE``) files of this process in ``store``'s chunk folders."""
    base = str(store.chunks.base)
    out = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/self/fd/{fd}")
            if target.startswith(base) and target.endswith("(deleted)"):
                out.append(target)
    return out


def assert_nothing_left(store: Datastore, victim: str) -> None:
    assert victim not in chunk_files(store)
    assert not store.chunks.path(victim).exists()
    assert leftovers(store) == []
    assert tmp_dir_files(store) == []
    assert unnamed_files_open(store) == []


class Spy:
    """Wraps ``store.chunks.open_blob_writer``: records the digests, signals once the victim's
    file holds more than ``signal_after`` bytes (the writer's thread is then mid-blob)."""

    def __init__(self, store: Datastore, victim: str = "", signal_after: int = 0) -> None:
        self.opened: list[str] = []
        #: the blob length each writer was opened with (its blocks are reserved for it)
        self.lengths: dict[str, int] = {}
        self.victim = victim
        self.signal_after = signal_after
        self.reached = threading.Event()
        orig = store.chunks.open_blob_writer
        spy = self

        class Writer:
            def __init__(self, inner: ChunkFileWriter) -> None:
                self.inner = inner

            def write(self, piece: bytes | memoryview) -> None:
                self.inner.write(piece)
                if self.inner.digest == spy.victim and self.inner.size > spy.signal_after:
                    spy.reached.set()

            def commit(self) -> None:
                self.inner.commit()

            def discard(self) -> None:
                self.inner.discard()

        def open_blob_writer(digest: str, length: int = 0) -> Any:
            self.opened.append(digest)
            self.lengths[digest] = length
            return Writer(orig(digest, length))

        store.chunks.open_blob_writer = open_blob_writer  # type: ignore[method-assign]


# ---- 1. several pieces per chunk: byte-identical, the buffer stays at one piece ------------------


@pytest.mark.parametrize("tls", [True, False])
async def test_pull_of_multi_piece_chunks_is_identical_and_buffers_stay_one_piece(
    big: tuple[Installation, list[str]], dst: Datastore, tls: bool
) -> None:
    inst, digests = big
    spy = Spy(dst)
    async with piece_server(inst, tls=tls) as (srv, _):
        source = await http_source(srv, inst, tls=srv.tls)
        try:
            report = await pull(source, dst)
            channel = source.client.channel
            assert channel is not None
            buffers = [len(conn.buffer) for conn in channel._idle]
            assert source.client._session is None  # the threaded path
        finally:
            await source.aclose()
    assert report.ok, report.failure_message()
    assert await asyncio.to_thread(content, dst) == await asyncio.to_thread(content, inst.store)
    for d in digests:
        assert await asyncio.to_thread(dst.chunks.read, d) == await asyncio.to_thread(
            inst.store.chunks.read, d
        )
    assert await asyncio.to_thread(leftovers, dst) == []
    # 4 MiB chunks went through connections whose buffer is one piece, not one blob
    assert buffers and max(buffers) == RECV_PIECE, buffers
    # each chunk file was opened knowing its whole blob length (its blocks reserved at once)
    sizes = {d: (await asyncio.to_thread(inst.store.chunks.path(d).stat)).st_size for d in digests}
    assert spy.lengths == sizes


class Recorder:
    """A blob receiver that keeps every piece's length and the joined bytes."""

    def __init__(self) -> None:
        self.pieces: dict[str, list[int]] = {}
        self.blobs: dict[str, bytes] = {}
        self.aborted: list[str] = []
        #: digests handed over in one call (``whole``), in order
        self.wholes: list[str] = []

    def begin(self, digest: str, length: int) -> Any:
        rec = self
        parts: list[bytes] = []
        rec.pieces[digest] = []

        class W:
            def feed(self, piece: memoryview) -> None:
                rec.pieces[digest].append(len(piece))
                parts.append(bytes(piece))

            def finish(self) -> None:
                assert sum(rec.pieces[digest]) == length
                rec.blobs[digest] = b"".join(parts)

            def abort(self) -> None:
                rec.aborted.append(digest)

        return W()

    def whole(self, digest: str, blob: memoryview) -> None:
        self.wholes.append(digest)
        self.pieces[digest] = [len(blob)]
        self.blobs[digest] = bytes(blob)


class WatchingRecorder(Recorder):
    """A :class:`Recorder` that is also an :class:`~asyncsync.blobsink.AnswerWatcher`: it keeps the
    order of ``answered`` calls and blob starts."""

    def __init__(self) -> None:
        super().__init__()
        self.order: list[str] = []

    def answered(self) -> None:
        self.order.append("answered")

    def begin(self, digest: str, length: int) -> Any:
        self.order.append(digest)
        return super().begin(digest, length)

    def whole(self, digest: str, blob: memoryview) -> None:
        self.order.append(digest)
        super().whole(digest, blob)


async def fetch_recorded(
    inst: Installation,
    snap: SnapshotId,
    digests: list[str],
    together: bool,
    make: Callable[[], Recorder] = Recorder,
) -> Recorder:
    """Fetch ``digests`` of ``snap``'s ``disk.fidx`` through the channel into a :class:`Recorder`
    (made by ``make``): all in one framed batch (``together``) or one GET per digest."""
    async with piece_server(inst) as (srv, _):
        client = await srv.client(inst.sync_token, inst.sync_secret)
        try:
            session = await client.open_reader(inst.store_name, ROOT, snap)
            await session.download("disk.fidx")
            rec = make()
            with ThreadPoolExecutor(2, thread_name_prefix="test-fetch") as pool:
                if together:
                    await session.fetch_chunks_threaded(digests, rec, pool)
                else:
                    for d in digests:
                        await session.fetch_chunks_threaded([d], rec, pool)
            await session.aclose()
        finally:
            await client.aclose()
    return rec


@pytest.mark.parametrize("together", [False, True])
async def test_channel_hands_blobs_over_in_pieces_of_at_most_recv_piece(
    big: tuple[Installation, list[str]], together: bool
) -> None:
    """One digest per request (GET) and all in one batch (framed POST): the same pieces."""
    inst, digests = big
    rec = await fetch_recorded(inst, BIG_ID, digests, together)
    for d in digests:
        expected = await asyncio.to_thread(inst.store.chunks.read, d)
        assert rec.blobs[d] == expected
        full, rest = divmod(len(expected), RECV_PIECE)
        assert rest  # not a multiple: the last piece is short
        assert rec.pieces[d] == [RECV_PIECE] * full + [rest]
    assert rec.aborted == []


@pytest.mark.parametrize("together", [False, True])
async def test_a_watching_receiver_hears_of_each_answer_before_its_blobs(
    big: tuple[Installation, list[str]], together: bool
) -> None:
    """``answered`` once per request, after its headers and before its first blob (what the
    adaptive limit's wait for a first byte is measured by); the blobs are unchanged."""
    inst, digests = big
    rec = await fetch_recorded(inst, BIG_ID, digests, together, WatchingRecorder)
    assert isinstance(rec, WatchingRecorder)
    if together:
        assert rec.order == ["answered", *digests]
    else:
        assert rec.order == [x for d in digests for x in ("answered", d)]
    for d in digests:
        assert rec.blobs[d] == await asyncio.to_thread(inst.store.chunks.read, d)


SMALL = "vm/901/2026-11-23T09:00:00Z"


@pytest.mark.parametrize("together", [False, True])
async def test_blobs_of_one_piece_are_handed_over_whole(
    big: tuple[Installation, list[str]], together: bool
) -> None:
    """Chunks of at most :data:`RECV_PIECE` skip the writer: one ``whole`` call each, in order
    (the small-chunk fast path), for a GET and for a framed batch alike."""
    inst, _ = big
    data = random.Random(901).randbytes(3 * 65536 + 5000)
    ws = await asyncio.to_thread(
        write_snapshot,
        inst.store,
        "",
        SMALL,
        owner="admin@pbs",
        archives={"disk.fidx": data},
        chunk_size=65536,
    )
    digests = ws.digests["disk.fidx"]
    assert len(set(digests)) == 4
    rec = await fetch_recorded(inst, SnapshotId.parse(SMALL), digests, together)
    assert rec.wholes == digests
    for d in digests:
        assert rec.blobs[d] == await asyncio.to_thread(inst.store.chunks.read, d)
    assert rec.aborted == []


# ---- 2. corruption past the first piece ------------------------------------------------------------


@pytest.mark.parametrize("unnamed", [True, False])
@pytest.mark.parametrize(("mode", "match"), [("flip", "has digest"), ("crc", "CRC mismatch")])
async def test_corrupt_piece_fails_the_group_and_leaves_nothing(
    big: tuple[Installation, list[str]], dst: Datastore, unnamed: bool, mode: str, match: str
) -> None:
    inst, digests = big
    victim = digests[0]
    use_tmpfile(dst, unnamed)
    spy = Spy(dst)
    async with piece_server(inst) as (srv, faults):
        faults.mode, faults.victim = mode, victim
        report = await pull_big(srv, inst, dst)
    assert match in group_error(report), group_error(report)
    assert victim in spy.opened  # written while verified, never put in place
    await asyncio.to_thread(assert_nothing_left, dst, victim)
    assert await asyncio.to_thread(dst.list_snapshots, ROOT, BIG_ID.group) == []


def test_corrupt_raw_blob_raises_the_right_error_directly(tmp_path: Path) -> None:
    store = new_store(tmp_path / "s", "s")
    data = random.Random(1).randbytes(3000)
    digest = blob.digest_of(data)
    good = blob.encode(data, compress=False)
    bad_payload = good[:-1] + bytes([good[-1] ^ 1])
    bad_crc = good[:8] + bytes([good[8] ^ 1]) + good[9:]
    for wrong, exc in [(bad_payload, DigestMismatch), (bad_crc, CorruptBlob)]:
        w = VerifyingWriter(store.chunks, digest, len(data), len(wrong))
        w.feed(memoryview(wrong))
        with pytest.raises(exc):
            w.finish()
        w.abort()  # as the channel does after a failed finish: harmless
        assert_nothing_left(store, digest)


# ---- 3. a stream cut mid-blob ---------------------------------------------------------------------


@pytest.mark.parametrize("unnamed", [True, False])
async def test_stream_cut_mid_blob_is_retried_and_leaves_no_temp(
    big: tuple[Installation, list[str]], dst: Datastore, unnamed: bool
) -> None:
    inst, digests = big
    victim = digests[1]
    use_tmpfile(dst, unnamed)
    spy = Spy(dst)
    async with piece_server(inst) as (srv, faults):
        faults.mode, faults.victim = "cut", victim
        report = await pull_big(srv, inst, dst)
        assert faults.attempts == 2
    assert report.ok, report.failure_message()
    assert spy.opened.count(victim) == 2  # the first, cut short, was begun and dropped
    assert await asyncio.to_thread(dst.chunks.read, victim) == await asyncio.to_thread(
        inst.store.chunks.read, victim
    )
    assert await asyncio.to_thread(leftovers, dst) == []
    assert await asyncio.to_thread(tmp_dir_files, dst) == []


async def test_stream_always_cut_reports_a_transfer_error_and_leaves_nothing(
    big: tuple[Installation, list[str]], dst: Datastore
) -> None:
    inst, digests = big
    victim = digests[2]
    use_tmpfile(dst, False)
    async with piece_server(inst) as (srv, faults):
        faults.mode, faults.victim, faults.cut_times = "cut", victim, 1000
        report = await pull_big(srv, inst, dst, retries=0)
    error = group_error(report)
    # a transfer error (TransientRemoteError), not an integrity one
    assert "chunk stream ended early" in error or "chunk transfer from" in error, error
    await asyncio.to_thread(assert_nothing_left, dst, victim)


# ---- 4. a blob whose length disagrees with the index -----------------------------------------------


@pytest.mark.parametrize(("delta", "error"), [(5, "exceeds the limit"), (-5, "its index says")])
async def test_blob_of_another_length_is_refused_before_any_write(
    big: tuple[Installation, list[str]], dst: Datastore, delta: int, error: str
) -> None:
    inst, digests = big
    victim = digests[2]
    spy = Spy(dst)
    async with piece_server(inst) as (srv, faults):
        faults.mode, faults.victim, faults.delta = "length", victim, delta
        report = await pull_big(srv, inst, dst)
    assert error in group_error(report), group_error(report)
    assert victim not in spy.opened  # refused on the header, before a file was opened
    await asyncio.to_thread(assert_nothing_left, dst, victim)


def test_header_checks_come_before_the_file(tmp_path: Path) -> None:
    store = new_store(tmp_path / "s", "s")
    spy = Spy(store)
    data = b"abc" * 1000
    digest = blob.digest_of(data)
    encoded = blob.encode(data, compress=False)
    with pytest.raises(ChunkTooLarge):
        VerifyingWriter(store.chunks, digest, len(data), blob.MAX_BLOB_SIZE + 1)
    with pytest.raises(CorruptBlob, match="too short"):
        VerifyingWriter(store.chunks, digest, len(data), blob.HEADER_SIZE - 1)
    with pytest.raises(ChunkTooLarge):
        VerifyingWriter(store.chunks, digest, len(data) - 1, len(encoded)).feed(memoryview(encoded))
    with pytest.raises(CorruptBlob, match="unknown blob magic"):
        VerifyingWriter(store.chunks, digest, len(data), len(encoded)).feed(
            memoryview(b"NOTAMAGIC..." + encoded[12:])
        )
    # a zstd blob far larger than its chunk could be is refused before it is collected
    with pytest.raises(ChunkTooLarge):
        VerifyingWriter(store.chunks, digest, 100, 200_000).feed(memoryview(blob.ZSTD_MAGIC + bytes(4)))
    w = VerifyingWriter(store.chunks, digest, len(data), len(encoded))
    w.feed(memoryview(encoded))
    with pytest.raises(CorruptBlob, match="more bytes"):
        w.feed(memoryview(b"x"))
    w.abort()
    w = VerifyingWriter(store.chunks, digest, len(data), len(encoded))
    w.feed(memoryview(encoded[:-1]))
    with pytest.raises(CorruptBlob, match="announced"):
        w.finish()
    assert spy.opened == [digest, digest]  # only the last two got past the header
    assert_nothing_left(store, digest)


# ---- 5. replace semantics and the named-temp fallback ----------------------------------------------


def plant_forged_chunk(store: Datastore, digest: str) -> bytes:
    forged = blob.encode(b"forged content, plausible size " * 64)
    path = store.chunks.path(digest)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(forged)
    return forged


@pytest.mark.parametrize("unnamed", [True, False])
async def test_untrusted_big_chunk_is_replaced_by_the_verified_one(
    big: tuple[Installation, list[str]], dst: Datastore, unnamed: bool
) -> None:
    inst, digests = big
    victim = digests[2]
    await asyncio.to_thread(plant_forged_chunk, dst, victim)
    use_tmpfile(dst, unnamed)
    async with piece_server(inst) as (srv, _):
        report = await pull_big(srv, inst, dst)
    assert report.ok, report.failure_message()
    expected = await asyncio.to_thread(inst.store.chunks.read_data, victim)
    assert await asyncio.to_thread(dst.chunks.read_data, victim) == expected
    assert await asyncio.to_thread(leftovers, dst) == []
    assert await asyncio.to_thread(tmp_dir_files, dst) == []


@pytest.mark.parametrize("unnamed", [True, False])
def test_failed_blob_leaves_an_untrusted_file_as_it_was(tmp_path: Path, unnamed: bool) -> None:
    """Nothing unverified becomes visible: a failed verify neither replaces nor removes what is there."""
    store = new_store(tmp_path / "s", "s")
    use_tmpfile(store, unnamed)
    data = random.Random(2).randbytes(5000)
    digest = blob.digest_of(data)
    forged = plant_forged_chunk(store, digest)
    good = blob.encode(data, compress=False)
    bad = good[:100] + bytes([good[100] ^ 1]) + good[101:]
    w = VerifyingWriter(store.chunks, digest, len(data), len(bad))
    w.feed(memoryview(bad))
    with pytest.raises(DigestMismatch):
        w.finish()
    assert store.chunks.path(digest).read_bytes() == forged
    assert tmp_dir_files(store) == [] and unnamed_files_open(store) == []


@pytest.mark.parametrize("unnamed", [True, False])
@pytest.mark.parametrize("existing", [False, True])
def test_chunk_file_writer_is_invisible_until_commit(tmp_path: Path, unnamed: bool, existing: bool) -> None:
    store = new_store(tmp_path / "s", "s")
    use_tmpfile(store, unnamed)
    digest = "ab" * 32
    path = store.chunks.path(digest)
    if existing:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"old")
    w = store.chunks.open_blob_writer(digest)
    w.write(b"new ")
    w.write(memoryview(b"content"))
    # in progress: an unnamed file, or a named temp in .tmp/ (which cleanup_temp knows), never the name
    assert (path.read_bytes() if existing else path.exists()) == (b"old" if existing else False)
    if unnamed:
        assert len(unnamed_files_open(store)) == 1 and tmp_dir_files(store) == []
    else:
        assert [n.startswith(".tmp.") for n in tmp_dir_files(store)] == [True]
    w.commit()
    assert path.read_bytes() == b"new content"
    assert tmp_dir_files(store) == [] and unnamed_files_open(store) == []
    w.discard()  # idempotent after commit: the committed file stays
    assert path.read_bytes() == b"new content"
    w2 = store.chunks.open_blob_writer(digest)
    w2.write(b"dropped")
    w2.discard()
    assert path.read_bytes() == b"new content"
    assert tmp_dir_files(store) == [] and unnamed_files_open(store) == []


@pytest.mark.parametrize("existing", [False, True])
def test_link_refused_falls_back_to_a_copied_named_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, existing: bool
) -> None:
    """Where linking an unnamed file is refused (EPERM), commit copies it into a temp and renames."""
    if not hasattr(os, "O_TMPFILE"):
        pytest.fail("O_TMPFILE is expected on Linux")
    store = new_store(tmp_path / "s", "s")
    digest = "cd" * 32
    path = store.chunks.path(digest)
    if existing:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"old")
    real_link = os.link

    def refusing_link(src: Any, dst: Any, **kw: Any) -> None:
        if str(src).startswith("/proc/self/fd/"):
            raise OSError(errno.EPERM, "refused")
        real_link(src, dst, **kw)

    w = store.chunks.open_blob_writer(digest)
    payload = random.Random(3).randbytes(3 * 1024 * 1024 + 17)
    w.write(payload)
    monkeypatch.setattr(os, "link", refusing_link)
    w.commit()
    assert path.read_bytes() == payload
    assert store.chunks._tmpfile_ok is False  # named temps from now on
    assert tmp_dir_files(store) == [] and unnamed_files_open(store) == []


@pytest.mark.parametrize("unnamed", [True, False])
def test_a_failed_rename_over_an_existing_file_leaves_it_and_no_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, unnamed: bool
) -> None:
    """Replacing a file already at the chunk's name goes through a temp name (the unnamed
    file linked aside, or the named temp) and a rename. If that rename fails: a clear
    StorageError, the old file untouched, the temp name gone, no unnamed file left open."""
    store = new_store(tmp_path / "s", "s")
    use_tmpfile(store, unnamed)
    digest = "ef" * 32
    path = store.chunks.path(digest)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"old")
    renamed: list[str] = []

    def failing_replace(src: Any, dst: Any, **kw: Any) -> None:
        renamed.append(str(src))
        raise OSError(errno.EIO, "injected: rename failed")

    w = store.chunks.open_blob_writer(digest)
    w.write(random.Random(5).randbytes(2 * 1024 * 1024 + 5))
    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(StorageError, match=f"cannot write chunk {digest}: injected"):
        w.commit()
    monkeypatch.undo()
    [aside] = renamed  # the temp name the rename would have moved
    assert os.path.dirname(aside) == str(store.chunks.tmp_dir)
    assert not os.path.exists(aside)
    assert path.read_bytes() == b"old"
    assert tmp_dir_files(store) == [] and unnamed_files_open(store) == []
    w.discard()  # idempotent after the failed commit


def test_sync_level_file_writes_and_links(tmp_path: Path) -> None:
    store = Datastore.create(tmp_path / "s", "s", SyncLevel.FILE)
    data = random.Random(4).randbytes(70_000)
    digest = blob.digest_of(data)
    encoded = blob.encode(data, compress=False)
    w = VerifyingWriter(store.chunks, digest, len(data), len(encoded))
    w.feed(memoryview(encoded))
    w.finish()
    assert store.chunks.read_data(digest) == data


# ---- 6. cancelled mid-blob ------------------------------------------------------------------------


@pytest.mark.parametrize("unnamed", [True, False])
async def test_cancelled_pull_mid_blob_leaves_nothing(
    big: tuple[Installation, list[str]], dst: Datastore, unnamed: bool
) -> None:
    inst, digests = big
    victim = digests[0]
    use_tmpfile(dst, unnamed)
    spy = Spy(dst, victim, signal_after=RECV_PIECE // 2)
    async with piece_server(inst) as (srv, faults):
        faults.mode, faults.victim = "stall", victim
        source = await http_source(srv, inst, tls=srv.tls)
        try:
            task = asyncio.create_task(
                pull(source, dst, PullOptions(group_filter=GroupFilters.parse(["group:vm/900"])))
            )
            # liveness bound: the first piece of the victim reaches its file, the next read blocks
            assert await asyncio.to_thread(spy.reached.wait, 30)
            in_progress = await asyncio.to_thread(
                lambda: unnamed_files_open(dst) if unnamed else tmp_dir_files(dst)
            )
            assert len(in_progress) >= 1, in_progress
            assert not task.done()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                async with asyncio.timeout(10):  # liveness bound, not a timing assertion
                    await task
        finally:
            faults.release.set()
            await source.aclose()
    await asyncio.to_thread(assert_nothing_left, dst, victim)


# ---- 7. the verifying writer over arbitrary piece boundaries ----------------------------------------


@pytest.fixture(scope="module")
def hyp_store(tmp_path_factory: pytest.TempPathFactory) -> ChunkStore:
    return new_store(tmp_path_factory.mktemp("hyp"), "h").chunks


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    seed=st.integers(0, 2**32 - 1),
    size=st.integers(0, 40_000),
    compressible=st.booleans(),
    cuts=st.lists(st.integers(0, 41_000), max_size=6),
)
def test_any_piece_boundaries_store_the_same_blob(
    hyp_store: ChunkStore, seed: int, size: int, compressible: bool, cuts: list[int]
) -> None:
    rng = random.Random(seed)
    data = (rng.randbytes(8) * (size // 8 + 1))[:size] if compressible else rng.randbytes(size)
    digest = blob.digest_of(data)
    encoded = blob.encode(data)
    bounds = sorted({0, len(encoded), *(c for c in cuts if c < len(encoded))})
    with contextlib.suppress(FileNotFoundError):
        os.unlink(hyp_store.path(digest))
    stored: list[str] = []
    w = VerifyingWriter(hyp_store, digest, size, len(encoded), stored.extend, lambda: stored.append("done"))
    view = memoryview(encoded)
    for a, b in itertools.pairwise(bounds):
        w.feed(view[a:b])
    w.finish()
    assert stored == [digest, "done"]
    assert hyp_store.path(digest).read_bytes() == encoded
    assert hyp_store.read_data(digest) == data
