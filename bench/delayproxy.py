"""A TCP proxy on 127.0.0.1 that adds latency to every response and records the byte rate.

::

    python -m bench.delayproxy --target-port P [--delay-ms 25] [--stats FILE]   # prints "listening on PORT"

Everything the server sends is forwarded ``delay-ms`` after it arrived (a delay
line: reading continues meanwhile, so bandwidth is not capped). Every
request/response round trip thus costs ``delay-ms`` more, as on a link with that
much added latency; the proxy works on TLS, HTTP/1.1 and HTTP/2 alike because it
never parses the stream.

On SIGTERM it writes ``--stats``: the server→client bytes per 50 ms bucket,
from which the harness computes a pull's achieved rate and its largest burst.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
import time
from pathlib import Path

BUCKET_S = 0.05
_PIECE = 256 * 1024


class Proxy:
    def __init__(self, target_port: int, delay_s: float) -> None:
        self.target_port = target_port
        self.delay_s = delay_s
        self.t0: float | None = None
        self.buckets: dict[int, int] = {}
        self.connections = 0

    def _count(self, n: int) -> None:
        now = time.monotonic()
        if self.t0 is None:
            self.t0 = now
        b = int((now - self.t0) / BUCKET_S)
        self.buckets[b] = self.buckets.get(b, 0) + n

    async def handle(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            sr, sw = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            cw.close()
            return
        # a delay line: each piece the server sends is forwarded ``delay_s`` after it arrived, while
        # reading goes on, so every response starts later but bandwidth is not capped (HTTP/1.1 and
        # HTTP/2 alike); the queue bounds the bytes held (256 pieces of at most 256 KiB)
        line: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue(maxsize=256)

        async def upstream() -> None:
            while data := await cr.read(_PIECE):
                sw.write(data)
                await sw.drain()
            with contextlib.suppress(OSError):
                sw.write_eof()

        async def down_read() -> None:
            while data := await sr.read(_PIECE):
                await line.put((time.monotonic() + self.delay_s, data))
            await line.put(None)

        async def down_write() -> None:
            while (item := await line.get()) is not None:
                due, data = item
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                self._count(len(data))
                cw.write(data)
                await cw.drain()
            raise EOFError  # the server closed: end the connection

        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(upstream())
                tg.create_task(down_read())
                tg.create_task(down_write())
        except* (EOFError, OSError):
            pass
        finally:
            for w in (cw, sw):
                w.close()
                with contextlib.suppress(OSError):
                    await w.wait_closed()

    def stats(self) -> dict[str, object]:
        n = max(self.buckets) + 1 if self.buckets else 0
        return {
            "bucket_s": BUCKET_S,
            "connections": self.connections,
            "series": [self.buckets.get(i, 0) for i in range(n)],
        }


async def _main(target_port: int, delay_ms: float, stats: Path | None) -> None:
    proxy = Proxy(target_port, delay_ms / 1000)
    server = await asyncio.start_server(proxy.handle, "127.0.0.1", 0, limit=_PIECE)
    print(f"listening on {server.sockets[0].getsockname()[1]}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()
    if stats is not None:
        await asyncio.to_thread(stats.write_text, json.dumps(proxy.stats()))


def summarize(stats: dict[str, object], rate: float, burst: float) -> dict[str, float]:
    """Achieved rate (bytes/s between the first and last busy bucket) and the largest excess
    over ``rate`` in any 1 s window, in bytes (compare with ``burst``)."""
    series = [int(x) for x in stats.get("series", [])]  # type: ignore[attr-defined]
    bucket = float(stats.get("bucket_s", BUCKET_S))  # type: ignore[arg-type]
    busy = [i for i, v in enumerate(series) if v]
    if not busy:
        return {"achieved_rate": 0.0, "rate_error": -1.0, "max_excess_1s": 0.0, "burst": burst}
    first, last = busy[0], busy[-1]
    span = (last - first + 1) * bucket
    total = sum(series)
    achieved = total / span
    per_window = max(1, round(1.0 / bucket))
    excess = 0.0
    for i in range(first, max(first + 1, last - per_window + 2)):
        excess = max(excess, sum(series[i : i + per_window]) - rate * per_window * bucket)
    return {
        "achieved_rate": achieved,
        "rate_error": achieved / rate - 1 if rate else 0.0,
        "max_excess_1s": excess,
        "burst": burst,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.delayproxy")
    ap.add_argument("--target-port", type=int, required=True)
    ap.add_argument("--delay-ms", type=float, default=25.0)
    ap.add_argument("--stats", type=Path)
    args = ap.parse_args(argv)
    try:
        import uvloop

        uvloop.run(_main(args.target_port, args.delay_ms, args.stats))
    except ImportError:  # pragma: no cover
        asyncio.run(_main(args.target_port, args.delay_ms, args.stats))
    return 0


if __name__ == "__main__":
    sys.exit(main())
