"""The scheduler's contract: when it calls the runner. Driven by a ManualClock, never by sleeping.

The runner here is a fake on purpose: what is under test is *when* the
scheduler starts a job, and that it never starts one twice at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from asyncsync.config.paths import Paths
from asyncsync.config.syncjobs import SyncJobConfig
from asyncsync.errors import Locked
from asyncsync.jobs.clock import ManualClock
from asyncsync.jobs.scheduler import JOB_TYPE, Scheduler
from asyncsync.jobs.state import JobState, load_job_state, save_job_state

VIENNA = ZoneInfo("Europe/Vienna")


def at(*args: int) -> float:
    """Epoch seconds of a Vienna wall time."""
    return datetime(*args, tzinfo=VIENNA).timestamp()  # type: ignore[misc]


def write_jobs(paths: Paths, schedules: dict[str, str | None]) -> None:
    text = ""
    for job_id, schedule in schedules.items():
        text += f"sync: {job_id}\n\tstore local\n\tremote pbs2\n\tremote-store store\n"
        if schedule:
            text += f"\tschedule {schedule}\n"
        text += "\n"
    (paths.config / "sync.cfg").write_text(text)


class FakeRunner:
    """Records (job id, clock time) at each start; optionally "runs" for a while on the clock."""

    def __init__(self, clock: ManualClock, duration: float = 0.0) -> None:
        self.clock = clock
        self.duration = duration
        self.starts: list[tuple[str, float]] = []
        self.active = 0
        self.max_active = 0
        self.cancelled = 0
        self.fail_with: BaseException | None = None

    async def __call__(self, job: SyncJobConfig) -> None:
        self.starts.append((job.id, self.clock.now()))
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            if self.fail_with is not None:
                raise self.fail_with
            if self.duration:
                await self.clock.sleep_until(self.clock.now() + self.duration)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            self.active -= 1

    def times(self, job_id: str | None = None) -> list[float]:
        return [t for j, t in self.starts if job_id is None or j == job_id]


async def settle(sched: Scheduler) -> None:
    async with asyncio.timeout(20):
        await sched.wait_idle()
    for _ in range(5):  # let the runs just started take their first step
        await asyncio.sleep(0)


async def run_until(clock: ManualClock, sched: Scheduler, until: float) -> None:
    """Step the clock from deadline to deadline (never past ``until``), letting the scheduler work."""
    while True:
        await settle(sched)
        d = clock.next_deadline()
        if d is None or d > until:
            break
        await clock.advance_to(d)
    if clock.now() < until:
        await clock.advance_to(until)
        await settle(sched)


class Harness:
    def __init__(self, paths: Paths, clock: ManualClock, runner: FakeRunner, **kw: float) -> None:
        self.sched = Scheduler(paths, clock, runner, tz=VIENNA, **kw)  # type: ignore[arg-type]
        self.clock = clock
        self.task: asyncio.Task[None] | None = None

    async def run_until(self, until: float) -> None:
        await run_until(self.clock, self.sched, until)


@pytest.fixture
async def start(paths: Paths) -> AsyncIterator[object]:
    harnesses: list[Harness] = []

    async def _start(clock: ManualClock, runner: FakeRunner, **kw: float) -> Harness:
        h = Harness(paths, clock, runner, **kw)
        h.task = asyncio.create_task(h.sched.run())
        harnesses.append(h)
        await settle(h.sched)
        return h

    yield _start
    for h in harnesses:
        assert h.task is not None
        h.task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await h.task


async def test_weekly_event_across_weeks_and_a_dst_change(paths: Paths, start) -> None:  # type: ignore[no-untyped-def]
    await asyncio.to_thread(write_jobs, paths, {"weekly": "Wed 02:30", "manual": None})
    clock = ManualClock(at(2026, 3, 16, 0, 0))  # a Monday; DST starts Sunday 2026-03-29
    runner = FakeRunner(clock)
    h = await start(clock, runner, reload_interval=3600.0)
    await h.run_until(at(2026, 4, 9, 0, 0))
    expected = [at(2026, 3, 18, 2, 30), at(2026, 3, 25, 2, 30), at(2026, 4, 1, 2, 30), at(2026, 4, 8, 2, 30)]
    assert runner.times() == expected
    # 02:30 local is 01:30 UTC in winter, 00:30 UTC in summer
    local = [datetime.fromtimestamp(t, VIENNA).strftime("%a %H:%M") for t in runner.times()]
    assert local == ["Wed 02:30"] * 4
    assert expected[2] - expected[1] == 7 * 86400 - 3600
    assert runner.times("manual") == []


async def test_daily_event_in_the_fall_back_night_fires_once(paths: Paths, start) -> None:  # type: ignore[no-untyped-def]
    await asyncio.to_thread(write_jobs, paths, {"daily": "02:30"})
    clock = ManualClock(at(2026, 10, 24, 12, 0))  # DST ends Sunday 2026-10-25 03:00 -> 02:00
    runner = FakeRunner(clock)
    h = await start(clock, runner, reload_interval=3600.0)
    await h.run_until(at(2026, 10, 26, 12, 0))
    first_0230 = datetime(2026, 10, 25, 2, 30, tzinfo=VIENNA, fold=0).timestamp()
    assert runner.times() == [first_0230, at(2026, 10, 26, 2, 30)]
    assert at(2026, 10, 26, 2, 30) - first_0230 == 86400 + 3600


async def test_every_quarter_hour_fires_four_times_an_hour(paths: Paths, start) -> None:  # type: ignore[no-untyped-def]
    await asyncio.to_thread(write_jobs, paths, {"q": "*:0/15"})
    t0 = at(2026, 5, 4, 10, 0)
    clock = ManualClock(t0)
    runner = FakeRunner(clock)
    h = await start(clock, runner)  # default: a tick each minute
    await h.run_until(t0 + 3600)
    assert runner.times() == [t0 + 900, t0 + 1800, t0 + 2700, t0 + 3600]
    assert h.sched.statistics()["ticks"] >= 60  # it did wake each minute on the way


async def test_seconds_field_fires_on_its_second(paths: Paths, start) -> None:  # type: ignore[no-untyped-def]
    await asyncio.to_thread(write_jobs, paths, {"s": "10:00:42"})
    t0 = at(2026, 5, 4, 9, 59, 50)
    clock = ManualClock(t0)
    runner = FakeRunner(clock)
    h = await start(clock, runner)
    await h.run_until(t0 + 120)
    assert runner.times() == [at(2026, 5, 4, 10, 0, 42)]


async def test_long_job_is_not_started_twice(paths: Paths, start) -> None:  # type: ignore[no-untyped-def]
    await asyncio.to_thread(write_jobs, paths, {"slow": "*:0/15"})
    t0 = at(2026, 5, 4, 10, 0)
    clock = ManualClock(t0)
    runner = FakeRunner(clock, duration=40 * 60)
    h = await start(clock, runner)
    await h.run_until(t0 + 2 * 3600)
    # 10:15 runs until 10:55 (10:30, 10:45 dropped), 11:00 until 11:40 (11:15, 11:30 dropped),
    # then 11:45 until 12:25 (12:00 dropped)
    assert runner.times() == [t0 + 900, t0 + 3600, t0 + 3600 + 2700]
    assert runner.max_active == 1
    assert h.sched.statistics()["skipped_while_running"] == 5


async def test_job_added_changed_and_removed_at_run_time(paths: Paths, start) -> None:  # type: ignore[no-untyped-def]
    t0 = at(2026, 5, 4, 10, 0)
    clock = ManualClock(t0)
    runner = FakeRunner(clock)
    h = await start(clock, runner)
    await h.run_until(t0 + 600)
    assert runner.starts == []
    await asyncio.to_thread(write_jobs, paths, {"new": "*:0/15"})
    await h.run_until(t0 + 3600)
    assert runner.times("new") == [t0 + 900, t0 + 1800, t0 + 2700, t0 + 3600]
    st = await asyncio.to_thread(load_job_state, paths, JOB_TYPE, "new")
    assert st is not None and st.kind == "created" and st.time == t0 + 660  # first seen at the next tick
    await asyncio.to_thread(write_jobs, paths, {"new": "*:0/30"})
    await h.run_until(t0 + 2 * 3600)
    assert runner.times("new")[4:] == [t0 + 5400, t0 + 7200]
    await asyncio.to_thread(write_jobs, paths, {})
    await h.run_until(t0 + 3 * 3600)
    assert len(runner.times("new")) == 6


async def test_missed_events_run_once_after_restart(paths: Paths, start) -> None:  # type: ignore[no-untyped-def]
    await asyncio.to_thread(write_jobs, paths, {"nightly": "02:30"})
    last = at(2026, 5, 1, 2, 30)
    await asyncio.to_thread(
        save_job_state,
        paths,
        JOB_TYPE,
        "nightly",
        JobState("finished", last, "UPID:n:00000001:00000001:00000001:syncjob:nightly:root@pam:", 0, "OK"),
    )
    t_restart = at(2026, 5, 4, 12, 0)  # three nights missed
    clock = ManualClock(t_restart)
    runner = FakeRunner(clock)
    h = await start(clock, runner, reload_interval=3600.0)
    assert runner.times() == [t_restart]
    await h.run_until(at(2026, 5, 5, 12, 0))
    assert runner.times() == [t_restart, at(2026, 5, 5, 2, 30)]


async def test_a_never_run_job_remembers_its_first_sight(paths: Paths, start) -> None:  # type: ignore[no-untyped-def]
    await asyncio.to_thread(write_jobs, paths, {"j": "02:30"})
    clock = ManualClock(at(2026, 5, 4, 1, 0))
    runner = FakeRunner(clock)
    h = await start(clock, runner)
    assert h.task is not None
    h.task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await h.task
    # down over the event; the next scheduler runs the missed first event once
    clock2 = ManualClock(at(2026, 5, 4, 9, 0))
    runner2 = FakeRunner(clock2)
    await start(clock2, runner2)
    assert runner2.times() == [at(2026, 5, 4, 9, 0)]


async def test_cancelling_run_cancels_and_awaits_running_jobs(paths: Paths) -> None:
    await asyncio.to_thread(write_jobs, paths, {"a": "*:0/15", "b": "*:0/15"})
    t0 = at(2026, 5, 4, 10, 0)
    clock = ManualClock(t0)
    runner = FakeRunner(clock, duration=3600)
    sched = Scheduler(paths, clock, runner, tz=VIENNA)
    task = asyncio.create_task(sched.run())
    await run_until(clock, sched, t0 + 900)
    assert runner.active == 2 and sorted(sched.running_jobs) == ["a", "b"]
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert runner.cancelled == 2 and runner.active == 0


async def test_runner_errors_do_not_stop_the_scheduler(paths: Paths, start) -> None:  # type: ignore[no-untyped-def]
    await asyncio.to_thread(write_jobs, paths, {"bad": "*:0/15"})
    t0 = at(2026, 5, 4, 10, 0)
    clock = ManualClock(t0)
    runner = FakeRunner(clock)
    runner.fail_with = RuntimeError("bug")
    h = await start(clock, runner)
    await h.run_until(t0 + 900)
    runner.fail_with = Locked("sync job 'bad' is already running (task UPID:...)")
    await h.run_until(t0 + 1800)
    runner.fail_with = None
    await h.run_until(t0 + 2700)
    assert runner.times() == [t0 + 900, t0 + 1800, t0 + 2700]
    assert not h.task.done()  # type: ignore[union-attr]


async def test_broken_config_keeps_the_last_good_jobs(paths: Paths, start) -> None:  # type: ignore[no-untyped-def]
    await asyncio.to_thread(write_jobs, paths, {"j": "*:0/15"})
    t0 = at(2026, 5, 4, 10, 0)
    clock = ManualClock(t0)
    runner = FakeRunner(clock)
    h = await start(clock, runner)
    await asyncio.to_thread((paths.config / "sync.cfg").write_text, "sync: j\n\tbogus-key 1\n")
    await h.run_until(t0 + 1800)
    assert runner.times() == [t0 + 900, t0 + 1800]
