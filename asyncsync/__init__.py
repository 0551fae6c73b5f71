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
from .sync.pull import PullOptions, pull
from .sync.report import PullProgress, PullReport
from .sync.source import HttpSource, LocalSource, Source

__all__ = [
    "AsyncSyncError",
    "AuthId",
    "BackupType",
    "ChunkStore",
    "Datastore",
    "FileEntry",
    "GroupId",
    "HttpSource",
    "LocalSource",
    "Manifest",
    "Namespace",
    "PullOptions",
    "PullProgress",
    "PullReport",
    "SnapshotId",
    "SnapshotInfo",
    "SnapshotWriter",
    "Source",
    "SyncLevel",
    "__version__",
    "pull",
]
