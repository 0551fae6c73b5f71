"""Adversarial checks: hostile requests against the real TLS server, a lying source
against the pull engine, and hostile options and config files against the CLI.

What is already covered elsewhere is not repeated here (traversal names in URLs,
forged tokens, corrupt/oversized/bomb chunks, hostile group and file names; see
test_server.py, test_pull_local.py, test_pull_http.py). Every case here checks the
product rule "hostile input gets a clear error and changes nothing": a 4xx answer in
the JSON envelope without tracebacks or local paths, a failed group with a message
naming the problem and no new snapshot or temp file, or a one-line CLI error.
"""

# ruff: noqa: F811  (pytest fixtures imported from serverutil are redefined as parameters)

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from pullutil import MANIFEST_NAME, T0, FaultySnapshot, FaultySource, add_snapshot, leftovers, new_store
from serverutil import (
    Installation,
    RunningServer,
    add_datastore,
    add_token,
    add_user,
    grant,
    remote,  # noqa: F401 - fixture
    remote_server,  # noqa: F401 - fixture
)

from asyncsync import PullOptions, protocol, pull
from asyncsync import access as access_store
from asyncsync.config.paths import Paths
from asyncsync.datastore import blob
from asyncsync.datastore.datastore import Datastore
from asyncsync.names import ROOT_NS, GroupId, Namespace, SnapshotId
from asyncsync.protocol import SnapshotItem
from asyncsync.sync.report import GroupStatus
from asyncsync.sync.source import LocalSource, SnapshotSource
from asyncsync.tls import parse_fingerprint

N = Namespace.parse
G = GroupId.parse
VM100 = ("", "vm/100/2026-11-20T08:00:00Z")


# ---- helpers ----------------------------------------------------------------------------------


def session_for(srv: RunningServer, headers: dict[str, str] | None = None) -> aiohttp.ClientSession:
    """A raw session pinned to ``srv`` (sends what the typed client would refuse to)."""
    assert srv.fingerprint is not None
    conn = aiohttp.TCPConnector(ssl=aiohttp.Fingerprint(parse_fingerprint(srv.fingerprint)))
    return aiohttp.ClientSession(
        base_url=srv.url, connector=conn, headers=headers or {}, cookie_jar=aiohttp.CookieJar(unsafe=True)
    )


def token_header(tokenid: object, secret: str) -> dict[str, str]:
    return {"Authorization": f"{protocol.TOKEN_AUTH_PREFIX}{tokenid}:{secret}"}


async def call(s: aiohttp.ClientSession, method: str, path: str, **kw: Any) -> tuple[int, dict[str, Any]]:
    """(status, JSON body); asserts the answer is the envelope and leaks no traceback."""
    async with s.request(method, protocol.API_PREFIX + path, **kw) as resp:
        text = await resp.text()
    assert "Traceback" not in text and "/tmp" not in text and 'File "' not in text, text
    body = json.loads(text)
    if resp.status >= 400:
        assert set(body) == {"error"} and body["error"]["message"], text
    return resp.status, body


def snap_params(snap: SnapshotId, ns: Namespace = ROOT_NS) -> dict[str, Any]:
    return dict(protocol.snapshot_params(ns, snap))


# ---- the server: hostile parameters ------------------------------------------------------------

HOSTILE_QUERIES = [
    protocol.p_groups("store") + "?ns=a%00",  # NUL byte
    protocol.p_groups("store") + "?ns=%EF%BC%8E%EF%BC%8E",  # fullwidth ".." lookalike
    protocol.p_groups("store") + "?ns=%E2%80%A4%E2%80%A4",  # one-dot leaders lookalike
    protocol.p_groups("store") + "?ns=" + "a/" * 7 + "a",  # 8 levels
    protocol.p_groups("store") + "?ns=" + "a" * 4000,  # very long component
    protocol.p_groups("store") + "?ns=a//b",
    protocol.p_groups("store") + "?ns=a/",
    protocol.p_groups("store") + "?ns=%2e%2e",
    protocol.p_groups("store") + "?ns=a%2F..%2F..",
    protocol.p_snapshots("store") + "?backup-type=VM&backup-id=100",  # case matters
    protocol.p_snapshots("store") + "?backup-type=vm&backup-id=" + "x" * 200,
    protocol.p_snapshots("store") + "?backup-type=vm&backup-id=-rf",
    protocol.p_snapshots("store") + "?backup-type=vm&backup-id=a%2Fb",
    protocol.p_snapshots("store") + "?backup-id=100",  # type missing
    protocol.p_namespaces("store") + "?max-depth=abc",
    protocol.p_namespaces("store") + "?max-depth=1.5",
    protocol.p_namespaces("store") + "?max-depth=8",
    protocol.p_namespaces("store") + "?max-depth=%C2%B2",  # superscript two: isdigit() but not int()
    protocol.p_namespaces("store") + "?max-depth=%D9%A3",  # Arabic-Indic three
    protocol.p_namespaces("store") + "?max-depth=" + "9" * 5000,  # beyond int()'s digit limit
    protocol.p_groups("a" * 100),  # store name too long
]


async def test_hostile_query_values_get_400(remote: Installation, remote_server: RunningServer) -> None:
    before = await asyncio.to_thread(lambda: sorted(p.name for p in remote.store.root.rglob("*")))
    async with session_for(remote_server, token_header(remote.sync_token, remote.sync_secret)) as s:
        for path in HOSTILE_QUERIES:
            status, body = await call(s, "GET", path)
            assert status == 400, (path, body)
            assert body["error"]["code"] == "bad-request"
    after = await asyncio.to_thread(lambda: sorted(p.name for p in remote.store.root.rglob("*")))
    assert after == before


async def test_hostile_reader_bodies_get_400_and_open_no_session(
    remote: Installation, remote_server: RunningServer
) -> None:
    snap = remote.snapshots[VM100].snapshot
    p = snap_params(snap)
    bodies: list[Any] = [
        {**p, "backup-time": -1},
        {**p, "backup-time": 10**30},
        {**p, "backup-time": 1.5},
        {**p, "backup-time": True},
        {**p, "backup-time": None},
        {**p, "backup-time": [1]},
        {**p, "backup-time": "2026-11-20T08:00:00+99:00"},
        {**p, "backup-time": "9999-12-31T23:59:59-23:59"},  # year 10000 in UTC
        {**p, "backup-time": "2026-11-20T08:00:00"},  # no time zone
        {**p, "backup-time": "\u00b2"},  # superscript two
        {**p, "backup-time": "\u0663"},  # Arabic-Indic three
        {**p, "backup-time": "9" * 5000},
        {**p, "backup-type": ["vm"]},
        {**p, "backup-id": {"a": 1}},
        {**p, "backup-id": 100},
        {**p, "ns": ["a"]},
        {**p, "ns": {"ns": "a"}},
    ]
    raw_bodies = [
        b"null",
        b"[]",
        b'"x"',
        b"\xff\xfe",
        b"{",
        b'{"ns": NaN}',
        b"1e400",
        b"[" * 100_000,  # nesting deep enough to exhaust the JSON parser's recursion
        b'{"a":' * 50_000,
    ]
    async with session_for(remote_server, token_header(remote.sync_token, remote.sync_secret)) as s:
        for body in bodies:
            status, answer = await call(s, "POST", protocol.p_reader("store"), json=body)
            assert status == 400, (body, answer)
        for raw in raw_bodies:
            status, answer = await call(
                s,
                "POST",
                protocol.p_reader("store"),
                data=raw,
                headers={"Content-Type": "application/json"},
            )
            assert status == 400, (raw, answer)


async def test_failed_opens_do_not_use_up_reader_slots(
    remote: Installation, remote_server: RunningServer
) -> None:
    # more bad opens than the per-user limit (64): a good one must still succeed
    snap = remote.snapshots[VM100].snapshot
    async with session_for(remote_server, token_header(remote.sync_token, remote.sync_secret)) as s:
        for i in range(70):
            status, _ = await call(
                s, "POST", protocol.p_reader("store"), json={**snap_params(snap), "backup-time": -1 - i}
            )
            assert status == 400
        status, body = await call(s, "POST", protocol.p_reader("store"), json=snap_params(snap))
        assert status == 200 and body["data"]["reader"]


async def test_batch_bounds_and_duplicates(remote: Installation, remote_server: RunningServer) -> None:
    written = remote.snapshots[VM100]
    async with session_for(remote_server, token_header(remote.sync_token, remote.sync_secret)) as s:
        status, body = await call(s, "POST", protocol.p_reader("store"), json=snap_params(written.snapshot))
        rid = body["data"]["reader"]
        async with s.get(protocol.API_PREFIX + protocol.p_reader_file("store", rid, "root.didx")) as resp:
            assert resp.status == 200
        digests = written.digests["root.didx"]
        chunks_path = protocol.p_reader_chunks("store", rid)
        # one digest too many for a batch: refused before anything is read
        status, body = await call(
            s, "POST", chunks_path, json={"digests": [digests[0]] * (protocol.MAX_BATCH_DIGESTS + 1)}
        )
        assert status == 400 and "digests" in body["error"]["message"]
        # wrong JSON types
        for bad in ({"digests": {}}, {"digests": [None]}, {"digests": []}, {"digest": digests[:1]}):
            status, _ = await call(s, "POST", chunks_path, json=bad)
            assert status == 400, bad
        # uppercase is a different (invalid) name, not a synonym
        status, _ = await call(s, "POST", chunks_path, json={"digests": [digests[0].upper()]})
        assert status == 400
        # duplicates are answered frame by frame, in request order
        async with s.post(protocol.API_PREFIX + chunks_path, json={"digests": [digests[0]] * 3}) as resp:
            assert resp.status == 200
            data = await resp.read()
        pos, seen = 0, []
        while pos < len(data):
            raw, length = protocol.FRAME_HEADER.unpack_from(data, pos)
            pos += protocol.FRAME_HEADER.size
            assert blob.decode_verified(data[pos : pos + length], raw.hex())
            pos += length
            seen.append(raw.hex())
        assert seen == [digests[0]] * 3
        # the session is bound to its store: the same id under another store name is unknown
        status, _ = await call(s, "GET", protocol.p_reader_chunk("other", rid, digests[0]))
        assert status in (403, 404)


# ---- the server: authentication and existence probing ------------------------------------------


async def test_tampered_tickets_and_csrf_are_refused(
    remote: Installation, remote_server: RunningServer
) -> None:
    async with session_for(remote_server) as s:
        status, body = await call(
            s, "POST", protocol.p_ticket(), json={"username": "admin@pbs", "password": remote.admin_password}
        )
        assert status == 200
        ticket, csrf = body["data"]["ticket"], body["data"]["CSRFPreventionToken"]
        status, body2 = await call(
            s, "POST", protocol.p_ticket(), json={"username": "admin@pbs", "password": remote.admin_password}
        )
        other_csrf = body2["data"]["CSRFPreventionToken"]
        s.cookie_jar.clear()
    payload, _, sig = ticket.partition("::")
    flipped = sig[:-1] + ("A" if sig[-1] != "A" else "B")
    forged_user = payload.replace("admin@pbs", "sync@pbs") + "::" + sig
    bad_tickets = [payload + "::" + flipped, forged_user, ticket + "x", "::" + sig, ticket.replace("::", ":")]
    auth = protocol.TICKET_AUTH_PREFIX
    async with session_for(remote_server) as s:
        for bad in bad_tickets:
            status, body = await call(
                s, "GET", protocol.p_datastores(), headers={"Authorization": auth + bad}
            )
            assert status == 401, bad
        good = {"Authorization": auth + ticket}
        status, _ = await call(s, "GET", protocol.p_datastores(), headers=good)
        assert status == 200
        reader = protocol.p_reader("store")
        body = snap_params(remote.snapshots[VM100].snapshot)
        # a POST with a valid ticket but no, a wrong, or another ticket's CSRF token
        for headers in (
            good,
            {**good, protocol.CSRF_HEADER: csrf[:-1]},
            {**good, protocol.CSRF_HEADER: "x" * 5000},
        ):
            status, answer = await call(s, "POST", reader, json=body, headers=headers)
            assert status == 401, (headers, answer)
        if other_csrf != csrf:
            status, _ = await call(
                s, "POST", reader, json=body, headers={**good, protocol.CSRF_HEADER: other_csrf}
            )
            assert status == 401
        status, _ = await call(s, "POST", reader, json=body, headers={**good, protocol.CSRF_HEADER: csrf})
        assert status == 200


async def test_login_with_hostile_values(remote_server: RunningServer) -> None:
    async with session_for(remote_server) as s:
        for body in (
            {"username": ["admin@pbs"], "password": "x"},
            {"username": "admin@pbs", "password": None},
            {},
        ):
            status, _ = await call(s, "POST", protocol.p_ticket(), json=body)
            assert status == 400, body
        for body in (
            {"username": "../../etc@pam", "password": "x"},
            {"username": "a" * 5000 + "@pbs", "password": "x"},
            {"username": "admin@pbs\x00", "password": "x"},
        ):
            status, _ = await call(s, "POST", protocol.p_ticket(), json=body)
            assert status in (400, 401), body


async def test_disabled_user_and_its_token_are_refused(
    remote: Installation, remote_server: RunningServer
) -> None:
    headers = token_header(remote.sync_token, remote.sync_secret)
    async with session_for(remote_server, headers) as s:
        status, _ = await call(s, "GET", protocol.p_groups("store"))
        assert status == 200
        await asyncio.to_thread(access_store.update_user, remote.paths, "sync@pbs", enable=False)
        status, body = await call(s, "GET", protocol.p_groups("store"))
        assert status == 401 and body["error"]["code"] == "unauthorized"
        await asyncio.to_thread(access_store.update_user, remote.paths, "sync@pbs", enable=True)
        status, _ = await call(s, "GET", protocol.p_groups("store"))
        assert status == 200


def _add_probers(paths: Paths) -> dict[str, tuple[object, str]]:
    """A user with no rights and a backup-only user; returns name -> (token id, secret)."""
    add_user(paths, "nobody@pbs")
    nobody = add_token(paths, "nobody@pbs", "t")
    add_user(paths, "writer@pbs")
    writer = add_token(paths, "writer@pbs", "t")
    # a token has at most its user's privileges: grant both
    grant(paths, "/datastore/store", "DatastoreBackup", "writer@pbs")
    grant(paths, "/datastore/store", "DatastoreBackup", writer[0])
    return {"nobody": nobody, "writer": writer}


async def test_answers_do_not_reveal_what_the_caller_may_not_see(
    remote: Installation, remote_server: RunningServer
) -> None:
    probers = await asyncio.to_thread(_add_probers, remote.paths)
    vm100 = remote.snapshots[VM100].snapshot
    ghost = SnapshotId(G("vm/999"), vm100.time)
    async with session_for(remote_server, token_header(*probers["nobody"])) as s:
        # no rights: an existing and a missing store (and namespace) answer alike
        pairs = [
            (protocol.p_groups("store"), protocol.p_groups("nosuchstore")),
            (protocol.p_groups("store") + "?ns=a", protocol.p_groups("store") + "?ns=zzz"),
            (protocol.p_namespaces("store"), protocol.p_namespaces("nosuchstore")),
        ]
        for real, fake in pairs:
            a, b = await call(s, "GET", real), await call(s, "GET", fake)
            assert a[0] == b[0] == 403, (real, a, fake, b)
        status, body = await call(s, "GET", protocol.p_datastores())
        assert status == 200 and body["data"] == []
        for snap in (vm100, ghost):
            status, _ = await call(s, "POST", protocol.p_reader("store"), json=snap_params(snap))
            assert status == 403
    async with session_for(remote_server, token_header(*probers["writer"])) as s:
        # backup-only: a foreign group and a missing group answer alike
        for snap in (vm100, ghost):
            status, body = await call(s, "POST", protocol.p_reader("store"), json=snap_params(snap))
            assert status == 403, (snap, body)
        status, body = await call(s, "GET", protocol.p_groups("store"))
        assert status == 200 and body["data"] == []


# ---- the pull engine: a lying source -----------------------------------------------------------


@pytest.fixture
def src(tmp_path: Path) -> Datastore:
    store = new_store(tmp_path / "src", "src")
    add_snapshot(store, "", "vm/1", T0)
    add_snapshot(store, "", "vm/2", T0 + 86400)  # another time: other random chunks, none shared
    return store


@pytest.fixture
def dst(tmp_path: Path) -> Datastore:
    return new_store(tmp_path / "dst", "dst")


def assert_vm1_failed_cleanly(dst: Datastore, report: Any, needle: str) -> None:
    by = {str(g.group): g for g in report.groups}
    assert by["vm/1"].status is GroupStatus.FAILED, by
    assert needle in (by["vm/1"].error or ""), by["vm/1"].error
    assert by["vm/2"].status is GroupStatus.OK
    assert dst.list_snapshots(N(""), G("vm/1")) == []
    assert leftovers(dst) == []
    assert not report.ok


def _rewrite_manifest(data: bytes, change: Any) -> bytes:
    obj = json.loads(blob.decode(data))
    if obj["backup-id"] == "1":
        change(obj)
    return blob.encode(json.dumps(obj).encode())


def test_manifest_of_another_snapshot_is_refused(src: Datastore, dst: Datastore) -> None:
    faulty = FaultySource(LocalSource(src))

    def other_time(obj: dict[str, Any]) -> None:
        obj["backup-time"] = T0 + 3600

    faulty.on_download = lambda name, data: (
        _rewrite_manifest(data, other_time) if name == MANIFEST_NAME else data
    )
    report = asyncio.run(pull(faulty, dst))
    assert_vm1_failed_cleanly(dst, report, "describes")


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        (lambda o: o["files"].append(dict(o["files"][0])), "twice"),
        (lambda o: o["files"][0].update(size=-1), "bad entry"),
        (lambda o: o["files"][0].update(filename="a/b.blob"), "manifest"),
        (lambda o: o["files"][0].update(filename="x\x00.blob"), "manifest"),
        (lambda o: o.update(files="nope"), "manifest"),
        (lambda o: o.update({"backup-id": "../1"}), "manifest"),
        # the manifest's own name as an archive: the commit would overwrite that archive
        (
            lambda o: o["files"].append({"filename": MANIFEST_NAME, "size": 4, "csum": "00" * 32}),
            "reserved",
        ),
    ],
    ids=["duplicate-file", "negative-size", "slash", "nul", "files-not-list", "traversal-id", "own-name"],
)
def test_malformed_manifest_is_refused(src: Datastore, dst: Datastore, change: Any, needle: str) -> None:
    faulty = FaultySource(LocalSource(src))
    faulty.on_download = lambda name, data: _rewrite_manifest(data, change) if name == MANIFEST_NAME else data
    report = asyncio.run(pull(faulty, dst))
    assert_vm1_failed_cleanly(dst, report, needle)


def test_blob_file_lying_about_its_size_is_refused(src: Datastore, dst: Datastore) -> None:
    def grow(obj: dict[str, Any]) -> None:
        for f in obj["files"]:
            if f["filename"].endswith(".blob"):
                f["size"] += 1

    faulty = FaultySource(LocalSource(src))
    faulty.on_download = lambda name, data: _rewrite_manifest(data, grow) if name == MANIFEST_NAME else data
    report = asyncio.run(pull(faulty, dst))
    assert_vm1_failed_cleanly(dst, report, "manifest says")


def test_snapshot_listed_under_another_group_is_refused(src: Datastore, dst: Datastore) -> None:
    class Lying(FaultySource):
        async def list_snapshots(self, ns: Namespace, group: GroupId) -> list[SnapshotItem]:
            items = await self.inner.list_snapshots(ns, group)
            if group == G("vm/1"):
                other = await self.inner.list_snapshots(ns, G("vm/2"))
                items = items + other
            return items

    report = asyncio.run(pull(Lying(LocalSource(src)), dst, PullOptions(group_workers=1)))
    assert_vm1_failed_cleanly(dst, report, "remote listed snapshot")


class ChunkStreamLiar(FaultySnapshot):
    """Sends an extra chunk nobody asked for, or drops the last one."""

    def __init__(self, inner: SnapshotSource, source: FaultySource, mode: str) -> None:
        super().__init__(inner, source)
        self.mode = mode

    async def fetch_chunks(self, digests: Sequence[str]) -> AsyncIterator[tuple[str, bytes]]:
        items = [item async for item in self.inner.fetch_chunks(digests)]
        if self.mode == "drop":
            items = items[:-1]
        elif self.mode == "extra":
            items.insert(0, ("f" * 64, blob.encode(b"unasked")))
        for item in items:
            yield item


@pytest.mark.parametrize(("mode", "needle"), [("drop", "did not send"), ("extra", "not requested")])
def test_chunk_stream_that_lies_is_refused(src: Datastore, dst: Datastore, mode: str, needle: str) -> None:
    class Src(FaultySource):
        async def open_reader(self, ns: Namespace, snap: SnapshotId) -> SnapshotSource:
            inner = await self.inner.open_reader(ns, snap)
            return ChunkStreamLiar(inner, self, mode) if snap.group == G("vm/1") else inner

    report = asyncio.run(pull(Src(LocalSource(src)), dst, PullOptions(retries=0)))
    assert_vm1_failed_cleanly(dst, report, needle)
    assert not dst.chunks.exists("f" * 64)


def test_namespaces_outside_the_anchor_are_not_pulled(tmp_path: Path, dst: Datastore) -> None:
    store = new_store(tmp_path / "src2", "src2")
    add_snapshot(store, "a", "vm/1", T0)
    add_snapshot(store, "b/c", "vm/2", T0)

    class Wide(FaultySource):
        async def list_namespaces(self, anchor: Namespace, max_depth: int | None) -> list[Namespace]:
            # outside the anchor, and one whose mapping would exceed 7 levels
            return [N("a"), N("b/c"), N("x/y/z/q/r/s/t")]

    report = asyncio.run(pull(Wide(LocalSource(store)), dst, PullOptions(remote_ns=N("a"), ns=N("m"))))
    assert report.ok, report.failure_message()
    assert dst.list_namespaces() == [N(""), N("m")]
    assert [str(g) for g in dst.list_groups(N("m"))] == ["vm/1"]
    assert leftovers(dst) == []


# ---- the CLI: hostile options and hand-edited config files -------------------------------------


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "asyncsync", *args], env=env, capture_output=True, text=True, timeout=60
    )


def assert_one_line_error(proc: subprocess.CompletedProcess[str]) -> None:
    assert proc.returncode != 0, proc
    err = proc.stderr.strip()
    assert "Traceback" not in err and "Traceback" not in proc.stdout, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), err


@pytest.fixture
def two_stores(paths: Paths, tmp_path: Path) -> Paths:
    add_datastore(paths, "src", tmp_path / "s")
    add_datastore(paths, "dst", tmp_path / "d")
    return paths


def test_cli_hostile_pull_options(two_stores: Paths, cli_env: dict[str, str], tmp_path: Path) -> None:
    cases = [
        ("--ns", "../x"),
        ("--remote-ns", "a/../b"),
        ("--ns", "a/b/c/d/e/f/g/h"),
        ("--group-filter", "regex:("),
        ("--rate-in", "1e99GiB"),
        ("--max-inflight", "1KiB"),
        ("--owner", "root"),
    ]
    for opt, value in cases:
        proc = cli(cli_env, "pull", "-", "src", "dst", opt, value)
        assert_one_line_error(proc)
        assert proc.returncode == 2, (opt, value, proc.stderr)
    assert [p.name for p in (tmp_path / "d").iterdir() if not p.name.startswith(".")] == []
    assert leftovers(Datastore.open(tmp_path / "d")) == []


@pytest.mark.parametrize(
    ("file", "content", "args"),
    [
        ("datastore.cfg", b"garbage\x00\xff\n", ("datastore", "list")),
        ("datastore.cfg", b"datastore: ../x\n\tpath /tmp\n", ("datastore", "list")),
        (
            "datastore.cfg",
            b"datastore: x\n\tpath /nonexistent\n\tsync-level bogus\n",
            ("pull", "-", "x", "x"),
        ),
        ("remote.cfg", b"remote: r\n\thost\n", ("remote", "list")),
        ("remote.cfg", b"\xff\xfe\x00", ("remote", "list")),
        ("sync.cfg", b"sync: j\n\tstore dst\n\tgroup-filter regex:(\n", ("sync-job", "list")),
    ],
    ids=["ds-binary", "ds-traversal", "ds-bad-level", "remote-no-host", "remote-binary", "sync-bad-regex"],
)
def test_cli_garbage_config_files(
    paths: Paths, cli_env: dict[str, str], file: str, content: bytes, args: tuple[str, ...]
) -> None:
    target = paths.config / file
    target.write_bytes(content)
    proc = cli(cli_env, *args)
    assert_one_line_error(proc)
    assert target.read_bytes() == content  # a read never rewrites a broken file
