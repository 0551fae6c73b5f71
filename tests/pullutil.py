"""Helpers for the pull tests: build source datastores, compare stores, inject faults.

Datastores are built directly with Datastore / SnapshotWriter / ChunkStore, with
small random chunks (a few KiB), some of them compressible.
"""

from __future__ import annotations

import os
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path

from asyncsync.datastore.chunkstore import SyncLevel
from asyncsync.datastore.datastore import Datastore
from asyncsync.datastore.index import DynamicIndex, FixedIndex
from asyncsync.datastore.manifest import MANIFEST_NAME
from asyncsync.names import ROOT_AUTH_ID, AuthId, GroupId, Namespace, SnapshotId
from asyncsync.protocol import GroupItem, SnapshotItem
from asyncsync.sync.source import SnapshotSource, Source

N = Namespace.parse
T0 = 1_764_144_000  # 2025-11-26T08:00:00Z


def new_store(path: Path, name: str) -> Datastore:
    return Datastore.create(path, name, SyncLevel.NONE)


def chunk_data(rng: random.Random, size: int) -> bytes:
    if rng.random() < 0.5:
        return rng.randbytes(size)
    # compressible: a short pattern repeated
    pat = rng.randbytes(16)
    return (pat * (size // 16 + 1))[:size]


def add_snapshot(
    store: Datastore,
    ns: Namespace | str,
    group: GroupId | str,
    t: int,
    *,
    rng: random.Random | None = None,
    chunks: int = 4,
    chunk_size: int = 4096,
    shared: Sequence[bytes] = (),
    log: bytes | None = None,
    verified: bool | None = None,
    owner: AuthId = ROOT_AUTH_ID,
    protected: bool = False,
) -> SnapshotId:
    """A snapshot with a dynamic index (random + ``shared`` chunk contents), a fixed index and
    a config blob (and a log blob if ``log``). Blocking: call before the loop or in a thread."""
    rng = rng or random.Random(t)
    ns = N(ns) if isinstance(ns, str) else ns
    group = GroupId.parse(group) if isinstance(group, str) else group
    store.create_namespace(ns, parents=True)
    store.ensure_group(ns, group, owner)
    contents = [chunk_data(rng, rng.randint(chunk_size // 2, chunk_size)) for _ in range(chunks)]
    contents += list(shared)
    entries = []
    end = 0
    for c in contents:
        digest, _ = store.chunks.insert_data(c)
        end += len(c)
        entries.append((end, bytes.fromhex(digest)))
    didx = DynamicIndex(tuple(entries))
    fixed = [chunk_data(rng, 2048) for _ in range(2)]
    fixed_digests = tuple(bytes.fromhex(store.chunks.insert_data(c)[0]) for c in fixed)
    fidx = FixedIndex(fixed_digests, 2048 * 2, 2048)
    snap = SnapshotId(group, t)
    unprotected: dict[str, object] = {}
    if verified is not None:
        unprotected["verify_state"] = {"state": "ok" if verified else "failed", "time": t + 60}
    with store.begin_snapshot(ns, snap) as w:
        w.add_index("root.didx", didx)
        w.add_index("disk.fidx", fidx)
        w.add_blob("qemu-server.conf.blob", f"name: {group.id}\nmemory: 1024\n".encode())
        if log is not None:
            w.add_blob("client.log.blob", log)
        w.commit(unprotected)
    if protected:
        store.set_protected(ns, snap, True)
    return snap


def archive_bytes(store: Datastore, ns: Namespace, snap: SnapshotId, name: str) -> bytes:
    """Restore one archive: the concatenated chunk contents of an index (or a blob's content)."""
    from asyncsync.datastore import blob

    data = store.read_file(ns, snap, name)
    if name.endswith(".blob"):
        return blob.decode(data)
    index = store.load_index(ns, snap, name)
    return b"".join(store.chunks.read_data(d.hex()) for d in index.digests)


def store_tree(store: Datastore) -> dict[str, object]:
    """Everything a user sees in a store: namespaces, groups, owners, snapshots, files, restored
    archive bytes and the manifest's content (for byte-for-byte comparisons)."""
    out: dict[str, object] = {}
    for ns in store.list_namespaces():
        out[f"ns:{ns}"] = True
        for g in store.list_groups(ns):
            out[f"owner:{ns}:{g}"] = str(store.get_owner(ns, g))
            for info in store.list_snapshots(ns, g):
                snap = info.snapshot
                m = store.load_manifest(ns, snap)
                out[f"manifest:{ns}:{snap}"] = m.to_json()
                for f in m.files:
                    out[f"file:{ns}:{snap}:{f.filename}"] = store.read_file(ns, snap, f.filename)
                    out[f"restore:{ns}:{snap}:{f.filename}"] = archive_bytes(store, ns, snap, f.filename)
    return out


def leftovers(store: Datastore) -> list[str]:
    """Temp files or folders anywhere in the store."""
    found = []
    for dirpath, dirnames, filenames in os.walk(store.root):
        for n in dirnames + filenames:
            if n.startswith(".tmp."):
                found.append(os.path.join(dirpath, n))
    return found


def chunk_files(store: Datastore) -> set[str]:
    return {d for d, _ in store.chunks.iter_digests()}


# ---- fault injection ------------------------------------------------------------------


class FaultySnapshot:
    """Wraps a snapshot source; ``source.faults`` decides what to break."""

    def __init__(self, inner: SnapshotSource, source: FaultySource) -> None:
        self.inner = inner
        self.source = source

    async def download(self, name: str) -> bytes:
        data = await self.inner.download(name)
        hook = self.source.on_download
        return hook(name, data) if hook else data

    async def fetch_chunks(self, digests: Sequence[str]) -> AsyncIterator[tuple[str, bytes]]:
        self.source.requests.append(list(digests))
        async for d, b in self.inner.fetch_chunks(digests):
            if self.source.before_chunk is not None:
                await self.source.before_chunk(d)
            hook = self.source.on_chunk
            if hook is not None:
                b = hook(d, b)
            self.source.fetched.append(d)
            yield d, b

    async def aclose(self) -> None:
        await self.inner.aclose()


class FaultySource:
    """A source wrapper with hooks: ``on_chunk(digest, blob) -> blob`` (may raise),
    ``before_chunk(digest)`` (awaited as each chunk arrives, before ``on_chunk``),
    ``on_download(name, data) -> data``, extra listing items, counters."""

    def __init__(self, inner: Source) -> None:
        self.inner = inner
        self.on_chunk: Callable[[str, bytes], bytes] | None = None
        self.before_chunk: Callable[[str], Awaitable[None]] | None = None
        self.on_download: Callable[[str, bytes], bytes] | None = None
        self.extra_snapshots: list[SnapshotItem] = []
        self.fetched: list[str] = []
        self.requests: list[list[str]] = []

    @property
    def description(self) -> str:
        return "faulty " + self.inner.description

    async def list_namespaces(self, anchor: Namespace, max_depth: int | None) -> list[Namespace]:
        return await self.inner.list_namespaces(anchor, max_depth)

    async def list_groups(self, ns: Namespace) -> list[GroupItem]:
        return await self.inner.list_groups(ns)

    async def list_snapshots(self, ns: Namespace, group: GroupId) -> list[SnapshotItem]:
        items = await self.inner.list_snapshots(ns, group)
        return items + [i for i in self.extra_snapshots if i.snapshot.group == group]

    async def open_reader(self, ns: Namespace, snap: SnapshotId) -> SnapshotSource:
        return FaultySnapshot(await self.inner.open_reader(ns, snap), self)

    async def aclose(self) -> None:
        await self.inner.aclose()


__all__ = [
    "MANIFEST_NAME",
    "T0",
    "FaultySource",
    "add_snapshot",
    "archive_bytes",
    "chunk_files",
    "leftovers",
    "new_store",
    "store_tree",
]
