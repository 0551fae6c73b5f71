"""Server limits against slow clients: the request-head deadline (slowloris), over raw TLS sockets.

The server runs in-process with a tiny ``header_timeout``; the client side is a raw
TLS stream so the test controls exactly which bytes are sent when. Timing is only
asserted as "closed within a generous bound".
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from serverutil import TEST_OPTIONS, RunningServer, make_paths, running_server

HEADER_TIMEOUT = 0.5
#: "closed within": generous, for a loaded 2-core machine
BOUND = 15.0
REQUEST = b"GET /api2/json/version HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: slow-test\r\n\r\n"


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[RunningServer]:
    options = dataclasses.replace(TEST_OPTIONS, header_timeout=HEADER_TIMEOUT)
    async with running_server(make_paths(tmp_path), options=options) as srv:
        yield srv


async def connect(srv: RunningServer) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A raw TLS connection, pinned to the server's fingerprint."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    reader, writer = await asyncio.open_connection(srv.host, srv.port, ssl=ctx)
    der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    assert srv.fingerprint == ":".join(f"{b:02x}" for b in hashlib.sha256(der).digest())
    return reader, writer


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """One HTTP/1.1 response with a Content-Length body: (status, body)."""
    async with asyncio.timeout(BOUND):
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        length = next(
            int(v) for k, _, v in (h.partition(":") for h in lines[1:]) if k.lower() == "content-length"
        )
        return int(lines[0].split()[1]), await reader.readexactly(length)


async def assert_closed(reader: asyncio.StreamReader) -> None:
    """The server closes the connection (EOF) within :data:`BOUND` seconds, answering nothing."""
    async with asyncio.timeout(BOUND):
        try:
            data = await reader.read()
        except ConnectionResetError:
            data = b""
    assert data == b""


async def close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(ConnectionError, ssl.SSLError):  # the server may already have gone
        await writer.wait_closed()


async def test_incomplete_request_line_is_closed(server: RunningServer) -> None:
    reader, writer = await connect(server)
    writer.write(REQUEST[:10])  # "GET /api2/" and then nothing
    await writer.drain()
    await assert_closed(reader)
    await close(writer)


async def test_silent_connection_is_closed(server: RunningServer) -> None:
    reader, writer = await connect(server)
    await assert_closed(reader)
    await close(writer)


async def test_incomplete_headers_are_closed(server: RunningServer) -> None:
    reader, writer = await connect(server)
    writer.write(REQUEST[:-2])  # every header line, but never the blank line that ends them
    await writer.drain()
    await assert_closed(reader)
    await close(writer)


async def test_slow_complete_request_and_keepalive_reuse(server: RunningServer) -> None:
    reader, writer = await connect(server)
    try:
        # a request trickled in pieces (well within the deadline) is served
        for piece in (REQUEST[:7], REQUEST[7:40], REQUEST[40:]):
            writer.write(piece)
            await writer.drain()
            await asyncio.sleep(0.02)
        status, body = await read_response(reader)
        assert status == 401 and b"authentication" in body  # a real answer from the app
        # an idle keep-alive connection outlives the head deadline (the keep-alive timer rules it) ...
        await asyncio.sleep(HEADER_TIMEOUT * 1.5)
        # ... and serves the next request, and one after that, on the same connection
        for _ in range(2):
            writer.write(REQUEST)
            await writer.drain()
            assert (await read_response(reader))[0] == 401
        # the deadline is re-armed for every request: a late head on the reused connection is cut
        writer.write(REQUEST[:20])
        await writer.drain()
        await assert_closed(reader)
    finally:
        await close(writer)


async def test_pipelined_requests_are_served(server: RunningServer) -> None:
    reader, writer = await connect(server)
    try:
        writer.write(REQUEST * 3)
        await writer.drain()
        for _ in range(3):
            assert (await read_response(reader))[0] == 401
    finally:
        await close(writer)
