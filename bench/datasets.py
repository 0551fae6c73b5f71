"""Seeded source datastores for the scenarios, built directly with :mod:`asyncsync.datastore`.

Every dataset lives in its own folder under the data dir, named after its
parameters, and is reused by a later run with the same parameters (a
``dataset.json`` written last marks it complete). Generation is fast: chunk
content is a slice of one seeded pseudo-random pool (blake3 XOF), copied into a
reused buffer and stamped with a unique 16-byte counter, so each chunk has its
own digest and does not compress, and no fresh buffer is allocated per chunk.

Kinds:

* ``cold``: one VM snapshot of ``size`` bytes in fixed chunks (4 MiB).
* ``small``: one host snapshot of ``size`` bytes in 64 KiB chunks (dynamic index).
* ``incremental``: ``groups`` × ``snapshots`` VM snapshots, each changing
  ``change`` of its group's chunks; ``base`` is that state, ``source`` is a
  hard-linked copy of it plus one new snapshot sharing 1 - ``change`` of its
  chunks with the previous one.
* ``noop``: ``groups`` × ``snapshots`` tiny snapshots (one 4 KiB chunk each).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import struct
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import blake3

from asyncsync.datastore.chunkstore import SyncLevel
from asyncsync.datastore.datastore import Datastore
from asyncsync.datastore.index import DynamicIndex, FixedIndex
from asyncsync.names import ROOT_AUTH_ID, ROOT_NS, BackupType, GroupId, SnapshotId

MiB = 1024 * 1024
GiB = 1024 * MiB
#: 2026-09-21T00:00:00Z: first snapshot time of every dataset
BASE_TIME = 1_789_948_800
_POOL_SIZE = 64 * MiB
_FORMAT = 3  # bump to invalidate cached datasets when the layout changes


@dataclass(frozen=True, slots=True)
class DatasetSpec:
    """What to generate; equal specs give byte-identical datastores (except uuids and ctimes)."""

    kind: str
    size: int = 0
    chunk_size: int = 4 * MiB
    groups: int = 1
    snapshots: int = 1
    chunks_per_snapshot: int = 0
    change: float = 0.02
    seed: int = 1

    @property
    def key(self) -> str:
        raw = json.dumps({"format": _FORMAT, **asdict(self)}, sort_keys=True).encode()
        return f"{self.kind}-{hashlib.sha256(raw).hexdigest()[:10]}"


@dataclass(slots=True)
class Dataset:
    """A generated dataset: where it is and how much a sync has to move."""

    spec: DatasetSpec
    folder: Path
    #: the datastore the tools sync from
    source: Path
    #: the pre-synced state for ``incremental`` (a datastore), else None
    base: Path | None
    total_bytes: int
    total_files: int
    chunks: int
    snapshots: int
    groups: int
    #: what a sync into the pre-synced state (or an empty target) must transfer
    transfer_bytes: int
    transfer_files: int
    transfer_chunks: int
    generate_s: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in self.__slots__ if k not in ("spec", "folder", "source", "base")}
        return {
            **d,
            "spec": asdict(self.spec),
            "folder": str(self.folder),
            "source": str(self.source),
            "base": str(self.base) if self.base else None,
        }

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Dataset:
        obj = dict(obj)
        spec = DatasetSpec(**obj.pop("spec"))
        base = obj.pop("base")
        return cls(
            spec=spec,
            folder=Path(obj.pop("folder")),
            source=Path(obj.pop("source")),
            base=Path(base) if base else None,
            **obj,
        )


class ChunkMaker:
    """Unique, incompressible chunk contents from a seeded pool, written into one reused buffer."""

    def __init__(self, seed: int, max_chunk: int) -> None:
        self.seed = seed
        self.pool = memoryview(
            blake3.blake3(f"asyncsync-bench-{seed}".encode()).digest(_POOL_SIZE + max_chunk)
        )
        self.rng = random.Random(seed)
        self.buf = bytearray(max_chunk)
        self.counter = 0

    def next(self, size: int) -> memoryview:
        """The next chunk (valid until the following call)."""
        if size < 16 or size > len(self.buf):
            raise ValueError(f"chunk size {size} out of range")
        off = self.rng.randrange(_POOL_SIZE)
        view = memoryview(self.buf)[:size]
        view[:] = self.pool[off : off + size]
        struct.pack_into("<QQ", self.buf, 0, self.seed, self.counter)
        self.counter += 1
        return view


def _snap(group: GroupId, n: int) -> SnapshotId:
    return SnapshotId(group, BASE_TIME + n * 3600)


def _tree_stats(root: Path) -> tuple[dict[str, int], int]:
    """{relative path: size} of every file under ``root``, and how many are chunks."""
    files: dict[str, int] = {}
    chunks = 0
    for dirpath, _, names in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        in_chunks = rel_dir.startswith(".chunks")
        for n in names:
            if n in (".lock",):
                continue
            files[os.path.normpath(os.path.join(rel_dir, n))] = os.stat(os.path.join(dirpath, n)).st_size
            if in_chunks:
                chunks += 1
    return files, chunks


def count_chunks(root: Path) -> int:
    """Chunk files in the datastore at ``root`` (0 if it has none)."""
    base = root / ".chunks"
    if not base.is_dir():
        return 0
    return sum(1 for p in os.scandir(base) if p.is_dir() for e in os.scandir(p.path) if len(e.name) == 64)


def _write_fixed(
    store: Datastore, group: GroupId, n: int, digests: list[bytes], size: int, chunk_size: int
) -> None:
    with store.begin_snapshot(ROOT_NS, _snap(group, n)) as w:
        w.add_blob("qemu-server.conf.blob", f"memory: 2048\ncores: 2\nname: bench-{group.id}\n".encode())
        w.add_index("drive-scsi0.img.fidx", FixedIndex(tuple(digests), size, chunk_size))
        w.commit()


def _gen_cold(spec: DatasetSpec, root: Path) -> None:
    store = Datastore.create(root, "source", SyncLevel.NONE)
    maker = ChunkMaker(spec.seed, spec.chunk_size)
    group = GroupId(BackupType.VM, "100")
    store.ensure_group(ROOT_NS, group, ROOT_AUTH_ID)
    digests = []
    left = spec.size
    while left > 0:
        n = min(spec.chunk_size, left)
        d, _ = store.chunks.insert_data(maker.next(n), compress=False)
        digests.append(bytes.fromhex(d))
        left -= n
    _write_fixed(store, group, 0, digests, spec.size, spec.chunk_size)


def _gen_small(spec: DatasetSpec, root: Path) -> None:
    store = Datastore.create(root, "source", SyncLevel.NONE)
    maker = ChunkMaker(spec.seed, spec.chunk_size)
    group = GroupId(BackupType.HOST, "files")
    store.ensure_group(ROOT_NS, group, ROOT_AUTH_ID)
    entries = []
    end = 0
    while end < spec.size:
        n = min(spec.chunk_size, spec.size - end)
        d, _ = store.chunks.insert_data(maker.next(n), compress=False)
        end += n
        entries.append((end, bytes.fromhex(d)))
    with store.begin_snapshot(ROOT_NS, _snap(group, 0)) as w:
        w.add_index("root.pxar.didx", DynamicIndex(tuple(entries)))
        w.commit()


def _gen_incremental(spec: DatasetSpec, base: Path, source: Path) -> None:
    store = Datastore.create(base, "base", SyncLevel.NONE)
    maker = ChunkMaker(spec.seed, spec.chunk_size)
    rng = random.Random(spec.seed + 1)
    n = spec.chunks_per_snapshot
    size = n * spec.chunk_size
    changed = max(1, round(n * spec.change))

    def new_chunk(st: Datastore) -> bytes:
        d, _ = st.chunks.insert_data(maker.next(spec.chunk_size), compress=False)
        return bytes.fromhex(d)

    last: list[bytes] = []
    for g in range(spec.groups):
        group = GroupId(BackupType.VM, str(100 + g))
        store.ensure_group(ROOT_NS, group, ROOT_AUTH_ID)
        digests = [new_chunk(store) for _ in range(n)]
        for s in range(spec.snapshots):
            if s:
                for i in rng.sample(range(n), changed):
                    digests[i] = new_chunk(store)
            _write_fixed(store, group, s, digests, size, spec.chunk_size)
        if g == 0:
            last = list(digests)
    # hard-linked copy: the servers only read, and the new snapshot only adds files
    subprocess.run(["cp", "-al", str(base), str(source)], check=True)
    src = Datastore.open(source, "source", SyncLevel.NONE)
    for i in rng.sample(range(n), changed):
        last[i] = new_chunk(src)
    _write_fixed(src, GroupId(BackupType.VM, "100"), spec.snapshots, last, size, spec.chunk_size)


def _gen_noop(spec: DatasetSpec, root: Path) -> None:
    store = Datastore.create(root, "source", SyncLevel.NONE)
    maker = ChunkMaker(spec.seed, spec.chunk_size)
    for g in range(spec.groups):
        group = GroupId(BackupType.CT, str(1000 + g))
        store.ensure_group(ROOT_NS, group, ROOT_AUTH_ID)
        for s in range(spec.snapshots):
            d, _ = store.chunks.insert_data(maker.next(spec.chunk_size), compress=False)
            with store.begin_snapshot(ROOT_NS, _snap(group, s)) as w:
                w.add_index("root.fidx", FixedIndex((bytes.fromhex(d),), spec.chunk_size, spec.chunk_size))
                w.commit()


def ensure_dataset(spec: DatasetSpec, data_dir: Path, *, log: Any = print) -> Dataset:
    """The dataset for ``spec`` under ``data_dir``: reused if complete, else (re)generated."""
    folder = data_dir / spec.key
    meta = folder / "dataset.json"
    if meta.is_file():
        try:
            return Dataset.from_json(json.loads(meta.read_text()))
        except (ValueError, TypeError, KeyError):
            pass
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    log(f"generating dataset {spec.key} ({spec.kind}) in {folder}")
    t0 = time.perf_counter()
    source = folder / "source"
    base: Path | None = None
    if spec.kind == "cold":
        _gen_cold(spec, source)
    elif spec.kind == "small":
        _gen_small(spec, source)
    elif spec.kind == "incremental":
        base = folder / "base"
        _gen_incremental(spec, base, source)
    elif spec.kind == "noop":
        _gen_noop(spec, source)
    else:
        raise ValueError(f"unknown dataset kind {spec.kind!r}")
    elapsed = time.perf_counter() - t0
    files, chunks = _tree_stats(source)
    done: dict[str, int] = {}
    base_chunks = 0
    if base is not None:
        done, base_chunks = _tree_stats(base)
    todo = {p: s for p, s in files.items() if p not in done}
    snapshots = sum(1 for p in files if p.endswith("index.json.blob"))
    groups = len({p.rsplit("/", 2)[0] for p in files if p.endswith("index.json.blob")})
    ds = Dataset(
        spec=spec,
        folder=folder,
        source=source,
        base=base,
        total_bytes=sum(files.values()),
        total_files=len(files),
        chunks=chunks,
        snapshots=snapshots,
        groups=groups,
        transfer_bytes=sum(todo.values()),
        transfer_files=len(todo),
        transfer_chunks=chunks - base_chunks,
        generate_s=round(elapsed, 3),
    )
    meta.write_text(json.dumps(ds.to_json(), indent=1) + "\n")
    log(
        f"  {ds.total_files} files, {ds.total_bytes / MiB:.1f} MiB, {ds.chunks} chunks, "
        f"{ds.snapshots} snapshots in {elapsed:.1f} s"
    )
    return ds


__all__ = ["ChunkMaker", "Dataset", "DatasetSpec", "count_chunks", "ensure_dataset"]
