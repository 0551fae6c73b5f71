"""The adaptive concurrency limit of the fetch pool (hill climbing on throughput)."""

from __future__ import annotations

import asyncio

import pytest

from asyncsync.sync.adaptive import AdaptiveLimit


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def simulate(limit: AdaptiveLimit, clock: Clock, rate_of: dict[int, float], windows: int) -> list[int]:
    """Feed ``windows`` windows whose throughput depends only on the current limit."""
    seen = []
    for _ in range(windows):
        n = limit.limit
        per = rate_of[n] * limit.window / limit.min_samples
        for _ in range(limit.min_samples):
            await limit.acquire()
            clock.now += limit.window / limit.min_samples
            limit.release(int(per))
        seen.append(limit.limit)
    return seen


async def test_climbs_to_the_peak_and_stays_near_it() -> None:
    clock = Clock()
    limit = AdaptiveLimit(2, 1, 12, clock=clock)
    # throughput grows up to 6 transfers, then falls (GIL queueing)
    rate_of = {n: 100.0 * min(n, 6) - 30.0 * max(0, n - 6) for n in range(1, 13)}
    seen = await simulate(limit, clock, rate_of, 30)
    assert max(seen) <= 8
    assert all(5 <= n <= 7 for n in seen[8:]), seen


async def test_backs_off_when_more_is_worse() -> None:
    clock = Clock()
    limit = AdaptiveLimit(4, 2, 8, clock=clock)
    rate_of = {n: 1000.0 / n for n in range(1, 9)}  # every extra transfer costs
    seen = await simulate(limit, clock, rate_of, 20)
    assert seen[-1] <= 3, seen


async def test_flat_rate_probes_again_after_patience() -> None:
    clock = Clock()
    limit = AdaptiveLimit(4, 2, 8, patience=3, clock=clock)
    rate_of = dict.fromkeys(range(1, 9), 500.0)
    seen = await simulate(limit, clock, rate_of, 12)
    assert len(set(seen)) > 1, seen  # it does not freeze on a plateau
    assert all(2 <= n <= 8 for n in seen)


def test_bounds_and_validation() -> None:
    assert AdaptiveLimit(99, 2, 8).limit == 8
    assert AdaptiveLimit(0, 2, 8).limit == 2
    with pytest.raises(ValueError):
        AdaptiveLimit(1, 3, 2)


async def test_acquire_waits_for_a_free_unit() -> None:
    limit = AdaptiveLimit(2, 1, 2)
    await limit.acquire()
    await limit.acquire()
    third = asyncio.create_task(limit.acquire())
    await asyncio.sleep(0)
    assert not third.done() and limit.active == 2
    limit.release(10)
    await asyncio.wait_for(third, 5)
    assert limit.active == 2


async def test_cancelled_waiter_leaves_no_trace() -> None:
    limit = AdaptiveLimit(1, 1, 1)
    await limit.acquire()
    waiter = asyncio.create_task(limit.acquire())
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    limit.release(0)
    assert limit.active == 0
    await asyncio.wait_for(limit.acquire(), 5)
    assert limit.active == 1
