"""The client's control requests over its blocking channel, without aiohttp.

Every request except the async streaming batch fetch (login, version, listings,
reader open/close, file and single-chunk downloads) is one worker-thread hop
over :class:`~asyncsync.client.blocking.BlockingChannel`. Covered here: a
whole session in a fresh interpreter never imports aiohttp or yarl; the error
contracts over that path (pinning, untrusted and non-TLS servers, refused
ports, size bounds, truncation, ticket renewal, cancellation of a stalled
request); keep-alive; query encoding; and the lazily made aiohttp session of
the streaming path.

The real server runs on 127.0.0.1 with real TLS; small aiohttp servers inject
the faults the real one never makes (oversized, truncated or stalled answers).
"""
# ruff: noqa: F811  (pytest fixtures imported from serverutil are redefined as parameters)

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import sys
import textwrap
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import pytest
from aiohttp import web
from serverutil import (
    Installation,
    RunningServer,
    remote,  # noqa: F401 - fixture
    remote_server,  # noqa: F401 - fixture
    running_server,
)
from test_client import Sleeps, faulty_server

from asyncsync import protocol
from asyncsync.client import MAX_JSON_ANSWER, Client, ReaderSession
from asyncsync.datastore.manifest import MANIFEST_NAME
from asyncsync.errors import (
    AuthenticationFailed,
    FingerprintMismatch,
    NotFound,
    RemoteError,
    TransientRemoteError,
)
from asyncsync.names import ROOT_NS, AuthId, GroupId, Namespace, SnapshotId
from asyncsync.tls import format_fingerprint

VM100 = ("", "vm/100/2026-11-20T08:00:00Z")
TOKEN = AuthId.parse("a@pbs!t")
SNAP = SnapshotId.parse("vm/1/2026-01-01T00:00:00Z")
READER = "r" * 32
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


# ---- a fresh interpreter: the whole control flow without aiohttp -------------------------------

SCRIPT = textwrap.dedent(
    """
    import asyncio, sys
    from concurrent.futures import ThreadPoolExecutor

    from asyncsync.client import Client
    from asyncsync.names import ROOT_NS, AuthId, Namespace, SnapshotId

    host, port, fp, user, password, snap, digest = sys.argv[1:8]

    async def main() -> None:
        async with await Client.connect(host, int(port), AuthId.parse(user), password, fingerprint=fp) as c:
            assert Namespace.parse("a") in await c.list_namespaces("store")
            assert len(await c.list_groups("store", ROOT_NS)) == 3
            assert len(await c.list_snapshots("store", ROOT_NS)) == 4
            got = []
            async with await c.open_reader("store", ROOT_NS, SnapshotId.parse(snap)) as r:
                assert await r.download("index.json.blob")
                await r.download("root.didx")
                with ThreadPoolExecutor(1) as pool:
                    await r.fetch_chunks_threaded([digest], lambda d, v: got.append(len(v)), pool)
            assert len(got) == 1 and got[0] > 0, got
            print(c.statistics().logins, "aiohttp" in sys.modules, "yarl" in sys.modules)

    asyncio.run(main())
    """
)


async def test_a_whole_session_never_imports_aiohttp(
    remote: Installation, remote_server: RunningServer
) -> None:
    written = remote.snapshots[VM100]
    argv = [
        sys.executable,
        "-c",
        SCRIPT,
        remote_server.host,
        str(remote_server.port),
        remote_server.fingerprint or "",
        str(remote.admin),
        remote.admin_password,
        str(written.snapshot),
        written.digests["root.didx"][0],
    ]
    # in a thread: the server runs on this test's event loop
    proc = await asyncio.to_thread(subprocess.run, argv, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["1", "False", "False"]


# ---- error contracts -----------------------------------------------------------------------------


async def test_wrong_fingerprint_names_the_seen_one_and_is_not_retried(
    remote: Installation, remote_server: RunningServer
) -> None:
    wrong = format_fingerprint(bytes(range(32)))
    sleeps = Sleeps()
    with pytest.raises(FingerprintMismatch) as info:
        await remote_server.client(
            remote.admin, remote.admin_password, fingerprint=wrong, retries=3, sleep=sleeps
        )
    assert (info.value.expected, info.value.seen) == (wrong, remote_server.fingerprint)
    assert sleeps.delays == []


async def test_untrusted_certificate_without_fingerprint(
    remote: Installation, remote_server: RunningServer
) -> None:
    sleeps = Sleeps()
    with pytest.raises(RemoteError, match=r"not trusted.*configure its fingerprint") as info:
        await remote_server.client(
            remote.admin, remote.admin_password, fingerprint=None, retries=3, sleep=sleeps
        )
    assert not isinstance(info.value, TransientRemoteError)
    assert sleeps.delays == []


async def test_tls_to_a_plain_http_server_is_a_handshake_error(remote: Installation) -> None:
    async with running_server(remote.paths, tls=False) as srv:
        sleeps = Sleeps()
        with pytest.raises(RemoteError, match="TLS handshake") as info:
            await Client.connect(
                srv.host,
                srv.port,
                remote.sync_token,
                remote.sync_secret,
                fingerprint=format_fingerprint(bytes(32)),
                tls=True,
                retries=3,
                sleep=sleeps,
            )
        assert not isinstance(info.value, TransientRemoteError)
        assert sleeps.delays == []


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port  # closed again: nobody listens there


async def test_refused_port_is_transient_after_the_retries() -> None:
    sleeps = Sleeps()
    with pytest.raises(TransientRemoteError, match="cannot connect"):
        await Client.connect(
            "127.0.0.1",
            free_port(),
            TOKEN,
            "s",
            fingerprint=format_fingerprint(bytes(32)),
            retries=3,
            retry_base_delay=1.0,
            sleep=sleeps,
            rand=lambda: 0.0,
        )
    assert sleeps.delays == [0.5, 1.0, 2.0]


async def test_expired_ticket_is_renewed_once_then_succeeds(remote: Installation) -> None:
    written = remote.snapshots[VM100]
    async with (
        faulty_server(remote) as (srv, faults),
        await srv.client(remote.admin, remote.admin_password) as c,
        await c.open_reader("store", ROOT_NS, written.snapshot) as r,
    ):
        faults.plan[MANIFEST_NAME] = ["401"]
        assert await r.download(MANIFEST_NAME)
        assert c.statistics().logins == 2 and faults.count(MANIFEST_NAME) == 2
        # a ticket the server does not know (expired): renewed, the call repeated with the new one
        c._headers = {**c._headers, "Authorization": protocol.TICKET_AUTH_PREFIX + "bogus"}
        assert len(await c.list_groups("store", ROOT_NS)) == 3
        assert c.statistics().logins == 3
        faults.plan["/groups"] = ["401", "401"]
        with pytest.raises(AuthenticationFailed):
            await c.list_groups("store", ROOT_NS)
        assert c.statistics().logins == 4  # once per operation, not in a loop


async def test_a_token_is_never_renewed(remote: Installation) -> None:
    async with (
        faulty_server(remote) as (srv, faults),
        await srv.client(remote.sync_token, remote.sync_secret) as c,
    ):
        faults.plan["/groups"] = ["401"]
        with pytest.raises(AuthenticationFailed, match="injected 401"):
            await c.list_groups("store", ROOT_NS)
        assert c.statistics().logins == 0 and faults.count("/ticket") == 0


# ---- a small server for the faults the real one never makes --------------------------------------


@contextlib.asynccontextmanager
async def fake_server(routes: dict[str, Handler]) -> AsyncIterator[int]:
    """A plain HTTP aiohttp server with ``/version`` and ``routes`` (GET, API paths); yields its port."""

    async def version(request: web.Request) -> web.Response:
        return web.json_response({"data": {"version": "fake", "api": 1}})

    app = web.Application()
    app.router.add_get(protocol.API_PREFIX + "/version", version)
    for path, handler in routes.items():
        app.router.add_get(protocol.API_PREFIX + path, handler)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield runner.addresses[0][1]
    finally:
        await runner.cleanup()


async def fake_client(port: int, **kw: Any) -> Client:
    return await Client.connect("127.0.0.1", port, TOKEN, "s", fingerprint=None, tls=False, **kw)


def file_path(name: str) -> str:
    return protocol.p_reader_file("store", READER, name)


GROUPS = protocol.p_groups("store")


def fake_reader(client: Client) -> ReaderSession:
    """A reader session object for the fake server (which does not check reader ids)."""
    return ReaderSession(client, "store", READER, Namespace(), SNAP)


async def test_oversized_answers_are_refused() -> None:
    never = asyncio.Event()

    async def huge_length(request: web.Request) -> web.StreamResponse:
        # claims more than the bound: the client must refuse before reading (the body never comes)
        resp = web.StreamResponse()
        resp.content_length = MAX_JSON_ANSWER + 1
        await resp.prepare(request)
        await resp.write(b"[")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(never.wait(), 30)
        return resp

    def chunked(pieces: int) -> Handler:
        async def handler(request: web.Request) -> web.StreamResponse:
            resp = web.StreamResponse()
            resp.enable_chunked_encoding()  # no Content-Length: the bound applies while reading
            await resp.prepare(request)
            for _ in range(pieces):
                await resp.write(b"x" * 60)
            await resp.write_eof()
            return resp

        return handler

    routes = {GROUPS: huge_length, file_path("a.blob"): chunked(1), file_path("b.blob"): chunked(2)}
    async with fake_server(routes) as port:
        sleeps = Sleeps()
        async with await fake_client(port, retries=3, sleep=sleeps) as c:
            with pytest.raises(RemoteError, match=f"exceeds the limit of {MAX_JSON_ANSWER}") as info:
                await c.list_groups("store", ROOT_NS)
            assert not isinstance(info.value, TransientRemoteError)
            never.set()
            r = fake_reader(c)
            assert await r.download("a.blob", max_size=60) == b"x" * 60
            with pytest.raises(RemoteError, match="exceeds the limit of 100 bytes"):
                await r.download("b.blob", max_size=100)
            assert await r.download("b.blob", max_size=120) == b"x" * 120
            assert sleeps.delays == []


async def test_truncated_body_is_transient_and_retried() -> None:
    calls = 0

    async def truncated(request: web.Request) -> web.StreamResponse:
        nonlocal calls
        calls += 1
        resp = web.StreamResponse()
        resp.content_length = 100
        await resp.prepare(request)
        await resp.write(b"x" * 50)
        assert request.transport is not None
        request.transport.close()
        return resp

    async with fake_server({file_path("a.blob"): truncated}) as port:
        sleeps = Sleeps()
        async with await fake_client(port, retries=2, sleep=sleeps) as c:
            with pytest.raises(TransientRemoteError, match="truncated"):
                await fake_reader(c).download("a.blob")
            assert calls == 3 and len(sleeps.delays) == 2
            assert c.statistics().retries == 2


# ---- cancellation --------------------------------------------------------------------------------


class CountingExecutor(ThreadPoolExecutor):
    """The loop's default executor, counting the calls that are still running."""

    def __init__(self) -> None:
        super().__init__(max_workers=4, thread_name_prefix="control-test")
        self.running = 0
        self._lock = threading.Lock()

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        def counted() -> Any:
            with self._lock:
                self.running += 1
            try:
                return fn(*args, **kwargs)
            finally:
                with self._lock:
                    self.running -= 1

        return super().submit(counted)


@pytest.fixture
def counting_executor() -> Iterator[CountingExecutor]:
    executor = CountingExecutor()
    yield executor
    executor.shutdown(wait=True)


async def test_cancelling_a_stalled_request_stops_its_thread(counting_executor: CountingExecutor) -> None:
    asyncio.get_running_loop().set_default_executor(counting_executor)
    arrived = asyncio.Event()
    never = asyncio.Event()

    async def stall(request: web.Request) -> web.Response:
        arrived.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(never.wait(), 60)
        return web.json_response({"data": []})

    # a 60 s read timeout: only the cancellation can end the blocked read in time
    async with fake_server({GROUPS: stall}) as port, await fake_client(port, timeout=60.0, retries=0) as c:
        task = asyncio.create_task(c.list_groups("store", ROOT_NS))
        await asyncio.wait_for(arrived.wait(), 30)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # run_with_token waited for the worker: nothing runs any more, the connection is gone
        assert counting_executor.running == 0
        assert "idle=0" in repr(c.channel)
        never.set()
        assert await c.version()  # the client stays usable


async def test_cancelling_a_stalled_tls_handshake_stops_its_thread(
    counting_executor: CountingExecutor,
) -> None:
    asyncio.get_running_loop().set_default_executor(counting_executor)
    accepted = asyncio.Event()
    writers: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)  # accepts and never answers the ClientHello
        accepted.set()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        task = asyncio.create_task(
            Client.connect(
                "127.0.0.1", port, TOKEN, "s", fingerprint=format_fingerprint(bytes(32)), timeout=60.0
            )
        )
        await asyncio.wait_for(accepted.wait(), 30)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert counting_executor.running == 0
    finally:
        for w in writers:
            w.close()
        server.close()
        await server.wait_closed()


# ---- the happy path: keep-alive, query encoding, reader close --------------------------------------


async def test_control_requests_share_one_keep_alive_connection(
    remote: Installation, remote_server: RunningServer
) -> None:
    written = remote.snapshots[VM100]
    async with await remote_server.client(remote.admin, remote.admin_password) as c:
        assert c.base_url == f"https://127.0.0.1:{remote_server.port}"
        assert await c.list_namespaces("store", max_depth=0) == [ROOT_NS]
        assert Namespace.parse("a") in await c.list_namespaces("store")
        in_a = await c.list_groups("store", Namespace.parse("a"))  # the namespace goes in the query
        assert [str(g.group) for g in in_a] == ["vm/300"]
        snaps = await c.list_snapshots("store", ROOT_NS, GroupId.parse("vm/100"))
        assert [str(s.snapshot) for s in snaps] == [
            "vm/100/2026-11-20T08:00:00Z",
            "vm/100/2026-11-21T08:00:00Z",
        ]
        r = await c.open_reader("store", ROOT_NS, written.snapshot)
        manifest = await r.download(MANIFEST_NAME)
        await r.download("root.didx")
        first = written.digests["root.didx"][0]
        one = await r.fetch_chunk(first)
        assert b"".join(await r.fetch_chunk_parts(first)) == one
        await r.aclose()
        with pytest.raises(NotFound):  # the DELETE closed the server-side session
            await ReaderSession(c, "store", r.reader_id, ROOT_NS, written.snapshot).download(MANIFEST_NAME)
        stats = c.statistics()
        assert stats.logins == 1 and stats.retries == 0 and stats.requests == 12
        assert stats.bytes_received > len(manifest) + 2 * len(one)
        assert c.channel.connections_made == 1  # keep-alive: every request on one connection
        assert c._session is None  # nothing of this made the aiohttp session


async def test_the_streaming_path_makes_the_aiohttp_session_on_first_use(
    remote: Installation, remote_server: RunningServer
) -> None:
    written = remote.snapshots[VM100]
    async with (
        await remote_server.client(remote.sync_token, remote.sync_secret) as c,
        await c.open_reader("store", ROOT_NS, written.snapshot) as r,
    ):
        await r.download("root.didx")
        assert c._session is None
        digests = list(dict.fromkeys(written.digests["root.didx"]))
        got = [d async for d, _ in r.fetch_chunks(digests)]
        assert got == digests
        session = c._session
        assert session is not None and not session.closed
    assert session.closed and c._session is None  # aclose closed it
