"""Translate transport exceptions and HTTP error answers into the project's error tree.

The one place where the async streaming path meets aiohttp's exceptions: nothing
of aiohttp leaks past :func:`map_client_error` and :func:`error_for_status`. The
blocking channel (:mod:`.blocking`) maps its own ``http.client``/``ssl``/OS
exceptions to the same errors with the same messages. aiohttp is never imported
here (importing it costs ~0.3 s): :func:`map_client_error` checks its exception
types only if something else already loaded it.

Transient (worth a retry): connection refused/reset, timeouts, truncated
bodies, 429 and 5xx answers -> :class:`TransientRemoteError`. Permanent:
401 :class:`AuthenticationFailed`, 403 :class:`PermissionDenied`, 404
:class:`NotFound`, 400/413 :class:`InvalidInput`, 409 :class:`Conflict`, a
certificate that does not match the pinned fingerprint
(:class:`FingerprintMismatch`) or is not trusted, anything else
(:class:`RemoteError`).
"""

from __future__ import annotations

import asyncio
import json
import sys

from ..errors import (
    AsyncSyncError,
    AuthenticationFailed,
    Conflict,
    FingerprintMismatch,
    InvalidInput,
    NotFound,
    PermissionDenied,
    RemoteError,
    TransientRemoteError,
)
from ..fingerprint import format_fingerprint


def _fp(raw: bytes) -> str:
    try:
        return format_fingerprint(raw)
    except InvalidInput:
        return raw.hex()


def map_client_error(exc: BaseException, url: str) -> AsyncSyncError:
    """The project error for an aiohttp/OS exception raised while talking to ``url``."""
    if isinstance(exc, AsyncSyncError):
        return exc
    if "aiohttp" in sys.modules:  # an aiohttp exception exists only if aiohttp was loaded
        mapped = _map_aiohttp_error(exc, url)
        if mapped is not None:
            return mapped
    if isinstance(exc, asyncio.TimeoutError):
        return TransientRemoteError(f"timeout talking to {url}", url=url)
    if isinstance(exc, asyncio.IncompleteReadError):
        return TransientRemoteError(f"truncated answer from {url}", url=url)
    if isinstance(exc, ConnectionError | OSError):
        return TransientRemoteError(f"connection to {url} failed: {exc}", url=url)
    return RemoteError(f"request to {url} failed: {exc!r}", url=url)


def _map_aiohttp_error(exc: BaseException, url: str) -> AsyncSyncError | None:
    import aiohttp  # already in sys.modules (see the caller): no import cost

    if isinstance(exc, aiohttp.ServerFingerprintMismatch):
        return FingerprintMismatch(_fp(exc.expected), _fp(exc.got), url=url)
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return untrusted_certificate(url, exc.certificate_error)
    if isinstance(exc, aiohttp.ClientSSLError):
        return tls_handshake_failed(url, exc)
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return RemoteError(f"cannot resolve the host of {url}: {exc.os_error}", url=url)
    if isinstance(exc, aiohttp.ClientConnectorError):
        return TransientRemoteError(f"cannot connect to {url}: {exc.os_error}", url=url)
    if isinstance(exc, aiohttp.ServerTimeoutError):
        return TransientRemoteError(f"timeout talking to {url}", url=url)
    if isinstance(exc, aiohttp.ClientPayloadError):
        return TransientRemoteError(f"truncated answer from {url}", url=url)
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return TransientRemoteError(f"{url}: server closed the connection", url=url)
    if isinstance(exc, aiohttp.ClientConnectionError):
        return TransientRemoteError(f"connection to {url} failed: {exc}", url=url)
    if isinstance(exc, aiohttp.InvalidURL):
        return InvalidInput(f"invalid remote URL {url}")
    return None


def untrusted_certificate(url: str, reason: object) -> RemoteError:
    """A certificate the system CAs do not trust, and no fingerprint configured to pin it."""
    return RemoteError(
        f"the certificate of {url} is not trusted ({reason}); configure its fingerprint to pin it", url=url
    )


def tls_handshake_failed(url: str, exc: BaseException) -> RemoteError:
    """A TLS handshake that failed for another reason than trust (e.g. a plain HTTP server)."""
    return RemoteError(f"TLS handshake with {url} failed (is it a plain HTTP server?): {exc}", url=url)


def error_message(body: bytes, fallback: str) -> str:
    """The ``error.message`` of a JSON error envelope, else ``fallback``."""
    try:
        obj = json.loads(body)
        msg = obj["error"]["message"]
        if isinstance(msg, str) and msg:
            return msg[:500]
    except (ValueError, KeyError, TypeError):
        pass
    return fallback


def error_for_status(status: int, body: bytes, url: str, reason: str | None = None) -> AsyncSyncError:
    """The project error for an HTTP error answer (``status`` >= 400)."""
    msg = error_message(body, reason or f"HTTP {status}")
    if status == 401:
        return AuthenticationFailed(f"remote: {msg}")
    if status == 403:
        return PermissionDenied(f"remote: {msg}")
    if status == 404:
        return NotFound(f"remote: {msg}")
    if status in (400, 413, 422):
        return InvalidInput(f"remote: {msg}")
    if status == 409:
        return Conflict(f"remote: {msg}")
    if status == 429 or status >= 500:
        return TransientRemoteError(f"remote error {status}: {msg}", url=url, status=status)
    return RemoteError(f"remote error {status}: {msg}", url=url, status=status)


__all__ = [
    "error_for_status",
    "error_message",
    "map_client_error",
    "tls_handshake_failed",
    "untrusted_certificate",
]
