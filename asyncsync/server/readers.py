"""Reader sessions: the server's record of which chunks a client may fetch.

A reader session belongs to one auth-id and one snapshot. Downloading an index
through the session registers the digests it references; only registered
digests may then be fetched (Proxmox's reader rule: a client cannot fetch
arbitrary chunks by guessing digests, only those of snapshots it may read).

Sessions are bounded: at most :attr:`ReaderLimits.max_per_user` open per user
(a token counts against its user), each expires after
:attr:`ReaderLimits.idle_timeout` seconds without use, and each registers at
most :attr:`ReaderLimits.max_digests` digests. Expiry is checked lazily on
every lookup and open, so no background task is needed. The clock is
injectable for tests.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from ..datastore.datastore import Datastore
from ..errors import InvalidName, NotFound, PermissionDenied
from ..names import AuthId, Namespace, SnapshotId

_ID_RE = re.compile(r"[A-Za-z0-9_-]{16,64}")


@dataclass(frozen=True, slots=True)
class ReaderLimits:
    """Bounds on reader sessions."""

    max_per_user: int = 64
    idle_timeout: float = 600.0
    max_digests: int = 1 << 24


@dataclass(slots=True)
class ReaderSession:
    """One open reader: a snapshot plus the digests its downloaded indexes reference."""

    id: str
    auth_id: AuthId
    store: Datastore
    ns: Namespace
    snapshot: SnapshotId
    last_used: float
    digests: set[bytes] = field(default_factory=set)
    files: set[str] = field(default_factory=set)

    def __repr__(self) -> str:
        return (
            f"ReaderSession({self.id[:8]}…, {self.auth_id}, {self.store.name}:{self.ns}:{self.snapshot}, "
            f"digests={len(self.digests)})"
        )

    def allows(self, digest: str) -> bool:
        return bytes.fromhex(digest) in self.digests


def check_reader_id(value: str) -> str:
    """Validate a reader id from a URL (before any lookup)."""
    if not _ID_RE.fullmatch(value):
        raise InvalidName(f"invalid reader id {value!r}")
    return value


class ReaderRegistry:
    """All open reader sessions of one server."""

    def __init__(
        self, limits: ReaderLimits | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.limits = limits or ReaderLimits()
        self.clock = clock
        self._sessions: dict[str, ReaderSession] = {}

    def __repr__(self) -> str:
        return f"ReaderRegistry(open={len(self._sessions)})"

    def __len__(self) -> int:
        return len(self._sessions)

    def _expire(self) -> None:
        cutoff = self.clock() - self.limits.idle_timeout
        for sid in [s.id for s in self._sessions.values() if s.last_used < cutoff]:
            del self._sessions[sid]

    def open(self, auth_id: AuthId, store: Datastore, ns: Namespace, snapshot: SnapshotId) -> ReaderSession:
        """Open a session; :class:`PermissionDenied` if the user has too many open."""
        self._expire()
        user = auth_id.userid
        if sum(1 for s in self._sessions.values() if s.auth_id.userid == user) >= self.limits.max_per_user:
            raise PermissionDenied(
                f"too many open reader sessions for {user} (limit {self.limits.max_per_user}); close some"
            )
        session = ReaderSession(secrets.token_urlsafe(24), auth_id, store, ns, snapshot, self.clock())
        self._sessions[session.id] = session
        return session

    def get(self, reader_id: str, auth_id: AuthId, store: str) -> ReaderSession:
        """The caller's session ``reader_id`` on ``store``; :class:`NotFound` otherwise.

        A session of another auth-id is reported as unknown, not forbidden, so
        that ids cannot be probed.
        """
        check_reader_id(reader_id)
        self._expire()
        s = self._sessions.get(reader_id)
        if s is None or s.auth_id != auth_id or s.store.name != store:
            raise NotFound("reader session not found (expired or closed)")
        s.last_used = self.clock()
        return s

    def register(self, session: ReaderSession, name: str, digests: Iterable[bytes]) -> None:
        """Record an index downloaded through ``session`` and the digests it references."""
        new = set(digests) - session.digests
        if len(session.digests) + len(new) > self.limits.max_digests:
            raise PermissionDenied(
                f"reader session would reference more than {self.limits.max_digests} chunks"
            )
        session.digests |= new
        session.files.add(name)

    def close(self, reader_id: str, auth_id: AuthId, store: str) -> None:
        s = self.get(reader_id, auth_id, store)
        del self._sessions[s.id]

    def clear(self) -> None:
        self._sessions.clear()


__all__ = ["ReaderLimits", "ReaderRegistry", "ReaderSession", "check_reader_id"]
