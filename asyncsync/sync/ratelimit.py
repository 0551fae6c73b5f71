"""A token-bucket rate limiter for one job's incoming bytes (``rate-in`` / ``burst-in``).

The bucket fills at ``rate`` bytes per second up to ``burst`` bytes (default:
one second's worth) and starts **empty**, so a job never begins with a burst
larger than what it would be allowed after an idle second. ``acquire(n)``
waits until the tokens are there and takes them; a request larger than the
bucket waits for a full bucket and then takes all of it plus a debt (the token
count goes negative), which later callers pay off. That keeps the long-run
rate exact whatever the request sizes.

Waiters are served strictly first-in first-out: a large request is not starved
by a stream of small ones. Only the waiter at the head of the line sleeps on
the clock; the others wait on a future that their predecessor resolves when it
leaves, so a cancelled waiter (at the head or anywhere else) leaves the line
consistent. The clock is injectable (``now`` + ``sleep``) so tests drive time
by hand.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from dataclasses import dataclass
from typing import Protocol

_EPSILON = 1e-6


class Clock(Protocol):
    """Monotonic time in seconds and a way to wait for it."""

    def now(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


class LoopClock:
    """The running event loop's monotonic clock."""

    def now(self) -> float:
        return asyncio.get_running_loop().time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


@dataclass(frozen=True, slots=True)
class RateLimiterStatistics:
    """A snapshot of a limiter's state (trio-style ``statistics()``)."""

    rate: float
    burst: float
    tokens: float
    waiting: int
    acquired_bytes: int
    waited_seconds: float


class RateLimiter:
    """FIFO token bucket: ``await limiter.acquire(nbytes)`` before (or after) moving bytes."""

    def __init__(self, rate: float, burst: float | None = None, *, clock: Clock | None = None) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        if burst is not None and burst <= 0:
            raise ValueError("burst must be positive")
        self.rate = float(rate)
        self.burst = float(burst if burst is not None else rate)
        self._clock: Clock = clock or LoopClock()
        self._tokens = 0.0
        self._last: float | None = None
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._acquired = 0
        self._waited = 0.0

    def __repr__(self) -> str:
        return (
            f"RateLimiter(rate={self.rate:.0f}/s, burst={self.burst:.0f}, "
            f"tokens={self._tokens:.0f}, waiting={len(self._waiters)})"
        )

    def _refill(self) -> None:
        now = self._clock.now()
        if self._last is None:
            self._last = now  # the bucket starts empty at first use
            return
        if now > self._last:
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
            self._last = now

    def _wake_head(self) -> None:
        if self._waiters and not self._waiters[0].done():
            self._waiters[0].set_result(None)

    async def acquire(self, nbytes: int) -> None:
        """Wait for ``nbytes`` tokens and take them (FIFO; cancellation-safe)."""
        if nbytes <= 0:
            return
        need = min(float(nbytes), self.burst)
        me: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(me)
        if self._waiters[0] is me:
            me.set_result(None)
        start = self._clock.now()
        try:
            await me  # resolved when we are at the head of the line
            while True:
                self._refill()
                # tolerance: float time cannot always express the last femtosecond of a wait
                if self._tokens >= need - _EPSILON:
                    self._tokens -= nbytes
                    break
                await self._clock.sleep((need - self._tokens) / self.rate)
        finally:
            # leave the line whether we got our tokens, were cancelled, or failed
            was_head = bool(self._waiters) and self._waiters[0] is me
            with contextlib.suppress(ValueError):
                self._waiters.remove(me)
            if was_head:
                self._wake_head()
        self._acquired += nbytes
        self._waited += max(0.0, self._clock.now() - start)

    def statistics(self) -> RateLimiterStatistics:
        self._refill()
        return RateLimiterStatistics(
            self.rate, self.burst, self._tokens, len(self._waiters), self._acquired, self._waited
        )


__all__ = ["Clock", "LoopClock", "RateLimiter", "RateLimiterStatistics"]
