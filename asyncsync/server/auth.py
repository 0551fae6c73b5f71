"""Authentication: the auth middleware and the password-login (ticket) route.

A request authenticates in one of three ways (checked in this order):

* ``Authorization: PBSAPIToken=user@realm!name:SECRET`` (an API token);
* ``Authorization: AsyncSyncTicket=<ticket>`` (a ticket from password login);
* the ticket cookie :data:`~asyncsync.protocol.TICKET_COOKIE`.

With a ticket (header or cookie), every request that is not GET/HEAD must also
send the CSRF token in :data:`~asyncsync.protocol.CSRF_HEADER`.

Only ``POST /access/ticket`` is reachable without authentication. Failed
logins are throttled per user id with a growing lockout (by the access layer).

The access files are re-read when they change, checked at most every
:attr:`ServerOptions.access_reload_interval` seconds, in a worker thread.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from .. import protocol
from ..access import AccessControl
from ..errors import AuthenticationFailed, InvalidInput, InvalidName
from ..names import AuthId
from .common import OPTIONS, get_access, ok, read_json
from .keys import ACCESS, AUTH_ID

log = logging.getLogger("asyncsync.server.auth")

_PUBLIC = frozenset({protocol.API_PREFIX + protocol.p_ticket()})
_SAFE_METHODS = frozenset({"GET", "HEAD"})


class _ReloadState:
    """When the access files were last checked; one reload at a time."""

    def __init__(self) -> None:
        self.checked = float("-inf")
        self.lock = asyncio.Lock()


_RELOAD: web.AppKey[_ReloadState] = web.AppKey("access_reload", _ReloadState)


async def _maybe_reload(app: web.Application) -> None:
    state = app[_RELOAD]
    interval = app[OPTIONS].access_reload_interval
    if time.monotonic() - state.checked < interval:
        return
    async with state.lock:
        if time.monotonic() - state.checked < interval:
            return
        access: AccessControl = app[ACCESS]
        await asyncio.to_thread(access.reload_if_changed)
        state.checked = time.monotonic()


def _parse_token(value: str) -> tuple[AuthId, str]:
    tokenid, sep, secret = value.partition(":")
    if not sep or not secret:
        raise AuthenticationFailed("malformed API token header (expected user@realm!name:SECRET)")
    try:
        auth_id = AuthId.parse(tokenid)
    except InvalidName:
        raise AuthenticationFailed("malformed API token id") from None
    if not auth_id.is_token:
        raise AuthenticationFailed("API token header names a user, not a token")
    return auth_id, secret


async def authenticate(request: web.Request) -> AuthId:
    """Who sent ``request``; :class:`AuthenticationFailed` if nobody valid."""
    access = get_access(request)
    header = request.headers.get("Authorization", "")
    ticket: str | None = None
    if header.startswith(protocol.TOKEN_AUTH_PREFIX):
        tokenid, secret = _parse_token(header[len(protocol.TOKEN_AUTH_PREFIX) :].strip())
        return access.authenticate_token(tokenid, secret)
    if header.startswith(protocol.TICKET_AUTH_PREFIX):
        ticket = header[len(protocol.TICKET_AUTH_PREFIX) :].strip()
    elif header:
        raise AuthenticationFailed("unsupported Authorization scheme")
    else:
        ticket = request.cookies.get(protocol.TICKET_COOKIE)
    if not ticket:
        raise AuthenticationFailed("authentication required")
    auth_id = access.verify_ticket(ticket)
    if request.method not in _SAFE_METHODS:
        csrf = request.headers.get(protocol.CSRF_HEADER)
        if not csrf:
            raise AuthenticationFailed(f"missing {protocol.CSRF_HEADER} header")
        access.verify_csrf(auth_id, ticket, csrf)
    return auth_id


@web.middleware
async def auth_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Authenticate every request except login; sets ``request[AUTH_ID]``."""
    await _maybe_reload(request.app)
    if request.path not in _PUBLIC:
        request[AUTH_ID] = await authenticate(request)
    return await handler(request)


async def login(request: web.Request) -> web.Response:
    """``POST /access/ticket``: ``username`` + ``password`` -> ticket, CSRF token and cookie."""
    body = await read_json(request)
    username, password = body.get("username"), body.get("password")
    if not isinstance(username, str) or not isinstance(password, str):
        raise InvalidInput("username and password are required")
    try:
        userid = AuthId.parse(username)
    except InvalidName:
        raise AuthenticationFailed("authentication failed") from None
    if userid.is_token:
        raise InvalidInput("API tokens cannot log in with a password; send the token header instead")
    access = get_access(request)
    try:
        # the access layer throttles repeated failures per user id (LoginThrottled)
        await asyncio.to_thread(access.authenticate_password, userid, password)
    except AuthenticationFailed as exc:
        log.warning("failed login for %s from %s: %s", userid, request.remote, exc)
        raise
    ticket, csrf = access.issue_ticket(userid)
    resp = ok({"username": str(userid), "ticket": ticket, "CSRFPreventionToken": csrf})
    resp.set_cookie(
        protocol.TICKET_COOKIE,
        ticket,
        secure=request.secure,
        httponly=True,
        samesite="Strict",
        path="/",
    )
    return resp


def setup(app: web.Application) -> None:
    app[_RELOAD] = _ReloadState()
    app.router.add_post(protocol.API_PREFIX + protocol.p_ticket(), login)


__all__ = ["auth_middleware", "authenticate", "login", "setup"]
