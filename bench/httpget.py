"""The transfer limit: plain parallel HTTP GET of the chunk files, no hashing, no writing.

Two entry points, each run in its own process by the harness::

    python -m bench.httpget serve ROOT [--cert C --key K]    # prints "listening on PORT"
    python -m bench.httpget get URL LISTFILE [--concurrency 8] [--insecure]

The server is aiohttp's static file handler (sendfile on plain HTTP); the client
keeps ``concurrency`` requests in flight over one keep-alive pool, reads each
body in large pieces and drops it, and prints ``{"bytes": N, "files": M, "seconds": S}``
(S: the transfer alone, start-up excluded).
Both run on uvloop, like asyncsync.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import socket
import ssl
import sys
import time
from pathlib import Path

import aiohttp
from aiohttp import web


async def _serve(root: Path, cert: str | None, key: str | None) -> None:
    app = web.Application()
    app.router.add_static("/", root, show_index=False, follow_symlinks=False)
    ctx: ssl.SSLContext | None = None
    if cert and key:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(cert, key)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    site = web.SockSite(runner, sock, ssl_context=ctx)
    await site.start()
    print(f"listening on {sock.getsockname()[1]}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()


async def _get(url: str, paths: list[str], concurrency: int, insecure: bool) -> dict[str, float]:
    queue: asyncio.Queue[str] = asyncio.Queue()
    for p in paths:
        queue.put_nowait(p)
    total = 0
    files = 0
    start = time.perf_counter()
    connector = aiohttp.TCPConnector(limit=concurrency, ssl=not insecure)
    timeout = aiohttp.ClientTimeout(total=None, sock_read=60)

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal total, files
        while True:
            try:
                p = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            async with session.get(url.rstrip("/") + "/" + p) as resp:
                resp.raise_for_status()
                while True:
                    piece = await resp.content.readany()
                    if not piece:
                        break
                    total += len(piece)
            files += 1

    async with (
        aiohttp.ClientSession(connector=connector, timeout=timeout) as session,
        asyncio.TaskGroup() as tg,
    ):
        for _ in range(concurrency):
            tg.create_task(worker(session))
    return {"bytes": total, "files": files, "seconds": time.perf_counter() - start}


def _run(coro: object) -> object:
    try:
        import uvloop

        return uvloop.run(coro)  # type: ignore[arg-type]
    except ImportError:  # pragma: no cover
        return asyncio.run(coro)  # type: ignore[arg-type]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.httpget")
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve")
    s.add_argument("root", type=Path)
    s.add_argument("--cert")
    s.add_argument("--key")
    g = sub.add_parser("get")
    g.add_argument("url")
    g.add_argument("listfile", type=Path)
    g.add_argument("--concurrency", type=int, default=8)
    g.add_argument("--insecure", action="store_true")
    args = ap.parse_args(argv)
    if args.cmd == "serve":
        _run(_serve(args.root, args.cert, args.key))
        return 0
    paths = [line for line in args.listfile.read_text().splitlines() if line]
    result = _run(_get(args.url, paths, args.concurrency, args.insecure))
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
