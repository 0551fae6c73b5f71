"""Chunkers: cut a byte stream into chunks, in flat memory.

Two ways to cut:

* :class:`FixedChunker` cuts equal pieces (disk images: a changed block changes
  exactly one chunk, and chunk *i* sits at offset ``i * chunk_size``).
* :class:`DynamicChunker` cuts content-defined chunks with FastCDC (archives of
  files: an insertion moves only the cut points next to it, so the rest still
  deduplicates).

Both read from any object with ``readinto(memoryview) -> int`` (or ``read``)
and yield ``memoryview`` slices of one reused buffer: a yielded view is valid
only until the next one is produced. Callers that keep a chunk beyond that
(hand it to another thread) copy it first. Memory stays at one buffer of about
``max_size`` (dynamic: twice that) however long the stream is.

Everything here is blocking and CPU/IO-bound: run it in a worker thread.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

from pyfastcdc import FastCDC

from ..datastore.blob import MAX_CHUNK_SIZE
from ..errors import InvalidInput

#: default fixed chunk size of images and default average size of dynamic chunks
DEFAULT_CHUNK_SIZE = 4 * 1024 * 1024
#: bounds pyfastcdc accepts for its average size
MIN_AVG_SIZE = 256
MAX_AVG_SIZE = 4 * 1024 * 1024


class Readable(Protocol):
    """A binary stream that fills a buffer; returns 0 at the end."""

    def readinto(self, buf: memoryview) -> int: ...


def _read_full(stream: Readable, view: memoryview) -> int:
    """Fill ``view`` from ``stream`` until it is full or the stream ends; return bytes read."""
    filled = 0
    while filled < len(view):
        n = stream.readinto(view[filled:])
        if not n:
            break
        filled += n
    return filled


class FixedChunker:
    """Cuts a stream into pieces of exactly ``chunk_size`` bytes (the last one may be shorter)."""

    def __init__(self, chunk_size: int = DEFAULT_CHUNK_SIZE) -> None:
        if not 1 <= chunk_size <= MAX_CHUNK_SIZE:
            raise InvalidInput(
                f"fixed chunk size must be between 1 byte and 16 MiB, not {chunk_size}", field="chunk-size"
            )
        self.chunk_size = chunk_size

    def __repr__(self) -> str:
        return f"FixedChunker(chunk_size={self.chunk_size})"

    def cut_stream(self, stream: Readable) -> Iterator[memoryview]:
        """Yield views of one reused buffer; each is valid until the next is yielded."""
        buf = bytearray(self.chunk_size)
        view = memoryview(buf)
        while True:
            n = _read_full(stream, view)
            if n:
                yield view[:n]
            if n < self.chunk_size:
                return


class DynamicChunker:
    """Content-defined chunking with FastCDC (``pyfastcdc``).

    ``avg_size`` is the target average (power of two recommended, 256 B … 4 MiB);
    ``min_size`` defaults to ``avg_size // 4`` and ``max_size`` to ``avg_size * 4``
    (at most 16 MiB, the chunk limit of format v1). Equal input gives equal cut
    points with equal parameters: that is what makes a second backup of the same
    data write no new chunks.
    """

    def __init__(
        self, avg_size: int = DEFAULT_CHUNK_SIZE, *, min_size: int | None = None, max_size: int | None = None
    ) -> None:
        if not MIN_AVG_SIZE <= avg_size <= MAX_AVG_SIZE:
            raise InvalidInput(
                f"average chunk size must be between 256 B and 4 MiB, not {avg_size}", field="avg-chunk-size"
            )
        min_size = max(64, avg_size // 4) if min_size is None else min_size
        max_size = min(MAX_CHUNK_SIZE, max(1024, avg_size * 4)) if max_size is None else max_size
        if not (64 <= min_size <= min(avg_size, 1024 * 1024) and avg_size <= max_size <= MAX_CHUNK_SIZE):
            raise InvalidInput(
                f"need 64 <= min ({min_size}) <= avg ({avg_size}) <= max ({max_size}) <= 16 MiB"
                " and min <= 1 MiB",
                field="chunk-size",
            )
        self.avg_size = avg_size
        self.min_size = min_size
        self.max_size = max_size
        self._cdc = FastCDC(avg_size, min_size=min_size, max_size=max_size)

    def __repr__(self) -> str:
        return f"DynamicChunker(avg={self.avg_size}, min={self.min_size}, max={self.max_size})"

    def cut_stream(self, stream: Readable) -> Iterator[memoryview]:
        """Yield views of pyfastcdc's buffer; each is valid until the next is yielded."""
        for chunk in self._cdc.cut_stream(stream):
            yield chunk.data

    def cut_buf(self, data: bytes | bytearray | memoryview) -> Iterator[memoryview]:
        """Cut an in-memory buffer (tests, benchmarks)."""
        for chunk in self._cdc.cut_buf(data):
            yield chunk.data


__all__ = ["DEFAULT_CHUNK_SIZE", "DynamicChunker", "FixedChunker", "Readable"]
