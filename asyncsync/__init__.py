"""asyncsync: replicate backup datastores between machines, in asyncio.

The public API is re-exported here; everything else is internal.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from . import startup as _startup

__version__ = "0.1.0"

# the collector paused while these load (see asyncsync.startup), and resumed (unfrozen) after
_paused_here = _startup.pause()
from .datastore.chunkstore import ChunkStore, SyncLevel  # noqa: E402
from .datastore.datastore import Datastore, SnapshotInfo, SnapshotWriter  # noqa: E402
from .datastore.manifest import FileEntry, Manifest  # noqa: E402
from .errors import AsyncSyncError  # noqa: E402
from .names import AuthId, BackupType, GroupId, Namespace, SnapshotId  # noqa: E402

if _paused_here:
    _startup.resume(freeze=False)

if TYPE_CHECKING:
    from .sync.pull import PullOptions, pull
    from .sync.report import PullProgress, PullReport
    from .sync.source import HttpSource, LocalSource, Source

# The pull engine (and with it aiohttp) loads on first use, so that commands which do
# not pull start fast: ``asyncsync.pull`` etc. resolve through __getattr__ below.
_LAZY = {
    "PullOptions": "sync.pull",
    "pull": "sync.pull",
    "PullProgress": "sync.report",
    "PullReport": "sync.report",
    "HttpSource": "sync.source",
    "LocalSource": "sync.source",
    "Source": "sync.source",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'asyncsync' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


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
