"""The HTTP client of a remote asyncsync server.

:class:`Client` talks to one server pinned to its certificate fingerprint,
logged in with a password (ticket) or an API token. Every call maps failures
to the project's error tree (see :mod:`asyncsync.client.errors`) and retries
transient ones (reset, timeout, 429/5xx) with exponential backoff and jitter,
at most ``retries`` times; the sleep function and the random source are
injectable for tests.

Two transports. Every request except the async streaming batch fetch
(:meth:`ReaderSession.fetch_chunks_parts`, used by rate-limited pulls) is one
worker-thread hop over the client's :class:`~.blocking.BlockingChannel`
(keep-alive ``http.client`` connections): login, listings, reader open/close,
file and single-chunk downloads, and the threaded batch fetch. Why: importing
aiohttp costs 0.2-0.3 s (its connector builds SSL contexts from the system CA
store at import time), a large share of a pull that has nothing to do. aiohttp
is imported, and its session (a connection pool of ``max_connections``)
created, only when the streaming path is first used; :meth:`Client.aclose`
closes it then.

:class:`ReaderSession` reads one snapshot: its files, single chunks, and
batches of chunks as a framed stream (:data:`asyncsync.protocol.FRAME_HEADER`).
Bodies are read with explicit size bounds: a body larger than allowed is an
error and is never buffered whole.
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import json
import logging
import random
import ssl
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Self, TypeVar
from urllib.parse import quote, urlencode

if TYPE_CHECKING:
    import aiohttp

from .. import protocol
from ..blobsink import BlobReceiver, BlobSink, BlobWriter
from ..datastore import blob
from ..datastore.manifest import MANIFEST_NAME
from ..datastore.threads import run_with_token
from ..errors import (
    AsyncSyncError,
    AuthenticationFailed,
    InvalidInput,
    NotFound,
    RemoteError,
    TransientRemoteError,
)
from ..fingerprint import parse_fingerprint
from ..names import ROOT_NS, AuthId, GroupId, Namespace, SnapshotId, check_archive_name, check_digest, safe_id
from .blocking import BlockingChannel, FetchJob, as_receiver
from .errors import error_for_status, map_client_error

log = logging.getLogger("asyncsync.client")

T = TypeVar("T")

#: largest JSON answer the client accepts (a listing of many snapshots)
MAX_JSON_ANSWER = 64 * 1024 * 1024
#: aiohttp read buffer per connection (the transport pauses above twice this)
READ_BUFSIZE = 1024 * 1024
#: characters left as they are in a request path (the rest is percent-encoded, as aiohttp did)
_PATH_SAFE = "/:@!$&'()*+,;="
#: ... and in a query value (``/`` and ``:`` of namespaces and times stay readable, as with aiohttp)
_QUERY_SAFE = "/:@"
#: largest error body read (only its message is used)
_MAX_ERROR_BODY = 64 * 1024

Sleep = Callable[[float], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff with jitter: retry *n* waits ``base * 2**n`` (capped), half of it random."""

    retries: int = 4
    base_delay: float = 0.5
    max_delay: float = 30.0

    def delay(self, attempt: int, rand: Callable[[], float] = random.random) -> float:
        """Seconds to wait before retry number ``attempt`` (0-based)."""
        cap = min(self.max_delay, self.base_delay * 2.0**attempt)
        return cap / 2 + rand() * cap / 2


@dataclass(slots=True)
class ClientStatistics:
    """Counters of one client (for reports and tests)."""

    requests: int = 0
    retries: int = 0
    bytes_received: int = 0
    logins: int = 0
    errors: dict[str, int] = field(default_factory=dict)


def _host(host: str) -> str:
    h = host.strip()
    if h.startswith("[") and h.endswith("]"):
        h = h[1:-1]
    if not h:
        raise InvalidInput("empty host", field="host")
    return h


#: a blob as received: its bytes in order, in the pieces the transport delivered
#: (memoryviews where a piece was split: slicing bytes would copy the rest each time)
Parts = list[bytes | memoryview]


async def _read_parts(content: aiohttp.StreamReader, n: int) -> tuple[Parts, memoryview]:
    """Exactly ``n`` bytes of ``content`` as pieces, plus what was read beyond them.

    Unlike ``readexactly`` this does not join the pieces (two copies of every
    byte on the event loop thread for a 4 MiB chunk); the caller hands them to
    a worker thread, which hashes and writes them piece by piece. Raises
    :class:`asyncio.IncompleteReadError` if the stream ends early.
    """
    parts: Parts = []
    while n > 0:
        piece = await content.readany()
        if not piece:
            got = sum(len(p) for p in parts)
            raise asyncio.IncompleteReadError(b"".join(parts), got + n)
        if len(piece) > n:
            view = memoryview(piece)
            parts.append(view[:n])
            return parts, view[n:]
        parts.append(piece)
        n -= len(piece)
    return parts, memoryview(b"")


class _PartsReader:
    """Frames of a batch answer read as pieces; keeps what one read fetched beyond a frame."""

    __slots__ = ("_content", "_extra")

    def __init__(self, content: aiohttp.StreamReader) -> None:
        self._content = content
        self._extra = memoryview(b"")

    async def read(self, n: int) -> Parts:
        parts: Parts = []
        if self._extra:
            head, self._extra = self._extra[:n], self._extra[n:]
            parts.append(head)
            n -= len(head)
        if n > 0:
            more, self._extra = await _read_parts(self._content, n)
            parts += more
        return parts

    async def at_eof(self) -> bool:
        return not self._extra and not await self._content.read(1)


class Client:
    """A logged-in connection pool to one remote server. Create with :meth:`connect`."""

    def __init__(
        self,
        channel: BlockingChannel,
        auth_id: AuthId,
        secret: str,
        *,
        policy: RetryPolicy,
        sleep: Sleep,
        rand: Callable[[], float],
        max_connections: int = 16,
    ) -> None:
        #: blocking keep-alive connections, used on worker threads (see :mod:`.blocking`)
        self.channel = channel
        self.auth_id = auth_id
        self._secret = secret
        self._policy = policy
        self._sleep = sleep
        self._rand = rand
        self._max_connections = max_connections
        #: the aiohttp session of the streaming path, made on its first use (see :meth:`_aiohttp`)
        self._session: aiohttp.ClientSession | None = None
        self._session_lock = asyncio.Lock()
        self._closed = False
        self._headers: dict[str, str] = {}
        self._login_lock = asyncio.Lock()
        self.stats = ClientStatistics()
        if auth_id.is_token:
            self._headers["Authorization"] = f"{protocol.TOKEN_AUTH_PREFIX}{auth_id}:{secret}"

    def __repr__(self) -> str:
        return f"Client({self.base_url!r}, auth_id={str(self.auth_id)!r}, requests={self.stats.requests})"

    @property
    def base_url(self) -> str:
        """``https://host:port`` (no trailing slash; IPv6 in brackets, the default port left out)."""
        return self.channel.origin

    def statistics(self) -> ClientStatistics:
        return self.stats

    # ---- lifecycle ------------------------------------------------------------------------

    @classmethod
    async def connect(
        cls,
        host: str,
        port: int,
        auth_id: AuthId,
        secret: str,
        *,
        fingerprint: str | None,
        tls: bool = True,
        max_connections: int = 16,
        timeout: float = 60.0,  # noqa: ASYNC109 - per-read socket timeout, not a deadline
        retries: int = 4,
        retry_base_delay: float = 0.5,
        retry_max_delay: float = 30.0,
        sleep: Sleep = asyncio.sleep,
        rand: Callable[[], float] = random.random,
    ) -> Client:
        """Connect to ``host:port`` and log in (password for a user, header for a token).

        ``fingerprint`` pins the server certificate (SHA-256, ``aa:bb:...``); with
        ``None`` the certificate must be trusted by the system CAs. ``host`` may
        be a name, an IPv4 or an IPv6 address (with or without brackets).
        Raises :class:`AuthenticationFailed` for bad credentials and
        :class:`FingerprintMismatch` naming the fingerprint the server presented.
        """
        if not 1 <= port <= 65535:
            raise InvalidInput(f"invalid port {port}", field="port")
        if max_connections < 1:
            raise InvalidInput("must be at least 1", field="max-connections")
        pinned = parse_fingerprint(fingerprint) if tls and fingerprint is not None else None
        channel = BlockingChannel(
            _host(host), port, tls=tls, fingerprint=pinned, timeout=timeout, max_idle=max_connections
        )
        client = cls(
            channel,
            auth_id,
            secret,
            policy=RetryPolicy(retries, retry_base_delay, retry_max_delay),
            sleep=sleep,
            rand=rand,
            max_connections=max_connections,
        )
        try:
            if auth_id.is_token:
                await client.version()  # proves the token works
            else:
                await client._login()
        except BaseException:
            await client.aclose()
            raise
        return client

    async def _aiohttp(self) -> aiohttp.ClientSession:
        """The aiohttp session of the streaming path, made (and aiohttp imported) on first use."""
        async with self._session_lock:
            if self._closed:
                raise RemoteError(f"{self.base_url}: the client is closed", url=self.base_url)
            if self._session is None:
                self._session = await self._make_session()
            return self._session

    async def _make_session(self) -> aiohttp.ClientSession:
        channel = self.channel

        def prepare() -> tuple[Any, ssl.SSLContext | None]:
            # importing aiohttp reads ~100 files and loading the CA store more: not on the event loop
            module = importlib.import_module("aiohttp")
            ctx = ssl.create_default_context() if channel.tls and channel.fingerprint is None else None
            return module, ctx

        aiohttp_mod, ctx = await asyncio.to_thread(prepare)
        ssl_arg: aiohttp.Fingerprint | ssl.SSLContext | bool
        if not channel.tls:
            ssl_arg = False
        elif channel.fingerprint is not None:
            ssl_arg = aiohttp_mod.Fingerprint(channel.fingerprint)
        else:
            assert ctx is not None
            ssl_arg = ctx
        timeout = channel.timeout
        connector = aiohttp_mod.TCPConnector(
            limit=self._max_connections, limit_per_host=self._max_connections, ssl=ssl_arg
        )
        session: aiohttp.ClientSession = aiohttp_mod.ClientSession(
            connector=connector,
            timeout=aiohttp_mod.ClientTimeout(
                total=None, connect=timeout, sock_connect=timeout, sock_read=timeout
            ),
            auto_decompress=False,
            cookie_jar=aiohttp_mod.DummyCookieJar(),
            # large bodies (4 MiB chunks): a 64 KiB read buffer pauses and resumes the
            # transport 64 times per chunk; 1 MiB cuts the wake-ups (≤ 2 MiB buffered per connection)
            read_bufsize=READ_BUFSIZE,
        )
        return session

    async def aclose(self) -> None:
        """Close the connections (and the aiohttp session, if the streaming path made one)."""
        async with self._session_lock:
            self._closed = True
            session, self._session = self._session, None
        self.channel.close()
        if session is not None:
            await session.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def _target(self, path: str, params: dict[str, str] | None = None) -> str:
        """The encoded request target of API ``path``: ``/api2/json<path>[?query]``."""
        target = quote(protocol.API_PREFIX + path, safe=_PATH_SAFE)
        if params:
            target += "?" + urlencode(params, safe=_QUERY_SAFE)
        return target

    async def _login(self) -> None:
        path = protocol.p_ticket()

        async def attempt() -> Any:
            return await self._once(
                "POST",
                path,
                json_body={"username": str(self.auth_id), "password": self._secret},
                auth=False,
                max_size=MAX_JSON_ANSWER,
                parse=True,
            )

        data = await self._retrying(attempt, relogin=False)
        url = self.base_url + self._target(path)
        try:
            ticket, csrf = data["ticket"], data["CSRFPreventionToken"]
        except (KeyError, TypeError) as exc:
            raise RemoteError(f"malformed login answer from {self.base_url}", url=url) from exc
        if not isinstance(ticket, str) or not isinstance(csrf, str):
            raise RemoteError(f"malformed login answer from {self.base_url}", url=url)
        self._headers = {
            "Authorization": f"{protocol.TICKET_AUTH_PREFIX}{ticket}",
            protocol.CSRF_HEADER: csrf,
        }
        self.stats.logins += 1

    async def _relogin(self, stale: dict[str, str]) -> None:
        async with self._login_lock:
            if self._headers is stale:  # nobody else renewed it meanwhile
                await self._login()

    async def _once(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, str] | None = None,
        json_body: Any = None,
        auth: bool = True,
        max_size: int,
        parse: bool,
    ) -> Any:
        """One request over the blocking channel, in one worker-thread hop: the parsed
        ``data`` of the JSON envelope (``parse``, decoded in the thread too) or the raw body.

        Errors as :meth:`.BlockingChannel.call` maps them; cancelling the awaiting
        task interrupts the request and returns once the thread is done.
        """
        target = self._target(path, params)
        headers = self._headers if auth else {}
        body = None if json_body is None else json.dumps(json_body).encode()

        def decode(status: int, etag: str | None, raw: bytes, url: str) -> Any:
            return _envelope(raw, url) if parse else raw

        return await self._hop(method, target, headers, body, max_size=max_size, decode=decode)

    async def _hop(
        self,
        method: str,
        target: str,
        headers: dict[str, str],
        body: bytes | None,
        *,
        max_size: int,
        decode: Callable[[int, str | None, bytes, str], T],
    ) -> T:
        """One request over the blocking channel in one worker-thread hop, its answer made
        into the result by ``decode(status, etag, body, url)`` in the same thread. Errors as
        :meth:`.BlockingChannel.call` maps them; cancelling the awaiting task interrupts the
        request and returns once the thread is done."""
        self.stats.requests += 1
        channel = self.channel
        job = FetchJob()

        def run() -> tuple[int, T]:  # in a worker thread
            status, etag, raw = channel.call(method, target, headers, body, job, max_size=max_size)
            return len(raw), decode(status, etag, raw, channel.origin + target)

        received, value = await run_with_token(None, job, run)
        self.stats.bytes_received += received
        return value

    async def _retrying(self, op: Callable[[], Awaitable[T]], *, relogin: bool = True) -> T:
        """Run ``op``, retrying transient failures with backoff; renew an expired ticket once."""
        attempt = 0
        renewed = False
        while True:
            stale = self._headers
            try:
                return await op()
            except TransientRemoteError as exc:
                if attempt >= self._policy.retries:
                    raise
                delay = self._policy.delay(attempt, self._rand)
                attempt += 1
                self.stats.retries += 1
                log.info("retry %d/%d in %.1f s: %s", attempt, self._policy.retries, delay, exc)
                await self._sleep(delay)
            except AuthenticationFailed:
                if not relogin or renewed or self.auth_id.is_token:
                    raise
                renewed = True
                await self._relogin(stale)

    async def _json(
        self, method: str, path: str, *, params: dict[str, str] | None = None, body: Any = None
    ) -> Any:
        return await self._retrying(
            lambda: self._once(
                method, path, params=params, json_body=body, max_size=MAX_JSON_ANSWER, parse=True
            )
        )

    async def _bytes(self, path: str, max_size: int) -> bytes:
        data: bytes = await self._retrying(lambda: self._once("GET", path, max_size=max_size, parse=False))
        return data

    # ---- API ----------------------------------------------------------------------------------

    async def version(self) -> dict[str, Any]:
        data = await self._json("GET", "/version")
        if not isinstance(data, dict):
            raise RemoteError("malformed version answer")
        return data

    async def list_datastores(self) -> list[dict[str, Any]]:
        """The datastores the caller may see: ``[{"store": name, "comment": ...}]``."""
        data = await self._json("GET", protocol.p_datastores())
        if not isinstance(data, list) or not all(isinstance(d, dict) for d in data):
            raise RemoteError("malformed datastore list")
        return data

    async def list_namespaces(
        self, store: str, parent: Namespace = ROOT_NS, max_depth: int | None = None
    ) -> list[Namespace]:
        """``parent`` and the namespaces below it (down to ``max_depth``) that the caller may see."""
        params = {"parent": str(parent)}
        if max_depth is not None:
            params["max-depth"] = str(max_depth)
        data = await self._json("GET", protocol.p_namespaces(_store(store)), params=params)
        return [protocol.ns_from_json(o) for o in _list(data, "namespace list")]

    async def list_groups(self, store: str, ns: Namespace) -> list[protocol.GroupItem]:
        data = await self._json("GET", protocol.p_groups(_store(store)), params={"ns": str(ns)})
        return [protocol.GroupItem.from_json(o) for o in _list(data, "group list")]

    async def list_snapshots(
        self, store: str, ns: Namespace, group: GroupId | None = None
    ) -> list[protocol.SnapshotItem]:
        params = {"ns": str(ns)}
        if group is not None:
            params["backup-type"] = group.type.value
            params["backup-id"] = group.id
        return _snapshot_items(await self._json("GET", protocol.p_snapshots(_store(store)), params=params))

    async def list_snapshots_tagged(
        self, store: str, ns: Namespace, known: str | None = None
    ) -> tuple[str, list[protocol.SnapshotItem] | None]:
        """All snapshots of ``ns`` (as :meth:`list_snapshots` without a group) with the
        listing's tag (:func:`~asyncsync.protocol.listing_tag` of the answer body); or
        ``(known, None)``, unparsed, if the listing's tag is ``known``.

        ``known`` is sent as ``If-None-Match``: a server that tags its listings answers
        ``304 Not Modified`` without a body; one that does not sends the body, whose tag
        is computed here, so both give the same answer. A 304 that does not name
        ``known`` is a :class:`RemoteError`.
        """
        tag, data = await self._retrying(
            lambda: self._tagged_once(protocol.p_snapshots(_store(store)), ns, known)
        )
        return tag, None if data is _UNCHANGED else _snapshot_items(data)

    async def _tagged_once(self, path: str, ns: Namespace, known: str | None) -> tuple[str, Any]:
        """One tagged GET (see :meth:`list_snapshots_tagged`), the tag and the JSON ``data``
        computed in the worker thread: (tag, data), or (known, ``_UNCHANGED``) when the
        listing is the known one. Errors as :meth:`_once`."""
        headers = self._headers if known is None else {**self._headers, "If-None-Match": f'"{known}"'}

        def decode(status: int, etag: str | None, raw: bytes, url: str) -> tuple[str, Any]:
            if status == 304:
                if known is None or etag != f'"{known}"':
                    raise RemoteError(f"unexpected 304 answer from {url}", url=url)
                return known, _UNCHANGED
            if status != 200:
                raise RemoteError(f"unexpected status {status} from {url}", url=url)
            tag = protocol.listing_tag(raw)
            return tag, _UNCHANGED if tag == known else _envelope(raw, url)

        target = self._target(path, {"ns": str(ns)})
        return await self._hop("GET", target, headers, None, max_size=MAX_JSON_ANSWER, decode=decode)

    async def open_reader(self, store: str, ns: Namespace, snap: SnapshotId) -> ReaderSession:
        """Open a reader session for one snapshot (close it with :meth:`ReaderSession.aclose`)."""
        data = await self._json(
            "POST", protocol.p_reader(_store(store)), body=protocol.snapshot_params(ns, snap)
        )
        reader = data.get("reader") if isinstance(data, dict) else None
        if not isinstance(reader, str) or not reader.replace("-", "").replace("_", "").isalnum():
            raise RemoteError("malformed reader answer")
        return ReaderSession(self, store, reader, ns, snap)


#: the data of a tagged listing whose tag is the known one (see Client.list_snapshots_tagged)
_UNCHANGED: Any = object()


def _envelope(raw: bytes, url: str) -> Any:
    """The ``data`` of a JSON answer envelope; a :class:`RemoteError` if it is malformed."""
    try:
        return json.loads(raw)["data"]
    except (ValueError, KeyError, TypeError) as exc:
        raise RemoteError(f"malformed answer from {url}", url=url) from exc


def _snapshot_items(data: Any) -> list[protocol.SnapshotItem]:
    """The items of a snapshot listing's ``data``, in snapshot order."""
    return sorted(
        (protocol.SnapshotItem.from_json(o) for o in _list(data, "snapshot list")), key=lambda s: s.snapshot
    )


def _store(store: str) -> str:
    return safe_id(store, "datastore name")


def _list(data: Any, what: str) -> list[Any]:
    if not isinstance(data, list):
        raise RemoteError(f"malformed {what}")
    return data


async def _read_limited_error(resp: aiohttp.ClientResponse) -> bytes:
    import aiohttp  # the streaming path loaded it: a dictionary lookup

    try:
        return await resp.content.read(_MAX_ERROR_BODY)
    except (TimeoutError, aiohttp.ClientError, OSError):
        return b""


class _StreamRetry:
    """Retry bookkeeping of one resumable chunk stream.

    A transient failure is retried with the client's backoff, at most
    ``retries`` times in a row (progress since the last failure starts the
    budget afresh); an expired ticket is renewed once per stream (a token is
    never "renewed"). Each method returns to retry or raises the error given.
    """

    def __init__(self, client: Client) -> None:
        self.client = client
        self.attempt = 0
        self.renewed = False

    async def transient(self, exc: TransientRemoteError, *, progressed: bool, what: str) -> None:
        client = self.client
        if progressed:
            self.attempt = 0
        if self.attempt >= client._policy.retries:
            raise exc
        delay = client._policy.delay(self.attempt, client._rand)
        self.attempt += 1
        client.stats.retries += 1
        log.info("%s: retry %d in %.1f s: %s", what, self.attempt, delay, exc)
        await client._sleep(delay)

    async def auth_failed(self, exc: AuthenticationFailed, stale: dict[str, str]) -> None:
        if self.client.auth_id.is_token or self.renewed:
            raise exc
        self.renewed = True
        await self.client._relogin(stale)


class _CountedWriter:
    """Passes a blob's pieces on; counts the blob in its :class:`_Delivered` once it is finished."""

    __slots__ = ("_inner", "_length", "_owner")

    def __init__(self, owner: _Delivered, inner: BlobWriter, length: int) -> None:
        self._owner = owner
        self._inner = inner
        self._length = length

    def feed(self, piece: memoryview) -> None:
        self._inner.feed(piece)

    def finish(self) -> None:
        self._inner.finish()
        self._owner.finished(self._length)

    def abort(self) -> None:
        self._inner.abort()


class _Delivered:
    """A :class:`BlobReceiver` around another that counts the finished blobs (in a worker thread):
    a retry of :meth:`ReaderSession.fetch_chunks_threaded` asks only for the ones after them."""

    __slots__ = ("_answered", "bytes", "count", "receiver")

    def __init__(self, receiver: BlobReceiver) -> None:
        self.receiver = receiver
        #: the wrapped receiver's ``answered`` (:class:`~asyncsync.blobsink.AnswerWatcher`), looked up once
        self._answered: Callable[[], None] | None = getattr(receiver, "answered", None)
        #: blobs finished so far (they lead the request's digests)
        self.count = 0
        #: bytes of the finished blobs (frame headers counted), not yet taken by :meth:`take_bytes`
        self.bytes = 0

    def answered(self) -> None:
        """Pass the :class:`~asyncsync.blobsink.AnswerWatcher` call on, to a receiver that watches for it."""
        if self._answered is not None:
            self._answered()

    def begin(self, digest: str, length: int) -> BlobWriter:
        return _CountedWriter(self, self.receiver.begin(digest, length), length)

    def whole(self, digest: str, blob: memoryview) -> None:
        self.receiver.whole(digest, blob)
        self.finished(len(blob))

    def finished(self, length: int) -> None:
        """Count one finished blob of ``length`` bytes (its frame header added)."""
        self.count += 1
        self.bytes += protocol.FRAME_HEADER.size + length

    def take_bytes(self) -> int:
        n, self.bytes = self.bytes, 0
        return n


class ReaderSession:
    """Reads one snapshot of the remote through a server-side reader session."""

    def __init__(self, client: Client, store: str, reader_id: str, ns: Namespace, snap: SnapshotId) -> None:
        self.client = client
        self.store = store
        self.reader_id = reader_id
        self.ns = ns
        self.snapshot = snap
        self._closed = False

    def __repr__(self) -> str:
        return f"ReaderSession({self.store}:{self.ns}:{self.snapshot}, {self.reader_id[:8]}…)"

    async def download(self, name: str, *, max_size: int = protocol.MAX_FILE_SIZE) -> bytes:
        """The raw bytes of a snapshot file (manifest, index or blob, as stored).

        Downloading an index lets this session fetch the chunks it references.
        """
        if name != MANIFEST_NAME:
            check_archive_name(name)
        return await self.client._bytes(protocol.p_reader_file(self.store, self.reader_id, name), max_size)

    async def fetch_chunk(self, digest: str, *, max_size: int = blob.MAX_BLOB_SIZE) -> bytes:
        """The stored blob of one chunk (not verified: the caller decodes and checks it)."""
        check_digest(digest)
        return await self.client._bytes(protocol.p_reader_chunk(self.store, self.reader_id, digest), max_size)

    async def fetch_chunk_parts(self, digest: str, *, max_size: int = blob.MAX_BLOB_SIZE) -> Parts:
        """As :meth:`fetch_chunk`, as :data:`Parts` (one piece; the signature matches the streaming path)."""
        return [await self.fetch_chunk(digest, max_size=max_size)]

    async def fetch_chunks(
        self, digests: Sequence[str], *, max_size: int = blob.MAX_BLOB_SIZE
    ) -> AsyncIterator[tuple[str, bytes]]:
        """As :meth:`fetch_chunks_parts`, each blob joined into bytes."""
        stream = self.fetch_chunks_parts(digests, max_size=max_size)
        try:
            async for digest, parts in stream:
                yield digest, bytes(parts[0]) if len(parts) == 1 else b"".join(parts)
        finally:
            await stream.aclose()

    @property
    def threaded(self) -> bool:
        """True if :meth:`fetch_chunks_threaded` can be used (the client has a blocking channel)."""
        return self.client.channel is not None

    async def fetch_chunks_threaded(
        self,
        digests: Sequence[str],
        sink: BlobSink | BlobReceiver,
        executor: Executor,
        *,
        max_size: int = blob.MAX_BLOB_SIZE,
    ) -> None:
        """Fetch ``digests`` on a worker thread of ``executor``, passing each blob to ``sink`` there.

        The blocking counterpart of :meth:`fetch_chunks_parts` (see
        :mod:`asyncsync.client.blocking` for why). A :class:`BlobReceiver` gets each
        blob in pieces (``begin``, ``feed``..., ``finish``; ``abort`` for a blob not
        finished), a plain ``sink(digest, view)`` gets it whole; either runs in the
        worker thread, in request order, with views valid only during the call; an
        exception from it ends the fetch and propagates. A transient failure is
        retried with backoff for the digests not yet finished; an expired ticket is
        renewed once. When this returns or raises (also on cancellation), the thread
        is done and ``sink`` is not called again.
        """
        channel = self.client.channel
        for d in digests:
            check_digest(d)
        client = self.client
        base = protocol.API_PREFIX + protocol.p_reader_session(self.store, self.reader_id)
        progress = _Delivered(as_receiver(sink))

        retry = _StreamRetry(client)
        while progress.count < len(digests):
            batch = list(digests[progress.count : progress.count + protocol.MAX_BATCH_DIGESTS])
            before = progress.count
            stale = client._headers
            job = FetchJob()
            client.stats.requests += 1
            try:
                await run_with_token(
                    executor,
                    job,
                    functools.partial(channel.fetch, base, stale, batch, progress, job, max_size=max_size),
                )
            except TransientRemoteError as exc:
                await retry.transient(exc, progressed=progress.count > before, what="threaded fetch")
            except AuthenticationFailed as exc:
                await retry.auth_failed(exc, stale)
            finally:
                client.stats.bytes_received += progress.take_bytes()

    async def fetch_chunks_parts(
        self, digests: Sequence[str], *, max_size: int = blob.MAX_BLOB_SIZE
    ) -> AsyncGenerator[tuple[str, Parts], None]:
        """Yield ``(digest, blob)`` for every digest, in request order, in few requests.

        Raises :class:`NotFound` for a chunk missing on the server,
        :class:`RemoteError` for an answer that breaks the framing (a frame for
        another digest, an oversized frame), and, once the retries are spent,
        :class:`TransientRemoteError` for a truncated stream. A stream cut short
        is resumed with the digests not yet received.
        """
        for d in digests:
            check_digest(d)
        client = self.client
        url = client.base_url + client._target(protocol.p_reader_chunks(self.store, self.reader_id))
        pos = 0
        retry = _StreamRetry(client)
        while pos < len(digests):
            batch = list(digests[pos : pos + protocol.MAX_BATCH_DIGESTS])
            before = pos
            stale = client._headers
            try:
                async for item in self._stream(url, batch, max_size):
                    pos += 1
                    yield item
            except TransientRemoteError as exc:
                await retry.transient(exc, progressed=pos > before, what="batch fetch")
            except AuthenticationFailed as exc:
                await retry.auth_failed(exc, stale)

    async def _stream(self, url: str, batch: list[str], max_size: int) -> AsyncIterator[tuple[str, Parts]]:
        client = self.client
        session = await client._aiohttp()
        import aiohttp  # loaded by _aiohttp(): a dictionary lookup

        client.stats.requests += 1
        header = protocol.FRAME_HEADER
        try:
            async with session.post(url, json={"digests": batch}, headers=client._headers) as resp:
                if resp.status >= 400:
                    raise error_for_status(resp.status, await _read_limited_error(resp), url, resp.reason)
                reader = _PartsReader(resp.content)
                for want in batch:
                    head = await reader.read(header.size)
                    length = protocol.frame_length(b"".join(head), want, max_size)
                    data = await reader.read(length)
                    client.stats.bytes_received += header.size + length
                    yield want, data
                if not await reader.at_eof():
                    raise RemoteError("batch answer has trailing data")
        except AsyncSyncError:
            raise
        except (TimeoutError, aiohttp.ClientError, OSError, asyncio.IncompleteReadError) as exc:
            raise map_client_error(exc, url) from exc

    async def aclose(self) -> None:
        """Close the server-side session (best effort: it expires anyway)."""
        if self._closed:
            return
        self._closed = True
        path = protocol.p_reader_session(self.store, self.reader_id)
        try:
            await self.client._once("DELETE", path, max_size=_MAX_ERROR_BODY, parse=True)
        except (NotFound, RemoteError, AuthenticationFailed) as exc:
            log.debug("closing reader %s: %s", self.reader_id[:8], exc)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


__all__ = ["MAX_JSON_ANSWER", "Client", "ClientStatistics", "Parts", "ReaderSession", "RetryPolicy"]
