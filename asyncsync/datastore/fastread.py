"""Reads of a datastore's small files by plain string paths, for code that visits thousands
of groups and snapshots per call: the server's listings and the pull's unchanged-group check.

Each function gives the answer of the :class:`~.datastore.Datastore` method its docstring
names, without that method's per-call ``Path`` objects (which cost more than the syscalls
in those loops). Blocking: call from a worker thread.

Hostile local files: a FIFO, device or folder where a regular file belongs is "not there"
(as ``os.path.isfile`` says) and never blocks the reading thread; a read is bounded.
"""

from __future__ import annotations

import functools
import os
import stat

from ..names import AuthId, GroupId
from . import blob
from .chunkstore import TMP_PREFIX
from .datastore import OWNER_FILE, snapshot_time
from .manifest import MANIFEST_NAME

_PIECE = 65536


def group_dir(ns_dir: str, group: GroupId) -> str:
    """The folder of ``group`` in the namespace folder ``ns_dir`` (:meth:`Datastore.group_path`)."""
    return f"{ns_dir}/{group.type.value}/{group.id}"


def snapshot_folders(gdir: str, temp: list[str] | None = None) -> list[tuple[str, int]]:
    """(name, time) of the snapshot folders in the group folder ``gdir``, oldest first,
    committed or not: one scandir, the entry types from the listing itself. With ``temp``,
    the names of temp entries (``.tmp.*``, a writer's, live or dead) are added to it."""
    try:
        with os.scandir(gdir) as it:
            if temp is None:
                names = [e.name for e in it if not e.name.startswith(".") and e.is_dir()]
            else:
                names = []
                for e in it:
                    if not e.name.startswith("."):
                        if e.is_dir():
                            names.append(e.name)
                    elif e.name.startswith(TMP_PREFIX):
                        temp.append(e.name)
    except (FileNotFoundError, NotADirectoryError):
        return []
    names.sort()  # canonical names sort chronologically
    out = []
    for name in names:
        t = snapshot_time(name)
        if t is not None:
            out.append((name, t))
    return out


def is_file(path: str) -> bool:
    """True if ``path`` is a regular file (following symlinks); one stat."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except (OSError, ValueError):
        return False


def is_committed(snapshot_dir: str) -> bool:
    """Whether the snapshot folder holds its manifest (:meth:`Datastore.snapshot_exists`)."""
    return is_file(f"{snapshot_dir}/{MANIFEST_NAME}")


def read_small(path: str, max_size: int = blob.MAX_BLOB_SIZE) -> bytes | None:
    """The bytes of a regular file, None if there is none. At most ``max_size`` + 1 bytes
    are read, so an oversized file costs bounded memory and fails its decoding. Tried
    directly (no exists check first): a missing file costs one failed open."""
    got = read_small_stat(path, max_size)
    return None if got is None else got[0]


def read_small_stat(path: str, max_size: int = blob.MAX_BLOB_SIZE) -> tuple[bytes, os.stat_result] | None:
    """:func:`read_small` with the ``fstat`` of the file it read, taken before reading (so
    a change while it reads leaves times newer than the returned ones)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except (FileNotFoundError, NotADirectoryError):
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return None
        first = os.read(fd, _PIECE)
        if not first:
            return first, st
        parts = [first]
        got = len(first)
        # a short read of a regular file is normally EOF, but only an empty read proves it
        while got <= max_size and (piece := os.read(fd, min(_PIECE, max_size + 1 - got))):
            parts.append(piece)
            got += len(piece)
        return (first if len(parts) == 1 else b"".join(parts)), st
    finally:
        os.close(fd)


@functools.lru_cache(maxsize=4096)
def parse_owner(text: str) -> AuthId:
    """The owner named by an owner file's stripped text (cached: only valid ids are, so a
    bad one raises :class:`~asyncsync.errors.InvalidName` every time)."""
    return AuthId.parse(text)


def read_owner(gdir: str) -> AuthId | None:
    """The owner of the group folder ``gdir`` (:meth:`Datastore.get_owner`): None if it has
    no owner file; an unreadable or invalid one raises (:class:`OSError`,
    :class:`ValueError`, :class:`~asyncsync.errors.InvalidName`)."""
    raw = read_small(f"{gdir}/{OWNER_FILE}")
    return None if raw is None else parse_owner(raw.decode("utf-8").strip())


__all__ = [
    "group_dir",
    "is_committed",
    "is_file",
    "parse_owner",
    "read_owner",
    "read_small",
    "read_small_stat",
    "snapshot_folders",
]
