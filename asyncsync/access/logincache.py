"""A short-lived, in-memory record of passwords that were verified, so a repeated login
with the right password does not pay for scrypt again.

Why: every password login (``POST /access/ticket``) runs scrypt (≈ 0.1 s of CPU,
:mod:`.hashing`); a CLI pull or a sync job logs in once per run, so on a pull with
nothing to do the KDF is a large part of the wall time. Proxmox avoids it with a
ticket cache in the *client*; this cache is the server-side equivalent, and
needs nothing of the client.

What is remembered: ``HMAC-SHA256(k, user ∥ stored hash ∥ password)`` with ``k``
a random key made per process (never written anywhere), and when it was
verified. A login whose value is present and younger than ``ttl`` seconds is
accepted without scrypt. The security properties, and why they hold:

* *Wrong passwords always cost scrypt* (only successes are recorded): online
  guessing is as slow as without the cache, and the login throttle still
  counts every failure (the caller checks it before asking this cache).
* *No oracle*: a hit answers faster than a miss, but a hit means the password
  is right, which the answer says anyway; a wrong password, or an unknown user,
  never hits.
* *Changes take effect at once*: the stored hash is part of the key, so a new
  password (or a removed one) never matches an old entry; a disabled or expired
  account is refused by the caller's activity check, which runs on every login.
* *Memory disclosure*: someone who can read the server's memory gets ``k`` and
  can test guesses against the recent entries at HMAC speed instead of scrypt
  speed. The same person can read the ticket-signing key (and forge tickets
  for anybody) and the passwords passing through request buffers, so this
  adds little; ``ttl`` bounds which passwords are exposed that way.

Bounded: at most ``max_entries`` (oldest out); expired entries are dropped when
met. Thread-safe (logins run in worker threads).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections.abc import Callable

from ..errors import InvalidInput
from ..names import AuthId

#: how long a verified password is remembered (seconds)
DEFAULT_TTL = 900.0
DEFAULT_MAX_ENTRIES = 1024


class VerifiedPasswords:
    """Passwords verified recently (see the module docstring); ``ttl`` 0 disables it."""

    def __init__(
        self,
        ttl: float = DEFAULT_TTL,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if ttl < 0:
            raise InvalidInput("must not be negative", field="ttl")
        if max_entries < 1:
            raise InvalidInput("must be at least 1", field="max-entries")
        self.ttl = ttl
        self.max_entries = max_entries
        self._clock = clock
        self._key = secrets.token_bytes(32)
        self._entries: dict[bytes, float] = {}  # mac -> when verified (insertion order = age)
        self._lock = threading.Lock()
        self.hits = 0

    def __repr__(self) -> str:
        return f"VerifiedPasswords(ttl={self.ttl}, entries={len(self._entries)}, hits={self.hits})"

    def __len__(self) -> int:
        return len(self._entries)

    def _mac(self, userid: AuthId, stored: str, password: str) -> bytes:
        message = b"\0".join(
            (
                str(userid).encode(),
                stored.encode("utf-8", "surrogatepass"),
                password.encode("utf-8", "surrogatepass"),
            )
        )
        return hmac.new(self._key, message, hashlib.sha256).digest()

    def check(self, userid: AuthId, stored: str | None, password: str) -> bool:
        """True if ``password`` was verified against ``stored`` for ``userid`` within ``ttl``."""
        if stored is None or self.ttl <= 0:
            return False
        mac = self._mac(userid, stored, password)
        now = self._clock()
        with self._lock:
            when = self._entries.get(mac)
            if when is None:
                return False
            if now - when >= self.ttl or now < when:
                del self._entries[mac]
                return False
            self.hits += 1
            return True

    def remember(self, userid: AuthId, stored: str, password: str) -> None:
        """Record that ``password`` matched ``stored`` (call only after a real verification)."""
        if self.ttl <= 0:
            return
        mac = self._mac(userid, stored, password)
        now = self._clock()
        with self._lock:
            self._entries.pop(mac, None)  # re-insert: newest last
            self._entries[mac] = now
            while len(self._entries) > self.max_entries:
                del self._entries[next(iter(self._entries))]

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


__all__ = ["DEFAULT_MAX_ENTRIES", "DEFAULT_TTL", "VerifiedPasswords"]
