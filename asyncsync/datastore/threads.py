"""Run a long blocking operation in a worker thread, cancellably.

``asyncio.to_thread`` cannot stop a thread: cancelling the awaiting task
leaves the work running, and whatever it was writing is cleaned up only when
it ends on its own. Long operations (backup, restore, verify, gc) therefore
take a :class:`CancelToken` and call :meth:`CancelToken.check` between steps
(once per chunk). :func:`run_cancellable` sets the token when the awaiting task
is cancelled, *waits* for the thread to unwind (so its temp files are gone and
its locks released), then re-raises the cancellation. No thread outlives the
task that started it.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import threading
from collections.abc import Callable
from concurrent.futures import Executor
from typing import TypeVar

T = TypeVar("T")


class OperationCancelled(Exception):
    """Raised inside a worker thread when its :class:`CancelToken` was set."""


class CancelToken:
    """A flag the async side sets and the worker thread polls."""

    __slots__ = ("_event",)

    def __init__(self) -> None:
        self._event = threading.Event()

    def __repr__(self) -> str:
        return f"CancelToken(cancelled={self.cancelled})"

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def check(self) -> None:
        """Raise :class:`OperationCancelled` if cancellation was requested."""
        if self._event.is_set():
            raise OperationCancelled()


def check(token: CancelToken | None) -> None:
    """:meth:`CancelToken.check` that accepts ``None`` (not cancellable)."""
    if token is not None:
        token.check()


async def run_cancellable(fn: Callable[[CancelToken], T]) -> T:
    """Run ``fn(token)`` in a worker thread; on cancellation set the token and wait for ``fn`` to stop."""
    token = CancelToken()
    return await run_with_token(None, token, functools.partial(fn, token))


async def run_with_token(executor: Executor | None, token: CancelToken, fn: Callable[[], T]) -> T:
    """Run ``fn()`` on ``executor`` (None: the loop's default); on cancellation call
    ``token.cancel()`` and wait for ``fn`` to return before re-raising.

    ``fn`` is expected to poll ``token`` (a subclass may also interrupt a blocked
    call in its :meth:`CancelToken.cancel`). Context variables are carried over.
    """
    loop = asyncio.get_running_loop()
    ctx = contextvars.copy_context()
    fut = loop.run_in_executor(executor, functools.partial(ctx.run, fn))
    try:
        return await asyncio.shield(fut)
    except asyncio.CancelledError:
        token.cancel()
        # Wait for the worker to unwind; a second cancellation must not orphan it either.
        while not fut.done():
            try:
                await asyncio.shield(fut)
            except asyncio.CancelledError:
                continue
            except BaseException:
                break
        if not fut.cancelled():
            fut.exception()  # mark as retrieved: the cancellation is what we report
        raise


__all__ = ["CancelToken", "OperationCancelled", "check", "run_cancellable", "run_with_token"]
