"""Snapshot manifest (``index.json.blob``): JSON inside a blob.

::

    {
      "backup-type": "vm", "backup-id": "100", "backup-time": 1764144000,
      "files": [{"filename": "disk.fidx", "size": 4194304, "csum": "<blake3 hex of the file>"}],
      "unprotected": {"verify_state": {"state": "ok", "time": 1764150000}, "notes": "..."}
    }

``size`` is the logical size of the archive (what a restore produces); ``csum``
is blake3-256 of the archive file as stored. The ``unprotected`` part is carried
by sync but is not part of :meth:`Manifest.content_digest`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from ..errors import CorruptBlob, CorruptManifest, InvalidName
from ..names import BackupType, GroupId, SnapshotId, check_archive_name
from . import blob

MANIFEST_NAME = "index.json.blob"
MAX_MANIFEST_SIZE = 1024 * 1024


@dataclass(frozen=True, slots=True)
class FileEntry:
    """One archive of a snapshot."""

    filename: str
    size: int
    csum: str

    def to_json(self) -> dict[str, Any]:
        return {"filename": self.filename, "size": self.size, "csum": self.csum}


@dataclass(slots=True)
class Manifest:
    """A snapshot's list of archives plus the unprotected part (verify state, notes)."""

    snapshot: SnapshotId
    files: list[FileEntry]
    unprotected: dict[str, Any] = field(default_factory=dict)

    def file(self, name: str) -> FileEntry | None:
        return next((f for f in self.files if f.filename == name), None)

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def verify_state(self) -> str | None:
        vs = self.unprotected.get("verify_state")
        if isinstance(vs, dict):
            state = vs.get("state")
            return state if isinstance(state, str) else None
        return None

    def protected_json(self) -> dict[str, Any]:
        return {
            "backup-type": self.snapshot.group.type.value,
            "backup-id": self.snapshot.group.id,
            "backup-time": self.snapshot.time,
            "files": [f.to_json() for f in self.files],
        }

    def to_json(self) -> dict[str, Any]:
        return {**self.protected_json(), "unprotected": self.unprotected}

    def content_digest(self) -> str:
        """blake3 of the canonical protected part: equal for equal content."""
        canon = json.dumps(self.protected_json(), sort_keys=True, separators=(",", ":"))
        return blob.digest_of(canon.encode())

    def encode(self) -> bytes:
        return blob.encode(json.dumps(self.to_json(), indent=1).encode(), compress=True)

    @classmethod
    def from_json(cls, obj: Any) -> Manifest:
        try:
            snap = SnapshotId(
                GroupId(BackupType.parse(obj["backup-type"]), obj["backup-id"]),
                int(obj["backup-time"]),
            )
            files = []
            for f in obj["files"]:
                name = check_archive_name(f["filename"])
                size, csum = f["size"], f["csum"]
                if not isinstance(size, int) or size < 0 or not isinstance(csum, str):
                    raise CorruptManifest(f"bad entry for {name}")
                files.append(FileEntry(name, size, csum))
            unprotected = obj.get("unprotected") or {}
            if not isinstance(unprotected, dict):
                raise CorruptManifest("unprotected part is not an object")
        except (KeyError, TypeError, ValueError, InvalidName) as exc:
            raise CorruptManifest(f"invalid manifest: {exc}") from exc
        if len({f.filename for f in files}) != len(files):
            raise CorruptManifest("manifest lists a file twice")
        return cls(snap, files, unprotected)

    @classmethod
    def decode(cls, data: bytes | memoryview) -> Manifest:
        try:
            raw = blob.decode(data, max_size=MAX_MANIFEST_SIZE)
            obj = json.loads(raw)
        except (CorruptBlob, ValueError) as exc:
            raise CorruptManifest(f"invalid manifest: {exc}") from exc
        return cls.from_json(obj)


__all__ = ["MANIFEST_NAME", "FileEntry", "Manifest"]
