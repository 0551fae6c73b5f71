"""Login tickets and CSRF tokens: HMAC-SHA256 signed, stateless, valid for two hours.

A ticket is ``ASYNCSYNC:<userid, percent-encoded>:<issue time, 8 hex>::<signature>``;
the signature (URL-safe base64 without padding) covers everything before
``::``. Only characters that are safe in a cookie and in a header appear, so
the server can send it either way without further quoting.

The CSRF token is bound to the user and to the ticket it was issued with, so a
token stolen from one session is useless with another.

Pure functions of the key and the time: no I/O, safe on an event loop.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from urllib.parse import quote, unquote

from ..errors import AuthenticationFailed, InvalidName
from ..names import AuthId

TICKET_PREFIX = "ASYNCSYNC"
TICKET_LIFETIME = 2 * 3600
#: how far a ticket's issue time may lie in the future (clock skew between cluster nodes)
TICKET_CLOCK_SKEW = 300
MAX_TICKET_LENGTH = 1024


def _sign(key: bytes, message: str) -> str:
    mac = hmac.new(key, message.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).decode().rstrip("=")


def make_ticket(key: bytes, userid: AuthId, now: float) -> str:
    """A signed ticket for ``userid`` issued at ``now`` (epoch seconds)."""
    payload = f"{TICKET_PREFIX}:{quote(str(userid), safe='@')}:{int(now):08X}"
    return f"{payload}::{_sign(key, payload)}"


def parse_ticket(key: bytes, ticket: str, now: float, *, lifetime: int = TICKET_LIFETIME) -> AuthId:
    """The user of a valid ticket; :class:`AuthenticationFailed` if forged, malformed or expired."""
    if not isinstance(ticket, str) or len(ticket) > MAX_TICKET_LENGTH:
        raise AuthenticationFailed("invalid ticket")
    payload, sep, signature = ticket.partition("::")
    if not sep or not hmac.compare_digest(
        signature.encode("utf-8", "surrogatepass"), _sign(key, payload).encode()
    ):
        raise AuthenticationFailed("invalid ticket")
    try:
        prefix, user, issued_hex = payload.split(":")
        issued = int(issued_hex, 16)
        userid = AuthId.parse(unquote(user, errors="strict"))
    except (ValueError, InvalidName, UnicodeDecodeError):
        raise AuthenticationFailed("invalid ticket") from None
    if prefix != TICKET_PREFIX or userid.is_token:
        raise AuthenticationFailed("invalid ticket")
    age = now - issued
    if age < -TICKET_CLOCK_SKEW:
        raise AuthenticationFailed("ticket issued in the future (check the clocks)")
    if age >= lifetime:
        raise AuthenticationFailed("ticket expired; log in again")
    return userid


def make_csrf(key: bytes, userid: AuthId, ticket: str) -> str:
    """The CSRF prevention token belonging to ``ticket``."""
    return _sign(key, f"csrf\0{userid}\0{ticket}")


def check_csrf(key: bytes, userid: AuthId, ticket: str, csrf: str) -> None:
    """Raise :class:`AuthenticationFailed` unless ``csrf`` belongs to ``userid`` and ``ticket``."""
    if not isinstance(csrf, str) or len(csrf) > 128:
        raise AuthenticationFailed("missing or invalid CSRF prevention token")
    if not hmac.compare_digest(
        csrf.encode("utf-8", "surrogatepass"), make_csrf(key, userid, ticket).encode()
    ):
        raise AuthenticationFailed("missing or invalid CSRF prevention token")


__all__ = [
    "TICKET_LIFETIME",
    "check_csrf",
    "make_csrf",
    "make_ticket",
    "parse_ticket",
]
