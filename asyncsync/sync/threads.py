"""Thread hops that finish before a cancellation propagates.

``asyncio.to_thread`` lets the awaiting task go as soon as it is cancelled,
while the thread keeps running: a pull that "returned" on Ctrl-C could still be
writing a chunk's temp file. :func:`run_write` waits for the thread to finish
(its operation completes or cleans up after itself) before re-raising the
cancellation, so when :func:`asyncsync.pull` has returned, nothing of it still
touches the store. Use it for every hop that writes; reads may use
``asyncio.to_thread``. :func:`run_acquire` is the same for a hop that acquires
something (a lock, a temp folder) that must be released if nobody receives it.

Both are :func:`~asyncsync.datastore.threads.run_with_token` with a token that
nothing polls: the one mechanism that waits for a thread, also through a second
cancellation.
"""

from __future__ import annotations

import contextlib
import functools
import sys
from collections.abc import Callable, Iterator
from typing import ParamSpec, TypeVar

from ..datastore.threads import CancelToken, run_with_token

P = ParamSpec("P")
T = TypeVar("T")

#: The GIL switch interval (seconds) of a transfer process: Python's default is 5 ms.
#: Why shorter: a pull's worker threads make thousands of short system calls
#: (``utime`` of each reused chunk, socket reads, writes), each releasing the GIL and
#: waiting to get it back from the event loop or another worker; with a 5 ms
#: interval a thread that holds it runs on while the others queue. Measured on the
#: incremental bench store (8,330 reused chunks, plain HTTP): the reuse check's utime
#: pass took 57–77 ms instead of 93–100 ms; in four sets of 10–20 interleaved pulls the
#: median was 0.255, 0.275, 0.280 and 0.250 s against 0.290, 0.290, 0.280 and 0.285 s
#: (small, inside single sets' spread, never a loss); cold pulls did not slow down.
#: See docs/performance.md, session 10.
TRANSFER_SWITCH_INTERVAL = 0.0005


@contextlib.contextmanager
def transfer_switch_interval(interval: float = TRANSFER_SWITCH_INTERVAL) -> Iterator[None]:
    """Run the block with the interpreter's GIL switch interval set to ``interval``,
    then restore the previous one.

    Process-wide (``sys.setswitchinterval``): the CLI sets it around the commands
    that transfer data (not around ``serve``); a service embedding the library may
    use it around its own pulls, or leave its interpreter as it is.
    """
    previous = sys.getswitchinterval()
    sys.setswitchinterval(interval)
    try:
        yield
    finally:
        sys.setswitchinterval(previous)


async def run_write(fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
    """Run ``fn`` in the default executor; on cancellation, wait for it, then re-raise."""
    return await run_with_token(None, CancelToken(), functools.partial(fn, *args, **kwargs))


async def run_acquire(fn: Callable[[], T], release: Callable[[T], object]) -> T:
    """:func:`run_write` for a hop that returns a resource: if the caller is cancelled
    while ``fn`` runs, what ``fn`` returned is passed to ``release`` (blocking, in
    a thread hop, also waited for) before the cancellation propagates, so nothing
    acquired is leaked. Once returned, the resource is the caller's to release."""
    acquired: list[T] = []

    def call() -> T:
        result = fn()
        acquired.append(result)
        return result

    try:
        return await run_write(call)
    except BaseException:
        # cancelled (fn itself failing appends nothing): nobody will receive the result
        if acquired:
            await run_write(release, acquired[0])
        raise


__all__ = ["TRANSFER_SWITCH_INTERVAL", "run_acquire", "run_write", "transfer_switch_interval"]
