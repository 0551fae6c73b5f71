"""Chunk downloads on worker threads: blocking keep-alive connections, one per thread.

Why this exists: a pull's bulk transfer is bounded by CPU. With aiohttp every
byte of every chunk is decrypted (TLS) and parsed (HTTP) on the one event-loop
thread, while the verify-and-write threads wait; client and server share two
cores and the client's loop thread was busy ~90 % of the wall time. Here each
worker thread owns one blocking HTTP/1.1 connection (:mod:`http.client` over
:mod:`ssl`) and does the whole hop for a batch: send the request, read each
blob in pieces of at most :data:`RECV_PIECE` bytes into a reused buffer
(``SSL_read`` / ``recv_into`` release the GIL), and hand each piece to a
*blocking blob writer* (the fetch pool's verify + write, which releases the GIL
in blake3, CRC and ``write``). Decryption, hashing and
writing of different batches thus run in parallel on every core, and the event
loop only schedules batches.

The same connections carry the client's control requests (login, listings,
reader open/close, file and single-chunk downloads) through
:meth:`BlockingChannel.call`, one worker-thread hop each: that spares a pull
importing aiohttp at all (0.2-0.3 s) unless it streams batches under a rate
limit.

Contracts:

* **Same wire protocol and checks as the async client.** A batch is ``POST
  .../reader/{id}/chunks`` (framed stream, :data:`asyncsync.protocol.FRAME_HEADER`)
  or, for one digest, ``GET .../reader/{id}/chunk/{digest}`` (a plain body the
  server may send with ``sendfile``). Frames must come in request order, no frame
  may exceed ``max_size``, the stream must end exactly after the last frame.
* **Same pinning.** A TLS connection is made without CA checks and then its
  certificate's SHA-256 must equal the pinned fingerprint
  (:class:`FingerprintMismatch` names the one seen); without a fingerprint the
  system CAs and the host name are checked.
* **Same errors.** Connection failures, timeouts and truncated streams raise
  :class:`TransientRemoteError`; HTTP errors map through
  :func:`~asyncsync.client.errors.error_for_status`. A connection that saw any
  error is closed, never reused.
* **Bounded.** One receive buffer per connection, of at most :data:`RECV_PIECE`
  bytes whatever the blob size (a blob is handed on piece by piece, see
  :class:`BlobReceiver`); at most as many connections as threads use it at once;
  idle connections are kept up to ``max_idle``. A plain :data:`BlobSink` (whole
  blobs) is still accepted: :func:`as_receiver` collects each blob into a buffer
  of its own, freed after the call (for tests and small callers; the pull uses
  a receiver).
* **Stoppable.** :meth:`FetchJob.cancel` (from any thread) makes the worker's
  blocked read fail at once (the socket is shut down), the blob being received
  is aborted and the receiver is not called again;
  :func:`~asyncsync.datastore.threads.run_with_token` calls it when the awaiting task is
  cancelled and waits for the thread to return.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import io
import json
import socket
import ssl
import threading
from collections.abc import Callable, Sequence
from typing import Any, cast

from .. import protocol
from ..blobsink import BlobReceiver, BlobSink, BlobWriter
from ..datastore.threads import CancelToken, OperationCancelled
from ..errors import (
    AsyncSyncError,
    FingerprintMismatch,
    RemoteError,
    TransientRemoteError,
)
from ..fingerprint import format_fingerprint
from .errors import error_for_status, tls_handshake_failed, untrusted_certificate

#: the most of a blob's body read per step into a connection's buffer and handed to its writer.
#: Why a fixed piece and not the whole blob: the buffer was grown to the largest blob (4 MiB in
#: the bench, 16 MiB allowed) on each of up to 8 connections, so a pull's memory depended on how
#: far the adaptive transfer limit climbed. Measured on the cold rig: see docs/architecture.md.
RECV_PIECE = 512 * 1024

_MAX_ERROR_BODY = 64 * 1024
_HEADER = protocol.FRAME_HEADER


class _WholeBlob:
    """A :class:`BlobWriter` that collects a blob into a buffer of its own and hands it to a
    :data:`BlobSink` on :meth:`finish` (see :func:`as_receiver`)."""

    __slots__ = ("_buf", "_digest", "_pos", "_sink")

    def __init__(self, sink: BlobSink, digest: str, length: int) -> None:
        self._sink = sink
        self._digest = digest
        self._buf: bytearray | None = bytearray(length)
        self._pos = 0

    def feed(self, piece: memoryview) -> None:
        assert self._buf is not None
        end = self._pos + len(piece)
        if end > len(self._buf):
            raise ValueError("blob pieces exceed the announced length")
        self._buf[self._pos : end] = piece
        self._pos = end

    def finish(self) -> None:
        buf, self._buf = self._buf, None
        assert buf is not None
        if self._pos != len(buf):
            raise ValueError("blob pieces fall short of the announced length")
        self._sink(self._digest, memoryview(buf))

    def abort(self) -> None:
        self._buf = None


class _WholeBlobs:
    """:func:`as_receiver`'s adapter of a whole-blob sink."""

    __slots__ = ("sink",)

    def __init__(self, sink: BlobSink) -> None:
        self.sink = sink

    def begin(self, digest: str, length: int) -> BlobWriter:
        return _WholeBlob(self.sink, digest, length)

    def whole(self, digest: str, blob: memoryview) -> None:
        self.sink(digest, blob)


def as_receiver(sink: BlobSink | BlobReceiver) -> BlobReceiver:
    """``sink`` itself if it is a :class:`BlobReceiver`, else a receiver that collects each blob
    whole (a buffer per blob, of the blob's length) and calls ``sink(digest, view)`` with it."""
    if isinstance(sink, BlobReceiver):
        return sink
    return _WholeBlobs(sink)


#: bytes taken from the socket per ``recv`` on a TLS connection (many TLS records at once)
_TLS_RECV = 256 * 1024


class _TLSStream:
    """A blocking TLS client connection: socket I/O in large pieces, decryption by an :class:`ssl.SSLObject`.

    Why not :class:`ssl.SSLSocket`: OpenSSL's socket BIO reads each TLS record
    (≤ 16 KiB) with one or two ``read`` syscalls, and every ``recv_into`` of the
    socket returns one record, so a 4 MiB chunk cost ~500 syscalls and ~256
    round trips through Python and the GIL per thread. Here one ``recv_into``
    takes up to :data:`_TLS_RECV` bytes into a memory BIO, and one
    :meth:`readinto` decrypts as many records as are buffered straight into the
    caller's buffer (``SSLObject.read`` releases the GIL while it decrypts).

    Implements what :mod:`http.client` uses of a socket: ``sendall``,
    ``makefile("rb")``, ``close``, ``shutdown``, ``setsockopt``.
    """

    def __init__(self, sock: socket.socket, context: ssl.SSLContext, server_hostname: str) -> None:
        self._sock = sock
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        self._obj = context.wrap_bio(self._in, self._out, server_hostname=_no_idna(server_hostname))
        self._rbuf = bytearray(_TLS_RECV)
        self._eof = False
        try:
            while True:
                try:
                    self._obj.do_handshake()
                    break
                except ssl.SSLWantReadError:
                    self._flush()
                    if not self._fill():
                        raise ConnectionResetError("connection closed during the TLS handshake") from None
            self._flush()
        except BaseException:
            sock.close()
            raise

    def _flush(self) -> None:
        data = self._out.read()
        if data:
            self._sock.sendall(data)

    def _fill(self) -> bool:
        """Move what the socket has (blocking until something) into the BIO; False at EOF."""
        if self._eof:
            return False
        n = self._sock.recv_into(self._rbuf)
        if not n:
            self._eof = True
            self._in.write_eof()
            return False
        self._in.write(memoryview(self._rbuf)[:n])
        return True

    def getpeercert(self, binary_form: bool = True) -> bytes | None:
        return self._obj.getpeercert(True)

    def sendall(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        while view:
            n = self._obj.write(view)
            view = view[n:]
        self._flush()

    def readinto(self, buf: memoryview) -> int:
        """Decrypt into ``buf``: at least one byte (blocking), more while records are buffered; 0 at EOF."""
        want = len(buf)
        if not want:
            return 0
        got = 0
        while got < want:
            try:
                n = cast(int, self._obj.read(want - got, buf[got:]))  # with a buffer: a count
                if not n:  # close_notify received: SSLObject.read returns 0 rather than raising
                    return got
                got += n
            except ssl.SSLWantReadError:
                if got:
                    return got  # what was buffered; do not block for more
                self._flush()  # e.g. a key update's answer
                if not self._fill():
                    return 0
            except ssl.SSLZeroReturnError:  # close_notify
                return got
        return got

    def makefile(self, mode: str = "rb", buffering: int | None = None) -> io.BufferedReader:
        if mode != "rb":
            raise ValueError("only binary reading is supported")
        return io.BufferedReader(_TLSRaw(self), buffer_size=64 * 1024)

    def setsockopt(self, level: int, option: int, value: int) -> None:
        self._sock.setsockopt(level, option, value)

    def shutdown(self, how: int) -> None:
        self._sock.shutdown(how)

    def close(self) -> None:
        self._sock.close()


class _TLSRaw(io.RawIOBase):
    """The raw reader :meth:`_TLSStream.makefile` buffers (closing it leaves the connection open)."""

    def __init__(self, stream: _TLSStream) -> None:
        self._stream = stream

    def readable(self) -> bool:
        return True

    def readinto(self, buf: Any) -> int:
        return self._stream.readinto(memoryview(buf).cast("B"))


class _Connection(http.client.HTTPConnection):
    """An HTTP/1.1 connection, plain or TLS (:class:`_TLSStream`), the certificate pinned by fingerprint."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        tls: bool,
        fingerprint: bytes | None,
        context: ssl.SSLContext | None,
        timeout: float,
    ) -> None:
        super().__init__(host, port, timeout=timeout)
        self._tls = tls
        self._context = context
        self._fingerprint = fingerprint
        #: the receive buffer: grown to the largest piece needed, at most :data:`RECV_PIECE` bytes
        self.buffer = bytearray()
        #: an answer was read on this connection: the server may have closed it while it was idle
        self.used = False
        #: the TCP socket while its TLS handshake runs (so :meth:`shutdown` can interrupt it)
        self._handshaking: socket.socket | None = None
        #: :meth:`shutdown` was called: never connect or send again
        self.interrupted = False

    def connect(self) -> None:
        sock = socket.create_connection((_no_idna(self.host), self.port), self.timeout)  # type: ignore[arg-type]
        # the request goes out in one small write and must not wait for a delayed ACK
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if not self._tls:
            self.sock = sock
            self._check_interrupted(sock)
            return
        assert self._context is not None
        self._handshaking = sock
        try:
            self._check_interrupted(sock)  # a shutdown before ``_handshaking`` was set saw no socket
            stream = _TLSStream(sock, self._context, self.host)
        finally:
            self._handshaking = None
        if self._fingerprint is not None:
            seen = hashlib.sha256(stream.getpeercert(True) or b"").digest()
            if seen != self._fingerprint:
                stream.close()
                raise FingerprintMismatch(
                    format_fingerprint(self._fingerprint), format_fingerprint(seen), url=self.host
                )
        self.sock = stream
        self._check_interrupted(stream)

    def _check_interrupted(self, sock: socket.socket | _TLSStream) -> None:
        # :meth:`shutdown` runs in another thread: whichever of it and ``connect`` comes second
        # sees the other's write (the flag, or the socket to shut down)
        if self.interrupted:
            sock.close()
            self.sock = None
            raise ConnectionAbortedError("the request was cancelled")

    def shutdown(self) -> None:
        """Make a read blocked in another thread fail now (the descriptor stays owned by that thread)."""
        self.interrupted = True
        sock = self.sock if self.sock is not None else self._handshaking
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


class FetchJob(CancelToken):
    """The cancel token of one worker thread's fetch: :meth:`cancel` also interrupts a blocked read."""

    __slots__ = ("_conn", "_lock")

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self._conn: _Connection | None = None

    def __repr__(self) -> str:
        return f"FetchJob(cancelled={self.cancelled})"

    def _attach(self, conn: _Connection | None) -> None:
        with self._lock:
            self._conn = conn
            if conn is not None and self.cancelled:
                conn.shutdown()

    def cancel(self) -> None:
        """Stop the job: no further blob reaches the sink; a blocked read fails at once."""
        with self._lock:
            super().cancel()
            if self._conn is not None:
                self._conn.shutdown()


class BlockingChannel:
    """Keep-alive blocking connections to one server, handed to worker threads one each."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        tls: bool,
        fingerprint: bytes | None,
        timeout: float,
        max_idle: int = 16,
    ) -> None:
        self.host = host
        self.port = port
        self.tls = tls
        self.fingerprint = fingerprint
        self.timeout = timeout
        self.max_idle = max_idle
        self._context: ssl.SSLContext | None = None
        self._idle: list[_Connection] = []
        self._lock = threading.Lock()
        self._closed = False
        self.connections_made = 0

    def __repr__(self) -> str:
        scheme = "https" if self.tls else "http"
        return f"BlockingChannel({scheme}://{self.host}:{self.port}, idle={len(self._idle)})"

    def _ssl_context(self) -> ssl.SSLContext | None:
        if not self.tls:
            return None
        if self._context is None:
            if self.fingerprint is not None:
                # the fingerprint pins the certificate: no CA store to load (~40 ms) and no host check
                ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
            else:
                ctx = ssl.create_default_context()  # blocking (reads the CA store): worker threads only
            ctx.minimum_version = ssl.TLSVersion.TLSv1_2
            self._context = ctx
        return self._context

    def _acquire(self) -> _Connection:
        with self._lock:
            if self._closed:
                raise OperationCancelled()  # the client is closing
            if self._idle:
                return self._idle.pop()
            context = self._ssl_context()
            self.connections_made += 1
        return _Connection(
            self.host,
            self.port,
            tls=self.tls,
            fingerprint=self.fingerprint,
            context=context,
            timeout=self.timeout,
        )

    def _release(self, conn: _Connection) -> None:
        with self._lock:
            if not self._closed and len(self._idle) < self.max_idle:
                self._idle.append(conn)
                return
        conn.close()

    def close(self) -> None:
        """Close the idle connections; connections in use are closed when their thread returns them."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    # ---- one request, blocking ----------------------------------------------------------------

    def fetch(
        self,
        base_path: str,
        headers: dict[str, str],
        digests: Sequence[str],
        sink: BlobSink | BlobReceiver,
        job: FetchJob,
        *,
        max_size: int,
    ) -> None:
        """Fetch ``digests`` (one request) and pass each blob to ``sink``, in order. Blocking.

        ``base_path`` is the reader session's path (``/api2/json/admin/datastore/S/reader/R``).
        A :class:`BlobReceiver` gets each blob in pieces of at most :data:`RECV_PIECE`
        bytes (a blob that is not finished is aborted); a plain :data:`BlobSink` gets
        it whole (:func:`as_receiver`). The sink's own exceptions propagate unchanged
        (the connection is closed).
        """
        receiver = as_receiver(sink)
        conn = self._acquire()
        job._attach(conn)
        reusable = False
        try:
            self._connect(conn, job)
            if len(digests) == 1:
                self._fetch_one(conn, base_path, headers, digests[0], receiver, job, max_size)
            else:
                self._fetch_many(conn, base_path, headers, digests, receiver, job, max_size)
            reusable = True
        except _SinkFailed as wrapped:
            # the sink's own error (a full disk, a corrupt chunk): not a transfer failure
            raise wrapped.error from wrapped.error.__cause__
        except AsyncSyncError:
            raise
        except (OSError, http.client.HTTPException, ValueError) as exc:
            if job.cancelled:
                raise OperationCancelled() from exc
            raise TransientRemoteError(
                f"chunk transfer from {self.host}:{self.port} failed: {exc!r}", url=base_path
            ) from exc
        finally:
            job._attach(None)
            if reusable and not job.cancelled:
                self._release(conn)
            else:
                conn.close()

    @property
    def origin(self) -> str:
        """``scheme://host[:port]`` of the server (the prefix of error messages' URLs)."""
        scheme = "https" if self.tls else "http"
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.tls else 80
        return f"{scheme}://{host.lower()}" + ("" if self.port == default else f":{self.port}")

    def call(
        self,
        method: str,
        target: str,
        headers: dict[str, str],
        body: bytes | None,
        job: FetchJob,
        *,
        max_size: int,
    ) -> tuple[int, str | None, bytes]:
        """One request on a keep-alive connection: (status, ``ETag`` header or None, the whole
        answer body). Blocking. Any status below 400 is an answer (a ``304 Not Modified``
        has an empty body).

        ``target`` is the path with its query, already encoded
        (``/api2/json/admin/datastore/S/groups?ns=a``); a ``body`` is sent as JSON.
        At most ``max_size`` bytes are read: a Content-Length above it raises
        :class:`RemoteError` before reading, a longer unsized body once the bound is
        passed. Errors: HTTP >= 400 through :func:`error_for_status`; certificate and
        handshake failures as :meth:`_connect` says; a refused, reset or timed out
        connection and a truncated body :class:`TransientRemoteError`; after
        ``job.cancel()`` :class:`OperationCancelled`. A connection that saw any error
        is closed, never reused.
        """
        url = self.origin + target
        try:
            conn = self._acquire()
        except OperationCancelled:
            if job.cancelled:
                raise
            raise RemoteError(f"{url}: the client is closed", url=url) from None
        job._attach(conn)
        reusable = False
        try:
            self._connect(conn, job)
            resp = self._request(conn, method, target, headers, body)
            data = _read_body(resp, max_size, f"{method} {target}")
            job.check()
            reusable = resp.isclosed()  # the body was read to its end: the connection is clean
            return resp.status, resp.getheader("ETag"), data
        except AsyncSyncError:
            raise
        except (OSError, http.client.HTTPException, ValueError) as exc:
            if job.cancelled:
                raise OperationCancelled() from exc
            raise _transport_error(exc, url) from exc
        finally:
            job._attach(None)
            if reusable and not job.cancelled:
                self._release(conn)
            else:
                conn.close()

    def _connect(self, conn: _Connection, job: FetchJob) -> None:
        """Open ``conn`` if it is not open (an idle pooled connection is), mapping connect failures.

        :class:`FingerprintMismatch` for a pinned certificate that differs; a
        :class:`RemoteError` for a certificate the system CAs do not trust (no
        fingerprint), a failed TLS handshake (e.g. a plain HTTP server) or an
        unknown host name; :class:`TransientRemoteError` for a refused or timed out
        connection; :class:`OperationCancelled` after ``job.cancel()``.
        """
        if conn.sock is not None:
            return
        url = self.origin
        try:
            conn.connect()
        except AsyncSyncError:
            raise
        except ssl.SSLCertVerificationError as exc:
            raise untrusted_certificate(url, exc.verify_message or exc.reason) from exc
        except ssl.SSLError as exc:
            if job.cancelled:
                raise OperationCancelled() from exc
            raise tls_handshake_failed(url, exc) from exc
        except socket.gaierror as exc:
            raise RemoteError(f"cannot resolve the host of {url}: {exc}", url=url) from exc
        except TimeoutError as exc:
            raise TransientRemoteError(f"timeout talking to {url}", url=url) from exc
        except OSError as exc:
            if job.cancelled:
                raise OperationCancelled() from exc
            raise TransientRemoteError(f"cannot connect to {url}: {exc}", url=url) from exc

    def _request(
        self, conn: _Connection, method: str, path: str, headers: dict[str, str], body: bytes | None
    ) -> http.client.HTTPResponse:
        hdrs = dict(headers)
        if body is not None:
            hdrs["Content-Type"] = "application/json"
        try:
            conn.request(method, path, body=body, headers=hdrs)
            resp = conn.getresponse()
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
            if not conn.used or conn.interrupted:  # a cancelled request is not repeated
                raise
            # an idle keep-alive connection the server had closed: once more on a fresh one
            # (the requests are reads, safe to repeat)
            conn.close()
            conn.used = False
            conn.request(method, path, body=body, headers=hdrs)
            resp = conn.getresponse()
        conn.used = True
        if resp.status >= 400:
            err = resp.read(_MAX_ERROR_BODY)
            raise error_for_status(resp.status, err, path, resp.reason)
        return resp

    def _fetch_one(
        self,
        conn: _Connection,
        base_path: str,
        headers: dict[str, str],
        digest: str,
        receiver: BlobReceiver,
        job: FetchJob,
        max_size: int,
    ) -> None:
        path = f"{base_path}/chunk/{digest}"
        resp = self._request(conn, "GET", path, headers, None)
        _answered(receiver)
        length = resp.length
        if length is None:  # not what our server sends (it knows the file size), but valid HTTP
            data = resp.read(max_size + 1)
            if len(data) > max_size:
                raise RemoteError(f"chunk {digest}: answer exceeds the limit of {max_size} bytes")
            job.check()
            _deliver(receiver, digest, memoryview(data), job)
            return
        if length > max_size:
            raise RemoteError(f"chunk {digest}: answer of {length} bytes exceeds the limit of {max_size}")
        _receive(conn, resp, digest, length, receiver, job)

    def _fetch_many(
        self,
        conn: _Connection,
        base_path: str,
        headers: dict[str, str],
        digests: Sequence[str],
        receiver: BlobReceiver,
        job: FetchJob,
        max_size: int,
    ) -> None:
        path = f"{base_path}/chunks"
        body = json.dumps({"digests": list(digests)}).encode()
        resp = self._request(conn, "POST", path, headers, body)
        _answered(receiver)
        head = bytearray(_HEADER.size)
        head_view = memoryview(head)
        for want in digests:
            _read_exact(resp, head_view)
            length = protocol.frame_length(head, want, max_size)
            _receive(conn, resp, want, length, receiver, job)
        if resp.read(1):
            raise RemoteError("batch answer has trailing data")


def _read_body(resp: http.client.HTTPResponse, max_size: int, what: str) -> bytes:
    """The whole body of ``resp``, refusing more than ``max_size`` bytes before buffering it."""
    length = resp.length
    if length is not None:
        if length > max_size:
            raise RemoteError(f"{what}: answer of {length} bytes exceeds the limit of {max_size}")
        return resp.read()  # exactly ``length`` bytes, or IncompleteRead
    data = resp.read(max_size + 1)  # chunked or up to EOF: one byte more tells an excess
    if len(data) > max_size:
        raise RemoteError(f"{what}: answer exceeds the limit of {max_size} bytes")
    return data


def _transport_error(exc: BaseException, url: str) -> TransientRemoteError:
    """A failure after the connection was open: all are worth a retry."""
    if isinstance(exc, TimeoutError):
        return TransientRemoteError(f"timeout talking to {url}", url=url)
    if isinstance(exc, http.client.IncompleteRead):
        return TransientRemoteError(f"truncated answer from {url}", url=url)
    if isinstance(exc, http.client.RemoteDisconnected):
        return TransientRemoteError(f"{url}: server closed the connection", url=url)
    return TransientRemoteError(f"connection to {url} failed: {exc!r}", url=url)


class _SinkFailed(Exception):
    """Carries an exception raised by the sink past the transfer-error mapping."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(repr(error))
        self.error = error


def _sink_call(fn: Callable[[], Any]) -> Any:
    """Call a receiver's or writer's method; its exception becomes :class:`_SinkFailed`."""
    try:
        return fn()
    except Exception as exc:
        raise _SinkFailed(exc) from None


def _no_idna(host: str) -> str | bytes:
    """``host`` for getaddrinfo and the TLS SNI: an ASCII name (or address) as bytes, which
    both take as they are, where a str is IDNA-encoded first (importing that codec cost
    each process ~1.6 ms of start-up); any other name as it is."""
    return host.encode("ascii") if host.isascii() else host


def _answered(receiver: BlobReceiver) -> None:
    """Tell a receiver that watches for it (:class:`~asyncsync.blobsink.AnswerWatcher`) that an
    answer's headers arrived. Looked up by ``getattr``: an ``isinstance`` against the protocol
    class costs microseconds, and this runs once per request."""
    answered = getattr(receiver, "answered", None)
    if answered is not None:
        _sink_call(answered)


def _deliver(receiver: BlobReceiver, digest: str, view: memoryview, job: FetchJob) -> None:
    """Hand a blob already in memory to ``receiver`` whole; not once ``job`` is cancelled."""
    job.check()
    _sink_call(lambda: receiver.whole(digest, view))


def _receive(
    conn: _Connection,
    resp: http.client.HTTPResponse,
    digest: str,
    length: int,
    receiver: BlobReceiver,
    job: FetchJob,
) -> None:
    """Read the ``length`` bytes (already checked against the bound) of blob ``digest`` in pieces of
    at most :data:`RECV_PIECE` bytes into the connection's buffer, feeding each to the writer that
    ``receiver.begin`` returns, then finish it. Once ``job`` is cancelled no piece is fed and the
    writer is not finished; a writer not finished (any error, a truncated stream) is aborted.

    A blob of at most one piece is read whole and handed over in one call (``receiver.whole``):
    with 64 KiB chunks the writer's three calls per chunk cost ~10 µs of Python each time."""
    if length <= RECV_PIECE:
        view = _buffer(conn, length)[:length]
        _read_exact(resp, view)
        _deliver(receiver, digest, view, job)
        return
    writer: BlobWriter = _sink_call(lambda: receiver.begin(digest, length))
    finished = False
    try:
        buf = _buffer(conn, min(length, RECV_PIECE))
        remaining = length
        while remaining:
            view = buf[: min(remaining, RECV_PIECE)]
            _read_exact(resp, view)
            job.check()
            try:  # _sink_call inlined: no closure per piece
                writer.feed(view)
            except Exception as exc:
                raise _SinkFailed(exc) from None
            remaining -= len(view)
        _sink_call(writer.finish)
        finished = True
    finally:
        if not finished:
            writer.abort()


def _buffer(conn: _Connection, length: int) -> memoryview:
    """The connection's reused buffer, at least ``length`` (≤ :data:`RECV_PIECE`) bytes long."""
    if len(conn.buffer) < length:
        conn.buffer = bytearray(length)
    return memoryview(conn.buffer)


def _read_exact(resp: http.client.HTTPResponse, view: memoryview) -> None:
    while view:
        n = resp.readinto(view)
        if not n:
            raise TransientRemoteError("chunk stream ended early (truncated answer)")
        view = view[n:]


__all__ = [
    "RECV_PIECE",
    "BlobReceiver",
    "BlobSink",
    "BlobWriter",
    "BlockingChannel",
    "FetchJob",
    "as_receiver",
]
