"""The client: pinning, login, error mapping, retries, size bounds and batch framing.

Faults are injected on the server side only: a middleware in front of the real
application (503s, resets, 401s), or a small aiohttp server that speaks the
batch protocol badly on purpose. The client itself is never mocked.
"""
# ruff: noqa: F811  (pytest fixtures imported from serverutil are redefined as parameters)

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from serverutil import (
    TEST_OPTIONS,
    Installation,
    RunningServer,
    remote,  # noqa: F401 - fixture
    remote_server,  # noqa: F401 - fixture
)

from asyncsync import protocol
from asyncsync.client import Client, ReaderSession, RetryPolicy
from asyncsync.datastore import blob
from asyncsync.errors import (
    AuthenticationFailed,
    FingerprintMismatch,
    InvalidInput,
    NotFound,
    PermissionDenied,
    RemoteError,
    TransientRemoteError,
)
from asyncsync.names import ROOT_NS, AuthId, Namespace, SnapshotId
from asyncsync.server.app import make_app, serve
from asyncsync.tls import format_fingerprint

VM100 = ("", "vm/100/2026-11-20T08:00:00Z")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Sleeps:
    """An injected sleep that records the delays instead of waiting."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


# ---- pinning and login ---------------------------------------------------------------------


async def test_wrong_fingerprint_is_refused_naming_the_seen_one(
    remote: Installation, remote_server: RunningServer
) -> None:
    wrong = format_fingerprint(bytes(range(32)))
    sleeps = Sleeps()
    with pytest.raises(FingerprintMismatch) as info:
        await remote_server.client(
            remote.sync_token, remote.sync_secret, fingerprint=wrong, retries=3, sleep=sleeps
        )
    assert info.value.seen == remote_server.fingerprint
    assert info.value.expected == wrong
    assert remote_server.fingerprint in str(info.value) and wrong in str(info.value)
    assert sleeps.delays == []  # a mismatch is not retried


async def test_unpinned_self_signed_certificate_is_not_trusted(
    remote: Installation, remote_server: RunningServer
) -> None:
    sleeps = Sleeps()
    with pytest.raises(RemoteError, match="not trusted") as info:
        await remote_server.client(
            remote.sync_token, remote.sync_secret, fingerprint=None, retries=3, sleep=sleeps
        )
    assert not isinstance(info.value, TransientRemoteError)
    assert sleeps.delays == []


async def test_password_and_token_login(remote: Installation, remote_server: RunningServer) -> None:
    async with await remote_server.client(remote.admin, remote.admin_password) as c:
        assert c.statistics().logins == 1
        assert (await c.version())["api"] == 1
    async with await remote_server.client(remote.sync_token, remote.sync_secret) as c:
        assert c.statistics().logins == 0
        assert [d["store"] for d in await c.list_datastores()] == ["store"]


@pytest.mark.parametrize("host", ["::1", "[::1]"])
async def test_ipv6_hosts(remote: Installation, host: str) -> None:
    async with (
        serve(remote.paths, "::1", 0, options=TEST_OPTIONS) as info,
        await Client.connect(
            host, info.port, remote.sync_token, remote.sync_secret, fingerprint=info.fingerprint
        ) as c,
    ):
        assert c.base_url == f"https://[::1]:{info.port}"
        assert [d["store"] for d in await c.list_datastores()] == ["store"]


async def test_connection_refused_is_transient_and_retried(remote: Installation) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nobody listens there
    sleeps = Sleeps()
    with pytest.raises(TransientRemoteError, match="cannot connect"):
        await Client.connect(
            "127.0.0.1", port, remote.sync_token, "x", fingerprint=None, tls=False, retries=2, sleep=sleeps
        )
    assert len(sleeps.delays) == 2


async def test_bad_arguments(remote: Installation) -> None:
    with pytest.raises(InvalidInput):
        await Client.connect("127.0.0.1", 0, remote.sync_token, "x", fingerprint=None)
    with pytest.raises(InvalidInput, match="fingerprint"):
        await Client.connect("127.0.0.1", 8007, remote.sync_token, "x", fingerprint="12:34")


def test_backoff_grows_with_jitter_and_is_capped() -> None:
    p = RetryPolicy(retries=10, base_delay=0.5, max_delay=4.0)
    assert [p.delay(n, lambda: 0.0) for n in range(5)] == [0.25, 0.5, 1.0, 2.0, 2.0]
    assert [p.delay(n, lambda: 1.0) for n in range(5)] == [0.5, 1.0, 2.0, 4.0, 4.0]


# ---- fault injection in front of the real server ------------------------------------------


class Faults:
    """Planned faults per path suffix, consumed one per matching request."""

    def __init__(self) -> None:
        self.plan: dict[str, list[str]] = {}
        self.seen: list[str] = []

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        self.seen.append(request.path)
        for suffix, actions in self.plan.items():
            if request.path.endswith(suffix) and actions:
                action = actions.pop(0)
                if action == "reset":
                    assert request.transport is not None
                    request.transport.abort()
                    return web.Response()
                status = int(action)
                return web.json_response(
                    {"error": {"code": "x", "message": f"injected {status}"}}, status=status
                )
        return await handler(request)

    def count(self, suffix: str) -> int:
        return sum(1 for p in self.seen if p.endswith(suffix))


@contextlib.asynccontextmanager
async def faulty_server(inst: Installation) -> AsyncIterator[tuple[RunningServer, Faults]]:
    faults = Faults()
    app = make_app(inst.paths, options=TEST_OPTIONS)
    app.middlewares.insert(0, faults.middleware)
    async with serve(inst.paths, "127.0.0.1", 0, options=TEST_OPTIONS, app=app) as info:
        yield RunningServer(inst.paths, info.host, info.port, info.tls, info.fingerprint), faults


async def test_503_is_retried_with_backoff(remote: Installation) -> None:
    async with faulty_server(remote) as (srv, faults):
        sleeps = Sleeps()
        async with await srv.client(
            remote.sync_token, remote.sync_secret, retries=4, sleep=sleeps, rand=lambda: 0.5
        ) as c:
            faults.plan["/groups"] = ["503", "503"]
            groups = await c.list_groups("store", ROOT_NS)
            assert len(groups) == 3
            assert faults.count("/groups") == 3
            assert sleeps.delays == [0.375, 0.75]
            assert c.statistics().retries == 2


async def test_retries_are_bounded(remote: Installation) -> None:
    async with faulty_server(remote) as (srv, faults):
        sleeps = Sleeps()
        async with await srv.client(remote.sync_token, remote.sync_secret, retries=2, sleep=sleeps) as c:
            faults.plan["/groups"] = ["502"] * 10
            with pytest.raises(TransientRemoteError) as info:
                await c.list_groups("store", ROOT_NS)
            assert info.value.http_status == 502
            assert faults.count("/groups") == 3 and len(sleeps.delays) == 2


async def test_connection_reset_is_retried(remote: Installation) -> None:
    async with faulty_server(remote) as (srv, faults):
        sleeps = Sleeps()
        async with await srv.client(remote.sync_token, remote.sync_secret, retries=3, sleep=sleeps) as c:
            # aiohttp itself retries an idempotent request once when a pooled connection
            # drops; the second reset (on a fresh connection) reaches the client's retry
            faults.plan["/snapshots"] = ["reset", "reset"]
            snaps = await c.list_snapshots("store", ROOT_NS)
            assert len(snaps) == 4
            assert faults.count("/snapshots") == 3
            assert len(sleeps.delays) == 1


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (400, InvalidInput),
        (401, AuthenticationFailed),
        (403, PermissionDenied),
        (404, NotFound),
        (418, RemoteError),
    ],
)
async def test_permanent_errors_are_mapped_and_not_retried(
    remote: Installation, status: int, error: type[Exception]
) -> None:
    async with faulty_server(remote) as (srv, faults):
        sleeps = Sleeps()
        async with await srv.client(remote.sync_token, remote.sync_secret, retries=3, sleep=sleeps) as c:
            faults.plan["/groups"] = [str(status)]
            with pytest.raises(error, match=f"injected {status}") as info:
                await c.list_groups("store", ROOT_NS)
            assert not isinstance(info.value, TransientRemoteError)
            assert sleeps.delays == [] and faults.count("/groups") == 1


async def test_expired_ticket_is_renewed_once(remote: Installation) -> None:
    async with (
        faulty_server(remote) as (srv, faults),
        await srv.client(remote.admin, remote.admin_password) as c,
    ):
        faults.plan["/groups"] = ["401"]
        assert len(await c.list_groups("store", ROOT_NS)) == 3
        assert c.statistics().logins == 2
        faults.plan["/groups"] = ["401", "401"]
        with pytest.raises(AuthenticationFailed):
            await c.list_groups("store", ROOT_NS)


async def test_body_size_bounds(remote: Installation, remote_server: RunningServer) -> None:
    written = remote.snapshots[VM100]
    async with (
        await remote_server.client(remote.sync_token, remote.sync_secret) as c,
        await c.open_reader("store", ROOT_NS, written.snapshot) as r,
    ):
        with pytest.raises(RemoteError, match="exceeds the limit"):
            await r.download("root.didx", max_size=100)
        await r.download("root.didx")
        with pytest.raises(RemoteError, match="exceeds the limit"):
            await r.fetch_chunk(written.all_digests[0], max_size=100)
        with pytest.raises(RemoteError, match="exceeds the limit"):
            _ = [x async for x in r.fetch_chunks(written.all_digests[:1], max_size=100)]
        with pytest.raises(InvalidInput):
            await r.fetch_chunk("../../etc")
        with pytest.raises(InvalidInput):
            await r.download("../owner")


# ---- a server that speaks the batch protocol badly -----------------------------------------

BLOBS = {blob.digest_of(bytes([i]) * 100): blob.encode(bytes([i]) * 100) for i in range(5)}
DIGESTS = list(BLOBS)
Script = Callable[[list[str]], bytes | tuple[bytes, bool]]


def frames(digests: list[str]) -> bytes:
    return b"".join(protocol.FRAME_HEADER.pack(bytes.fromhex(d), len(BLOBS[d])) + BLOBS[d] for d in digests)


class BadBatchServer:
    """Answers batch requests with scripted bodies; ``(body, True)`` cuts the connection after ``body``."""

    def __init__(self) -> None:
        self.scripts: list[Script] = []
        self.requests: list[list[str]] = []

    async def version(self, request: web.Request) -> web.Response:
        return web.json_response({"data": {"version": "fake", "api": 1}})

    async def chunks(self, request: web.Request) -> web.StreamResponse:
        digests = (await request.json())["digests"]
        self.requests.append(digests)
        script = self.scripts.pop(0) if self.scripts else frames
        out = script(digests)
        body, cut = out if isinstance(out, tuple) else (out, False)
        resp = web.StreamResponse()
        await resp.prepare(request)
        await resp.write(body)
        if cut:
            assert request.transport is not None
            request.transport.close()
            return resp
        await resp.write_eof()
        return resp


@contextlib.asynccontextmanager
async def bad_batch_session(**kw: Any) -> AsyncIterator[tuple[ReaderSession, BadBatchServer, Sleeps]]:
    fake = BadBatchServer()
    app = web.Application()
    app.router.add_get(protocol.API_PREFIX + "/version", fake.version)
    app.router.add_post(protocol.API_PREFIX + protocol.p_reader_chunks("store", "{reader}"), fake.chunks)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    sleeps = Sleeps()
    try:
        client = await Client.connect(
            "127.0.0.1", port, AuthId.parse("a@pbs!t"), "s", fingerprint=None, tls=False, sleep=sleeps, **kw
        )
        async with client:
            snap = SnapshotId.parse("vm/1/2026-01-01T00:00:00Z")
            yield ReaderSession(client, "store", "r" * 32, Namespace(), snap), fake, sleeps
    finally:
        await runner.cleanup()


async def collect(r: ReaderSession, digests: list[str]) -> list[tuple[str, bytes]]:
    return [item async for item in r.fetch_chunks(digests)]


async def test_batch_resumes_after_truncation() -> None:
    async with bad_batch_session(retries=2) as (r, fake, sleeps):
        # first answer: one whole frame, then half of the next, then the connection drops
        fake.scripts = [lambda ds: (frames(ds[:1]) + frames(ds[1:2])[:50], True)]
        got = await collect(r, DIGESTS)
        assert got == [(d, BLOBS[d]) for d in DIGESTS]
        assert fake.requests == [DIGESTS, DIGESTS[1:]]
        assert len(sleeps.delays) == 1


async def test_batch_truncation_without_progress_gives_up() -> None:
    async with bad_batch_session(retries=2) as (r, fake, sleeps):
        fake.scripts = [lambda ds: (b"", True)] * 3
        with pytest.raises(TransientRemoteError):
            await collect(r, DIGESTS)
        assert len(fake.requests) == 3 and len(sleeps.delays) == 2


async def test_batch_short_stream_is_truncation() -> None:
    async with bad_batch_session(retries=0) as (r, fake, _):
        fake.scripts = [lambda ds: frames(ds[:2])]  # a clean end, but frames are missing
        with pytest.raises(TransientRemoteError, match="truncated"):
            await collect(r, DIGESTS)


@pytest.mark.parametrize(
    ("script", "error", "match"),
    [
        (lambda ds: frames([ds[1], ds[0]]), RemoteError, "out of order"),
        (
            lambda ds: protocol.FRAME_HEADER.pack(bytes.fromhex(ds[0]), blob.MAX_BLOB_SIZE + 1),
            RemoteError,
            "exceeds",
        ),
        (
            lambda ds: protocol.FRAME_HEADER.pack(bytes.fromhex(ds[0]), protocol.FRAME_MISSING),
            NotFound,
            "not found",
        ),
        (lambda ds: frames(ds) + b"extra", RemoteError, "trailing"),
    ],
    ids=["out-of-order", "oversized", "missing", "trailing"],
)
async def test_batch_protocol_violations(script: Script, error: type[Exception], match: str) -> None:
    async with bad_batch_session(retries=3) as (r, fake, sleeps):
        fake.scripts = [script]
        with pytest.raises(error, match=match) as info:
            await collect(r, DIGESTS[:2])
        assert not isinstance(info.value, TransientRemoteError)
        assert sleeps.delays == [] and len(fake.requests) == 1


async def test_batch_is_split_into_bounded_requests(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(protocol, "MAX_BATCH_DIGESTS", 2)
    async with bad_batch_session() as (r, fake, _):
        got = await collect(r, DIGESTS)
        assert [d for d, _ in got] == DIGESTS
        assert fake.requests == [DIGESTS[0:2], DIGESTS[2:4], DIGESTS[4:5]]


async def test_stalled_server_times_out() -> None:
    never = asyncio.Event()

    async def stall(request: web.Request) -> web.Response:
        await never.wait()
        return web.Response()

    app = web.Application()
    app.router.add_get(protocol.API_PREFIX + "/version", stall)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        with pytest.raises(TransientRemoteError, match="timeout"):
            await Client.connect(
                "127.0.0.1",
                runner.addresses[0][1],
                AuthId.parse("a@pbs!t"),
                "s",
                fingerprint=None,
                tls=False,
                timeout=0.3,
                retries=0,
            )
    finally:
        never.set()
        await runner.cleanup()


async def test_batch_fetch_renews_an_expired_ticket(remote: Installation) -> None:
    written = remote.snapshots[VM100]
    async with (
        faulty_server(remote) as (srv, faults),
        await srv.client(remote.admin, remote.admin_password) as c,
        await c.open_reader("store", ROOT_NS, written.snapshot) as r,
    ):
        await r.download("root.didx")
        faults.plan["/chunks"] = ["401"]
        got = [d async for d, _ in r.fetch_chunks(written.all_digests)]
        assert got == written.all_digests
        assert c.statistics().logins == 2
