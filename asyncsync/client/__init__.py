"""The HTTP client of a remote asyncsync server: pinning, login, retries, typed calls.

Importing it does not import aiohttp (only the rate-limited streaming fetch does, on first use).

::

    async with await Client.connect("pbs2.example", 8007, AuthId.parse("sync@pbs!pull"), secret,
                                    fingerprint="64:d3:...") as client:
        for g in await client.list_groups("store", ROOT_NS):
            ...
"""

from __future__ import annotations

from .http import MAX_JSON_ANSWER, Client, ClientStatistics, ReaderSession, RetryPolicy

__all__ = ["MAX_JSON_ANSWER", "Client", "ClientStatistics", "ReaderSession", "RetryPolicy"]
