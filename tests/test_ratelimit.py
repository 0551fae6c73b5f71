"""The token-bucket rate limiter, driven by a controlled clock (no real sleeps)."""

from __future__ import annotations

import asyncio

import pytest

from asyncsync.sync.ratelimit import RateLimiter


class FakeClock:
    """Virtual time: ``sleep`` advances it instead of waiting."""

    def __init__(self) -> None:
        self.t = 1000.0
        self.sleeps: list[float] = []

    def now(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.t += max(0.0, seconds)
        await asyncio.sleep(0)


def within(actual: float, expected: float, tol: float = 0.02) -> bool:
    return abs(actual - expected) <= tol * expected


async def test_rate_is_honoured_from_an_empty_bucket() -> None:
    clock = FakeClock()
    lim = RateLimiter(1000, clock=clock)
    start = clock.t
    for _ in range(200):
        await lim.acquire(100)
    # 20 000 bytes at 1000 B/s, starting empty: 20 s, no initial burst
    assert within(clock.t - start, 20.0)
    assert lim.statistics().acquired_bytes == 20_000


async def test_rate_with_concurrent_acquirers() -> None:
    clock = FakeClock()
    lim = RateLimiter(10_000, burst=2_000, clock=clock)
    start = clock.t

    async def worker() -> None:
        for _ in range(40):
            await lim.acquire(700)

    async with asyncio.TaskGroup() as tg:
        for _ in range(5):
            tg.create_task(worker())
    total = 5 * 40 * 700
    assert within(clock.t - start, total / 10_000)
    assert lim.statistics().waiting == 0


async def test_burst_is_honoured_after_idle() -> None:
    clock = FakeClock()
    lim = RateLimiter(1000, burst=5000, clock=clock)
    await lim.acquire(1)  # first use: the bucket starts empty now
    clock.t += 100.0  # idle long enough to fill the bucket, but it holds only the burst
    t0 = clock.t
    await lim.acquire(5000)
    assert clock.t == t0  # a full bucket is available at once
    await lim.acquire(2000)
    assert within(clock.t - t0, 2.0)  # then back to the rate


async def test_request_larger_than_the_bucket_keeps_the_long_run_rate() -> None:
    clock = FakeClock()
    lim = RateLimiter(1000, burst=1000, clock=clock)
    t0 = clock.t
    await lim.acquire(3000)  # waits for a full bucket, then goes 2000 into debt
    assert within(clock.t - t0, 1.0)
    await lim.acquire(1000)  # pays the debt first
    assert within(clock.t - t0, 4.0)


async def test_waiters_are_served_first_in_first_out() -> None:
    clock = FakeClock()
    lim = RateLimiter(1000, clock=clock)
    order: list[str] = []

    async def take(name: str, n: int) -> None:
        await lim.acquire(n)
        order.append(name)

    async with asyncio.TaskGroup() as tg:
        tg.create_task(take("big", 1000))
        await asyncio.sleep(0)
        for i in range(5):
            tg.create_task(take(f"small{i}", 10))
    assert order == ["big", "small0", "small1", "small2", "small3", "small4"]


class BlockingClock(FakeClock):
    """A clock whose sleep blocks until released, to cancel a waiter mid-sleep."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()

    async def sleep(self, seconds: float) -> None:
        await self.gate.wait()
        self.t += seconds


async def test_cancelled_waiters_leave_the_line_consistent() -> None:
    clock = BlockingClock()
    lim = RateLimiter(1000, clock=clock)
    head = asyncio.create_task(lim.acquire(500))
    middle = asyncio.create_task(lim.acquire(100))
    tail = asyncio.create_task(lim.acquire(100))
    for _ in range(3):
        await asyncio.sleep(0)
    assert lim.statistics().waiting == 3
    middle.cancel()
    head.cancel()
    with pytest.raises(asyncio.CancelledError):
        await head
    with pytest.raises(asyncio.CancelledError):
        await middle
    clock.gate.set()
    await tail  # the survivor becomes head and gets its tokens
    stats = lim.statistics()
    assert stats.waiting == 0
    assert stats.acquired_bytes == 100


def test_invalid_settings_are_refused() -> None:
    with pytest.raises(ValueError):
        RateLimiter(0)
    with pytest.raises(ValueError):
        RateLimiter(10, burst=0)
