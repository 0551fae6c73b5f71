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


async def simulate(
    limit: AdaptiveLimit,
    clock: Clock,
    rate_of: dict[int, float],
    windows: int,
    timing: tuple[float, float] | None = None,
) -> list[int]:
    """Feed ``windows`` windows whose throughput depends only on the current limit.

    ``timing`` is each transfer's (wait for the first byte, duration), reported to
    :meth:`AdaptiveLimit.release`; None reports nothing, as a caller that does not time.
    """
    seen = []
    for _ in range(windows):
        n = limit.limit
        per = rate_of[n] * limit.window / limit.min_samples
        for _ in range(limit.min_samples):
            await limit.acquire()
            clock.now += limit.window / limit.min_samples
            if timing is None:
                limit.release(int(per))
            else:
                limit.release(int(per), *timing)
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


# ---- the first decision's jump (latency) ----------------------------------------------------------

#: throughput that grows with every transfer in flight: only the climbing speed differs
RISING = {n: 100.0 * n for n in range(1, 17)}


@pytest.mark.parametrize(
    ("timing", "first"),
    [
        (None, 5),  # untimed: the one-step probe
        ((0.003, 0.045), 5),  # loopback: 4 * 45 / 42 = 4.3, no more than the probe
        ((0.028, 0.060), 8),  # 25 ms added: 4 * 60 / 32 = 7.5 -> 8
        ((0.050, 0.060), 12),  # nearly all wait: 4 * 6 = 24, capped at the maximum
        ((0.060, 0.060), 12),  # all wait (T - L = 0): the maximum
        ((0.070, 0.060), 5),  # a wait longer than the transfer is not a timing: ignored
        ((-0.01, 0.060), 5),  # nor a negative one
    ],
)
async def test_first_decision_jumps_by_littles_law(timing: tuple[float, float] | None, first: int) -> None:
    clock = Clock()
    limit = AdaptiveLimit(4, 2, 12, clock=clock)
    seen = await simulate(limit, clock, RISING, 1, timing)
    assert seen == [first]
    assert limit.history[0].limit == first


async def test_only_the_first_decision_jumps() -> None:
    clock = Clock()
    limit = AdaptiveLimit(4, 2, 16, clock=clock)
    # climbs one step per window after the jump, however long the waits stay
    seen = await simulate(limit, clock, RISING, 4, (0.028, 0.060))
    assert seen == [8, 9, 10, 11]


async def test_jump_needs_enough_timed_transfers() -> None:
    """Fewer timed transfers than ``min_samples`` in the first window: the probe, not a jump."""
    clock = Clock()
    limit = AdaptiveLimit(4, 2, 12, clock=clock)
    for i in range(limit.min_samples):
        await limit.acquire()
        clock.now += limit.window / limit.min_samples
        if i == 0:
            limit.release(100, 0.05, 0.06)
        else:
            limit.release(100)
    assert limit.limit == 5


async def test_shortest_wait_is_the_latency() -> None:
    """One transfer that waited long (queued at the server) does not make the others distant."""
    clock = Clock()
    limit = AdaptiveLimit(4, 2, 12, clock=clock)
    waits = [0.040, 0.003, 0.030, 0.020]
    for wait in waits:
        await limit.acquire()
        clock.now += limit.window / len(waits)
        limit.release(100, wait, 0.045)
    assert limit.latency_start() is None  # the window was decided and its timings reset
    assert limit.limit == 5  # 4 * 45 / 42: the probe
