"""Blob codec: the on-disk and on-wire encoding of chunks and small files.

Layout (format v1)::

    magic   8 bytes   RAW_MAGIC or ZSTD_MAGIC
    crc32   4 bytes   CRC32 (zlib) of the payload, little-endian
    payload           raw bytes, or one zstd frame that declares its content size

zstd (level 1) is kept only when it is smaller than the raw data. Decoding is
bounded: a frame that declares more than ``max_size`` bytes, or declares no
size at all, is refused before anything is decompressed, so a 32 KiB bomb
cannot claim 1 GiB.

All functions here are plain, blocking and CPU-bound: callers on the event
loop run them in a worker thread (one hop per chunk, see :func:`decode_verified`).
"""

from __future__ import annotations

import struct
import threading
from typing import TYPE_CHECKING

import blake3

# ISA-L's CRC32 is the zlib polynomial at ~4x zlib's speed (it uses carry-less multiply);
# the same values, so blobs written either way read either way
from isal.isal_zlib import crc32

from ..errors import ChunkTooLarge, CorruptBlob, DigestMismatch

if TYPE_CHECKING:
    import zstandard

# zstandard is imported where a frame is made or read, not here: a command that never
# touches compressed data (a pull with nothing new, a listing) skips its import (3-5 ms)

RAW_MAGIC = b"ASYRAW\x01\x00"
ZSTD_MAGIC = b"ASYZST\x01\x00"
HEADER_SIZE = 12
MAX_CHUNK_SIZE = 16 * 1024 * 1024
#: a blob may be slightly larger than its content (header + zstd overhead)
MAX_BLOB_SIZE = MAX_CHUNK_SIZE + 64 * 1024
ZSTD_LEVEL = 1

_local = threading.local()


def _compressor() -> zstandard.ZstdCompressor:
    c: zstandard.ZstdCompressor | None = getattr(_local, "cctx", None)
    if c is None:
        import zstandard

        c = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_content_size=True)
        _local.cctx = c
    return c


def _decompressor() -> zstandard.ZstdDecompressor:
    d: zstandard.ZstdDecompressor | None = getattr(_local, "dctx", None)
    if d is None:
        import zstandard

        d = zstandard.ZstdDecompressor()
        _local.dctx = d
    return d


def digest_of(data: bytes | memoryview) -> str:
    """blake3-256 of ``data``, lowercase hex: the name of a chunk."""
    return blake3.blake3(data).hexdigest()


def encode(data: bytes | memoryview, *, compress: bool = True, max_size: int = MAX_CHUNK_SIZE) -> bytes:
    """Encode ``data`` as a blob; raises :class:`ChunkTooLarge` above ``max_size``."""
    if len(data) > max_size:
        raise ChunkTooLarge(f"chunk of {len(data)} bytes exceeds the limit of {max_size}")
    if compress and len(data) > 0:
        packed = _compressor().compress(data)
        if len(packed) < len(data):
            return ZSTD_MAGIC + struct.pack("<I", crc32(packed)) + packed
    payload = bytes(data)
    return RAW_MAGIC + struct.pack("<I", crc32(payload)) + payload


def decode(blob: bytes | memoryview, *, max_size: int = MAX_CHUNK_SIZE) -> bytes:
    """Decode a blob, checking magic and CRC, decompressing at most ``max_size`` bytes.

    Raises :class:`CorruptBlob` for any malformed input and :class:`ChunkTooLarge`
    for content over the limit.
    """
    view = memoryview(blob)
    if len(view) < HEADER_SIZE:
        raise CorruptBlob(f"blob too short ({len(view)} bytes)")
    magic = bytes(view[:8])
    (crc,) = struct.unpack_from("<I", view, 8)
    payload = view[HEADER_SIZE:]
    if crc32(payload) != crc:
        raise CorruptBlob("blob CRC mismatch")
    if magic == RAW_MAGIC:
        if len(payload) > max_size:
            raise ChunkTooLarge(f"chunk of {len(payload)} bytes exceeds the limit of {max_size}")
        return bytes(payload)
    if magic != ZSTD_MAGIC:
        raise CorruptBlob("unknown blob magic")
    import zstandard

    try:
        declared = zstandard.frame_content_size(payload)
    except zstandard.ZstdError as exc:
        raise CorruptBlob(f"bad zstd frame header: {exc}") from exc
    if declared < 0:
        raise CorruptBlob("zstd frame does not declare its content size")
    if declared > max_size:
        raise ChunkTooLarge(f"compressed chunk declares {declared} bytes, limit is {max_size}")
    try:
        out = _decompressor().decompress(payload, max_output_size=max_size)
    except zstandard.ZstdError as exc:
        raise CorruptBlob(f"zstd decompression failed: {exc}") from exc
    if len(out) != declared:
        raise CorruptBlob("zstd content size mismatch")
    return out


def decode_verified(blob: bytes | memoryview, digest: str, *, max_size: int = MAX_CHUNK_SIZE) -> bytes:
    """Decode a chunk blob and check that its content hashes to ``digest``.

    Raises :class:`DigestMismatch` when it does not.
    """
    data = decode(blob, max_size=max_size)
    actual = digest_of(data)
    if actual != digest:
        raise DigestMismatch(digest, actual)
    return data


def encoded_size_ok(n: int) -> bool:
    """True if a blob of ``n`` bytes could be a valid chunk blob."""
    return HEADER_SIZE <= n <= MAX_BLOB_SIZE


__all__ = [
    "HEADER_SIZE",
    "MAX_BLOB_SIZE",
    "MAX_CHUNK_SIZE",
    "RAW_MAGIC",
    "ZSTD_MAGIC",
    "crc32",
    "decode",
    "decode_verified",
    "digest_of",
    "encode",
    "encoded_size_ok",
]
