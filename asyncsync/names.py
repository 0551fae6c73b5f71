"""Validated identifiers.

Every name that becomes part of a path or a config key is parsed here first,
against a strict pattern, and only the resulting value objects are used to
build paths. A name with ``..``, ``/``, a leading dot, a NUL, or an unknown
backup type is refused with :class:`~asyncsync.errors.InvalidName`.

All value objects are immutable, hashable, ordered, and round-trip through
``str()`` / ``parse()``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum

from .errors import InvalidName

MAX_NAMESPACE_DEPTH = 7

_ID_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")
_NS_COMPONENT_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,31}")
# datastores, remotes, job ids: Proxmox "SAFE_ID"
_SAFE_ID_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,63}")
_USER_RE = re.compile(r"[^\s:/@!]{1,64}")
_REALM_RE = re.compile(r"[A-Za-z][A-Za-z0-9._-]{1,31}")
_TOKEN_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,63}")
_TIME_RE = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z")
_DIGEST_RE = re.compile(r"[0-9a-f]{64}")
_ARCHIVE_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}\.(fidx|didx|blob)")


def _check(pattern: re.Pattern[str], value: str, what: str) -> str:
    if not isinstance(value, str) or not pattern.fullmatch(value) or ".." in value:
        raise InvalidName(f"invalid {what} {value!r}")
    return value


def safe_id(value: str, what: str = "id") -> str:
    """Check a datastore, remote or job id (``[A-Za-z0-9_][A-Za-z0-9._-]*``, ≤ 64)."""
    return _check(_SAFE_ID_RE, value, what)


def check_digest(value: str) -> str:
    """Check a lowercase 64-hex chunk digest."""
    return _check(_DIGEST_RE, value, "digest")


#: the manifest's own file name: never an archive (a manifest listing it could make the
#: commit overwrite an archive with the manifest)
RESERVED_ARCHIVE_NAMES = frozenset({"index.json.blob"})


def check_archive_name(value: str) -> str:
    """Check an archive file name (``name.fidx``, ``name.didx`` or ``name.blob``; not the
    manifest's own name ``index.json.blob``)."""
    _check(_ARCHIVE_RE, value, "archive name")
    if value in RESERVED_ARCHIVE_NAMES:
        raise InvalidName(f"{value!r} is reserved for the manifest and cannot be an archive name")
    return value


class BackupType(StrEnum):
    """What a backup group holds."""

    VM = "vm"
    CT = "ct"
    HOST = "host"

    @classmethod
    def parse(cls, value: str) -> BackupType:
        try:
            return cls(value)
        except ValueError:
            raise InvalidName(f"invalid backup type {value!r} (expected vm, ct or host)") from None


@dataclass(frozen=True, order=True, slots=True)
class Namespace:
    """A namespace path: a tuple of at most 7 components; ``()`` is the root."""

    parts: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if len(self.parts) > MAX_NAMESPACE_DEPTH:
            raise InvalidName(
                f"namespace {'/'.join(self.parts)!r} is deeper than {MAX_NAMESPACE_DEPTH} levels"
            )
        for p in self.parts:
            _check(_NS_COMPONENT_RE, p, "namespace component")

    @classmethod
    def parse(cls, value: str | None) -> Namespace:
        """Parse ``a/b/c``; empty or ``None`` is the root namespace."""
        if value is None or value in ("", "/"):
            return cls(())
        if value.startswith("/") or value.endswith("/") or "//" in value:
            raise InvalidName(f"invalid namespace {value!r}")
        return cls(tuple(value.split("/")))

    @property
    def is_root(self) -> bool:
        return not self.parts

    @property
    def depth(self) -> int:
        return len(self.parts)

    @property
    def parent(self) -> Namespace:
        return Namespace(self.parts[:-1])

    @property
    def name(self) -> str:
        return self.parts[-1] if self.parts else ""

    def child(self, name: str) -> Namespace:
        return Namespace((*self.parts, name))

    def is_within(self, anchor: Namespace) -> bool:
        """True if this namespace is ``anchor`` or below it."""
        return self.parts[: len(anchor.parts)] == anchor.parts

    def relative_to(self, anchor: Namespace) -> Namespace:
        if not self.is_within(anchor):
            raise InvalidName(f"namespace {self} is not below {anchor}")
        return Namespace(self.parts[len(anchor.parts) :])

    def join(self, other: Namespace) -> Namespace:
        return Namespace(self.parts + other.parts)

    def rel_path(self) -> str:
        """Relative path in a datastore: ``ns/a/ns/b`` (empty for root)."""
        return "/".join(f"ns/{p}" for p in self.parts)

    def __str__(self) -> str:
        return "/".join(self.parts)

    def __repr__(self) -> str:
        return f"Namespace({str(self)!r})"


ROOT_NS = Namespace(())


@dataclass(frozen=True, order=True, slots=True)
class GroupId:
    """A backup group ``<type>/<id>``, e.g. ``vm/100``."""

    type: BackupType
    id: str

    def __post_init__(self) -> None:
        _check(_ID_RE, self.id, "backup id")

    @classmethod
    def parse(cls, value: str) -> GroupId:
        t, sep, i = value.partition("/")
        if not sep:
            raise InvalidName(f"invalid backup group {value!r} (expected TYPE/ID)")
        return cls(BackupType.parse(t), i)

    def rel_path(self) -> str:
        return f"{self.type.value}/{self.id}"

    def __str__(self) -> str:
        return f"{self.type.value}/{self.id}"


def format_time(t: int) -> str:
    """Epoch seconds to ``YYYY-MM-DDTHH:MM:SSZ``."""
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: str) -> int:
    """``YYYY-MM-DDTHH:MM:SSZ`` (or an RFC 3339 time with offset) to epoch seconds."""
    if isinstance(value, str) and _TIME_RE.fullmatch(value):
        # fields by position (the pattern fixed them); datetime() checks the ranges as strptime
        # did, without strptime's cost (~10 us a call, and importing _strptime on the first)
        try:
            dt = datetime(
                int(value[0:4]),
                int(value[5:7]),
                int(value[8:10]),
                int(value[11:13]),
                int(value[14:16]),
                int(value[17:19]),
                tzinfo=UTC,
            )
        except ValueError:
            raise InvalidName(f"invalid backup time {value!r}") from None
        return int(dt.timestamp())
    try:
        dt = datetime.fromisoformat(value)
    except (TypeError, ValueError):
        raise InvalidName(f"invalid backup time {value!r} (expected RFC 3339)") from None
    if dt.tzinfo is None:
        raise InvalidName(f"backup time {value!r} lacks a time zone")
    return int(dt.timestamp())


@dataclass(frozen=True, order=True, slots=True)
class SnapshotId:
    """A snapshot ``<type>/<id>/<time>``; ``time`` in epoch seconds (UTC)."""

    group: GroupId
    time: int

    def __post_init__(self) -> None:
        if not 0 <= self.time < 253402300800:  # year 10000
            raise InvalidName(f"backup time {self.time} out of range")

    @classmethod
    def parse(cls, value: str) -> SnapshotId:
        parts = value.split("/")
        if len(parts) != 3:
            raise InvalidName(f"invalid snapshot {value!r} (expected TYPE/ID/TIME)")
        return cls(GroupId(BackupType.parse(parts[0]), parts[1]), parse_time(parts[2]))

    @property
    def time_str(self) -> str:
        return format_time(self.time)

    def rel_path(self) -> str:
        return f"{self.group.rel_path()}/{self.time_str}"

    def __str__(self) -> str:
        return f"{self.group}/{self.time_str}"


@dataclass(frozen=True, order=True, slots=True)
class AuthId:
    """``user@realm`` or an API token ``user@realm!tokenname``."""

    user: str
    realm: str
    token: str | None = None

    def __post_init__(self) -> None:
        _check(_USER_RE, self.user, "user name")
        _check(_REALM_RE, self.realm, "realm")
        if self.token is not None:
            _check(_TOKEN_RE, self.token, "token name")

    @classmethod
    def parse(cls, value: str) -> AuthId:
        if not isinstance(value, str):
            raise InvalidName(f"invalid auth-id {value!r}")
        userid, bang, token = value.partition("!")
        user, at, realm = userid.rpartition("@")
        if not at or not user:
            raise InvalidName(f"invalid auth-id {value!r} (expected user@realm[!token])")
        return cls(user, realm, token if bang else None)

    @property
    def is_token(self) -> bool:
        return self.token is not None

    @property
    def userid(self) -> AuthId:
        """The user this id belongs to (itself for a user)."""
        return AuthId(self.user, self.realm)

    def __str__(self) -> str:
        base = f"{self.user}@{self.realm}"
        return f"{base}!{self.token}" if self.token is not None else base


ROOT_AUTH_ID = AuthId("root", "pam")


@dataclass(frozen=True, slots=True)
class SnapshotRef:
    """A snapshot together with its namespace: what a store needs to find it."""

    ns: Namespace
    snapshot: SnapshotId

    def __str__(self) -> str:
        return f"{self.ns}:{self.snapshot}" if self.ns.parts else str(self.snapshot)


__all__ = [
    "MAX_NAMESPACE_DEPTH",
    "ROOT_AUTH_ID",
    "ROOT_NS",
    "AuthId",
    "BackupType",
    "GroupId",
    "Namespace",
    "SnapshotId",
    "SnapshotRef",
    "check_archive_name",
    "check_digest",
    "format_time",
    "parse_time",
    "safe_id",
]
