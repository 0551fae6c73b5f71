"""Where a pull reads from: the :class:`Source` protocol and its two implementations.

The engine (:mod:`asyncsync.sync.pull`) sees only this protocol, so a remote
server (:class:`HttpSource`, over :class:`asyncsync.client.Client`) and another
datastore on this machine (:class:`LocalSource`) go through the same code, and
tests wrap either in a fault-injecting source.

Contract of every source:

* listings return validated value objects (names were checked at the boundary);
* :meth:`Source.open_reader` opens one snapshot for reading. As on the server
  (Proxmox's reader rule), a reader may only fetch chunks referenced by an index
  it has already downloaded;
* :meth:`SnapshotSource.download` returns a file's bytes *as stored* (no checks),
  and refuses (:class:`~asyncsync.errors.RemoteError`) a file over
  :data:`asyncsync.protocol.MAX_FILE_SIZE` without holding more than that;
* :meth:`SnapshotSource.fetch_chunks` yields ``(digest, blob)`` pairs in request
  order, blobs **unverified**: the engine verifies every byte before writing. A
  blob is :data:`BlobData`: its bytes, or its bytes in pieces (a list, in order),
  so that a network source need not join what the transport delivered in pieces.
* a snapshot source may also offer :class:`ThreadedChunks`: the same chunks,
  delivered in pieces to a blocking :class:`BlobReceiver` on a worker thread
  (receive, verify and write in one thread, no event-loop work per byte, memory
  per connection independent of the chunk size). The engine prefers it when present.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import Executor
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from .. import protocol
from ..blobsink import BlobReceiver
from ..datastore.datastore import Datastore
from ..datastore.index import decode_index
from ..datastore.manifest import MANIFEST_NAME
from ..datastore.threads import CancelToken, run_with_token
from ..errors import CorruptIndex, NotFound, PermissionDenied, RemoteError
from ..names import ROOT_NS, AuthId, GroupId, Namespace, SnapshotId, check_archive_name
from ..protocol import GroupItem, SnapshotItem

if TYPE_CHECKING:
    from ..client import Client, ReaderSession

#: a received blob: its bytes, or its bytes as pieces in order (``b"".join`` gives the bytes)
BlobData = bytes | list[bytes | memoryview]


@runtime_checkable
class SnapshotSource(Protocol):
    """One open snapshot of a source."""

    async def download(self, name: str) -> bytes:
        """The raw bytes of one file of the snapshot (manifest, index, blob)."""
        ...

    def fetch_chunks(self, digests: Sequence[str]) -> AsyncIterator[tuple[str, BlobData]]:
        """Yield ``(digest, blob)`` for each digest, in order; blobs are not verified."""
        ...

    async def aclose(self) -> None: ...


@runtime_checkable
class ThreadedChunks(Protocol):
    """Optional for a :class:`SnapshotSource`: chunks delivered on a worker thread, in pieces.

    ``fetch_chunks_threaded(digests, receiver, executor)`` runs the transfer on a
    thread of ``executor`` and there, for each digest in order, calls
    ``receiver.begin(digest, length)`` and feeds the blob's bytes to the writer it
    returns as they arrive (unverified: the writer verifies and writes), then
    ``finish()``; a blob that is not finished is ``abort()``-ed (see
    :class:`~asyncsync.blobsink.BlobWriter`). A network source reads at most a fixed piece per step
    into a per-connection buffer, so its memory does not grow with the chunk size.
    An exception from the receiver or a writer ends the call and propagates
    unchanged (it is not a transfer error and is not retried). When the call
    returns or raises (also on cancellation) the thread is done with it and the
    receiver is not called again. Errors are those of :meth:`SnapshotSource.fetch_chunks`.
    """

    async def fetch_chunks_threaded(
        self, digests: Sequence[str], receiver: BlobReceiver, executor: Executor
    ) -> None: ...


@runtime_checkable
class Source(Protocol):
    """A datastore to pull from."""

    @property
    def description(self) -> str:
        """Where this source is, for logs (``remote pbs2, store main``)."""
        ...

    async def list_namespaces(self, anchor: Namespace, max_depth: int | None) -> list[Namespace]:
        """``anchor`` and the namespaces below it, down to ``max_depth`` levels."""
        ...

    async def list_groups(self, ns: Namespace) -> list[GroupItem]: ...

    async def list_snapshots(self, ns: Namespace, group: GroupId) -> list[SnapshotItem]:
        """All snapshots of a group, including unfinished ones (those with no files)."""
        ...

    async def open_reader(self, ns: Namespace, snap: SnapshotId) -> SnapshotSource: ...

    async def aclose(self) -> None: ...


@runtime_checkable
class BulkListing(Protocol):
    """Optional for a :class:`Source`: list a whole namespace's snapshots at once.

    The engine uses it, when present, instead of one :meth:`Source.list_snapshots`
    per group (one request per namespace instead of per group); the items are
    the same as the per-group listings would return.
    """

    async def list_namespace_snapshots(self, ns: Namespace) -> list[SnapshotItem]: ...


@runtime_checkable
class TaggedListing(Protocol):
    """Optional for a :class:`BulkListing` source: the namespace-wide listing with its tag
    (:func:`~asyncsync.protocol.listing_tag` of the listing's wire bytes), so a pull can tell
    that a listing is the one a checkpoint recorded (:mod:`.checkpoint`) without parsing it.
    """

    async def list_namespace_snapshots_tagged(
        self, ns: Namespace, known: str | None
    ) -> tuple[str, list[SnapshotItem] | None]:
        """(tag, the items of :meth:`BulkListing.list_namespace_snapshots`), or ``(known, None)``
        when the listing's tag is ``known``."""
        ...


# ---- local datastore ----------------------------------------------------------


def _read_bounded(store: Datastore, ns: Namespace, snap: SnapshotId, name: str, max_size: int) -> bytes:
    """:meth:`Datastore.read_file` that refuses a file over ``max_size`` bytes before reading it.

    The same limit and error kind (:class:`RemoteError`: the source misbehaves) as
    the HTTP client's download, so that a pull holds at most one bounded file in
    memory whatever the source. Blocking. At most ``max_size + 1`` bytes are ever
    read, also if the file grows meanwhile.
    """
    if name != MANIFEST_NAME:
        check_archive_name(name)
    if not store.snapshot_exists(ns, snap):
        raise NotFound(f"snapshot {snap} not found")
    path = store.snapshot_path(ns, snap) / name
    too_large = RemoteError(f"file {name} of {snap} exceeds the limit of {max_size} bytes")
    try:
        with path.open("rb") as f:
            if os.fstat(f.fileno()).st_size > max_size:
                raise too_large
            data = f.read(max_size + 1)
    except FileNotFoundError:
        raise NotFound(f"file {name} not found in snapshot {snap}") from None
    if len(data) > max_size:
        raise too_large
    return data


class LocalSnapshotSource:
    """Reads one snapshot of a local datastore; enforces the reader rule like the server."""

    def __init__(self, store: Datastore, ns: Namespace, snap: SnapshotId) -> None:
        self._store = store
        self._ns = ns
        self._snap = snap
        self._allowed: set[str] = set()

    def __repr__(self) -> str:
        return f"LocalSnapshotSource({self._store.name!r}, {self._snap!s}, allowed={len(self._allowed)})"

    def _read(self, name: str) -> bytes:
        data = _read_bounded(self._store, self._ns, self._snap, name, protocol.MAX_FILE_SIZE)
        if name.endswith((".fidx", ".didx")):
            # a corrupt index makes nothing fetchable; the engine reports it
            with contextlib.suppress(CorruptIndex):
                self._allowed.update(d.hex() for d in decode_index(data).digests)
        return data

    async def download(self, name: str) -> bytes:
        return await asyncio.to_thread(self._read, name)

    def _read_many(self, digests: Sequence[str]) -> list[bytes]:
        out = []
        for d in digests:
            if d not in self._allowed:
                raise PermissionDenied(f"chunk {d} is not referenced by a downloaded index")
            out.append(self._store.chunks.read(d))
        return out

    async def fetch_chunks(self, digests: Sequence[str]) -> AsyncIterator[tuple[str, bytes]]:
        # one thread hop per batch: batches are bounded in bytes by the caller
        blobs = await asyncio.to_thread(self._read_many, list(digests))
        for d, b in zip(digests, blobs, strict=True):
            yield d, b

    async def fetch_chunks_threaded(
        self, digests: Sequence[str], receiver: BlobReceiver, executor: Executor
    ) -> None:
        """Read each chunk and pass it to ``receiver``, in one hop on ``executor`` (:class:`ThreadedChunks`).

        A local chunk file is read whole (it is at most a blob's size) and handed over whole.
        """
        token = CancelToken()
        wanted = list(digests)

        def run() -> None:
            for d in wanted:
                token.check()
                if d not in self._allowed:
                    raise PermissionDenied(f"chunk {d} is not referenced by a downloaded index")
                receiver.whole(d, memoryview(self._store.chunks.read(d)))

        await run_with_token(executor, token, run)

    async def aclose(self) -> None:
        self._allowed.clear()


class LocalSource:
    """Another datastore on this machine (local-to-local sync, tests, benchmarks)."""

    def __init__(self, store: Datastore) -> None:
        self.store = store

    def __repr__(self) -> str:
        return f"LocalSource({self.store!r})"

    @property
    def description(self) -> str:
        return f"local datastore {self.store.name}"

    async def list_namespaces(self, anchor: Namespace, max_depth: int | None) -> list[Namespace]:
        return await asyncio.to_thread(self.store.list_namespaces, anchor, max_depth)

    def _groups(self, ns: Namespace) -> list[GroupItem]:
        out = []
        for g in self.store.list_groups(ns):
            snaps = self.store.list_snapshots(ns, g)
            out.append(
                GroupItem(
                    g, self.store.get_owner(ns, g), len(snaps), snaps[-1].snapshot.time if snaps else None
                )
            )
        return out

    async def list_groups(self, ns: Namespace) -> list[GroupItem]:
        return await asyncio.to_thread(self._groups, ns)

    def _snapshots(self, ns: Namespace, group: GroupId) -> list[SnapshotItem]:
        owner: AuthId | None = self.store.get_owner(ns, group)
        return [SnapshotItem.from_info(i, owner) for i in self.store.list_snapshots(ns, group)]

    async def list_snapshots(self, ns: Namespace, group: GroupId) -> list[SnapshotItem]:
        return await asyncio.to_thread(self._snapshots, ns, group)

    def _all_snapshots(self, ns: Namespace) -> list[SnapshotItem]:
        return [s for g in self.store.list_groups(ns) for s in self._snapshots(ns, g)]

    async def list_namespace_snapshots(self, ns: Namespace) -> list[SnapshotItem]:
        """Every snapshot of every group of ``ns`` (see :class:`BulkListing`)."""
        return await asyncio.to_thread(self._all_snapshots, ns)

    async def open_reader(self, ns: Namespace, snap: SnapshotId) -> SnapshotSource:
        exists = await asyncio.to_thread(self.store.snapshot_exists, ns, snap)
        if not exists:
            raise NotFound(f"snapshot {snap} not found in {self.description}")
        return LocalSnapshotSource(self.store, ns, snap)

    async def aclose(self) -> None:
        return None


# ---- remote over HTTP -----------------------------------------------------------


class HttpSnapshotSource:
    """A reader session on a remote; a single chunk uses the single fetch, more use the batch."""

    def __init__(self, session: ReaderSession) -> None:
        self._session = session

    def __repr__(self) -> str:
        return f"HttpSnapshotSource({self._session!r})"

    async def download(self, name: str) -> bytes:
        return await self._session.download(name)

    async def fetch_chunks(self, digests: Sequence[str]) -> AsyncIterator[tuple[str, BlobData]]:
        # pieces, not joined bytes: the event loop thread is this process's bottleneck
        if len(digests) == 1:
            yield digests[0], await self._session.fetch_chunk_parts(digests[0])
            return
        stream = self._session.fetch_chunks_parts(list(digests))
        try:
            async for item in stream:
                yield item
        finally:
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                with contextlib.suppress(Exception):
                    await aclose()

    async def fetch_chunks_threaded(
        self, digests: Sequence[str], receiver: BlobReceiver, executor: Executor
    ) -> None:
        """Blocking connections on ``executor``'s threads (:class:`ThreadedChunks`)."""
        await self._session.fetch_chunks_threaded(digests, receiver, executor)

    async def aclose(self) -> None:
        await self._session.aclose()


class HttpSource:
    """A datastore on a remote asyncsync (or compatible) server, through one :class:`Client`.

    The source owns the client when built with :meth:`connect` (and closes it
    in :meth:`aclose`); a client passed to the constructor stays the caller's.
    """

    def __init__(
        self, client: Client, store: str, *, name: str | None = None, owns_client: bool = False
    ) -> None:
        self.client = client
        self.store = store
        self.name = name
        self._owns_client = owns_client

    def __repr__(self) -> str:
        return f"HttpSource({self.description!r})"

    @classmethod
    async def connect(
        cls,
        host: str,
        port: int,
        auth_id: AuthId,
        secret: str,
        store: str,
        *,
        fingerprint: str | None,
        tls: bool = True,
        name: str | None = None,
        max_connections: int = 16,
        timeout: float = 60.0,  # noqa: ASYNC109 - the client's per-read timeout
        retries: int = 4,
    ) -> HttpSource:
        """Connect to a remote (the values of a remote's configuration) and read ``store``."""
        from ..client import Client

        client = await Client.connect(
            host,
            port,
            auth_id,
            secret,
            fingerprint=fingerprint,
            tls=tls,
            max_connections=max_connections,
            timeout=timeout,
            retries=retries,
        )
        return cls(client, store, name=name or host, owns_client=True)

    @property
    def description(self) -> str:
        return f"remote {self.name or '?'}, store {self.store}"

    async def list_namespaces(
        self, anchor: Namespace = ROOT_NS, max_depth: int | None = None
    ) -> list[Namespace]:
        return await self.client.list_namespaces(self.store, anchor, max_depth)

    async def list_groups(self, ns: Namespace) -> list[GroupItem]:
        return await self.client.list_groups(self.store, ns)

    async def list_snapshots(self, ns: Namespace, group: GroupId) -> list[SnapshotItem]:
        return await self.client.list_snapshots(self.store, ns, group)

    async def list_namespace_snapshots(self, ns: Namespace) -> list[SnapshotItem]:
        """Every snapshot of ``ns`` the caller may see, in one request (see :class:`BulkListing`)."""
        return await self.client.list_snapshots(self.store, ns)

    async def list_namespace_snapshots_tagged(
        self, ns: Namespace, known: str | None
    ) -> tuple[str, list[SnapshotItem] | None]:
        """:meth:`list_namespace_snapshots` with its tag (see :class:`TaggedListing`)."""
        return await self.client.list_snapshots_tagged(self.store, ns, known)

    async def open_reader(self, ns: Namespace, snap: SnapshotId) -> SnapshotSource:
        return HttpSnapshotSource(await self.client.open_reader(self.store, ns, snap))

    async def aclose(self) -> None:
        if self._owns_client:
            await self.client.aclose()

    async def __aenter__(self) -> HttpSource:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


__all__ = [
    "BlobData",
    "BlobReceiver",
    "BulkListing",
    "HttpSnapshotSource",
    "HttpSource",
    "LocalSnapshotSource",
    "LocalSource",
    "SnapshotSource",
    "Source",
    "TaggedListing",
    "ThreadedChunks",
]
