"""Server-wide options, application keys and small request helpers shared by the route modules."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from .. import protocol
from ..access import AccessControl
from ..errors import AuthenticationFailed, InvalidInput
from ..names import AuthId
from .keys import ACCESS, AUTH_ID
from .readers import ReaderLimits, ReaderRegistry


@dataclass(frozen=True, slots=True)
class ServerOptions:
    """Limits and timeouts of one server (defaults suit production)."""

    #: check the access files for changes at most this often (seconds; 0: every request)
    access_reload_interval: float = 1.0
    readers: ReaderLimits = field(default_factory=ReaderLimits)
    max_batch_digests: int = protocol.MAX_BATCH_DIGESTS
    #: largest request body (JSON)
    client_max_size: int = protocol.MAX_JSON_BODY
    #: header limits against oversized requests
    max_line_size: int = 8190
    max_field_size: int = 8190
    max_headers: int = 64
    #: a request line and headers must arrive within this many seconds of the connection
    #: being made, or of the first byte of a later keep-alive request (slowloris); 0: off
    header_timeout: float = 30.0
    #: a request body must arrive within this many seconds
    body_timeout: float = 30.0
    #: one write to a client must drain within this many seconds (slow readers are cut)
    write_timeout: float = 120.0
    #: idle keep-alive connections are closed after this many seconds
    keepalive_timeout: float = 75.0
    #: in-flight requests get this long to finish on shutdown
    shutdown_timeout: float = 10.0
    access_log: bool = True
    #: run scheduled sync jobs in this server (``asyncsync serve`` unless --no-scheduler)
    scheduler: bool = False
    #: benchmarks and tests: hold every request back this many seconds before its handler
    #: runs, like a link with that much added latency (0: off, no middleware installed)
    response_delay: float = 0.0
    #: keep snapshot listing answers in memory, invalidated by inotify
    #: (:mod:`asyncsync.server.listing_cache`; ``asyncsync serve --no-listing-cache``: off)
    listing_cache: bool = True


OPTIONS: web.AppKey[ServerOptions] = web.AppKey("options", ServerOptions)
READERS: web.AppKey[ReaderRegistry] = web.AppKey("readers", ReaderRegistry)


def ok(data: Any, *, status: int = 200) -> web.Response:
    """The success envelope ``{"data": ...}``."""
    return web.json_response({"data": data}, status=status)


def get_access(request: web.Request) -> AccessControl:
    access: AccessControl = request.app[ACCESS]
    return access


def get_auth_id(request: web.Request) -> AuthId:
    """The authenticated caller (set by the auth middleware)."""
    auth_id = request.get(AUTH_ID)
    if not isinstance(auth_id, AuthId):
        raise AuthenticationFailed("authentication required")
    return auth_id


async def read_json(request: web.Request) -> dict[str, Any]:
    """The request's JSON object body (or form fields), read within the body timeout.

    Raises :class:`InvalidInput` for malformed or non-object bodies; an oversized body
    ends in aiohttp's 413, which the error middleware wraps in the envelope.
    """
    opts = request.app[OPTIONS]
    try:
        async with asyncio.timeout(opts.body_timeout):
            if request.content_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
                form = await request.post()
                return {k: v for k, v in form.items() if isinstance(v, str)}
            raw = await request.read()
    except TimeoutError:
        raise InvalidInput("request body not received in time") from None
    if not raw:
        return {}
    try:
        obj = json.loads(raw)
    except (ValueError, RecursionError):  # RecursionError: absurdly nested input
        raise InvalidInput("request body is not valid JSON") from None
    if not isinstance(obj, dict):
        raise InvalidInput("request body must be a JSON object")
    return obj


__all__ = [
    "OPTIONS",
    "READERS",
    "ServerOptions",
    "get_access",
    "get_auth_id",
    "ok",
    "read_json",
]
