"""Local limits measured in the same run: blake3, zstd decompression, CRC32 and file writes.

Each is run in a child process (``python -m bench.limits NAME --mib N``) so that
its CPU time and memory are its own, like every other tool; it prints
``{"bytes": N, "seconds": S}`` measured around the work only (start-up excluded).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import zlib
from pathlib import Path

import blake3
import zstandard

MiB = 1024 * 1024
_PIECE = 4 * MiB


def _buffer() -> bytearray:
    return bytearray(blake3.blake3(b"limits").digest(_PIECE))


def bench_blake3(total: int) -> float:
    buf = _buffer()
    t = time.perf_counter()
    for _ in range(total // _PIECE):
        blake3.blake3(buf).digest()
    return time.perf_counter() - t


def bench_crc32(total: int) -> float:
    buf = _buffer()
    t = time.perf_counter()
    for _ in range(total // _PIECE):
        zlib.crc32(buf)
    return time.perf_counter() - t


def bench_zstd(total: int) -> float:
    """Decompression of level-1 frames of half-compressible data, per uncompressed byte."""
    # 16 symbols of random text: about half the size after entropy coding, and realistic decoding work
    data = blake3.blake3(b"zstd").digest(_PIECE).translate(bytes(97 + (i & 15) for i in range(256)))
    frame = zstandard.ZstdCompressor(level=1, write_content_size=True).compress(data)
    d = zstandard.ZstdDecompressor()
    t = time.perf_counter()
    for _ in range(total // _PIECE):
        d.decompress(frame, max_output_size=_PIECE)
    return time.perf_counter() - t


def bench_write(total: int, folder: Path) -> float:
    """Write 4 MiB files from one reused buffer: temp file, write, rename (no fsync), like a chunk store."""
    buf = _buffer()
    t = time.perf_counter()
    for i in range(total // _PIECE):
        tmp = folder / f".tmp.{i}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            view = memoryview(buf)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)
        os.replace(tmp, folder / f"{i:08d}")
    return time.perf_counter() - t


NAMES = ("blake3", "zstd-decompress", "crc32", "file-write")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.limits")
    ap.add_argument("name", choices=NAMES)
    ap.add_argument("--mib", type=int, default=512)
    ap.add_argument("--dir", type=Path, default=None, help="folder for file-write (default: a temp dir)")
    args = ap.parse_args(argv)
    total = max(_PIECE, args.mib * MiB // _PIECE * _PIECE)
    if args.name == "blake3":
        seconds = bench_blake3(total)
    elif args.name == "crc32":
        seconds = bench_crc32(total)
    elif args.name == "zstd-decompress":
        seconds = bench_zstd(total)
    else:
        with tempfile.TemporaryDirectory(dir=args.dir) as d:
            seconds = bench_write(total, Path(d))
    print(json.dumps({"bytes": total, "seconds": seconds}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
