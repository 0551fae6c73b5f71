"""One exception tree for the whole package.

Every error the library raises is an :class:`AsyncSyncError`. Each class
carries an ``exit_code`` (used by the CLI, and only there) and an HTTP
``status`` (used by the server, and only there). Third-party exceptions are
translated at the layer that meets them (``raise ... from exc``) and never
leak past it.

The message of an error is what a user reads: one line, naming what was
wrong, never a local traceback.
"""

from __future__ import annotations

from typing import ClassVar


class AsyncSyncError(Exception):
    """Something went wrong."""

    exit_code: ClassVar[int] = 1
    status: ClassVar[int] = 500
    code: ClassVar[str] = "error"

    def __init__(self, message: str | None = None) -> None:
        self.message = message or (self.__doc__ or self.__class__.__name__).strip()
        super().__init__(self.message)

    def __str__(self) -> str:
        return self.message


class InvalidInput(AsyncSyncError):
    """Invalid input."""

    exit_code = 2
    status = 400
    code = "bad-request"

    def __init__(self, message: str | None = None, *, field: str | None = None) -> None:
        self.field = field
        if field and message:
            message = f"{field}: {message}"
        super().__init__(message)


class InvalidName(InvalidInput):
    """Invalid name."""


class NotFound(AsyncSyncError):
    """Not found."""

    exit_code = 3
    status = 404
    code = "not-found"


class AlreadyExists(AsyncSyncError):
    """Already exists."""

    exit_code = 5
    status = 409
    code = "exists"


class Conflict(AsyncSyncError):
    """The object changed since it was read (digest mismatch) or is in use."""

    exit_code = 5
    status = 409
    code = "conflict"


class Locked(Conflict):
    """The resource is locked by another process."""


class PermissionDenied(AsyncSyncError):
    """Permission denied."""

    exit_code = 4
    status = 403
    code = "forbidden"


class AuthenticationFailed(AsyncSyncError):
    """Authentication failed."""

    exit_code = 4
    status = 401
    code = "unauthorized"


class IntegrityError(AsyncSyncError):
    """Data failed an integrity check."""

    exit_code = 6
    status = 500
    code = "integrity"


class CorruptBlob(IntegrityError):
    """A blob is corrupt (bad magic, CRC, size or compression)."""


class DigestMismatch(IntegrityError):
    """A chunk's content does not match its digest."""

    def __init__(self, expected: str, actual: str, *, source: str | None = None) -> None:
        self.expected = expected
        self.actual = actual
        where = f" from {source}" if source else ""
        super().__init__(f"chunk {expected}{where} has digest {actual}")


class ChunkTooLarge(CorruptBlob):
    """A chunk exceeds the size limit."""


class CorruptIndex(IntegrityError):
    """An index file is corrupt."""


class CorruptManifest(IntegrityError):
    """A manifest is corrupt."""


class StorageError(AsyncSyncError):
    """A file system operation failed."""

    exit_code = 1
    status = 500
    code = "storage"


class RemoteError(AsyncSyncError):
    """The remote failed."""

    exit_code = 7
    status = 502
    code = "remote"

    def __init__(
        self, message: str | None = None, *, url: str | None = None, status: int | None = None
    ) -> None:
        self.url = url
        self.http_status = status
        super().__init__(message)


class TransientRemoteError(RemoteError):
    """A temporary failure talking to the remote (reset, timeout, 5xx): retrying may help."""


class FingerprintMismatch(RemoteError):
    """The remote's certificate fingerprint does not match the configured one."""

    def __init__(self, expected: str, seen: str, *, url: str | None = None) -> None:
        self.expected = expected
        self.seen = seen
        super().__init__(
            f"certificate fingerprint mismatch: expected {expected}, server presented {seen}",
            url=url,
        )


class PartialFailure(AsyncSyncError):
    """Some parts of the job failed; the rest completed."""

    exit_code = 8


def exit_code_for(exc: BaseException) -> int:
    """Exit code for an exception: the error's own code, 130 for interrupts, else 1."""
    if isinstance(exc, AsyncSyncError):
        return exc.exit_code
    if isinstance(exc, KeyboardInterrupt):
        return 130
    return 1


__all__ = [
    "AlreadyExists",
    "AsyncSyncError",
    "AuthenticationFailed",
    "ChunkTooLarge",
    "Conflict",
    "CorruptBlob",
    "CorruptIndex",
    "CorruptManifest",
    "DigestMismatch",
    "FingerprintMismatch",
    "IntegrityError",
    "InvalidInput",
    "InvalidName",
    "Locked",
    "NotFound",
    "PartialFailure",
    "PermissionDenied",
    "RemoteError",
    "StorageError",
    "TransientRemoteError",
    "exit_code_for",
]
