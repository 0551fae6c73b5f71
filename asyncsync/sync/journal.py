"""The resume journal: chunks a pull verified and stored, before a snapshot references them.

A local chunk may only be reused without download when the source cannot have
forged the reference: normally, when a local snapshot of the job owner already
references it. A pull that was interrupted (Ctrl-C, SIGKILL, a failing group)
has stored verified chunks that no committed snapshot references yet; without
a record of them the rerun would have to download them all again.

So every chunk the fetch pool verifies and writes is appended (its 32 raw digest
bytes) to ``<datastore>/.pull-journal/<owner key>``, in the same thread hop as
the write. The next pull for the same owner loads the journal into its trusted
set: those chunks came, verified, from a source this owner pulled from, which
is exactly what the forged-reference rule asks. After a run in which every
group succeeded the journal is removed (its chunks are then referenced by
committed snapshots, or are garbage for the next garbage collection).

Concurrent pulls of the same owner append to the same file (``O_APPEND``
writes of whole 32-byte entries do not interleave); a removal racing with another run's
appends only costs that run a re-download later, never a wrong reuse. Entries
whose chunk has disappeared since (garbage collection) are harmless: reuse
always checks that the chunk file is present.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Sequence
from pathlib import Path

from ..datastore import blob
from ..names import AuthId

JOURNAL_DIR = ".pull-journal"
#: refuse to load a journal larger than this (≈ 8 million chunks); a bigger one is ignored
MAX_JOURNAL_SIZE = 256 * 1024 * 1024


class ResumeJournal:
    """The journal of one owner in one datastore. All methods are blocking."""

    def __init__(self, root: Path, owner: AuthId) -> None:
        self.path = root / JOURNAL_DIR / blob.digest_of(str(owner).encode())[:32]
        self._fd: int | None = None
        self._lock = threading.Lock()  # appends come from several worker threads

    def __repr__(self) -> str:
        return f"ResumeJournal({str(self.path)!r}, open={self._fd is not None})"

    def load(self) -> set[bytes]:
        """The raw digests recorded so far (a torn last entry is ignored)."""
        try:
            with open(self.path, "rb") as f:
                data = f.read(MAX_JOURNAL_SIZE + 1)
        except FileNotFoundError:
            return set()
        if len(data) > MAX_JOURNAL_SIZE:
            return set()
        end = len(data) - len(data) % 32
        return {data[i : i + 32] for i in range(0, end, 32)}

    def append(self, digests: str | Sequence[str]) -> None:
        """Record verified, stored chunks (opens the file on first use).

        Several digests go out in one ``O_APPEND`` write of whole 32-byte
        entries (the fetch pool journals all chunks of one thread hop at once).
        """
        data = bytes.fromhex(digests) if isinstance(digests, str) else bytes.fromhex("".join(digests))
        if not data:
            return
        with self._lock:
            if self._fd is None:
                self.path.parent.mkdir(exist_ok=True)
                self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            fd = self._fd
        view = memoryview(data)
        while view:  # a regular file takes it whole; a short write would only split the tail
            view = view[os.write(fd, view) :]

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    def clear(self) -> None:
        self.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


__all__ = ["JOURNAL_DIR", "ResumeJournal"]
