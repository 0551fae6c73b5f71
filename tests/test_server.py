"""The server end to end: real TLS on 127.0.0.1, real datastores, raw HTTP and the real client."""
# ruff: noqa: F811  (pytest fixtures imported from serverutil are redefined as parameters)

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from serverutil import (
    Installation,
    RunningServer,
    SubprocessServer,
    add_datastore,
    grant,
    remote,  # noqa: F401 - fixture
    remote_server,  # noqa: F401 - fixture
    running_server,
    write_snapshot,
)

from asyncsync import protocol
from asyncsync.access import AccessControl, LoginThrottle
from asyncsync.datastore import blob
from asyncsync.datastore.index import decode_index
from asyncsync.errors import AuthenticationFailed, NotFound, PermissionDenied
from asyncsync.names import ROOT_NS, GroupId, Namespace, SnapshotId
from asyncsync.server.app import ServerOptions, parse_listen
from asyncsync.server.readers import ReaderLimits, ReaderRegistry
from asyncsync.tls import parse_fingerprint

VM100 = ("", "vm/100/2026-11-20T08:00:00Z")


def session_for(srv: RunningServer, headers: dict[str, str] | None = None) -> aiohttp.ClientSession:
    """A raw aiohttp session pinned to ``srv`` (for requests the typed client would refuse to send)."""
    assert srv.fingerprint is not None
    conn = aiohttp.TCPConnector(ssl=aiohttp.Fingerprint(parse_fingerprint(srv.fingerprint)))
    return aiohttp.ClientSession(
        base_url=srv.url, connector=conn, headers=headers or {}, cookie_jar=aiohttp.CookieJar(unsafe=True)
    )


def token_header(inst: Installation) -> dict[str, str]:
    return {"Authorization": f"{protocol.TOKEN_AUTH_PREFIX}{inst.sync_token}:{inst.sync_secret}"}


async def get_json(s: aiohttp.ClientSession, method: str, path: str, **kw: Any) -> tuple[int, Any]:
    async with s.request(method, protocol.API_PREFIX + path, **kw) as resp:
        return resp.status, await resp.json(content_type=None)


# ---- authentication ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": f"{protocol.TOKEN_AUTH_PREFIX}sync@pbs!pull:wrong-secret"},
        {"Authorization": f"{protocol.TOKEN_AUTH_PREFIX}sync@pbs:not-a-token"},
        {"Authorization": f"{protocol.TOKEN_AUTH_PREFIX}garbage"},
        {"Authorization": f"{protocol.TICKET_AUTH_PREFIX}forged:ticket"},
        {"Authorization": "Basic YWRtaW46YWRtaW4="},
        {"Cookie": f"{protocol.TICKET_COOKIE}=forged"},
    ],
    ids=["none", "bad-secret", "user-as-token", "garbage", "forged-ticket", "basic", "forged-cookie"],
)
async def test_unauthenticated_requests_get_401(
    remote_server: RunningServer, headers: dict[str, str]
) -> None:
    async with session_for(remote_server, headers) as s:
        for method, path in [
            ("GET", "/version"),
            ("GET", protocol.p_datastores()),
            ("GET", protocol.p_groups("store")),
            ("POST", protocol.p_reader("store")),
            ("GET", protocol.p_reader_chunk("store", "x" * 32, "0" * 64)),
        ]:
            status, body = await get_json(s, method, path)
            assert status == 401, (method, path)
            assert body["error"]["code"] == "unauthorized"


async def test_ticket_login_cookie_and_csrf(remote: Installation, remote_server: RunningServer) -> None:
    async with session_for(remote_server) as s:
        status, body = await get_json(
            s, "POST", protocol.p_ticket(), json={"username": "admin@pbs", "password": remote.admin_password}
        )
        assert status == 200
        data = body["data"]
        assert data["username"] == "admin@pbs"
        # the cookie alone authenticates reads
        status, body = await get_json(s, "GET", protocol.p_datastores())
        assert status == 200 and body["data"] == [{"store": "store", "comment": ""}]
        params = protocol.snapshot_params(ROOT_NS, SnapshotId.parse(VM100[1]))
        # a state-changing request with a ticket needs the CSRF token
        status, body = await get_json(s, "POST", protocol.p_reader("store"), json=params)
        assert status == 401 and protocol.CSRF_HEADER in body["error"]["message"]
        status, _ = await get_json(
            s, "POST", protocol.p_reader("store"), json=params, headers={protocol.CSRF_HEADER: "forged"}
        )
        assert status == 401
        status, body = await get_json(
            s,
            "POST",
            protocol.p_reader("store"),
            json=params,
            headers={protocol.CSRF_HEADER: data["CSRFPreventionToken"]},
        )
        assert status == 200 and isinstance(body["data"]["reader"], str)


async def test_wrong_password_and_unknown_user_fail_alike(
    remote: Installation, remote_server: RunningServer
) -> None:
    async with session_for(remote_server) as s:
        for user, pw in [("admin@pbs", "wrong-password"), ("nobody@pbs", "whatever-pw")]:
            status, body = await get_json(
                s, "POST", protocol.p_ticket(), json={"username": user, "password": pw}
            )
            assert status == 401
            assert body["error"]["message"] == "authentication failed"
    with pytest.raises(AuthenticationFailed):
        await remote_server.client(remote.admin, "wrong-password")
    with pytest.raises(AuthenticationFailed):
        await remote_server.client(remote.sync_token, "wrong-secret")


async def test_login_is_throttled_after_repeated_failures(remote: Installation) -> None:
    # an injected clock that never advances: the lockout cannot run out during the test
    throttle = LoginThrottle(free_failures=2, base_delay=60.0, clock=lambda: 1000.0)
    access = await asyncio.to_thread(AccessControl.load, remote.paths, throttle=throttle)
    async with running_server(remote.paths, access=access) as srv:
        for _ in range(3):
            with pytest.raises(AuthenticationFailed):
                await srv.client(remote.admin, "wrong-password")
        # now even the right password is refused, with a message that says why
        with pytest.raises(AuthenticationFailed, match="too many failed login attempts"):
            await srv.client(remote.admin, remote.admin_password)


# ---- listings ------------------------------------------------------------------------------


async def test_listings(remote: Installation, remote_server: RunningServer) -> None:
    await asyncio.to_thread(
        write_snapshot,
        remote.store,
        "",
        "vm/100/2026-11-23T08:00:00Z",
        owner="admin@pbs",
        unprotected={"verify_state": {"state": "ok", "time": 1}, "notes": "first line\nsecond"},
        protected=True,
    )
    async with await remote_server.client(remote.sync_token, remote.sync_secret) as c:
        assert await c.list_datastores() == [{"store": "store", "comment": ""}]
        assert [str(n) for n in await c.list_namespaces("store")] == ["", "a", "a/b"]
        assert [str(n) for n in await c.list_namespaces("store", Namespace.parse("a"))] == ["a", "a/b"]
        assert [str(n) for n in await c.list_namespaces("store", max_depth=1)] == ["", "a"]
        assert [str(n) for n in await c.list_namespaces("store", max_depth=0)] == [""]
        groups = {str(g.group): g for g in await c.list_groups("store", ROOT_NS)}
        assert sorted(groups) == ["ct/200", "host/web", "vm/100"]
        assert groups["vm/100"].backup_count == 3
        assert groups["vm/100"].last_backup == SnapshotId.parse("vm/100/2026-11-23T08:00:00Z").time
        assert str(groups["host/web"].owner) == "backup1@pbs!tok"
        snaps = await c.list_snapshots("store", ROOT_NS, GroupId.parse("vm/100"))
        assert [s.snapshot.time_str for s in snaps] == [
            "2026-11-20T08:00:00Z",
            "2026-11-21T08:00:00Z",
            "2026-11-23T08:00:00Z",
        ]
        newest = snaps[-1]
        assert newest.protected and not snaps[0].protected
        assert newest.verify_state == "ok" and snaps[0].verify_state is None
        assert newest.comment == "first line"
        assert str(newest.owner) == "admin@pbs"
        written = remote.snapshots[VM100]
        first = snaps[0]
        assert {f.filename for f in first.files} == {"root.didx", "qemu-server.conf.blob"}
        assert first.size == sum(len(v) for v in written.contents.values())
        all_snaps = await c.list_snapshots("store", Namespace.parse("a/b"))
        assert [str(s.snapshot) for s in all_snaps] == ["host/db/2026-11-22T09:00:00Z"]
        with pytest.raises(NotFound):
            await c.list_groups("store", Namespace.parse("missing"))
        with pytest.raises(NotFound):
            await c.list_snapshots("store", ROOT_NS, GroupId.parse("vm/999"))


# ---- reader sessions -----------------------------------------------------------------------


async def test_reader_downloads_files_and_chunks(remote: Installation, remote_server: RunningServer) -> None:
    written = remote.snapshots[VM100]
    folder = remote.store.snapshot_path(written.ns, written.snapshot)
    async with (
        await remote_server.client(remote.sync_token, remote.sync_secret) as c,
        await c.open_reader("store", ROOT_NS, written.snapshot) as r,
    ):
        manifest = await r.download("index.json.blob")
        assert manifest == await asyncio.to_thread((folder / "index.json.blob").read_bytes)
        config = await r.download("qemu-server.conf.blob")
        assert blob.decode(config) == written.contents["qemu-server.conf.blob"]
        index = await r.download("root.didx")
        assert [d.hex() for d in decode_index(index).digests] == written.digests["root.didx"]
        first = written.digests["root.didx"][0]
        one = await r.fetch_chunk(first)
        assert one == await asyncio.to_thread(remote.store.chunks.read, first)
        wanted = written.all_digests
        got = [item async for item in r.fetch_chunks(wanted)]
        assert [d for d, _ in got] == wanted
        content = b"".join(blob.decode_verified(b, d) for d, b in got)
        assert written.contents["root.didx"].startswith(content)
        # duplicates and any order are served as asked
        again = [d async for d, _ in r.fetch_chunks([wanted[2], wanted[0], wanted[2]])]
        assert again == [wanted[2], wanted[0], wanted[2]]
        with pytest.raises(NotFound):
            await r.download("missing.blob")


@pytest.mark.parametrize("tls", [True, False], ids=["tls", "plain"])
async def test_single_chunk_answers_missing_and_implausible_files_with_404(
    remote: Installation, tls: bool
) -> None:
    """A chunk GET reads the file in one hop: a missing file and a file of no plausible
    blob size (not read at all) answer 404, as the batch answer's missing frame does, and the
    keep-alive connection goes on serving the exact stored bytes afterwards."""
    written = remote.snapshots[VM100]
    gone, huge, fine = written.all_digests[:3]
    await asyncio.to_thread(remote.store.chunks.path(gone).unlink)
    await asyncio.to_thread(os.truncate, remote.store.chunks.path(huge), blob.MAX_BLOB_SIZE + 1)  # sparse
    async with (
        running_server(remote.paths, tls=tls) as srv,
        await srv.client(remote.sync_token, remote.sync_secret) as c,
        await c.open_reader("store", ROOT_NS, written.snapshot) as r,
    ):
        await r.download("root.didx")
        for d in (gone, huge):
            with pytest.raises(NotFound, match=d):
                await r.fetch_chunk(d)
        for d in (gone, huge):
            with pytest.raises(NotFound, match=d):
                _ = [item async for item in r.fetch_chunks([fine, d])]
        for _ in range(2):
            assert await r.fetch_chunk(fine) == await asyncio.to_thread(remote.store.chunks.read, fine)


async def test_chunks_need_a_downloaded_index(remote: Installation, remote_server: RunningServer) -> None:
    mine = remote.snapshots[VM100]
    other = remote.snapshots[("", "ct/200/2026-11-20T09:00:00Z")]
    foreign = next(d for d in other.all_digests if d not in mine.all_digests)
    async with await remote_server.client(remote.sync_token, remote.sync_secret) as c:
        async with await c.open_reader("store", ROOT_NS, mine.snapshot) as r:
            with pytest.raises(PermissionDenied):
                await r.fetch_chunk(mine.all_digests[0])  # index not downloaded yet
            with pytest.raises(PermissionDenied):
                _ = [x async for x in r.fetch_chunks(mine.all_digests[:2])]
            await r.download("index.json.blob")  # the manifest registers nothing
            with pytest.raises(PermissionDenied):
                await r.fetch_chunk(mine.all_digests[0])
            await r.download("root.didx")
            assert await r.fetch_chunk(mine.all_digests[0])
            with pytest.raises(PermissionDenied):
                await r.fetch_chunk(foreign)  # a chunk of another snapshot
            with pytest.raises(PermissionDenied):
                _ = [x async for x in r.fetch_chunks([mine.all_digests[0], foreign])]
        # a second session starts from nothing
        async with await c.open_reader("store", ROOT_NS, mine.snapshot) as r2:
            with pytest.raises(PermissionDenied):
                await r2.fetch_chunk(mine.all_digests[0])


async def test_reader_sessions_are_private_and_closable(
    remote: Installation, remote_server: RunningServer
) -> None:
    snap = remote.snapshots[VM100].snapshot
    async with (
        await remote_server.client(remote.sync_token, remote.sync_secret) as c,
        await remote_server.client(remote.admin, remote.admin_password) as admin,
    ):
        r = await c.open_reader("store", ROOT_NS, snap)
        await r.download("root.didx")
        # the same reader id used by someone else is unknown to them
        stolen = type(r)(admin, "store", r.reader_id, ROOT_NS, snap)
        with pytest.raises(NotFound):
            await stolen.download("root.didx")
        await r.aclose()
        reopened = type(r)(c, "store", r.reader_id, ROOT_NS, snap)
        with pytest.raises(NotFound):
            await reopened.download("index.json.blob")
        with pytest.raises(NotFound):
            await c.open_reader("store", ROOT_NS, SnapshotId.parse("vm/100/2000-01-01T00:00:00Z"))


async def test_reader_sessions_per_user_are_bounded(remote: Installation) -> None:
    options = ServerOptions(access_reload_interval=0, access_log=False, readers=ReaderLimits(max_per_user=2))
    snap = remote.snapshots[VM100].snapshot
    async with (
        running_server(remote.paths, options=options) as srv,
        await srv.client(remote.sync_token, remote.sync_secret) as c,
    ):
        r1 = await c.open_reader("store", ROOT_NS, snap)
        await c.open_reader("store", ROOT_NS, snap)
        with pytest.raises(PermissionDenied, match="too many open reader sessions"):
            await c.open_reader("store", ROOT_NS, snap)
        await r1.aclose()
        await c.open_reader("store", ROOT_NS, snap)


def test_reader_registry_expires_idle_sessions(tmp_path: Path) -> None:
    from asyncsync.datastore.datastore import Datastore
    from asyncsync.names import AuthId

    now = [0.0]
    reg = ReaderRegistry(ReaderLimits(max_per_user=1, idle_timeout=10.0, max_digests=2), clock=lambda: now[0])
    store = Datastore.create(tmp_path / "s")
    who = AuthId.parse("a@pbs")
    snap = SnapshotId.parse("vm/1/2026-01-01T00:00:00Z")
    s = reg.open(who, store, ROOT_NS, snap)
    now[0] = 9.0
    assert reg.get(s.id, who, store.name) is s  # use refreshes the idle timer
    now[0] = 18.0
    assert reg.get(s.id, who, store.name) is s
    with pytest.raises(PermissionDenied):
        reg.open(who, store, ROOT_NS, snap)
    with pytest.raises(PermissionDenied):
        reg.register(s, "x.didx", [b"a" * 32, b"b" * 32, b"c" * 32])
    now[0] = 28.5
    with pytest.raises(NotFound):
        reg.get(s.id, who, store.name)
    assert len(reg) == 0
    reg.open(who, store, ROOT_NS, snap)


# ---- bad input -----------------------------------------------------------------------------


class FileAudit:
    """Records files opened and folders listed in this process (an audit hook, enabled on demand)."""

    installed = False
    active = False
    events: list[tuple[str, str]] = []  # noqa: RUF012 - one process-wide recorder

    @classmethod
    def hook(cls, event: str, args: tuple[Any, ...]) -> None:
        if cls.active and event in ("open", "os.scandir", "os.listdir", "os.mkdir", "os.rename", "os.remove"):
            cls.events.append((event, str(args[0]) if args else ""))

    @classmethod
    def install(cls) -> None:
        if not cls.installed:
            sys.addaudithook(cls.hook)
            cls.installed = True


@pytest.fixture
def file_audit() -> Iterator[type[FileAudit]]:
    FileAudit.install()
    FileAudit.events = []
    yield FileAudit
    FileAudit.active = False


TRAVERSAL_GETS = [
    protocol.p_groups("store") + "?ns=../../etc",
    protocol.p_groups("store") + "?ns=a/../../x",
    protocol.p_groups("store") + "?ns=/abs",
    protocol.p_groups("..%2F..%2Fetc"),
    protocol.p_groups(".hidden"),
    protocol.p_namespaces("store") + "?parent=../x",
    protocol.p_namespaces("store") + "?max-depth=-1",
    protocol.p_namespaces("store") + "?max-depth=99",
    protocol.p_snapshots("store") + "?backup-type=vm&backup-id=..",
    protocol.p_snapshots("store") + "?backup-type=vm&backup-id=..%2F..%2Fetc",
    protocol.p_snapshots("store") + "?backup-type=..&backup-id=100",
    protocol.p_snapshots("store") + "?backup-type=vm",
    protocol.p_namespaces("a%00b"),
]


async def test_traversal_names_get_400_and_touch_no_file(
    remote: Installation, remote_server: RunningServer, file_audit: type[FileAudit]
) -> None:
    snap = remote.snapshots[VM100].snapshot
    async with await remote_server.client(remote.sync_token, remote.sync_secret) as c:
        reader = await c.open_reader("store", ROOT_NS, snap)
    bad_bodies = [
        {**protocol.snapshot_params(ROOT_NS, snap), "ns": "../.."},
        {**protocol.snapshot_params(ROOT_NS, snap), "backup-id": "../../etc"},
        {**protocol.snapshot_params(ROOT_NS, snap), "backup-type": "../vm"},
        {**protocol.snapshot_params(ROOT_NS, snap), "backup-time": "../../2026"},
        {**protocol.snapshot_params(ROOT_NS, snap), "ns": 5},
    ]
    rid = reader.reader_id
    reader_gets = [
        protocol.p_reader_file("store", rid, "..%2F..%2Fowner"),
        protocol.p_reader_file("store", rid, "..%2Findex.json.blob"),
        protocol.p_reader_file("store", rid, ".hidden.blob"),
        protocol.p_reader_file("store", rid, "x.txt"),
        protocol.p_reader_chunk("store", rid, "..%2F..%2F" + "0" * 58),
        protocol.p_reader_chunk("store", rid, "A" * 64),
        protocol.p_reader_file("store", "..%2F..%2Fx" + "y" * 20, "root.didx"),
    ]
    async with session_for(remote_server, token_header(remote)) as s:
        file_audit.active = True
        for path in TRAVERSAL_GETS + reader_gets:
            async with s.get(protocol.API_PREFIX + path) as resp:
                assert resp.status == 400, path
                body = await resp.json()
                assert body["error"]["code"] == "bad-request"
        for body in bad_bodies:
            status, _ = await get_json(s, "POST", protocol.p_reader("store"), json=body)
            assert status == 400, body
        for digests in (["../" * 21 + "0"], ["0" * 63], "notalist", [1]):
            status, _ = await get_json(
                s, "POST", protocol.p_reader_chunks("store", rid), json={"digests": digests}
            )
            assert status == 400, digests
        file_audit.active = False
        assert file_audit.events == []
        # control: the audit does see the files a valid request touches
        file_audit.active = True
        status, _ = await get_json(s, "GET", protocol.p_groups("store") + "?ns=a")
        file_audit.active = False
        assert status == 200
        assert any(event == "os.scandir" for event, _ in file_audit.events)


async def test_errors_are_json_without_paths(
    remote: Installation, remote_server: RunningServer, tmp_path: Path
) -> None:
    # a datastore whose folder vanished, and one whose marker is corrupt
    gone = tmp_path / "gone"
    broken = tmp_path / "broken"

    def setup() -> None:
        add_datastore(remote.paths, "gone", gone)
        add_datastore(remote.paths, "broken", broken)
        grant(remote.paths, "/datastore", "DatastoreReader", remote.sync_token)
        grant(remote.paths, "/datastore", "DatastoreReader", "sync@pbs")
        for p in gone.rglob("*"):
            if p.is_file():
                p.unlink()
        (broken / ".asyncsync-datastore").write_text("{not json")

    await asyncio.to_thread(setup)
    async with session_for(remote_server, token_header(remote)) as s:
        cases = [
            ("GET", protocol.p_groups("gone"), 404),
            ("GET", protocol.p_groups("broken"), 500),
            ("GET", protocol.p_groups("unknown"), 404),
            ("GET", "/no/such/route", 404),
            ("DELETE", protocol.p_datastores(), 405),
        ]
        for method, path, status in cases:
            async with s.request(method, protocol.API_PREFIX + path) as resp:
                text = await resp.text()
                assert resp.status == status, (path, text)
                body = json.loads(text)
                assert set(body) == {"error"} and body["error"]["message"]
                assert str(tmp_path) not in text and "Traceback" not in text
        # an oversized JSON body is refused before it is read whole
        big = json.dumps({"digests": ["0" * 64] * (protocol.MAX_JSON_BODY // 60)}).encode()
        async with s.post(
            protocol.API_PREFIX + protocol.p_reader_chunks("store", "r" * 32),
            data=io.BytesIO(big),
            headers={"Content-Type": "application/json"},
        ) as resp:
            assert resp.status == 413
            assert (await resp.json())["error"]["code"] == "too-large"


# ---- plain HTTP and the subprocess ---------------------------------------------------------


async def test_plain_http_server(remote: Installation) -> None:
    async with running_server(remote.paths, tls=False) as srv:
        assert srv.fingerprint is None and srv.url.startswith("http://")
        async with await srv.client(remote.sync_token, remote.sync_secret) as c:
            written = remote.snapshots[VM100]
            async with await c.open_reader("store", ROOT_NS, written.snapshot) as r:
                await r.download("root.didx")
                # sendfile path (no TLS): same bytes
                d = written.all_digests[0]
                assert await r.fetch_chunk(d) == await asyncio.to_thread(remote.store.chunks.read, d)


@pytest.fixture
async def subprocess_server(remote: Installation) -> AsyncIterator[SubprocessServer]:
    srv = await asyncio.to_thread(SubprocessServer, remote.env())
    try:
        yield srv
    finally:
        if srv.proc.poll() is None:
            await asyncio.to_thread(srv.stop)


async def test_serve_subprocess_starts_answers_and_stops_on_sigterm(
    remote: Installation, subprocess_server: SubprocessServer
) -> None:
    srv = subprocess_server
    assert srv.tls and srv.host == "127.0.0.1" and srv.fingerprint
    client = await RunningServer(remote.paths, srv.host, srv.port, True, srv.fingerprint).client(
        remote.sync_token, remote.sync_secret
    )
    async with client:
        assert [g["store"] for g in await client.list_datastores()] == ["store"]
    code = await asyncio.to_thread(srv.stop, signal.SIGTERM)
    assert code == 0
    assert "Traceback" not in srv.stderr
    assert "shutting down" in srv.stderr


def test_parse_listen() -> None:
    from asyncsync.errors import InvalidInput

    assert parse_listen("127.0.0.1:0") == ("127.0.0.1", 0)
    assert parse_listen("[::1]:8008") == ("::1", 8008)
    assert parse_listen(":8007") == ("", 8007)
    assert parse_listen("localhost") == ("localhost", 8007)
    assert parse_listen("[::]") == ("::", 8007)
    for bad in ("::1:80", "host:port", "host:99999", "[::1", "[::1]x"):
        with pytest.raises(InvalidInput):
            parse_listen(bad)
