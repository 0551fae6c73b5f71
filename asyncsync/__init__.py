"""asyncsync: replicate backup datastores between machines, in asyncio.

The public API is re-exported here; everything else is internal.
"""

from __future__ import annotations

__version__ = "0.1.0"

from .datastore.chunkstore import ChunkStore, SyncLevel
from .datastore.datastore import Datastore, SnapshotInfo, SnapshotWriter
from .datastore.manifest import FileEntry, Manifest
from .errors import AsyncSyncError
from .names import AuthId, BackupType, GroupId, Namespace, SnapshotId

__all__ = [
    "AsyncSyncError",
    "AuthId",
    "BackupType",
    "ChunkStore",
    "Datastore",
    "FileEntry",
    "GroupId",
    "Manifest",
    "Namespace",
    "SnapshotId",
    "SnapshotInfo",
    "SnapshotWriter",
    "SyncLevel",
    "__version__",
]
