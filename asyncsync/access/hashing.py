"""Password and token-secret hashing.

Passwords are hashed with scrypt (stdlib, memory-hard) and a per-password
random salt; the parameters travel inside the stored string, so they can be
raised later without breaking old hashes::

    $scrypt$ln=15,r=8,p=1$<salt b64>$<hash b64>

Token secrets are 256-bit random values made here, not chosen by people, so a
slow KDF would buy nothing but CPU on every API request: they are stored as a
salted SHA-256 (``$sha256$<salt b64>$<hash b64>``).

All comparisons are constant-time. Hashing a password takes ~0.1 s of CPU:
callers on an event loop use a worker thread.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from functools import cache

from ..errors import InvalidInput

SCRYPT_LOG_N = 15
SCRYPT_R = 8
SCRYPT_P = 1
_SALT_BYTES = 16
_HASH_BYTES = 32
# scrypt needs 128 * r * n bytes; allow up to ln=17 with headroom
_SCRYPT_MAXMEM = 256 * 1024 * 1024

MIN_PASSWORD_LENGTH = 8
MAX_PASSWORD_LENGTH = 1024


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


def check_password_policy(password: str) -> str:
    """Refuse passwords that are too short or too long (with :class:`InvalidInput`)."""
    if not isinstance(password, str):
        raise InvalidInput("must be a string", field="password")
    if len(password) < MIN_PASSWORD_LENGTH:
        raise InvalidInput(f"must have at least {MIN_PASSWORD_LENGTH} characters", field="password")
    if len(password) > MAX_PASSWORD_LENGTH:
        raise InvalidInput(f"must have at most {MAX_PASSWORD_LENGTH} characters", field="password")
    return password


def _scrypt(password: str, salt: bytes, log_n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(
        password.encode("utf-8", "surrogatepass"),
        salt=salt,
        n=1 << log_n,
        r=r,
        p=p,
        maxmem=_SCRYPT_MAXMEM,
        dklen=_HASH_BYTES,
    )


def hash_password(password: str, *, log_n: int = SCRYPT_LOG_N) -> str:
    """Hash ``password`` with scrypt and a fresh salt; blocking (~0.1 s)."""
    salt = secrets.token_bytes(_SALT_BYTES)
    digest = _scrypt(password, salt, log_n, SCRYPT_R, SCRYPT_P)
    return f"$scrypt$ln={log_n},r={SCRYPT_R},p={SCRYPT_P}${_b64(salt)}${_b64(digest)}"


@cache
def _dummy_hash() -> str:
    return hash_password(secrets.token_urlsafe(16))


def verify_password(password: str, stored: str | None) -> bool:
    """True if ``password`` matches ``stored``; blocking.

    With ``stored`` None (unknown user, no password set) a dummy hash is still
    computed, so the answer takes as long as for a real user and does not tell
    which users exist. A malformed stored hash never matches.
    """
    if stored is None:
        verify_password(password, _dummy_hash())
        return False
    try:
        _, scheme, params, salt_b64, hash_b64 = stored.split("$")
        if scheme != "scrypt":
            return False
        kv = dict(item.split("=", 1) for item in params.split(","))
        log_n, r, p = int(kv["ln"]), int(kv["r"]), int(kv["p"])
        if not (1 <= log_n <= 20 and 1 <= r <= 32 and 1 <= p <= 16):
            return False
        salt, expected = _unb64(salt_b64), _unb64(hash_b64)
    except (ValueError, KeyError):
        return False
    if len(password) > MAX_PASSWORD_LENGTH:
        return False
    return hmac.compare_digest(_scrypt(password, salt, log_n, r, p), expected)


def new_token_secret() -> str:
    """A fresh API token secret (256 random bits, URL-safe text)."""
    return secrets.token_urlsafe(32)


def hash_token_secret(secret: str) -> str:
    """Salted SHA-256 of a token secret (see the module docstring for why not scrypt)."""
    salt = secrets.token_bytes(_SALT_BYTES)
    digest = hashlib.sha256(salt + secret.encode("utf-8", "surrogatepass")).digest()
    return f"$sha256${_b64(salt)}${_b64(digest)}"


def verify_token_secret(secret: str, stored: str | None) -> bool:
    """True if ``secret`` matches ``stored``; constant-time, False for a malformed hash."""
    if stored is None or len(secret) > 512:
        return False
    try:
        _, scheme, salt_b64, hash_b64 = stored.split("$")
        if scheme != "sha256":
            return False
        salt, expected = _unb64(salt_b64), _unb64(hash_b64)
    except ValueError:
        return False
    return hmac.compare_digest(
        hashlib.sha256(salt + secret.encode("utf-8", "surrogatepass")).digest(), expected
    )


__all__ = [
    "MIN_PASSWORD_LENGTH",
    "check_password_policy",
    "hash_password",
    "hash_token_secret",
    "new_token_secret",
    "verify_password",
    "verify_token_secret",
]
