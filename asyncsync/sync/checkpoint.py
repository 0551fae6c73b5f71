"""Pull checkpoints: a pull that found nothing to do records why, so the next one can tell,
in a few syscalls per group, that nothing changed on either side since.

A scheduled sync job mostly finds nothing new. Deciding that costs, per run, the
remote's whole snapshot listing (parsed into thousands of items) and a read of
every local group (lock, owner, folder listing, newest manifest). Both inputs of
that decision can be checked for change far more cheaply than they can be read:

* **The remote listing** by its tag, the first 16 bytes of the blake3 of the
  listing body's exact bytes (what the server sends as the listing's ``ETag``).
  Equal tags mean byte-equal listings, whoever served them.
* **The local groups** by stat keys (device, inode, size, mtime, ctime) of every
  file and folder the unchanged-group check read, each taken *before* the read:
  the group folder (its entries: snapshots added, removed or renamed, a lock file
  created), the owner file, the newest committed snapshot's manifest, and the
  absence of a manifest in each newer, uncommitted snapshot folder. Any write to
  one of them, in place or by rename, moves its mtime or ctime (or replaces the
  inode); a key is only recorded if its times were at least :data:`RACY_NS` older
  than the read, so a later write cannot share its coarse timestamp (the rule git
  uses for "racily clean" index entries).

The decision (which groups are unchanged, and how many snapshots each) is a pure
function of those inputs and of the run's options, which select the checkpoint
file (:func:`run_key`). So an entry (one namespace) whose tag matches the listing and
whose keys all match the files gives exactly the answer the full check would give.
An entry is only ever *used* to settle groups; anything that does not match, cannot
be read, or looks wrong makes the pull take its full path for that namespace. Each
run records every namespace it settled whole, from its reads or from the entry it
used, and leaves out the others (a namespace that transferred or failed).

Stored as JSON in ``<datastore>/.pull-checkpoints/<run key>.json``, written
atomically (temp file + rename). Blocking functions: call from a worker thread.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from ..datastore import blob, fastread
from ..datastore.chunkstore import SyncLevel
from ..datastore.datastore import atomic_write, remove_stale_tmp
from ..errors import AsyncSyncError
from ..names import GroupId, Namespace

CHECKPOINT_DIR: Final = ".pull-checkpoints"
#: a file changed less than this long (ns) before it was read is not recorded (see the module doc)
RACY_NS: Final = 2_000_000_000
#: checkpoints larger than this are neither written nor read (≈ 100 bytes per group)
MAX_CHECKPOINT_BYTES: Final = 32 * 1024 * 1024
#: a run with more groups than this writes no checkpoint
MAX_CHECKPOINT_GROUPS: Final = 200_000
_VERSION: Final = 1

#: [device, inode, size, mtime ns, ctime ns] of a file or folder; None: must not exist
StatKey = list[int] | None


def _key(st: os.stat_result) -> list[int]:
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


class KeyRecorder:
    """The stat keys one group's read took, in order; not :attr:`valid` once any was too
    new, or the group folder held a temp entry (see :meth:`spoil`).

    Made just before the read starts; :meth:`add` is given each stat taken before
    the read it guards (None for a file the read found missing).
    """

    __slots__ = ("_limit", "entries", "valid")

    def __init__(self) -> None:
        self.entries: list[tuple[str, StatKey]] = []
        self.valid = True
        self._limit = time.time_ns() - RACY_NS

    def spoil(self) -> None:
        """The read cannot be recorded. Used for a group folder holding a writer's temp
        entry: a recorded folder is known to hold none (so a pull whose keys all match
        skips looking for dead writers' temp files there: :meth:`Datastore.cleanup_temp`)."""
        self.valid = False

    def add(self, rel: str, st: os.stat_result | None) -> None:
        """Record ``st`` for the path ``rel`` (relative to the group folder; "" is the folder)."""
        if st is None:
            self.entries.append((rel, None))
            return
        if st.st_mtime_ns > self._limit or st.st_ctime_ns > self._limit:
            self.valid = False
        self.entries.append((rel, _key(st)))


@dataclass(frozen=True, slots=True)
class GroupEntry:
    """One group a pull found unchanged: its count of unchanged snapshots and the keys of its read."""

    group: GroupId
    unchanged: int
    keys: tuple[tuple[str, StatKey], ...]


@dataclass(frozen=True, slots=True)
class NamespaceEntry:
    """One namespace of a checkpoint: the remote listing's tag and every group it named."""

    remote: Namespace
    local: Namespace
    tag: str
    groups: tuple[GroupEntry, ...]


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """What a pull that found nothing to do read, namespace by namespace."""

    namespaces: tuple[NamespaceEntry, ...]

    def entry(self, remote: Namespace, local: Namespace) -> NamespaceEntry | None:
        for e in self.namespaces:
            if e.remote == remote and e.local == local:
                return e
        return None


def run_key(source: str, options: Mapping[str, Any]) -> str:
    """The checkpoint file name for a run: a digest of the source's description and every
    option the unchanged-group decision depends on (``options``, JSON-encodable)."""
    text = json.dumps({"source": source, "options": options}, sort_keys=True, default=str)
    return blob.digest_of(text.encode())[:32]


def path_for(root: Path, key: str) -> Path:
    return root / CHECKPOINT_DIR / f"{key}.json"


def load(path: Path) -> Checkpoint | None:
    """The checkpoint at ``path``; None if there is none or it is unreadable, too large or
    malformed in any way (it is then simply not used)."""
    try:
        raw = fastread.read_small(str(path), MAX_CHECKPOINT_BYTES)
    except OSError:  # unreadable (permissions, I/O): as if there were none
        return None
    if raw is None or len(raw) > MAX_CHECKPOINT_BYTES:
        return None
    try:
        return _decode(json.loads(raw))
    except (ValueError, TypeError, KeyError, AttributeError, AsyncSyncError):
        return None


def _decode(obj: Any) -> Checkpoint:
    """The checkpoint of a decoded JSON document; raises on anything malformed. A key's
    values are compared, not interpreted, so they are only checked for being a list or
    None (a list of anything else then simply never matches a stat)."""
    if obj["version"] != _VERSION:
        raise ValueError("unknown checkpoint version")
    out = []
    for ns in obj["namespaces"]:
        tag = ns["tag"]
        if not isinstance(tag, str) or len(tag) != 32:
            raise ValueError("bad tag")
        groups = []
        for group, unchanged, raw_keys in ns["groups"]:
            keys: list[tuple[str, StatKey]] = []
            for rel, k in raw_keys:
                # relative to the group folder, never out of it
                if type(rel) is not str or ".." in rel or rel.startswith("/") or "\0" in rel:
                    raise ValueError("bad key path")
                if k is not None and type(k) is not list:
                    raise ValueError("bad key")
                keys.append((rel, k))
            if type(unchanged) is not int or unchanged < 0:
                raise ValueError("bad count")
            groups.append(GroupEntry(GroupId.parse(group), unchanged, tuple(keys)))
        out.append(
            NamespaceEntry(Namespace.parse(ns["remote"]), Namespace.parse(ns["local"]), tag, tuple(groups))
        )
    return Checkpoint(tuple(out))


def _encode(cp: Checkpoint) -> bytes:
    return json.dumps(
        {
            "version": _VERSION,
            "namespaces": [
                {
                    "remote": str(ns.remote),
                    "local": str(ns.local),
                    "tag": ns.tag,
                    # [group, unchanged, [[path, key], ...]]: compact, as it is read on every run
                    "groups": [[str(g.group), g.unchanged, g.keys] for g in ns.groups],
                }
                for ns in cp.namespaces
            ],
        },
        separators=(",", ":"),
    ).encode()


def save(path: Path, cp: Checkpoint) -> bool:
    """Write ``cp`` to ``path`` atomically; False if it is too large (then nothing is
    written and an older checkpoint at ``path`` is removed, not left in its place).
    Stale temp files of dead writers in the folder are removed on the way."""
    data = _encode(cp)
    if len(data) > MAX_CHECKPOINT_BYTES:
        remove(path)
        return False
    path.parent.mkdir(exist_ok=True)
    remove_stale_tmp(str(path.parent))
    # not synced: a checkpoint lost in a crash only costs the next pull its full path
    atomic_write(path, data, SyncLevel.NONE)
    return True


def remove(path: Path) -> None:
    """Remove the checkpoint at ``path`` if there is one."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _stat_key(path: str) -> StatKey:
    try:
        return _key(os.stat(path))
    except (FileNotFoundError, NotADirectoryError):
        return None


def still_valid(ns_dir: str, groups: Sequence[GroupEntry]) -> bool:
    """Whether every group of ``groups`` (of the local namespace folder ``ns_dir``) is as
    its keys say; False at the first difference, or for a path that cannot be checked.

    No group lock is taken (it cost ~7 ms per 1,000 groups, a third of the check): the
    keys alone prove that nothing the decision reads changed from the recording until
    its stat, since every write moves a key for good. So a group whose lock another
    process holds without having changed any of it (a verify, a backup still uploading
    chunks, another pull reading it) counts as unchanged here, which it is, where the
    unchanged-group check would have found it locked and left it to the full path (which
    reports it "locked"); a writer that changed it is seen by its keys, and then the full
    path meets its lock as before."""
    for g in groups:
        gdir = fastread.group_dir(ns_dir, g.group)
        try:
            for rel, want in g.keys:
                if _stat_key(f"{gdir}/{rel}" if rel else gdir) != want:
                    return False
        except OSError:
            return False
    return True


__all__ = [
    "CHECKPOINT_DIR",
    "RACY_NS",
    "Checkpoint",
    "GroupEntry",
    "KeyRecorder",
    "NamespaceEntry",
    "load",
    "path_for",
    "remove",
    "run_key",
    "save",
    "still_valid",
]
