"""``asyncsync.sync.pull.pull`` in its own process, for what the CLI cannot express yet.

::

    python -m bench.pullproc --port P [--no-tls] [--fingerprint FP] --store S --target PATH [--rate-in 50MiB]

The bench uses the ``asyncsync pull`` CLI wherever it can; this launcher runs the
same library pull (same engine, same options, uvloop) when a remote cannot be
configured for plain HTTP through the CLI. It prints the pull's summary line
and exits 1 if any group failed.
"""

from __future__ import annotations

from asyncsync import startup

startup.pause()  # as the CLI: the collector paused while modules load (runner.run resumes it)

import argparse  # noqa: E402
import asyncio  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

from asyncsync.datastore.chunkstore import SyncLevel  # noqa: E402
from asyncsync.datastore.datastore import Datastore  # noqa: E402
from asyncsync.names import AuthId  # noqa: E402
from asyncsync.runner import run  # noqa: E402
from asyncsync.sync.pull import PullOptions, pull  # noqa: E402
from asyncsync.sync.source import HttpSource  # noqa: E402
from asyncsync.units import parse_size  # noqa: E402


async def _main(args: argparse.Namespace) -> int:
    target = await asyncio.to_thread(Datastore.open, args.target, "target", SyncLevel.NONE)
    options = PullOptions(
        rate_in=parse_size(args.rate_in) if args.rate_in else None,
        burst_in=parse_size(args.burst_in) if args.burst_in else None,
    )
    source = await HttpSource.connect(
        args.host,
        args.port,
        AuthId.parse(args.auth_id),
        args.password,
        args.store,
        fingerprint=args.fingerprint,
        tls=not args.no_tls,
        name="bench",
    )
    try:
        report = await pull(source, target, options, log=lambda line: None)
    finally:
        await source.aclose()
    print(report.summary(), flush=True)
    return 0 if report.ok else 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.pullproc")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--no-tls", action="store_true")
    ap.add_argument("--fingerprint", default=None)
    ap.add_argument("--auth-id", default="root@pam")
    ap.add_argument("--password", required=True)
    ap.add_argument("--store", required=True)
    ap.add_argument("--target", type=Path, required=True)
    ap.add_argument("--rate-in", default=None)
    ap.add_argument("--burst-in", default=None)
    args = ap.parse_args(argv)
    return run(lambda: _main(args))  # the CLI's loop: uvloop, the transfer switch interval


if __name__ == "__main__":
    sys.exit(main())
