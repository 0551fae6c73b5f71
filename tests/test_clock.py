"""The scheduler's clock: ManualClock moves only when told and wakes sleepers in order."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from asyncsync.jobs.calendar import CalendarEvent, next_event
from asyncsync.jobs.clock import Clock, ManualClock, SystemClock

VIENNA = ZoneInfo("Europe/Vienna")


def test_both_clocks_satisfy_the_protocol() -> None:
    assert isinstance(ManualClock(), Clock)
    assert isinstance(SystemClock(), Clock)


async def test_manual_clock_stands_still() -> None:
    clock = ManualClock(1000.0)
    assert clock.now() == 1000.0
    await asyncio.sleep(0)
    assert clock.now() == 1000.0
    await clock.advance(5)
    assert clock.now() == 1005.0
    await clock.advance_to(1010)
    assert clock.now() == 1010.0


async def test_sleep_until_past_returns_at_once() -> None:
    clock = ManualClock(100.0)
    async with asyncio.timeout(5):
        await clock.sleep_until(50.0)
        await clock.sleep_until(100.0)
    assert clock.sleepers == 0


async def test_time_never_goes_backwards() -> None:
    clock = ManualClock(100.0)
    with pytest.raises(ValueError):
        await clock.advance(-1)
    with pytest.raises(ValueError):
        await clock.advance_to(99)
    assert clock.now() == 100.0


async def test_sleepers_wake_in_deadline_order_and_see_their_deadline() -> None:
    clock = ManualClock(0.0)
    woken: list[tuple[str, float]] = []

    async def sleeper(name: str, t: float) -> None:
        await clock.sleep_until(t)
        woken.append((name, clock.now()))

    async with asyncio.TaskGroup() as tg:
        # Registered in an order different from their deadlines; "b1"/"b2" share one.
        for name, t in [("c", 30.0), ("a", 10.0), ("b1", 20.0), ("b2", 20.0), ("late", 100.0)]:
            tg.create_task(sleeper(name, t))
        async with asyncio.timeout(5):
            await clock.wait_sleepers(5)
        assert clock.next_deadline() == 10.0
        await clock.advance(25)
        assert woken == [("a", 10.0), ("b1", 20.0), ("b2", 20.0)]
        assert clock.now() == 25.0
        assert clock.sleepers == 2
        await clock.advance_to(100)
    assert woken[3:] == [("c", 30.0), ("late", 100.0)]
    assert clock.sleepers == 0 and clock.next_deadline() is None


async def test_a_sleeper_that_sleeps_again_inside_the_window_is_woken_each_time() -> None:
    clock = ManualClock(0.0)
    ticks: list[float] = []

    async def every_15_minutes() -> None:
        while True:
            await clock.sleep_until((clock.now() // 900 + 1) * 900)
            ticks.append(clock.now())

    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(every_15_minutes())
        async with asyncio.timeout(5):
            await clock.wait_sleepers(1)
        await clock.advance(3600)
        task.cancel()
    assert ticks == [900.0, 1800.0, 2700.0, 3600.0]


async def test_cancelled_sleeper_is_forgotten() -> None:
    clock = ManualClock(0.0)
    task = asyncio.create_task(clock.sleep_until(10.0))
    async with asyncio.timeout(5):
        await clock.wait_sleepers(1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert clock.sleepers == 0
    assert clock.next_deadline() is None
    await clock.advance(20)  # nothing to wake, nothing breaks
    assert clock.statistics() == {"now": 20.0, "sleepers": 0, "next_deadline": None}
    assert "ManualClock(now=20.0" in repr(clock)


async def test_wait_sleepers_waits_for_registration() -> None:
    clock = ManualClock(0.0)
    done = asyncio.Event()

    async def later_sleeper() -> None:
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        await clock.sleep_until(5.0)
        done.set()

    async with asyncio.TaskGroup() as tg:
        tg.create_task(later_sleeper())
        async with asyncio.timeout(5):
            await clock.wait_sleepers(1)
        assert clock.sleepers == 1
        await clock.advance(5)
    assert done.is_set()


async def _run_schedule(event: str, start: datetime, hours: float) -> list[datetime]:
    """A miniature scheduler on a ManualClock: fire at each event, like the real one will."""
    clock = ManualClock(start.timestamp())
    fired: list[datetime] = []
    parsed = CalendarEvent.parse(event)

    async def loop() -> None:
        last = clock.now()
        while True:
            due = next_event(parsed, last, VIENNA)
            assert due is not None
            await clock.sleep_until(due)
            fired.append(datetime.fromtimestamp(clock.now(), VIENNA))
            last = due

    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(loop())
        async with asyncio.timeout(10):
            await clock.wait_sleepers(1)
        await clock.advance(hours * 3600)
        task.cancel()
    return fired


async def test_wed_0230_across_a_week_and_dst_change() -> None:
    start = datetime(2026, 3, 23, tzinfo=VIENNA)  # Monday before the spring-forward Sunday
    fired = await _run_schedule("Wed 02:30", start, 24 * 17)
    assert [d.isoformat() for d in fired] == [
        "2026-03-25T02:30:00+01:00",
        "2026-04-01T02:30:00+02:00",
        "2026-04-08T02:30:00+02:00",
    ]


async def test_quarter_hours_on_the_clock_four_per_hour() -> None:
    start = datetime(2026, 11, 28, 9, 59, 59, tzinfo=VIENNA)
    fired = await _run_schedule("*:0/15", start, 3)
    assert [d.strftime("%H:%M:%S") for d in fired] == [
        f"{h:02d}:{m:02d}:00" for h in (10, 11, 12) for m in (0, 15, 30, 45)
    ]


async def test_quarter_hours_across_fall_back() -> None:
    start = datetime(2026, 10, 25, 1, 50, tzinfo=VIENNA)
    fired = await _run_schedule("*:0/15", start, 2.5)
    assert [d.isoformat() for d in fired] == [
        "2026-10-25T02:00:00+02:00",
        "2026-10-25T02:15:00+02:00",
        "2026-10-25T02:30:00+02:00",
        "2026-10-25T02:45:00+02:00",
        "2026-10-25T03:00:00+01:00",
        "2026-10-25T03:15:00+01:00",
    ]


async def test_system_clock() -> None:
    clock = SystemClock()
    assert abs(clock.now() - time.time()) < 60
    async with asyncio.timeout(10):
        await clock.sleep_until(clock.now() - 1)  # past: returns at once
        target = clock.now() + 0.02
        await clock.sleep_until(target)
    assert time.time() >= target
    with pytest.raises(ValueError):
        SystemClock(max_slice=0)
    assert repr(SystemClock(5)) == "SystemClock(max_slice=5)"
