"""A chunk download in flight while ``asyncsync serve`` shuts down on SIGTERM.

The server promises (asyncsync/server/app.py): on SIGTERM the socket stops accepting,
in-flight requests get ``--shutdown-timeout`` seconds (2 here) to finish, the rest are
cut; the process exits 0 with no traceback. The client's receive window is pinned small
(SO_RCVBUF), so an 8 MiB chunk cannot sit in kernel buffers: the server's handler stays in
flight for exactly as long as the test holds back reading.
"""

# ruff: noqa: F811  (pytest fixtures imported from serverutil are parameters here)

from __future__ import annotations

import asyncio
import random
import signal
import socket
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest
from serverutil import Installation, SubprocessServer, remote, write_snapshot  # noqa: F401

from asyncsync import protocol
from asyncsync.names import ROOT_NS, SnapshotId

BIG = 8 * 1024 * 1024
SNAP = SnapshotId.parse("vm/900/2026-11-23T08:00:00Z")
FIRST = 64 * 1024


def _small_window(addr_info: tuple[Any, ...]) -> socket.socket:
    family, type_, proto, _, _ = addr_info
    sock = socket.socket(family, type_, proto)
    # a fixed receive buffer turns autotuning off: the server can push only ~4 MiB (its
    # send buffer) + this much ahead of what the test reads
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    return sock


@pytest.fixture
def big(remote: Installation) -> tuple[str, bytes]:
    """An 8 MiB random (stored raw) chunk in snapshot SNAP of the remote: (digest, stored blob)."""
    data = random.Random(9).randbytes(BIG)
    w = write_snapshot(
        remote.store, ROOT_NS, SNAP, owner="admin@pbs", archives={"big.fidx": data}, chunk_size=BIG
    )
    [digest] = w.digests["big.fidx"]
    return digest, remote.store.chunks.read(digest)


@pytest.fixture
def server(remote: Installation, big: tuple[str, bytes]) -> Iterator[SubprocessServer]:
    with SubprocessServer(remote.env()) as srv:
        yield srv


@asynccontextmanager
async def chunk_download(
    srv: SubprocessServer, inst: Installation, digest: str
) -> AsyncIterator[aiohttp.ClientResponse]:
    """A reader session on SNAP with its index downloaded; yields the chunk's response, its
    headers and first 64 KiB received (the rest still to be sent)."""
    assert srv.fingerprint is not None
    pin = aiohttp.Fingerprint(bytes.fromhex(srv.fingerprint.replace(":", "")))
    headers = {"Authorization": f"{protocol.TOKEN_AUTH_PREFIX}{inst.sync_token}:{inst.sync_secret}"}
    base = f"https://{srv.host}:{srv.port}{protocol.API_PREFIX}"
    connector = aiohttp.TCPConnector(ssl=pin, socket_factory=_small_window)
    async with aiohttp.ClientSession(connector=connector, headers=headers) as s:
        body = protocol.snapshot_params(ROOT_NS, SNAP)
        async with s.post(base + protocol.p_reader(inst.store_name), json=body) as resp:
            assert resp.status == 200, await resp.text()
            reader = (await resp.json())["data"]["reader"]
        async with s.get(base + protocol.p_reader_file(inst.store_name, reader, "big.fidx")) as resp:
            assert resp.status == 200
            await resp.read()
        async with s.get(base + protocol.p_reader_chunk(inst.store_name, reader, digest)) as resp:
            assert resp.status == 200
            assert resp.content_length is not None and resp.content_length > BIG
            yield resp


async def shutting_down(srv: SubprocessServer) -> None:
    """SIGTERM, then wait (bounded by the test timeout) until the socket stops accepting:
    a connection refused, or reset because it was still queued when the listener closed."""
    srv.proc.send_signal(signal.SIGTERM)
    while True:
        try:
            _, writer = await asyncio.open_connection(srv.host, srv.port)
        except (ConnectionRefusedError, ConnectionResetError):
            return
        writer.close()
        await writer.wait_closed()
        assert srv.proc.poll() is None, "the server exited with a request in flight"
        await asyncio.sleep(0.02)  # poll interval only: nothing is asserted about time


async def exited(srv: SubprocessServer) -> int:
    """The exit status, once the process ends on its own (no second signal)."""
    status = await asyncio.to_thread(srv.proc.wait, 30)
    await asyncio.to_thread(srv.stop)  # collects stderr
    return status


async def test_download_in_flight_completes_during_shutdown(
    remote: Installation, big: tuple[str, bytes], server: SubprocessServer
) -> None:
    digest, stored = big
    async with chunk_download(server, remote, digest) as resp:
        first = await resp.content.readexactly(FIRST)
        await shutting_down(server)
        # the server no longer accepts, but the request it is serving still gets every byte
        rest = await resp.content.read()
    assert first + rest == stored
    assert await exited(server) == 0
    assert "Traceback" not in server.stderr and "shutting down" in server.stderr


async def test_download_outlasting_the_shutdown_timeout_is_cut_cleanly(
    remote: Installation, big: tuple[str, bytes], server: SubprocessServer
) -> None:
    digest, stored = big
    async with chunk_download(server, remote, digest) as resp:
        first = await resp.content.readexactly(FIRST)
        await shutting_down(server)
        # the test never reads on: the server must give up after its timeout and exit anyway
        assert await exited(server) == 0
        received = bytearray(first)
        with pytest.raises(aiohttp.ClientError):
            while piece := await resp.content.read(FIRST):
                received += piece
    assert len(received) < len(stored) and stored.startswith(received)
    assert "Traceback" not in server.stderr and "shutting down" in server.stderr
