"""Where a threaded chunk transfer hands its blobs: the contracts shared by the client
(:mod:`asyncsync.client.blocking`, which delivers) and the pull (:mod:`asyncsync.sync`, which
verifies and writes). A module of its own so that neither layer imports the other for them
(and a local pull does not import ``http.client``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

#: receives ``(digest, blob)`` in a worker thread; the view is valid only during the call
BlobSink = Callable[[str, memoryview], None]


class BlobWriter(Protocol):
    """Takes one blob in pieces, in a worker thread (from :meth:`BlobReceiver.begin`).

    The source calls :meth:`feed` with consecutive pieces (together exactly the
    length given to ``begin``; each view valid only during the call), then
    :meth:`finish` once. If the blob is not finished (a truncated stream,
    cancellation, an error of the writer or of the transfer), :meth:`abort` is
    called instead, always, also after ``feed`` or ``finish`` raised; it must
    not raise and may be called more than once. An exception from ``feed`` or
    ``finish`` ends the transfer and propagates unchanged.
    """

    def feed(self, piece: memoryview) -> None: ...

    def finish(self) -> None: ...

    def abort(self) -> None: ...


@runtime_checkable
class BlobReceiver(Protocol):
    """Where a threaded chunk source (``sync.source.ThreadedChunks``) delivers blobs, by one of two calls.

    ``begin(digest, length)`` is called in the worker thread when a blob of
    ``length`` bytes (the whole encoded blob, header included) starts, in request
    order, and returns the :class:`BlobWriter` its pieces go to; its exception
    ends the transfer and propagates unchanged (no writer was begun, so none is
    aborted). A source that has a blob whole in memory (one that fits one
    receive piece, or a local file) may instead call ``whole(digest, blob)``:
    the same effect as ``begin`` + ``feed(blob)`` + ``finish``, in one call (the
    view is valid only during it; its exception ends the transfer likewise).
    """

    def begin(self, digest: str, length: int) -> BlobWriter: ...

    def whole(self, digest: str, blob: memoryview) -> None: ...


class AnswerWatcher(Protocol):
    """Optional for a :class:`BlobReceiver`: told when each answer's headers have arrived.

    A network source calls ``answered()`` in the worker thread once per request,
    when the answer's status line and headers have been read (and found good),
    before the first ``begin`` or ``whole`` of its blobs. It is for timing (the
    pull's adaptive limit measures each transfer's wait for its first byte), so
    it must be cheap; its exception ends the transfer as a receiver's does. A
    source with no requests (a local datastore) does not call it. Sources look
    the method up by name (``getattr``), not with ``isinstance``, which for a
    protocol costs microseconds per request.
    """

    def answered(self) -> None: ...


__all__ = ["AnswerWatcher", "BlobReceiver", "BlobSink", "BlobWriter"]
