"""Thread hops that finish before a cancellation propagates.

``asyncio.to_thread`` lets the awaiting task go as soon as it is cancelled,
while the thread keeps running: a pull that "returned" on Ctrl-C could still be
writing a chunk's temp file. :func:`run_write` waits for the thread to finish
(its operation completes or cleans up after itself) before re-raising the
cancellation, so when :func:`asyncsync.pull` has returned, nothing of it still
touches the store. Use it for every hop that writes; reads may use
``asyncio.to_thread``.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
from collections.abc import Callable
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")


async def run_write(fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
    """Run ``fn`` in the default executor; on cancellation, wait for it, then re-raise."""
    loop = asyncio.get_running_loop()
    ctx = contextvars.copy_context()
    fut = loop.run_in_executor(None, functools.partial(ctx.run, fn, *args, **kwargs))
    try:
        return await asyncio.shield(fut)
    except asyncio.CancelledError:
        # the hop is atomic from the store's point of view: let it end
        await asyncio.wait([fut])
        if not fut.cancelled():
            fut.exception()  # retrieved: no "exception never retrieved" noise
        raise


__all__ = ["run_write"]
