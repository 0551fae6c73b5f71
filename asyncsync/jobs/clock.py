"""The clock the scheduler reads and sleeps on, so tests can move time without sleeping.

All scheduling arithmetic uses wall-clock epoch seconds (what calendar events
are defined in). :class:`SystemClock` is the real one; :class:`ManualClock`
stands still until a test advances it, waking sleepers in deadline order.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from typing import Protocol, runtime_checkable

__all__ = ["Clock", "ManualClock", "SystemClock"]


@runtime_checkable
class Clock(Protocol):
    """Wall-clock time in epoch seconds and a way to wait for a moment."""

    def now(self) -> float:
        """Current time, seconds since the epoch."""
        ...

    async def sleep_until(self, t: float) -> None:
        """Return once ``now() >= t`` (at once if it already is). Cancellable."""
        ...


class SystemClock:
    """The real clock: :func:`time.time` and asyncio sleeps.

    asyncio sleeps on the monotonic clock while events are defined in wall
    time, which can jump (NTP step, suspend/resume, manual change). So a long
    wait is cut into slices of at most :attr:`max_slice` seconds and the wall
    clock re-read after each one.
    """

    def __init__(self, max_slice: float = 30.0) -> None:
        if max_slice <= 0:
            raise ValueError("max_slice must be positive")
        self.max_slice = max_slice

    def now(self) -> float:
        return time.time()

    async def sleep_until(self, t: float) -> None:
        while True:
            delay = t - time.time()
            if delay <= 0:
                return
            await asyncio.sleep(min(delay, self.max_slice))

    def __repr__(self) -> str:
        return f"SystemClock(max_slice={self.max_slice})"


class ManualClock:
    """A clock for tests: time moves only when :meth:`advance`/:meth:`advance_to` say so.

    Advancing steps through the sleepers' deadlines in order (ties in the order
    they went to sleep): at each one ``now()`` is set to that deadline, the
    sleepers due then are woken, and the event loop is given
    :attr:`settle_rounds` turns so they can run and go back to sleep before
    time moves on. A sleeper that registers a new deadline inside the
    advanced window is therefore woken too, at its own deadline, so "every
    15 minutes" over an advanced hour fires four times.

    Woken code that waits on threads or I/O may need more than a few loop
    turns; tests then use :meth:`wait_sleepers` to wait until it sleeps again.
    """

    def __init__(self, start: float = 0.0, *, settle_rounds: int = 20) -> None:
        self._now = float(start)
        self.settle_rounds = settle_rounds
        self._seq = itertools.count()
        self._heap: list[tuple[float, int, asyncio.Future[None]]] = []
        self._changed: asyncio.Event | None = None

    def now(self) -> float:
        return self._now

    async def sleep_until(self, t: float) -> None:
        if t <= self._now:
            # Still yield once: a loop that keeps finding work due must not starve the others.
            await asyncio.sleep(0)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._heap, (t, next(self._seq), fut))
        self._notify()
        try:
            await fut
        finally:
            # On cancellation the future is cancelled; drop it from the count at once.
            if not fut.done():  # pragma: no cover - await only ends with fut done
                fut.cancel()
            self._notify()

    @property
    def sleepers(self) -> int:
        """How many tasks are sleeping now."""
        return sum(1 for _, _, fut in self._heap if not fut.done())

    def next_deadline(self) -> float | None:
        """The earliest deadline a task sleeps until, or ``None`` if nobody sleeps."""
        self._drop_done()
        return self._heap[0][0] if self._heap else None

    async def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds`` (see the class docs for how sleepers are woken)."""
        if seconds < 0:
            raise ValueError("a clock does not go backwards")
        await self.advance_to(self._now + seconds)

    async def advance_to(self, t: float) -> None:
        """Move time forward to ``t``, waking every sleeper due on the way, in order."""
        if t < self._now:
            raise ValueError("a clock does not go backwards")
        while True:
            self._drop_done()
            if not self._heap or self._heap[0][0] > t:
                break
            deadline = self._heap[0][0]
            self._now = max(self._now, deadline)
            while self._heap and self._heap[0][0] <= deadline:
                _, _, fut = heapq.heappop(self._heap)
                if not fut.done():
                    fut.set_result(None)
            await self._settle()
        self._now = t
        await self._settle()

    async def wait_sleepers(self, count: int = 1) -> None:
        """Wait until at least ``count`` tasks sleep on this clock (wrap in a timeout in tests)."""
        while self.sleepers < count:
            if self._changed is None:
                self._changed = asyncio.Event()
            self._changed.clear()
            await self._changed.wait()

    def statistics(self) -> dict[str, float | int | None]:
        return {"now": self._now, "sleepers": self.sleepers, "next_deadline": self.next_deadline()}

    def _drop_done(self) -> None:
        while self._heap and self._heap[0][2].done():
            heapq.heappop(self._heap)

    def _notify(self) -> None:
        if self._changed is not None:
            self._changed.set()

    async def _settle(self) -> None:
        for _ in range(self.settle_rounds):
            await asyncio.sleep(0)

    def __repr__(self) -> str:
        return f"ManualClock(now={self._now}, sleepers={self.sleepers})"
