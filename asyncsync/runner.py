"""Running a coroutine as an asyncsync process does: on uvloop, at the transfer switch interval.

The one place that starts an event loop for asyncsync's own processes: the CLI
(:func:`asyncsync.cli.common.run_async`) and the bench's pull launcher
(``bench.pullproc``) both call :func:`run`, so the launcher measures the same
loop the CLI runs. Click-free, so the launcher does not pay for importing it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from contextlib import nullcontext
from typing import Any, TypeVar

from . import startup
from .sync.threads import transfer_switch_interval

T = TypeVar("T")


def run(factory: Callable[[], Coroutine[Any, Any, T]], *, transfer: bool = True) -> T:
    """Run the coroutine ``factory()`` on uvloop (if available) and return its result.

    ``transfer``: with the short GIL switch interval of a transfer process
    (:func:`~asyncsync.sync.threads.transfer_switch_interval`), restored when the
    loop ends; ``serve`` passes False.
    """
    result: list[T] = []

    async def main() -> None:
        # the result leaves through ``result``, not as the main task's: on Python 3.11 the
        # runner formats the main task's repr, result included, twice while restoring the
        # SIGINT handler (signal.getsignal meets a partial holding the task), ≈ 10 ms per
        # 1,000 groups of a pull report
        result.append(await factory())

    startup.resume()  # the modules are loaded: collect from here on (see asyncsync.startup)
    with transfer_switch_interval() if transfer else nullcontext():
        try:
            import uvloop
        except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
            asyncio.run(main())
        else:
            uvloop.run(main())
    return result[0]


__all__ = ["run"]
