"""The pull engine against the real server over TLS (in-process and as a subprocess).

Faults come from an aiohttp middleware in front of the real handlers: it serves
the chunk endpoints itself from the remote store and breaks them on purpose
(corrupt, truncated, reset, oversized, bomb) or rewrites a listing (hostile
names). The CLI runs in a subprocess and is killed with SIGKILL mid-pull.
"""

# ruff: noqa: F811  (pytest fixtures imported from serverutil are parameters here)

from __future__ import annotations

import asyncio
import json
import re
import signal
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import zstandard
from aiohttp import web
from pullutil import T0, add_snapshot, chunk_files, leftovers, new_store, store_tree
from serverutil import (  # noqa: F401
    TEST_OPTIONS,
    Installation,
    RunningServer,
    SubprocessServer,
    add_datastore,
    http_pull,
    http_source,
    remote,
    remote_server,
    remote_subprocess,
)

from asyncsync import PullReport, pull
from asyncsync.config import remotes
from asyncsync.config.paths import Paths
from asyncsync.datastore import blob
from asyncsync.datastore.datastore import Datastore
from asyncsync.names import GroupId, Namespace, SnapshotId
from asyncsync.protocol import FRAME_HEADER
from asyncsync.server.app import make_app, serve
from asyncsync.sync.groupfilter import GroupFilters
from asyncsync.sync.report import GroupStatus

N = Namespace.parse
G = GroupId.parse


def content(store: Datastore) -> dict[str, object]:
    """The store's tree without owners (the target's groups belong to the job owner)."""
    return {k: v for k, v in store_tree(store).items() if not k.startswith("owner:")}


@pytest.fixture
def dst(tmp_path: Path) -> Datastore:
    return new_store(tmp_path / "dst", "dst")


async def test_pull_over_tls_equals_source_and_second_run_is_empty(
    remote: Installation, remote_server: RunningServer, dst: Datastore
) -> None:
    report = await http_pull(remote_server, remote, dst)
    assert report.ok, report.failure_message()
    assert report.snapshots_synced == len(remote.snapshots)
    assert await asyncio.to_thread(content, dst) == await asyncio.to_thread(content, remote.store)
    assert report.source == "remote pbs2, store store"
    again = await http_pull(remote_server, remote, dst)
    assert again.ok and again.chunks_downloaded == 0 and again.snapshots_synced == 0
    assert again.summary() == "no new data to pull"


async def test_namespace_example_filters_and_remove_vanished_over_tls(
    remote: Installation, remote_server: RunningServer, dst: Datastore
) -> None:
    def build() -> None:
        for ns in ["location_a/department_x/team_one", "location_a/department_x/team_two", "location_b"]:
            add_snapshot(remote.store, ns, "vm/1", T0, chunks=1)
            add_snapshot(remote.store, ns, "ct/2", T0, chunks=1)
        add_snapshot(remote.store, "location_a/department_x", "vm/1", T0, chunks=1)
        add_snapshot(remote.store, "location_a/department_x", "vm/1", T0 + 60, chunks=1)

    await asyncio.to_thread(build)
    opts: dict[str, Any] = {
        "remote_ns": N("location_a/department_x"),
        "ns": N("location_a_dep_x"),
        "group_filter": GroupFilters.parse(["type:vm"]),
    }
    report = await http_pull(remote_server, remote, dst, **opts)
    assert report.ok, report.failure_message()
    assert [str(n) for n in await asyncio.to_thread(dst.list_namespaces)] == [
        "",
        "location_a_dep_x",
        "location_a_dep_x/team_one",
        "location_a_dep_x/team_two",
    ]
    assert await asyncio.to_thread(dst.list_groups, N("location_a_dep_x/team_one")) == [G("vm/1")]

    def vanish() -> None:
        remote.store.remove_snapshot(N("location_a/department_x"), SnapshotId(G("vm/1"), T0))
        remote.store.remove_namespace(N("location_a/department_x/team_two"), delete_groups=True)

    await asyncio.to_thread(vanish)
    report = await http_pull(remote_server, remote, dst, remove_vanished=True, **opts)
    assert report.ok, report.failure_message()
    assert report.removed_snapshots == 2 and report.removed_namespaces == 1
    assert [
        i.snapshot.time for i in await asyncio.to_thread(dst.list_snapshots, N("location_a_dep_x"), G("vm/1"))
    ] == [T0 + 60]
    assert not await asyncio.to_thread(dst.namespace_exists, N("location_a_dep_x/team_two"))


# ---- a misbehaving server ---------------------------------------------------------------

Fault = Callable[[str, bytes, int], Awaitable[bytes | None]]
_CHUNK_RE = re.compile(r"/reader/[^/]+/chunk/([0-9a-f]{64})$")
_CHUNKS_RE = re.compile(r"/reader/[^/]+/chunks$")


class Faults:
    """What the middleware does to each chunk: ``fault(digest, blob, attempt) -> blob``; it may
    return None after breaking the connection itself. ``groups`` may replace the group listing."""

    def __init__(self, store: Datastore) -> None:
        self.store = store
        self.fault: Callable[[str, bytes, int], bytes | str] | None = None
        self.attempts: dict[str, int] = {}
        self.groups_answer: Any = None
        #: replaces the namespace-wide snapshot listing (a ``snapshots`` request without a group)
        self.snapshots_answer: Any = None
        #: the namespace of every namespace-wide snapshot listing asked for
        self.bulk_requests: list[str] = []


def fault_middleware(faults: Faults) -> Any:
    @web.middleware
    async def middleware(request: web.Request, handler: Any) -> web.StreamResponse:
        if faults.groups_answer is not None and request.path.endswith("/groups"):
            return web.json_response({"data": faults.groups_answer})
        bulk = request.path.endswith("/snapshots") and "backup-id" not in request.query
        if bulk:
            faults.bulk_requests.append(request.query.get("ns", ""))
        if faults.snapshots_answer is not None and bulk:
            return web.json_response({"data": faults.snapshots_answer})
        m = _CHUNK_RE.search(request.path)
        batch = request.method == "POST" and _CHUNKS_RE.search(request.path)
        if not (m or batch) or faults.fault is None:
            return await handler(request)
        digests = [m.group(1)] if m else (await request.json())["digests"]
        resp = web.StreamResponse()
        await resp.prepare(request)
        for d in digests:
            data = await asyncio.to_thread(faults.store.chunks.read, d)
            attempt = faults.attempts.get(d, 0)
            faults.attempts[d] = attempt + 1
            out = faults.fault(d, data, attempt)
            if out == "reset":
                assert request.transport is not None
                request.transport.abort()
                return resp
            if out == "truncate":
                await resp.write(
                    (FRAME_HEADER.pack(bytes.fromhex(d), len(data)) if batch else b"") + data[:10]
                )
                assert request.transport is not None
                request.transport.abort()
                return resp
            assert isinstance(out, bytes)
            if batch:
                await resp.write(FRAME_HEADER.pack(bytes.fromhex(d), len(out)))
            await resp.write(out)
        await resp.write_eof()
        return resp

    return middleware


@asynccontextmanager
async def faulty_server(inst: Installation) -> AsyncIterator[tuple[RunningServer, Faults]]:
    faults = Faults(inst.store)
    app = make_app(inst.paths, options=TEST_OPTIONS)
    app.middlewares.append(fault_middleware(faults))
    async with serve(inst.paths, "127.0.0.1", 0, options=TEST_OPTIONS, app=app) as info:
        yield RunningServer(inst.paths, info.host, info.port, info.tls, info.fingerprint), faults


def victim_of(inst: Installation) -> str:
    return inst.snapshots[("", "vm/100/2026-11-21T08:00:00Z")].all_digests[-1]


async def pull_group_vm100(srv: RunningServer, inst: Installation, dst: Datastore) -> PullReport:
    return await http_pull(srv, inst, dst, group_filter=GroupFilters.parse(["regex:^(vm/100|ct/200)$"]))


def assert_vm100_failed(report: PullReport, dst: Datastore, victim: str, match: str) -> None:
    by = {str(g.group): g for g in report.groups}
    assert by["vm/100"].status is GroupStatus.FAILED, by
    assert match in (by["vm/100"].error or ""), by["vm/100"].error
    assert by["ct/200"].status is GroupStatus.OK
    assert victim not in chunk_files(dst)
    # the older snapshot made it, the one with the bad chunk did not appear at all
    assert [i.snapshot.time_str for i in dst.list_snapshots(N(""), G("vm/100"))] == ["2026-11-20T08:00:00Z"]
    assert leftovers(dst) == []


async def test_corrupt_chunk_from_the_server(remote: Installation, dst: Datastore) -> None:
    victim = victim_of(remote)
    async with faulty_server(remote) as (srv, faults):
        faults.fault = lambda d, b, n: b[:-1] + bytes([b[-1] ^ 0xFF]) if d == victim else b
        report = await pull_group_vm100(srv, remote, dst)
    await asyncio.to_thread(assert_vm100_failed, report, dst, victim, "CRC")


async def test_decompression_bomb_from_the_server(remote: Installation, dst: Datastore) -> None:
    victim = victim_of(remote)
    frame = zstandard.ZstdCompressor(level=19, write_content_size=True).compress(b"\0" * (32 << 20))
    bomb = blob.ZSTD_MAGIC + struct.pack("<I", zlib.crc32(frame)) + frame
    async with faulty_server(remote) as (srv, faults):
        faults.fault = lambda d, b, n: bomb if d == victim else b
        report = await pull_group_vm100(srv, remote, dst)
    await asyncio.to_thread(assert_vm100_failed, report, dst, victim, "declares")


async def test_oversized_chunk_from_the_server(remote: Installation, dst: Datastore) -> None:
    victim = victim_of(remote)
    huge = blob.RAW_MAGIC + b"\0\0\0\0" + bytes(blob.MAX_BLOB_SIZE)
    async with faulty_server(remote) as (srv, faults):
        faults.fault = lambda d, b, n: huge if d == victim else b
        report = await pull_group_vm100(srv, remote, dst)
    await asyncio.to_thread(assert_vm100_failed, report, dst, victim, "exceeds the limit")


@pytest.mark.parametrize("kind", ["truncate", "reset"])
async def test_truncated_or_reset_transfer_is_retried(
    remote: Installation, dst: Datastore, kind: str
) -> None:
    victim = victim_of(remote)
    async with faulty_server(remote) as (srv, faults):
        faults.fault = lambda d, b, n: kind if d == victim and n == 0 else b
        source = await http_source(srv, remote, retries=3)
        try:
            report = await pull(source, dst)
        finally:
            await source.aclose()
    assert report.ok, report.failure_message()
    assert faults.attempts[victim] == 2
    assert await asyncio.to_thread(content, dst) == await asyncio.to_thread(content, remote.store)


async def test_hostile_group_name_is_refused(remote: Installation, dst: Datastore) -> None:
    async with faulty_server(remote) as (srv, faults):
        faults.groups_answer = [{"backup-type": "vm", "backup-id": "../../../etc", "backup-count": 1}]
        # remove-vanished needs the group listing (without it the snapshot listing names the groups)
        report = await http_pull(srv, remote, dst, remove_vanished=True)
    assert not report.ok
    assert any("backup id" in e for e in report.errors), report.errors
    assert await asyncio.to_thread(dst.list_groups, N("")) == []
    assert not await asyncio.to_thread((dst.root.parent / "etc").exists)


async def test_hostile_name_in_the_namespace_snapshot_listing_is_never_a_path(
    remote: Installation, dst: Datastore
) -> None:
    """The namespace-wide listing names the groups of a plain pull: a hostile id in it is
    refused; the pull falls back to the group and per-group listings (here honest)."""
    hostile = {
        "backup-type": "vm",
        "backup-id": "../../../etc",
        "backup-time": 1_700_000_000,
        "files": [],
        "size": 0,
        "protected": False,
    }
    async with faulty_server(remote) as (srv, faults):
        faults.snapshots_answer = [hostile]
        report = await http_pull(srv, remote, dst)
    assert report.ok, report.failure_message()
    # a failed namespace-wide listing is not asked for again: once per namespace
    assert faults.bulk_requests and len(set(faults.bulk_requests)) == len(faults.bulk_requests)
    assert not await asyncio.to_thread((dst.root.parent / "etc").exists)
    groups = await asyncio.to_thread(dst.list_groups, N(""))
    assert groups == await asyncio.to_thread(remote.store.list_groups, N("")) != []


# ---- the CLI ------------------------------------------------------------------------------


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "asyncsync", *args], env=env, capture_output=True, text=True, timeout=90
    )


def configure(paths: Paths, srv: SubprocessServer, inst: Installation, tmp_path: Path) -> Datastore:
    remotes.create_remote(
        paths,
        "pbs2",
        {
            "host": srv.host,
            "port": srv.port,
            "auth-id": str(inst.sync_token),
            "fingerprint": srv.fingerprint,
            "password": inst.sync_secret,
        },
    )
    return add_datastore(paths, "local", tmp_path / "local")


def test_cli_pull_json_text_and_exit_codes(
    remote: Installation,
    remote_subprocess: SubprocessServer,
    paths: Paths,
    cli_env: dict[str, str],
    tmp_path: Path,
) -> None:
    local = configure(paths, remote_subprocess, remote, tmp_path)
    p = cli(cli_env, "pull", "pbs2", "store", "local", "--output-format", "json")
    assert p.returncode == 0, p.stderr
    report = json.loads(p.stdout)
    assert report["ok"] and report["snapshots-synced"] == len(remote.snapshots)
    assert "downloaded" in p.stderr  # per-snapshot log lines
    assert content(local) == content(remote.store)
    p = cli(cli_env, "pull", "pbs2", "store", "local")
    assert p.returncode == 0 and p.stdout.strip() == "no new data to pull"
    # a group owned by someone else: reported, exit code of PartialFailure
    local.ensure_group(N(""), G("vm/999"), remote.admin)
    local.set_owner(N(""), G("vm/100"), remote.admin)
    p = cli(cli_env, "pull", "pbs2", "store", "local", "--owner", "sync@pbs")
    assert p.returncode == 8, (p.stdout, p.stderr)
    assert "vm/100" in p.stderr and "owned by admin@pbs" in p.stderr
    assert "Traceback" not in p.stderr
    # bad input: a clear message, exit 2
    p = cli(cli_env, "pull", "pbs2", "store", "local", "--rate-in", "fast")
    assert p.returncode == 2 and "rate-in" in p.stderr and "Traceback" not in p.stderr


def test_cli_local_to_local(paths: Paths, cli_env: dict[str, str], tmp_path: Path) -> None:
    src = add_datastore(paths, "a", tmp_path / "a")
    add_datastore(paths, "b", tmp_path / "b")
    add_snapshot(src, "x", "vm/1", T0, chunks=3)
    p = cli(cli_env, "pull", "-", "a", "b", "--remote-ns", "x", "--ns", "y")
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("pulled ")
    dst = Datastore.open(tmp_path / "b")
    assert dst.list_groups(N("y")) == [G("vm/1")]


def wait_for(cond: Callable[[], bool], proc: subprocess.Popen[str], deadline: float = 60.0) -> None:
    """Poll a condition on the store while the pull runs (a bounded wait, not a timing assertion)."""
    end = time.monotonic() + deadline
    while not cond():
        assert proc.poll() is None, "the pull finished before the kill point"
        assert time.monotonic() < end, "kill point not reached"
        time.sleep(0.01)


@pytest.mark.parametrize("point", ["first-chunk", "first-snapshot", "third-snapshot"])
def test_sigkill_mid_pull_then_rerun(
    remote: Installation,
    remote_subprocess: SubprocessServer,
    paths: Paths,
    cli_env: dict[str, str],
    tmp_path: Path,
    point: str,
) -> None:
    local = configure(paths, remote_subprocess, remote, tmp_path)

    def snapshots() -> int:
        return sum(1 for _ in local.iter_snapshots())

    conds: dict[str, Callable[[], bool]] = {
        "first-chunk": lambda: len(chunk_files(local)) >= 1,
        "first-snapshot": lambda: snapshots() >= 1,
        "third-snapshot": lambda: snapshots() >= 3,
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "asyncsync", "pull", "pbs2", "store", "local", "--rate-in", "24KiB"],
        env=cli_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(conds[point], proc)
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    assert snapshots() < len(remote.snapshots)
    p = cli(cli_env, "pull", "pbs2", "store", "local")
    assert p.returncode == 0, p.stderr
    assert content(local) == content(remote.store)
    assert leftovers(local) == []
