"""Wire protocol shared by the server and the client, so the two cannot drift apart.

All JSON answers live under ``/api2/json``; success is ``{"data": ...}``, failure
``{"error": {"code": "...", "message": "..."}}`` with a fitting HTTP status.

Authentication:

* password login: ``POST /api2/json/access/ticket`` with ``username`` and
  ``password`` answers ``{"ticket", "CSRFPreventionToken", "username"}`` and sets
  the ticket as cookie :data:`TICKET_COOKIE`; non-GET requests with a ticket
  must send the CSRF token in :data:`CSRF_HEADER`.
* API token: header ``Authorization: PBSAPIToken=user@realm!name:SECRET``
  (:data:`TOKEN_AUTH_PREFIX`). Ticket auth may also be sent as
  ``Authorization: AsyncSyncTicket=<ticket>``.

Reading a snapshot: ``POST .../reader`` opens a reader session for one snapshot
(returns its id). Downloading an index through the session registers its
digests; only registered digests may be fetched, singly (``GET .../chunk/{digest}``)
or in a batch (``POST .../chunks`` with ``{"digests": [...]}``) that answers a
framed stream: for each chunk, in request order, :data:`FRAME_HEADER` (32 raw
digest bytes, u32 LE blob length) followed by the blob; a length of
:data:`FRAME_MISSING` says the chunk is missing on the server (no bytes follow).
The batch ends after the last frame; a shorter stream is a truncated transfer.
See ``docs/protocol.md`` for the full description.
"""

from __future__ import annotations

import functools
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .datastore.blob import digest_of
from .datastore.manifest import FileEntry
from .errors import InvalidInput, InvalidName, NotFound, RemoteError
from .names import AuthId, BackupType, GroupId, Namespace, SnapshotId, check_archive_name

if TYPE_CHECKING:
    from .datastore.datastore import SnapshotInfo

API_PREFIX = "/api2/json"
DEFAULT_PORT = 8007

TICKET_COOKIE = "AsyncSyncAuthCookie"
CSRF_HEADER = "CSRFPreventionToken"
TOKEN_AUTH_PREFIX = "PBSAPIToken="
TICKET_AUTH_PREFIX = "AsyncSyncTicket="

#: per frame of a batch chunk answer: raw digest (32 bytes) + blob length (u32 LE)
FRAME_HEADER = struct.Struct("<32sI")
#: frame length meaning "this chunk is missing on the server" (no blob bytes follow)
FRAME_MISSING = 0xFFFFFFFF
#: media type of a batch chunk answer
CHUNKS_CONTENT_TYPE = "application/x-asyncsync-chunks"
#: most digests one batch request may ask for
MAX_BATCH_DIGESTS = 4096
#: largest JSON request body the server accepts
MAX_JSON_BODY = 1024 * 1024
#: largest snapshot file (index, blob, manifest) a client downloads
MAX_FILE_SIZE = 256 * 1024 * 1024


def frame_length(head: bytes | bytearray, want: str, max_size: int) -> int:
    """The blob length a received :data:`FRAME_HEADER` announces for the expected digest ``want``.

    The client's checks of a batch answer, in one place for its async and blocking paths:
    :class:`RemoteError` for a frame of another digest (out of order, foreign) or a blob over
    ``max_size``, :class:`NotFound` for a :data:`FRAME_MISSING` frame.
    """
    raw, length = FRAME_HEADER.unpack(head)
    got = raw.hex()
    if got != want:
        raise RemoteError(f"batch answer out of order: expected chunk {want}, got {got}")
    if length == FRAME_MISSING:
        raise NotFound(f"remote: chunk {want} not found")
    if length > max_size:
        raise RemoteError(f"chunk {want}: frame of {length} bytes exceeds the limit of {max_size}")
    return int(length)


# ---- paths (relative to API_PREFIX) ---------------------------------------


def listing_tag(body: bytes) -> str:
    """The tag of a listing answer: the first 16 bytes of the blake3 of its exact body bytes,
    as 32 hex digits (the snapshot listing's ``ETag``, quoted; see ``docs/protocol.md``)."""
    return digest_of(body)[:32]


def p_ticket() -> str:
    return "/access/ticket"


def p_datastores() -> str:
    return "/admin/datastore"


def p_namespaces(store: str) -> str:
    return f"/admin/datastore/{store}/namespace"


def p_groups(store: str) -> str:
    return f"/admin/datastore/{store}/groups"


def p_snapshots(store: str) -> str:
    return f"/admin/datastore/{store}/snapshots"


def p_reader(store: str) -> str:
    return f"/admin/datastore/{store}/reader"


def p_reader_file(store: str, reader: str, name: str) -> str:
    return f"/admin/datastore/{store}/reader/{reader}/file/{name}"


def p_reader_chunk(store: str, reader: str, digest: str) -> str:
    return f"/admin/datastore/{store}/reader/{reader}/chunk/{digest}"


def p_reader_chunks(store: str, reader: str) -> str:
    return f"/admin/datastore/{store}/reader/{reader}/chunks"


def p_reader_session(store: str, reader: str) -> str:
    return f"/admin/datastore/{store}/reader/{reader}"


# ---- models -----------------------------------------------------------------


def _bad(what: str, exc: Exception) -> InvalidInput:
    return InvalidInput(f"malformed {what} in answer: {exc}")


# Parsing a listing meets the same few group ids, owners and archive names thousands of
# times: each is validated once and the (immutable) result reused. Only valid values are
# cached (a refused one raises every time), so the checks are exactly those of the
# uncached constructors.


@functools.lru_cache(maxsize=16384)
def _group_of(btype: str, bid: str) -> GroupId:
    return GroupId(BackupType.parse(btype), bid)


@functools.lru_cache(maxsize=4096)
def _auth_of(text: str) -> AuthId:
    return AuthId.parse(text)


@functools.lru_cache(maxsize=4096)
def _archive_name(name: str) -> str:
    return check_archive_name(name)


@dataclass(frozen=True, slots=True)
class GroupItem:
    """One group of a group listing."""

    group: GroupId
    owner: AuthId | None
    backup_count: int
    last_backup: int | None

    def to_json(self) -> dict[str, Any]:
        return {
            "backup-type": self.group.type.value,
            "backup-id": self.group.id,
            "owner": str(self.owner) if self.owner else None,
            "backup-count": self.backup_count,
            "last-backup": self.last_backup,
        }

    @classmethod
    def from_json(cls, obj: Any) -> GroupItem:
        try:
            owner = obj.get("owner")
            return cls(
                _group_of(obj["backup-type"], obj["backup-id"]),
                _auth_of(owner) if owner else None,
                int(obj.get("backup-count", 0)),
                obj.get("last-backup"),
            )
        except (KeyError, TypeError, ValueError, AttributeError, InvalidName) as exc:
            raise _bad("group", exc) from exc


@dataclass(frozen=True, slots=True)
class SnapshotItem:
    """One snapshot of a snapshot listing."""

    snapshot: SnapshotId
    files: tuple[FileEntry, ...]
    size: int
    protected: bool
    verify_state: str | None
    owner: AuthId | None = None
    comment: str | None = None
    #: blake3 (hex) of the stored manifest blob (optional, additive): a puller whose local
    #: manifest has the same digest knows the snapshot is unchanged without opening a reader
    manifest_digest: str | None = None

    def to_json(self) -> dict[str, Any]:
        out = self._json()
        if self.manifest_digest is not None:
            out["manifest-digest"] = self.manifest_digest
        return out

    def _json(self) -> dict[str, Any]:
        return {
            "backup-type": self.snapshot.group.type.value,
            "backup-id": self.snapshot.group.id,
            "backup-time": self.snapshot.time,
            "files": [f.to_json() for f in self.files],
            "size": self.size,
            "protected": self.protected,
            "verification": {"state": self.verify_state} if self.verify_state else None,
            "owner": str(self.owner) if self.owner else None,
            "comment": self.comment,
        }

    @classmethod
    def from_info(cls, info: SnapshotInfo, owner: AuthId | None) -> SnapshotItem:
        """The listing item of a local snapshot (:meth:`Datastore.list_snapshots`) owned by ``owner``."""
        return cls(
            info.snapshot,
            tuple(info.files),
            info.size,
            info.protected,
            info.verify_state,
            owner,
            info.comment,
            info.manifest_digest,
        )

    @classmethod
    def from_json(cls, obj: Any) -> SnapshotItem:
        # called once per snapshot of a namespace-wide listing (thousands on a pull with nothing
        # new): one bound ``get``, and no call for an absent optional digest
        try:
            get = obj.get
            raw_files = get("files")
            files = (
                tuple(
                    [
                        FileEntry(_archive_name(f["filename"]), int(f["size"]), str(f["csum"]))
                        for f in raw_files
                    ]
                )
                if raw_files
                else ()
            )
            verification = get("verification")
            owner = get("owner")
            digest = get("manifest-digest")
            return cls(
                SnapshotId(_group_of(obj["backup-type"], obj["backup-id"]), int(obj["backup-time"])),
                files,
                int(get("size") or 0),
                bool(get("protected", False)),
                verification.get("state") if isinstance(verification, dict) else None,
                _auth_of(owner) if owner else None,
                get("comment"),
                None if digest is None else _optional_digest(digest),
            )
        except (KeyError, TypeError, ValueError, AttributeError, InvalidName) as exc:
            raise _bad("snapshot", exc) from exc


def _optional_digest(value: Any) -> str | None:
    """A 64-hex digest, or None for anything else (an optional field is never fatal)."""
    if isinstance(value, str) and len(value) == 64:
        try:
            bytes.fromhex(value)
        except ValueError:
            return None
        return value.lower()
    return None


def ns_to_json(ns: Namespace) -> dict[str, Any]:
    return {"ns": str(ns)}


def ns_from_json(obj: Any) -> Namespace:
    try:
        return Namespace.parse(obj["ns"])
    except (KeyError, TypeError) as exc:
        raise _bad("namespace", exc) from exc


def snapshot_params(ns: Namespace, snap: SnapshotId) -> dict[str, str]:
    """Query/body parameters naming one snapshot."""
    return {
        "ns": str(ns),
        "backup-type": snap.group.type.value,
        "backup-id": snap.group.id,
        "backup-time": str(snap.time),
    }


__all__ = [
    "API_PREFIX",
    "CHUNKS_CONTENT_TYPE",
    "CSRF_HEADER",
    "DEFAULT_PORT",
    "FRAME_HEADER",
    "FRAME_MISSING",
    "MAX_BATCH_DIGESTS",
    "MAX_FILE_SIZE",
    "MAX_JSON_BODY",
    "TICKET_AUTH_PREFIX",
    "TICKET_COOKIE",
    "TOKEN_AUTH_PREFIX",
    "GroupItem",
    "SnapshotItem",
    "frame_length",
    "listing_tag",
    "ns_from_json",
    "ns_to_json",
    "snapshot_params",
]
