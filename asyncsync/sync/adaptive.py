"""Adaptive concurrency: a limit on parallel transfers that climbs while throughput climbs.

How many transfers should run at once depends on things the engine cannot
know in advance: on a fast local link with two cores, more threads than two per
core only queue for the GIL; on a link with 25 ms of latency, each transfer
waits a round trip per request and more of them in flight hide it. So the fetch
pool lets this limit find the number by hill climbing on measured throughput:

* Time is cut into windows of at least :attr:`AdaptiveLimit.window` seconds
  (and at least ``min_samples`` finished transfers). At the end of each window
  its rate (bytes finished ÷ seconds) is compared with the previous window's.
* A rate at least ``gain`` (5 %) better than the last one: keep going in the
  same direction (one step). At least ``gain`` worse: turn round (one step the
  other way). Within ±5 %: stay, and probe again after ``patience`` quiet
  windows, so the limit follows a link that changes.
* The limit stays within ``[minimum, maximum]``; it starts at ``start``.
* **The first decision may jump.** Hill climbing one step per window is slow
  to find a limit far from ``start`` (a 2 GiB pull is about ten windows) and
  its window rates scatter by about 10 %, so on a distant link it wandered
  around 5 to 8 instead of holding 8. So the transfers may report how long
  they waited for their first byte (their answer's headers: the pool hears
  of them through :class:`~asyncsync.blobsink.AnswerWatcher`) and how long
  they took in all (:meth:`release`'s ``wait`` and ``duration``). At the end
  of the first window the shortest wait is taken as the link's latency ``L``
  (queueing, or a new connection's handshake, only ever adds to a wait, as
  to a round-trip time in TCP's congestion control), and
  the mean duration as ``T``: a transfer occupies what it shares (CPU, the
  server, the link) for about ``T - L`` of its ``T``, so the number in flight
  that keeps the shared parts as busy as ``limit`` transfers would without the
  latency is ``limit * T / (T - L)`` (Little's law). If that is more than
  one step above the limit, the limit jumps there; otherwise it probes one
  step up as before. Climbing goes on from there. Measured on the bench's
  cold pull (2 cores, loopback, about the first window): ``L`` 4 to 10 ms of
  a ``T`` of 40 to 49, so ``4 * T / (T - L)`` is at most 5 and nothing
  changes; with 25 ms added to every answer ``L`` was 27 to 29 ms of 49 to
  59 and the limit jumped from 4 to 8, the default ``fetch-workers`` (with
  12 allowed it jumped to 10 and climbed to 12).

A transfer holds one unit of the limit from :meth:`acquire` to
:meth:`release` (which credits the bytes it moved). Lowering the limit never
interrupts a running transfer: the next ones wait until fewer than the new
limit run. Everything runs on the event
loop; the clock is injectable for tests.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class AdaptiveStep:
    """One decision, for logs and tests: the window's rate and the limit after it."""

    rate: float
    limit: int


class AdaptiveLimit:
    """A concurrency limit in ``[minimum, maximum]`` steered by throughput (see module doc)."""

    def __init__(
        self,
        start: int,
        minimum: int,
        maximum: int,
        *,
        window: float = 0.5,
        min_samples: int = 4,
        gain: float = 0.05,
        patience: int = 4,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 1 <= minimum <= maximum:
            raise ValueError("need 1 <= minimum <= maximum")
        self.minimum = minimum
        self.maximum = maximum
        self.limit = min(max(start, minimum), maximum)
        self.window = window
        self.min_samples = min_samples
        self.gain = gain
        self.patience = patience
        self._clock = clock
        self._active = 0
        self._waiters: list[asyncio.Future[None]] = []
        self._direction = 1
        self._last_rate: float | None = None
        self._quiet = 0
        self._window_start: float | None = None
        self._window_bytes = 0
        self._window_samples = 0
        self._window_min_wait: float | None = None
        self._window_duration = 0.0
        self._window_timed = 0
        #: every decision taken, oldest first (bounded: the last 64)
        self.history: list[AdaptiveStep] = []

    def __repr__(self) -> str:
        return (
            f"AdaptiveLimit(limit={self.limit}, active={self._active}, range={self.minimum}..{self.maximum})"
        )

    @property
    def active(self) -> int:
        return self._active

    async def acquire(self) -> None:
        """Wait until fewer than :attr:`limit` transfers run, then count this one in."""
        while self._active >= self.limit:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
        self._active += 1
        if self._window_start is None:
            self._window_start = self._clock()

    def release(self, nbytes: int, wait: float | None = None, duration: float | None = None) -> None:
        """Count a transfer out, crediting the ``nbytes`` it moved (0 if it failed).

        ``wait`` (seconds from the transfer's start to its first byte) and
        ``duration`` (seconds from its start to its end), when the caller
        measured both, feed the first decision's jump (see the module doc);
        a transfer that received nothing passes neither.
        Not a coroutine, so that it is safe in a ``finally`` of a cancelled task.
        """
        self._active -= 1
        if wait is not None and duration is not None and 0.0 <= wait <= duration:
            if self._window_min_wait is None or wait < self._window_min_wait:
                self._window_min_wait = wait
            self._window_duration += duration
            self._window_timed += 1
        self._record(nbytes)
        waiters, self._waiters = self._waiters, []
        for w in waiters:  # each re-checks the (possibly changed) limit
            if not w.done():
                w.set_result(None)

    def _record(self, nbytes: int) -> None:
        self._window_bytes += nbytes
        self._window_samples += 1
        now = self._clock()
        start = self._window_start if self._window_start is not None else now
        elapsed = now - start
        if elapsed < self.window or self._window_samples < self.min_samples:
            return
        rate = self._window_bytes / elapsed if elapsed > 0 else 0.0
        self._decide(rate)
        self._window_start = now
        self._window_bytes = 0
        self._window_samples = 0
        self._window_min_wait = None
        self._window_duration = 0.0
        self._window_timed = 0

    def latency_start(self) -> int | None:
        """The limit this window's timings call for (``limit * T / (T - L)``, at most the maximum),
        or None with fewer than ``min_samples`` timed transfers; the first decision jumps to it."""
        wait = self._window_min_wait
        if wait is None or self._window_timed < self.min_samples:
            return None
        mean = self._window_duration / self._window_timed
        busy = mean - wait
        if busy <= 0.0:
            return self.maximum
        return min(round(self.limit * mean / busy), self.maximum)

    def _decide(self, rate: float) -> None:
        last = self._last_rate
        if last is None:
            step = self._direction  # the first window: probe upwards, or jump (see the module doc)
            wanted = self.latency_start()
            if wanted is not None and wanted > self.limit + step:
                step = wanted - self.limit
        elif rate >= last * (1 + self.gain):
            step = self._direction
            self._quiet = 0
        elif rate <= last * (1 - self.gain):
            self._direction = -self._direction
            step = self._direction
            self._quiet = 0
        else:
            self._quiet += 1
            step = 0
            if self._quiet >= self.patience:
                self._quiet = 0
                step = self._direction
        new = min(max(self.limit + step, self.minimum), self.maximum)
        if new == self.limit and step:
            # at a bound: the next probe goes the other way
            self._direction = -self._direction
        self.limit = new
        self._last_rate = rate
        self.history.append(AdaptiveStep(rate, new))
        del self.history[:-64]


__all__ = ["AdaptiveLimit", "AdaptiveStep"]
