"""A pull's default concurrency and memory bounds, in one place for the library's
:class:`~asyncsync.sync.pull.PullOptions`, ``asyncsync pull`` and sync jobs
(:mod:`asyncsync.config.syncjobs`). Import-light: the CLI's start-up loads it."""

from __future__ import annotations

#: groups pulled in parallel
DEFAULT_GROUP_WORKERS = 2
MAX_GROUP_WORKERS = 64

#: the most chunk requests in flight, the adaptive limit's maximum (:mod:`asyncsync.sync.adaptive`).
#: Twelve was measured (docs/performance.md, session 12): with 25 ms added to every answer a
#: cold 2 GiB HTTPS pull took a median 4.47 s against 4.76 s with 8, alike without the delay;
#: but in the bench's rate-limited pull (the async path, one task per worker) its largest 1 s
#: burst on the wire was 0.92 of burst-in, against 0.60 in both runs with 8, and its peak RSS
#: 109-125 MiB (89-105 with 8), so the default stays 8.
DEFAULT_FETCH_WORKERS = 8
MAX_FETCH_WORKERS = 256

#: bytes of chunks in flight (at least a largest chunk, see ``config.syncjobs``)
DEFAULT_MAX_INFLIGHT = 64 * 1024 * 1024

__all__ = [
    "DEFAULT_FETCH_WORKERS",
    "DEFAULT_GROUP_WORKERS",
    "DEFAULT_MAX_INFLIGHT",
    "MAX_FETCH_WORKERS",
    "MAX_GROUP_WORKERS",
]
