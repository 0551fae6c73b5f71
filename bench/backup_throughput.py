"""Backup throughput next to the local limits, on the same data in the same run.

    python -m bench.backup_throughput [--size 1GiB] [--avg-chunk-size 4MiB] [--keep DIR]

For two data sets of ``--size`` bytes (random, i.e. incompressible; and
text-like, i.e. compressible and repetitive), stored as 64 MiB files in a
folder, it measures:

* ``backup``: ``asyncsync.backup.writer.run_backup`` of the folder into a fresh
  datastore (tar stream, FastCDC, blake3, zstd, chunk writes), sync-level none;
* ``backup (2nd)``: the same backup again (all chunks present: read + cut + hash);
* ``blake3``: hashing the files (one thread, 4 MiB pieces);
* ``zstd -1``: compressing the files (one thread, 4 MiB pieces);
* ``copy``: plain file copy of the folder (``shutil.copyfile``).

Absolute numbers drift on a shared machine; the printed ratios
(backup / limit) are what to compare between runs.
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import blake3
import zstandard

from asyncsync.backup.writer import ArchiveSource, BackupOptions, run_backup
from asyncsync.datastore.chunkstore import SyncLevel
from asyncsync.datastore.datastore import Datastore
from asyncsync.names import ROOT_NS, BackupType, GroupId
from asyncsync.units import format_rate, format_size, parse_size

FILE_SIZE = 64 * 1024 * 1024
PIECE = 4 * 1024 * 1024

_WORDS = [
    *[
        "backup",
        "chunk",
        "datastore",
        "snapshot",
        "namespace",
        "remote",
        "sync",
        "verify",
        "index",
        "manifest",
        "blob",
        "group",
        "owner",
    ],
    *[
        "the",
        "of",
        "and",
        "to",
        "in",
        "is",
        "that",
        "for",
        "it",
        "as",
        "with",
        "was",
        "on",
        "be",
        "by",
        "this",
        "are",
        "from",
        "at",
        "or",
        "an",
        "have",
        "not",
        "which",
    ],
]


def _random_piece(rnd: random.Random, n: int) -> bytes:
    return rnd.randbytes(n)


_LINES: list[bytes] = []


def _text_piece(rnd: random.Random, n: int) -> bytes:
    # log-like lines drawn from a pool: compressible (zstd -1 ~4x), repetitive, but not periodic
    if not _LINES:
        for _ in range(8192):
            words = " ".join(rnd.choice(_WORDS) for _ in range(rnd.randint(4, 14)))
            stamp = f"2026-11-26T{rnd.randint(0, 23):02d}:{rnd.randint(0, 59):02d}:{rnd.randint(0, 59):02d}Z"
            _LINES.append(f"{stamp} pid={rnd.randint(1, 99999)} {words}\n".encode())
    out = b"".join(rnd.choices(_LINES, k=n // 40 + 1))
    while len(out) < n:
        out += b"".join(rnd.choices(_LINES, k=1024))
    return out[:n]


def make_dataset(folder: Path, size: int, kind: str, seed: int = 1) -> None:
    folder.mkdir(parents=True)
    rnd = random.Random(seed)
    make = _random_piece if kind == "random" else _text_piece
    left, i = size, 0
    while left > 0:
        n = min(FILE_SIZE, left)
        with open(folder / f"file{i:04d}.dat", "wb") as f:
            written = 0
            while written < n:
                k = min(PIECE, n - written)
                f.write(make(rnd, k))
                written += k
        left -= n
        i += 1


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file())


def _timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _each_piece(folder: Path, fn: Callable[[memoryview], object]) -> None:
    buf = bytearray(PIECE)
    view = memoryview(buf)
    for p in _files(folder):
        with open(p, "rb", buffering=0) as f:
            while n := f.readinto(buf):
                fn(view[:n])


def measure(folder: Path, work: Path, avg_chunk_size: int) -> dict[str, float]:
    """Seconds per operation on ``folder``."""
    out: dict[str, float] = {}
    store_dir = work / "store"
    store = Datastore.create(store_dir, "bench", SyncLevel.NONE)
    src = [ArchiveSource.parse(f"data.didx={folder}")]
    opts = BackupOptions(avg_chunk_size=avg_chunk_size)
    group = GroupId(BackupType.HOST, "bench")
    out["backup"] = _timed(lambda: run_backup(store, ROOT_NS, group, src, backup_time=1000, options=opts))
    out["backup (2nd)"] = _timed(
        lambda: run_backup(store, ROOT_NS, group, src, backup_time=2000, options=opts)
    )
    shutil.rmtree(store_dir)

    out["blake3"] = _timed(lambda: _each_piece(folder, lambda v: blake3.blake3(v).digest()))
    cctx = zstandard.ZstdCompressor(level=1)
    out["zstd -1"] = _timed(lambda: _each_piece(folder, cctx.compress))

    dst = work / "copy"
    dst.mkdir()

    def copy() -> None:
        for p in _files(folder):
            shutil.copyfile(p, dst / p.name)

    out["copy"] = _timed(copy)
    shutil.rmtree(dst)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.backup_throughput", description=__doc__.split("\n")[0])
    ap.add_argument("--size", default="1GiB", help="bytes per data set (default 1GiB)")
    ap.add_argument("--avg-chunk-size", default="4MiB", help="FastCDC average chunk size (default 4MiB)")
    ap.add_argument("--kinds", default="random,text", help="data sets to run (random,text)")
    ap.add_argument("--dir", default=None, help="work folder (default: a temp folder, removed afterwards)")
    args = ap.parse_args(argv)
    size = parse_size(args.size, field="size")
    avg = parse_size(args.avg_chunk_size, field="avg-chunk-size")
    base = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="asyncsync-bench-"))
    try:
        for kind in args.kinds.split(","):
            work = base / kind
            data = work / "data"
            print(f"generating {format_size(size)} of {kind} data ...", file=sys.stderr)
            make_dataset(data, size, kind)
            secs = measure(data, work, avg)
            print(f"\n{kind} data, {format_size(size)}, avg chunk {format_size(avg)}")
            print(f"  {'what':<14} {'throughput':>14} {'backup / this':>14}")
            for name, s in secs.items():
                rate = size / s if s > 0 else float("inf")
                ratio = s / secs["backup"]  # = backup throughput / this throughput
                print(f"  {name:<14} {format_rate(rate):>14} {ratio:>13.2f}x")
            shutil.rmtree(work)
    finally:
        if not args.dir:
            shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
