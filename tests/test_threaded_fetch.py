"""The threaded chunk fetch (blocking keep-alive connections on worker threads) against the real server.

Covers :mod:`asyncsync.client.blocking` (``BlockingChannel``, ``FetchJob``),
``ReaderSession.fetch_chunks_threaded`` (retries, ticket renewal), the pull's
choice of the threaded path (``FetchPool._fetch_threaded``: taken without a rate
limit, not with one), the replacement of an untrusted local chunk file
(``ChunkStore.insert_parts(..., replace=True)``) and cancellation while a worker
thread is blocked in a read.

Faults come from :func:`stage_middleware` in front of the real handlers (it
records every chunk request with its client's User-Agent and connection, and on
demand serves chunks itself: stalled mid-body, frames out of order, a foreign
frame, trailing bytes) and from ``test_pull_http``'s fault middleware
(truncation). The blocking client sends no User-Agent, aiohttp does: that tells
the server which path a request came from.
"""

# ruff: noqa: F811  (pytest fixtures imported from serverutil / test_pull_http are parameters here)

from __future__ import annotations

import asyncio
import contextlib
import errno
import re
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp import web
from pullutil import chunk_files, leftovers
from serverutil import (  # noqa: F401
    TEST_OPTIONS,
    Installation,
    RunningServer,
    remote,
    remote_server,
    running_server,
)
from test_pull_http import content, dst, faulty_server, http_pull, http_source, victim_of  # noqa: F401

from asyncsync import LocalSource, PullOptions, PullReport, protocol, pull
from asyncsync.client import Client
from asyncsync.client.blocking import BlockingChannel, FetchJob
from asyncsync.client.http import ReaderSession
from asyncsync.datastore import blob
from asyncsync.datastore.datastore import Datastore
from asyncsync.datastore.threads import OperationCancelled
from asyncsync.errors import (
    AuthenticationFailed,
    DigestMismatch,
    FingerprintMismatch,
    NotFound,
    RemoteError,
    TransientRemoteError,
)
from asyncsync.names import GroupId, Namespace
from asyncsync.server.app import make_app, serve
from asyncsync.sync.source import HttpSource

N = Namespace.parse
G = GroupId.parse

#: the older vm/100 snapshot of the standard remote: ~14 distinct chunks in root.didx
OLD = ("", "vm/100/2026-11-20T08:00:00Z")
#: a chunk request from the blocking client carries no User-Agent; aiohttp's says "aiohttp"
AIOHTTP = "aiohttp"


# ---- a server that records chunk requests and misbehaves on demand ----------------------------

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_CHUNK_RE = re.compile(r"/reader/[^/]+/chunk/([0-9a-f]{64})$")
_CHUNKS_RE = re.compile(r"/reader/[^/]+/chunks$")


@dataclass
class SeenRequest:
    """One chunk request as the server saw it."""

    digests: list[str]
    user_agent: str
    peer: Any
    transport: asyncio.Transport


class Stage:
    """What :func:`stage_middleware` does with chunk requests (``mode``) and what it saw.

    Modes: ``None`` (the real handlers answer), ``"stall"`` (the frame of
    ``victim`` is sent half, then the handler waits for ``release``), ``"swap"``
    (frames in reverse order), ``"foreign"`` (the first frame names ``victim``,
    which was not requested), ``"trailing"`` (a byte after the last frame).
    """

    def __init__(self, store: Datastore) -> None:
        self.store = store
        self.mode: str | None = None
        self.victim: str | None = None
        self.requests: list[SeenRequest] = []
        self.stalled = asyncio.Event()
        self.release = asyncio.Event()

    @property
    def threaded_requests(self) -> list[SeenRequest]:
        return [r for r in self.requests if AIOHTTP not in r.user_agent]


def stage_middleware(stage: Stage) -> Any:
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        one = _CHUNK_RE.search(request.path) if request.method == "GET" else None
        batch = request.method == "POST" and _CHUNKS_RE.search(request.path) is not None
        if not (one or batch):
            return await handler(request)
        # the body is cached by aiohttp: the real handler can read it again
        digests = [one.group(1)] if one else list((await request.json())["digests"])
        transport = request.transport
        assert isinstance(transport, asyncio.Transport)
        stage.requests.append(
            SeenRequest(
                digests,
                request.headers.get("User-Agent", ""),
                transport.get_extra_info("peername"),
                transport,
            )
        )
        if stage.mode is None:
            return await handler(request)
        blobs = [await asyncio.to_thread(stage.store.chunks.read, d) for d in digests]
        frames = list(zip(digests, blobs, strict=True))
        if stage.mode == "swap":
            frames.reverse()
        elif stage.mode == "foreign":
            assert stage.victim is not None and stage.victim not in digests
            frames[0] = (stage.victim, frames[0][1])
        resp = web.StreamResponse()
        if one:
            resp.content_length = len(blobs[0])
        await resp.prepare(request)
        for d, data in frames:
            head = protocol.FRAME_HEADER.pack(bytes.fromhex(d), len(data)) if batch else b""
            if stage.mode == "stall" and d == stage.victim:
                await resp.write(head + data[: len(data) // 2])
                stage.stalled.set()
                # bounded: the fixture sets ``release`` on exit at the latest
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stage.release.wait(), 60)
                transport.abort()
                return resp
            await resp.write(head + data)
        if stage.mode == "trailing":
            await resp.write(b"x")
        await resp.write_eof()
        return resp

    return middleware


@asynccontextmanager
async def stage_server(inst: Installation, *, tls: bool = True) -> AsyncIterator[tuple[RunningServer, Stage]]:
    """The real server of ``inst`` (TLS unless ``tls`` is false, 127.0.0.1) with :func:`stage_middleware`."""
    stage = Stage(inst.store)
    app = make_app(inst.paths, options=TEST_OPTIONS)
    app.middlewares.append(stage_middleware(stage))
    try:
        async with running_server(inst.paths, tls=tls, app=app) as srv:
            yield srv, stage
    finally:
        stage.release.set()


# ---- helpers ----------------------------------------------------------------------------------


class Collect:
    """A blob sink that keeps a copy of everything it is given (called in a worker thread)."""

    def __init__(self, signal_at: int | None = None) -> None:
        self.got: list[tuple[str, bytes]] = []
        self._signal_at = signal_at
        #: set when ``signal_at`` blobs have arrived
        self.reached = threading.Event()

    def __call__(self, digest: str, view: memoryview) -> None:
        self.got.append((digest, bytes(view)))
        if len(self.got) == self._signal_at:
            self.reached.set()

    async def wait(self) -> None:
        """Until ``signal_at`` blobs have arrived (liveness bound of 30 s)."""
        assert await asyncio.to_thread(self.reached.wait, 30)

    @property
    def digests(self) -> list[str]:
        return [d for d, _ in self.got]


async def open_old(client: Client, inst: Installation) -> tuple[ReaderSession, list[str]]:
    """A reader session on :data:`OLD` whose root.didx is downloaded (its chunks are fetchable)."""
    ws = inst.snapshots[OLD]
    session = await client.open_reader(inst.store_name, ws.ns, ws.snapshot)
    await session.download("root.didx")
    digests = list(dict.fromkeys(ws.digests["root.didx"]))
    assert len(digests) >= 8
    return session, digests


@asynccontextmanager
async def old_reader(
    srv: RunningServer, inst: Installation, **client_kw: Any
) -> AsyncIterator[tuple[Client, ReaderSession, list[str]]]:
    """A sync-token client of ``srv`` (``client_kw`` as for ``srv.client``) with :func:`open_old`'s
    session and digests; the client is closed on exit."""
    client = await srv.client(inst.sync_token, inst.sync_secret, **client_kw)
    try:
        session, digests = await open_old(client, inst)
        yield client, session, digests
    finally:
        await client.aclose()


def chan(client: Client) -> BlockingChannel:
    """The client's blocking channel (every TLS client made by ``Client.connect`` has one)."""
    assert client.channel is not None
    return client.channel


def base_path(session: ReaderSession) -> str:
    return protocol.API_PREFIX + protocol.p_reader_session(session.store, session.reader_id)


async def blobs_of(inst: Installation, digests: Sequence[str]) -> list[tuple[str, bytes]]:
    return await asyncio.to_thread(lambda: [(d, inst.store.chunks.read(d)) for d in digests])


async def channel_fetch(
    channel: BlockingChannel,
    session: ReaderSession,
    digests: Sequence[str],
    sink: Any,
    job: FetchJob | None = None,
    *,
    max_size: int = blob.MAX_BLOB_SIZE,
) -> None:
    """``channel.fetch`` for ``session`` in a worker thread (it blocks)."""
    await asyncio.to_thread(
        channel.fetch,
        base_path(session),
        session.client._headers,
        list(digests),
        sink,
        job or FetchJob(),
        max_size=max_size,
    )


def fetch_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("asyncsync-fetch")]


def join_all(threads: Sequence[threading.Thread]) -> list[threading.Thread]:
    """Join ``threads`` (liveness bound of 10 s each); returns those still alive."""
    for t in threads:
        t.join(timeout=10)
    return [t for t in threads if t.is_alive()]


# ---- 1. the pull takes the threaded path, except with a rate limit -----------------------------


@pytest.mark.parametrize("rate_in", [None, 1 << 30])
async def test_http_pull_uses_fetch_threads_unless_rate_limited(
    remote: Installation, dst: Datastore, rate_in: int | None
) -> None:
    async with stage_server(remote) as (srv, stage):
        source = await http_source(srv, remote)
        try:
            report = await pull(source, dst, PullOptions(rate_in=rate_in))
            made = source.client.channel.connections_made
            # the aiohttp session exists only if the streaming path (rate limit) was taken
            streamed = source.client._session is not None
        finally:
            await source.aclose()
    assert report.ok, report.failure_message()
    assert await asyncio.to_thread(content, dst) == await asyncio.to_thread(content, remote.store)
    requested = {d for r in stage.requests for d in r.digests}
    assert requested == await asyncio.to_thread(chunk_files, dst)
    assert stage.requests
    if rate_in is None:
        assert made > 0
        assert stage.threaded_requests == stage.requests, [r.user_agent for r in stage.requests]
        # keep-alive: fewer connections than requests are enough
        assert len({r.peer for r in stage.requests}) <= made
        assert not streamed
    else:
        assert streamed
        # batches stream through aiohttp, paced by the rate limiter; a lone digest is a plain GET
        # on the blocking channel that serves every control request (also paced by the limiter)
        assert any(AIOHTTP in r.user_agent for r in stage.requests)
        assert all(len(r.digests) == 1 for r in stage.threaded_requests)


# ---- 2. an untrusted local chunk file is replaced by the verified download --------------------


def plant_forged_chunk(store: Datastore, digest: str) -> None:
    """A valid-looking blob of other content at ``digest``'s path; no snapshot or journal names it."""
    path = store.chunks.path(digest)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(blob.encode(b"forged content, plausible size " * 64))


@pytest.mark.parametrize("via", ["local", "http"])
@pytest.mark.parametrize("rate_in", [None, 1 << 30])
async def test_untrusted_local_chunk_is_replaced_by_pull(
    remote: Installation, dst: Datastore, via: str, rate_in: int | None
) -> None:
    victim = victim_of(remote)
    expected = await asyncio.to_thread(remote.store.chunks.read_data, victim)
    await asyncio.to_thread(plant_forged_chunk, dst, victim)
    with pytest.raises(DigestMismatch):
        await asyncio.to_thread(dst.chunks.read_data, victim)
    opts = PullOptions(rate_in=rate_in)
    report: PullReport
    if via == "local":
        report = await pull(LocalSource(remote.store), dst, opts)
    else:
        async with running_server(remote.paths) as srv:
            source = await http_source(srv, remote)
            try:
                report = await pull(source, dst, opts)
            finally:
                await source.aclose()
    assert report.ok, report.failure_message()
    assert await asyncio.to_thread(dst.chunks.read_data, victim) == expected
    assert await asyncio.to_thread(content, dst) == await asyncio.to_thread(content, remote.store)
    assert await asyncio.to_thread(leftovers, dst) == []


def test_insert_without_replace_keeps_the_untrusted_copy(remote: Installation, dst: Datastore) -> None:
    """Why the pull passes ``replace=True``: without it the forged file stays (the old behaviour)."""
    victim = victim_of(remote)
    good = remote.store.chunks.read(victim)
    plant_forged_chunk(dst, victim)
    assert dst.chunks.insert_parts(victim, [good]) is False
    with pytest.raises(DigestMismatch):
        dst.chunks.read_data(victim)
    assert dst.chunks.insert_parts(victim, [good[:20], memoryview(good)[20:]], replace=True) is True
    assert dst.chunks.read_data(victim) == remote.store.chunks.read_data(victim)
    assert leftovers(dst) == []


# ---- 3. cancellation while a worker thread is blocked in a read --------------------------------


async def test_cancelled_pull_with_stalled_chunk_stream_then_rerun(
    remote: Installation, dst: Datastore
) -> None:
    victim = victim_of(remote)
    async with stage_server(remote) as (srv, stage):
        stage.mode = "stall"
        stage.victim = victim
        source = await http_source(srv, remote)
        try:
            task = asyncio.create_task(pull(source, dst))
            async with asyncio.timeout(30):  # liveness bound: the stall must be reached
                await stage.stalled.wait()
            assert not task.done()
            stalled_by = [r for r in stage.requests if victim in r.digests]
            assert len(stalled_by) == 1 and AIOHTTP not in stalled_by[0].user_agent
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                async with asyncio.timeout(10):  # liveness bound, not a timing assertion
                    await task
            files_at_cancel = await asyncio.to_thread(chunk_files, dst)
            # every thread of the pool returns: none is left blocked on the stalled socket
            assert await asyncio.to_thread(join_all, fetch_threads()) == []
            # nothing reached the store after the cancellation returned
            assert await asyncio.to_thread(chunk_files, dst) == files_at_cancel
            assert victim not in files_at_cancel
        finally:
            stage.release.set()
            await source.aclose()
        assert await asyncio.to_thread(leftovers, dst) == []
        snaps = await asyncio.to_thread(dst.list_snapshots, N(""), G("vm/100"))
        assert "2026-11-21T08:00:00Z" not in [i.snapshot.time_str for i in snaps]

        stage.mode = None
        report = await http_pull(srv, remote, dst)
    assert report.ok, report.failure_message()
    assert await asyncio.to_thread(content, dst) == await asyncio.to_thread(content, remote.store)
    assert await asyncio.to_thread(leftovers, dst) == []


@pytest.mark.parametrize("single", [False, True])
async def test_fetch_job_cancel_interrupts_a_blocked_read(remote: Installation, single: bool) -> None:
    async with stage_server(remote) as (srv, stage):
        client = await srv.client(remote.sync_token, remote.sync_secret)
        try:
            session, digests = await open_old(client, remote)
            wanted = digests[4:5] if single else digests
            stage.mode, stage.victim = "stall", digests[4]
            sink, job = Collect(None if single else 4), FetchJob()
            task = asyncio.create_task(channel_fetch(chan(client), session, wanted, sink, job))
            async with asyncio.timeout(30):
                await stage.stalled.wait()
            if not single:
                await sink.wait()  # the frames before the stalled one are consumed: the read blocks next
            job.cancel()  # from the loop thread, while the worker blocks in a read
            with pytest.raises(OperationCancelled):
                async with asyncio.timeout(10):  # liveness bound
                    await task
            assert sink.digests == ([] if single else digests[:4])
            assert client.channel is not None and "idle=0" in repr(client.channel)
        finally:
            stage.release.set()
            await client.aclose()


async def test_cancelled_threaded_session_fetch_returns_its_thread(remote: Installation) -> None:
    async with stage_server(remote) as (srv, stage):
        client = await srv.client(remote.sync_token, remote.sync_secret)
        executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="test-threaded")
        try:
            session, digests = await open_old(client, remote)
            stage.mode, stage.victim = "stall", digests[3]
            sink = Collect(3)
            task = asyncio.create_task(session.fetch_chunks_threaded(digests, sink, executor))
            async with asyncio.timeout(30):
                await stage.stalled.wait()
            await sink.wait()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                async with asyncio.timeout(10):
                    await task
            delivered = list(sink.got)
            # the contract: when the call has ended, its thread is done (shutdown finds it idle)
            await asyncio.to_thread(executor.shutdown, wait=True)
            assert sink.got == delivered and sink.digests == digests[:3]
        finally:
            stage.release.set()
            executor.shutdown(wait=False)
            await client.aclose()


async def test_closed_channel_and_pre_cancelled_job_fetch_nothing(
    remote: Installation, remote_server: RunningServer
) -> None:
    async with old_reader(remote_server, remote) as (client, session, digests):
        channel = client.channel
        assert channel is not None
        job, sink = FetchJob(), Collect()
        job.cancel()
        with pytest.raises(OperationCancelled):
            await channel_fetch(channel, session, digests, sink, job)
        assert sink.got == []
        await asyncio.to_thread(channel.close)
        with pytest.raises(OperationCancelled):
            await channel_fetch(channel, session, digests, sink)
        assert sink.got == []


# ---- 4. BlockingChannel against the real TLS server --------------------------------------------


async def test_wrong_pinned_fingerprint_names_the_real_one(
    remote: Installation, remote_server: RunningServer
) -> None:
    async with old_reader(remote_server, remote) as (_client, session, digests):
        bad = BlockingChannel(
            remote_server.host, remote_server.port, tls=True, fingerprint=bytes(32), timeout=10
        )
        sink = Collect()
        with pytest.raises(FingerprintMismatch) as info:
            await channel_fetch(bad, session, digests, sink)
        assert info.value.seen == remote_server.fingerprint
        assert info.value.expected == ":".join(["00"] * 32)
        assert sink.got == [] and "idle=0" in repr(bad)
        await asyncio.to_thread(bad.close)


async def test_good_fetch_in_order_and_connection_kept_alive(
    remote: Installation, remote_server: RunningServer
) -> None:
    async with old_reader(remote_server, remote) as (client, session, digests):
        channel = client.channel
        assert channel is not None
        sink = Collect()
        await channel_fetch(channel, session, digests, sink)
        await channel_fetch(channel, session, digests[2:3], sink)  # one digest: the GET path
        await channel_fetch(channel, session, digests[:2], sink)
        assert sink.got == await blobs_of(remote, [*digests, digests[2], *digests[:2]])
        assert channel.connections_made == 1


class _Poison:
    """Stands in for a spinning connection's TLS object: its next read fails (frees the thread)."""

    def read(self, *args: object) -> int:
        raise OSError("poisoned by the test: the fetch did not return")


async def fetch_bounded(
    channel: BlockingChannel, session: ReaderSession, digests: Sequence[str], sink: Collect
) -> bool:
    """:func:`channel_fetch` with a liveness bound of 10 s: False if it had not returned by then.

    A worker that busy-loops cannot be interrupted by :meth:`FetchJob.cancel` (it is
    not blocked in a read); its TLS object is then replaced by :class:`_Poison` so the
    thread returns and the event loop can close (otherwise the test run hangs).
    """
    job = FetchJob()
    task = asyncio.create_task(channel_fetch(channel, session, digests, sink, job))
    done, _ = await asyncio.wait({task}, timeout=10)
    if done:
        task.result()
        return True
    conn = job._conn
    stream = getattr(conn, "sock", None)
    if stream is not None and hasattr(stream, "_obj"):
        stream._obj = _Poison()
    job.cancel()
    with contextlib.suppress(BaseException):
        await task
    return False


@pytest.mark.parametrize("tls", [True, False])
async def test_idle_connection_closed_by_server_is_replaced(remote: Installation, tls: bool) -> None:
    async with (
        stage_server(remote, tls=tls) as (srv, stage),
        old_reader(srv, remote) as (client, session, digests),
    ):
        channel = client.channel
        assert channel is not None
        sink = Collect()
        await channel_fetch(channel, session, digests[:3], sink)
        assert len(stage.requests) == 1
        stage.requests[-1].transport.close()  # the server ends the idle keep-alive connection
        assert await fetch_bounded(channel, session, digests[3:6], sink), "batch fetch did not return"
        assert stage.requests[-1].peer != stage.requests[0].peer
        stage.requests[-1].transport.close()
        assert await fetch_bounded(channel, session, digests[6:7], sink), "GET fetch did not return"
        assert stage.requests[-1].peer not in {r.peer for r in stage.requests[:-1]}
        assert sink.got == await blobs_of(remote, digests[:7])
        assert channel.connections_made == 1  # the same pooled connection, reconnected inside


async def test_missing_chunk_is_not_found(remote: Installation, remote_server: RunningServer) -> None:
    async with old_reader(remote_server, remote) as (client, session, digests):
        channel = client.channel
        assert channel is not None
        gone = digests[2]
        await asyncio.to_thread(remote.store.chunks.remove, gone)
        sink = Collect()
        with pytest.raises(NotFound, match=gone):
            await channel_fetch(channel, session, digests, sink)  # a FRAME_MISSING frame
        assert sink.digests == digests[:2]
        with pytest.raises(NotFound):
            await channel_fetch(channel, session, [gone], sink)  # a 404
        assert sink.digests == digests[:2]
        # the channel is still usable after the errors
        await channel_fetch(channel, session, digests[3:5], sink)
        assert sink.got[2:] == await blobs_of(remote, digests[3:5])


@pytest.mark.parametrize(
    ("mode", "match"),
    [("swap", "out of order"), ("foreign", "out of order"), ("trailing", "trailing data")],
)
async def test_misframed_batch_answer_is_a_remote_error(remote: Installation, mode: str, match: str) -> None:
    async with stage_server(remote) as (srv, stage), old_reader(srv, remote) as (client, session, digests):
        wanted = digests[:4]
        stage.mode, stage.victim = mode, digests[5]
        sink = Collect()
        with pytest.raises(RemoteError, match=match) as info:
            await channel_fetch(chan(client), session, wanted, sink)
        assert not isinstance(info.value, TransientRemoteError)  # permanent: not retried
        assert digests[5] not in sink.digests
        if mode == "trailing":
            assert sink.digests == wanted


@pytest.mark.parametrize("count", [1, 4])
async def test_blob_over_max_size_is_refused(
    remote: Installation, remote_server: RunningServer, count: int
) -> None:
    async with old_reader(remote_server, remote) as (client, session, digests):
        sink = Collect()
        with pytest.raises(RemoteError, match="exceeds the limit"):
            await channel_fetch(chan(client), session, digests[:count], sink, max_size=blob.HEADER_SIZE)
        assert sink.got == []


@pytest.mark.parametrize("single", [False, True])
async def test_truncated_stream_is_transient(remote: Installation, single: bool) -> None:
    async with faulty_server(remote) as (srv, faults), old_reader(srv, remote) as (client, session, digests):
        victim = digests[3]
        faults.fault = lambda d, b, n: "truncate" if d == victim else b
        sink = Collect()
        with pytest.raises(TransientRemoteError):
            await channel_fetch(chan(client), session, [victim] if single else digests, sink)
        assert sink.digests == ([] if single else digests[:3])


@pytest.mark.parametrize("single", [False, True])
async def test_threaded_session_fetch_retries_a_truncated_stream(remote: Installation, single: bool) -> None:
    sleeps: list[float] = []

    async def sleep(delay: float) -> None:  # controlled clock: record, do not wait
        sleeps.append(delay)

    async with faulty_server(remote) as (srv, faults):
        client = await srv.client(remote.sync_token, remote.sync_secret, retries=2, sleep=sleep)
        executor = ThreadPoolExecutor(max_workers=2)
        try:
            session, digests = await open_old(client, remote)
            victim = digests[3]
            wanted = [victim] if single else digests
            faults.fault = lambda d, b, n: "truncate" if d == victim and n == 0 else b
            sink = Collect()
            await session.fetch_chunks_threaded(wanted, sink, executor)
            # each blob once, in order: the retry asks only for what was not delivered
            assert sink.got == await blobs_of(remote, wanted)
            assert faults.attempts[victim] == 2
            assert client.stats.retries == 1 and len(sleeps) == 1
            assert all(faults.attempts[d] == 1 for d in wanted if d != victim)
        finally:
            executor.shutdown(wait=False)
            await client.aclose()


async def test_threaded_session_fetch_gives_up_after_the_retries(remote: Installation) -> None:
    sleeps: list[float] = []

    async def sleep(delay: float) -> None:
        sleeps.append(delay)

    async with faulty_server(remote) as (srv, faults):
        client = await srv.client(remote.sync_token, remote.sync_secret, retries=2, sleep=sleep)
        executor = ThreadPoolExecutor(max_workers=1)
        try:
            session, digests = await open_old(client, remote)
            victim = digests[3]
            faults.fault = lambda d, b, n: "truncate" if d == victim else b
            sink = Collect()
            with pytest.raises(TransientRemoteError):
                await session.fetch_chunks_threaded(digests, sink, executor)
            assert faults.attempts[victim] == 3 and len(sleeps) == 2
            assert sink.digests == digests[:3]
        finally:
            executor.shutdown(wait=False)
            await client.aclose()


async def test_sink_project_error_propagates_unchanged(
    remote: Installation, remote_server: RunningServer
) -> None:
    async with old_reader(remote_server, remote) as (client, session, digests):
        calls: list[str] = []

        def sink(digest: str, view: memoryview) -> None:
            calls.append(digest)
            if len(calls) == 2:
                raise DigestMismatch(digest, "0" * 64)

        with pytest.raises(DigestMismatch):
            await channel_fetch(chan(client), session, digests, sink)
        assert calls == digests[:2]


async def test_sink_os_error_propagates_unchanged(remote: Installation, remote_server: RunningServer) -> None:
    async with old_reader(remote_server, remote) as (client, session, digests):

        def sink(digest: str, view: memoryview) -> None:
            raise OSError(errno.ENOSPC, "No space left on device")

        with pytest.raises(OSError) as info:
            await channel_fetch(chan(client), session, digests, sink)
        assert info.value.errno == errno.ENOSPC


# ---- 5. an expired ticket is renewed once during a threaded fetch ------------------------------


async def test_invalid_ticket_is_renewed_once_during_threaded_fetch(
    remote: Installation, remote_server: RunningServer
) -> None:
    client = await remote_server.client(remote.admin, remote.admin_password)
    executor = ThreadPoolExecutor(max_workers=1)
    try:
        session, digests = await open_old(client, remote)
        assert client.stats.logins == 1
        bogus = dict(client._headers)
        bogus["Authorization"] = protocol.TICKET_AUTH_PREFIX + "admin@pbs:0:bogus"
        client._headers = bogus
        sink = Collect()
        await session.fetch_chunks_threaded(digests, sink, executor)
        assert sink.got == await blobs_of(remote, digests)
        assert client.stats.logins == 2
        assert client._headers is not bogus
    finally:
        executor.shutdown(wait=False)
        await client.aclose()


async def test_rejected_token_is_not_retried(remote: Installation, remote_server: RunningServer) -> None:
    client = await remote_server.client(remote.sync_token, remote.sync_secret)
    executor = ThreadPoolExecutor(max_workers=1)
    try:
        session, digests = await open_old(client, remote)
        client._headers = {"Authorization": f"{protocol.TOKEN_AUTH_PREFIX}{remote.sync_token}:wrong-secret"}
        requests = client.stats.requests
        sink = Collect()
        with pytest.raises(AuthenticationFailed):
            await session.fetch_chunks_threaded(digests, sink, executor)
        assert sink.got == [] and client.stats.logins == 0
        assert client.stats.requests == requests + 1
    finally:
        executor.shutdown(wait=False)
        await client.aclose()


@pytest.mark.parametrize("tls", [True, False])
async def test_threaded_pull_over_ipv6_loopback(remote: Installation, dst: Datastore, tls: bool) -> None:
    """The blocking channel connects to an IPv6 literal (bracketed or not) like the aiohttp client."""
    async with serve(remote.paths, "::1", 0, tls=tls, options=TEST_OPTIONS) as info:
        source = await HttpSource.connect(
            "[::1]",
            info.port,
            remote.sync_token,
            remote.sync_secret,
            remote.store_name,
            fingerprint=info.fingerprint,
            tls=tls,
            name="v6",
        )
        try:
            report = await pull(source, dst, PullOptions())
            assert source.client.channel is not None
            made = source.client.channel.connections_made
        finally:
            await source.aclose()
    assert report.ok, report.failure_message()
    assert made > 0  # the chunks came over the threaded path
    assert await asyncio.to_thread(content, dst) == await asyncio.to_thread(content, remote.store)
