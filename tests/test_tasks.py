"""Tasks: ids, logs written while running, end states, the index, rotation, the CLI."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from asyncsync.config.paths import Paths
from asyncsync.errors import InvalidInput, NotFound, PartialFailure
from asyncsync.jobs import tasks as T
from asyncsync.jobs.tasks import TaskLog, TaskManager, TaskStateKind, Upid


def run_cli(env: dict[str, str], *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    p = subprocess.run(
        [sys.executable, "-m", "asyncsync", *args], env=env, capture_output=True, text=True, timeout=60
    )
    if check and p.returncode != 0:
        raise AssertionError(f"{args} failed ({p.returncode}): {p.stdout}\n{p.stderr}")
    return p


# ---------------------------------------------------------------------------- ids


def test_upid_format_and_parse() -> None:
    u = Upid("pbs1", 0xABCD, 1, 0x65F0A1B2, "syncjob", "pbs2-local", "root@pam")
    assert str(u) == "UPID:pbs1:0000ABCD:00000001:65F0A1B2:syncjob:pbs2-local:root@pam:"
    assert Upid.parse(str(u)) == u
    assert u.rel_path() == f"B2/{u}"


def test_upid_escapes_separators() -> None:
    u = Upid("n", 1, 2, 3, "syncjob", "a:b/c\\d e", "user@pve!tok")
    s = str(u)
    assert s.count(":") == 8 and "/" not in s and " " not in s
    assert Upid.parse(s).worker_id == "a:b/c\\d e"


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "UPID:n:1:2:3:t:i:u:",
        "UPID:n:0000000G:00000001:00000001:syncjob:x:root@pam:",
        "UPID:n:00000001:00000001:00000001:syncjob:x:root@pam",
        "UPID:n:00000001:00000001:00000001:syncjob:../x:root@pam:",
        "UPID:n:00000001:00000001:00000001:Sync:x:root@pam:",
        "UPID:n:00000001:00000001:00000001:syncjob:x\\x3A:root@pam:",  # not canonical
        "XPID:n:00000001:00000001:00000001:syncjob:x:root@pam:",
    ],
)
def test_upid_parse_refuses(bad: str) -> None:
    with pytest.raises(InvalidInput):
        Upid.parse(bad)


@given(st.text(max_size=40), st.text(max_size=20))
def test_upid_round_trip(worker_id: str, user: str) -> None:
    u = Upid("node", 42, 7, 1_700_000_000, "syncjob", worker_id, user)
    s = str(u)
    assert "/" not in s and "\n" not in s
    assert Upid.parse(s) == u


# ---------------------------------------------------------------------------- running


def read(path: Path) -> str:
    return path.read_text()


async def test_log_is_written_while_the_task_runs(paths: Paths) -> None:
    gate = asyncio.Event()
    logged = asyncio.Event()

    async def body(log: TaskLog) -> None:
        log.log("first line")
        log.log("two\nlines")
        await log.flush()
        logged.set()
        await gate.wait()
        log.log("after the gate")

    async with TaskManager(paths) as tm:
        h = await tm.spawn("syncjob", "job1", "root@pam", body)
        await logged.wait()
        path = T.log_path(paths, h.upid)
        text = await asyncio.to_thread(read, path)
        assert "first line" in text and "two" in text and "after the gate" not in text
        assert await asyncio.to_thread(T.is_running, paths, h.upid)
        running = await asyncio.to_thread(T.list_tasks, paths, running=True)
        assert [i.upid for i in running] == [h.upid]
        gate.set()
        state = await h.wait()
    assert state.kind is TaskStateKind.OK
    lines = (await asyncio.to_thread(read, T.log_path(paths, h.upid))).splitlines()
    assert lines[-1].endswith(": TASK OK")
    assert lines[-2].endswith(": after the gate")
    info = await asyncio.to_thread(T.get_task, paths, h.upid)
    assert not info.running and str(info.state) == "OK" and info.endtime is not None
    assert await asyncio.to_thread(T.list_tasks, paths, running=True) == []


async def test_end_states(paths: Paths) -> None:
    async def warns(log: TaskLog) -> None:
        log.warn("one")
        log.warn("two")

    async def fails(log: TaskLog) -> None:
        raise PartialFailure("pull incomplete: vm/100: boom")

    async def crashes(log: TaskLog) -> None:
        raise ZeroDivisionError("x")

    async with TaskManager(paths) as tm:
        hw = await tm.run("syncjob", "w", "root@pam", warns)
        hf = await tm.run("syncjob", "f", "root@pam", fails)
        hc = await tm.run("syncjob", "c", "root@pam", crashes)
    assert str(hw.state) == "WARNINGS: 2" and hw.error is None
    assert hf.state is not None and hf.state.kind is TaskStateKind.ERROR
    assert str(hf.state) == "pull incomplete: vm/100: boom"
    assert isinstance(hf.error, PartialFailure)
    assert str(hc.state).startswith("internal error: ZeroDivisionError")
    infos = {i.upid.worker_id: i for i in await asyncio.to_thread(T.list_tasks, paths)}
    assert str(infos["w"].state) == "WARNINGS: 2"
    assert str(infos["f"].state) == "pull incomplete: vm/100: boom"
    text = await asyncio.to_thread(read, T.log_path(paths, hw.upid))
    assert "WARN: one" in text and text.rstrip().endswith("TASK WARNINGS: 2")
    ftext = await asyncio.to_thread(read, T.log_path(paths, hf.upid))
    assert ftext.rstrip().endswith("TASK ERROR: pull incomplete: vm/100: boom")


async def test_stop_cancels_the_body_and_records_abort(paths: Paths) -> None:
    started = asyncio.Event()
    cleaned = []

    async def body(log: TaskLog) -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        finally:
            cleaned.append(True)

    async with TaskManager(paths) as tm:
        h = await tm.spawn("syncjob", "s", "root@pam", body)
        await started.wait()
        assert tm.stop(h.upid)
        state = await h.wait()
        # the manager itself was not cancelled: it keeps running tasks
        h2 = await tm.run("syncjob", "s2", "root@pam", lambda log: asyncio.sleep(0))
    assert cleaned == [True]
    assert str(state) == "task aborted"
    assert isinstance(h.error, asyncio.CancelledError)
    assert str(h2.state) == "OK"


async def test_cancelling_the_waiter_stops_the_task(paths: Paths) -> None:
    started = asyncio.Event()

    async def body(log: TaskLog) -> None:
        started.set()
        await asyncio.Event().wait()

    async with TaskManager(paths) as tm:
        waiter = asyncio.create_task(tm.run("syncjob", "x", "root@pam", body))
        await started.wait()
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert tm.running() == []
    infos = await asyncio.to_thread(T.list_tasks, paths)
    assert [str(i.state) for i in infos] == ["task aborted"]


async def test_closing_the_manager_by_cancellation_archives_running_tasks(paths: Paths) -> None:
    started = asyncio.Event()

    async def body(log: TaskLog) -> None:
        started.set()
        await asyncio.Event().wait()

    async def owner() -> None:
        async with TaskManager(paths) as tm:
            await tm.spawn("syncjob", "x", "root@pam", body)
            await asyncio.Event().wait()

    t = asyncio.create_task(owner())
    await started.wait()
    t.cancel()
    with pytest.raises(asyncio.CancelledError):
        await t
    infos = await asyncio.to_thread(T.list_tasks, paths)
    assert len(infos) == 1 and not infos[0].running and str(infos[0].state) == "task aborted"


def test_dead_task_is_shown_unknown(paths: Paths) -> None:
    u = Upid("n", 999_999, 1, 1_700_000_000, "syncjob", "dead", "root@pam")
    fd = T._register(paths, u)
    os.write(fd, b"2023-11-14T22:13:20+00:00: working\n")
    assert T.is_running(paths, u)
    os.close(fd)  # the process "died": its lock is gone
    infos = T.list_tasks(paths)
    assert len(infos) == 1 and not infos[0].running
    assert infos[0].state is not None and infos[0].state.kind is TaskStateKind.UNKNOWN
    assert T.list_tasks(paths, running=True) == []
    with pytest.raises(NotFound):
        T.request_stop(paths, u)


async def test_rotation_keeps_a_bounded_number(paths: Paths) -> None:
    async with TaskManager(paths, max_tasks=3) as tm:
        handles = [
            await tm.run("syncjob", f"j{i}", "root@pam", lambda log: asyncio.sleep(0)) for i in range(5)
        ]
    infos = await asyncio.to_thread(T.list_tasks, paths, limit=None)
    assert [i.upid for i in infos] == [h.upid for h in reversed(handles[2:])]
    for h in handles[:2]:
        assert not await asyncio.to_thread(T.log_path(paths, h.upid).exists)
    for h in handles[2:]:
        assert await asyncio.to_thread(T.log_path(paths, h.upid).exists)


async def test_rotation_by_size(paths: Paths) -> None:
    async def big(log: TaskLog) -> None:
        for i in range(200):
            log.log(f"line {i} " + "x" * 40)

    async with TaskManager(paths, max_log_bytes=30_000) as tm:
        for i in range(6):
            await tm.run("syncjob", f"j{i}", "root@pam", big)
    infos = await asyncio.to_thread(T.list_tasks, paths, limit=None)
    sizes = [await asyncio.to_thread(lambda i=i: T.log_path(paths, i.upid).stat().st_size) for i in infos]
    assert 0 < len(infos) < 6
    assert sum(sizes) <= 30_000
    assert infos[0].upid.worker_id == "j5"


async def test_log_lines_beyond_the_bound_are_dropped_and_counted(paths: Paths) -> None:
    u = Upid("n", 1, 1, 1_700_000_000, "syncjob", "flood", "root@pam")
    fd = await asyncio.to_thread(T._register, paths, u)
    tlog = TaskLog(fd, max_pending=10)
    for i in range(25):
        tlog.log(f"l{i}")
    await tlog.flush()
    await asyncio.to_thread(os.close, fd)
    text = await asyncio.to_thread(read, T.log_path(paths, u))
    assert text.count(": l") == 10
    assert "15 log lines dropped" in text


# ---------------------------------------------------------------------------- CLI

HOLDER = textwrap.dedent(
    """
    import asyncio, sys
    from asyncsync.config.paths import Paths
    from asyncsync.jobs.tasks import TaskManager

    async def body(log):
        log.log("ready to work")
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            log.log("cleaned up after cancel")
            raise

    async def main():
        async with TaskManager(Paths.resolve()) as tm:
            h = await tm.spawn("syncjob", "holder", "root@pam", body)
            print(h.upid, flush=True)
            await h.wait()
            print(h.state, flush=True)

    asyncio.run(main())
    """
)


def test_cli_list_log_stop(cli_env: dict[str, str], paths: Paths) -> None:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER], env=cli_env, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        upid = proc.stdout.readline().strip()
        assert upid.startswith("UPID:")

        out = json.loads(run_cli(cli_env, "task", "list", "--running", "--output-format", "json").stdout)
        assert [t["upid"] for t in out] == [upid]
        assert out[0]["running"] is True and out[0]["worker_id"] == "holder"
        text = run_cli(cli_env, "task", "list").stdout
        assert "holder" in text and "running" in text

        stop = run_cli(cli_env, "task", "stop", upid)
        assert "task aborted" in stop.stdout
        assert proc.wait(timeout=30) == 0
        assert proc.stdout.readline().strip() == "task aborted"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()

    log = run_cli(cli_env, "task", "log", upid).stdout
    assert "ready to work" in log and "cleaned up after cancel" in log
    assert log.rstrip().endswith("TASK ERROR: task aborted")
    followed = run_cli(cli_env, "task", "log", "--follow", upid).stdout
    assert followed == log
    out = json.loads(run_cli(cli_env, "task", "list", "--output-format", "json").stdout)
    assert out[0]["status"] == "task aborted" and out[0]["state"] == "error"
    assert json.loads(run_cli(cli_env, "task", "list", "--running", "--output-format", "json").stdout) == []

    again = run_cli(cli_env, "task", "stop", upid, check=False)
    assert again.returncode == NotFound.exit_code and "not running" in again.stderr
    bad = run_cli(cli_env, "task", "log", "UPID:x", check=False)
    assert bad.returncode == InvalidInput.exit_code and "invalid task id" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_cli_log_follow_streams_until_the_end(cli_env: dict[str, str]) -> None:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER], env=cli_env, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        upid = proc.stdout.readline().strip()
        follower = subprocess.Popen(
            [sys.executable, "-m", "asyncsync", "task", "log", "--follow", upid],
            env=cli_env,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert follower.stdout is not None
        first = follower.stdout.readline()
        assert "starting task" in first
        run_cli(cli_env, "task", "stop", upid)
        rest = follower.stdout.read()
        assert follower.wait(timeout=30) == 0
        follower.stdout.close()
        assert rest.rstrip().endswith("TASK ERROR: task aborted")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()
