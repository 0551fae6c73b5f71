"""Sync-job runs end to end: the CLI against a real TLS server, stop, lock, the API, and serve's scheduler."""

# ruff: noqa: F811  (pytest fixtures imported from serverutil are parameters here)

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from serverutil import (  # noqa: F401
    HOST,
    TEST_OPTIONS,
    Installation,
    SubprocessServer,
    add_datastore,
    add_token,
    add_user,
    grant,
    remote,
    remote_server,
    remote_subprocess,
    running_server,
    write_snapshot,
)

from asyncsync.client import Client
from asyncsync.config import remotes, syncjobs
from asyncsync.config.paths import Paths
from asyncsync.datastore.chunkstore import TMP_PREFIX
from asyncsync.datastore.datastore import Datastore
from asyncsync.errors import Locked, PermissionDenied
from asyncsync.jobs import tasks as T
from asyncsync.jobs.state import load_job_state, lock_job
from asyncsync.names import AuthId
from asyncsync.server import jobs_api
from asyncsync.server.app import make_app, serve

JOB = "pbs2-local"
BIG_SNAPSHOT = "vm/900/2026-11-23T08:00:00Z"


def run_cli(env: dict[str, str], *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    p = subprocess.run(
        [sys.executable, "-m", "asyncsync", *args], env=env, capture_output=True, text=True, timeout=90
    )
    if check and p.returncode != 0:
        raise AssertionError(f"{args} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
    return p


def snapshots(store: Datastore) -> set[tuple[str, str]]:
    return {(str(ns), str(s)) for ns, s in store.iter_snapshots()}


def temp_leftovers(root: Path) -> list[str]:
    return [str(p) for p in root.rglob(f"{TMP_PREFIX}*")]


def configure(
    paths: Paths, tmp_path: Path, remote: Installation, host: str, port: int, fingerprint: str | None
) -> Datastore:
    """Local datastore ``local``, remote ``pbs2`` (the sync token) and job ``pbs2-local``."""
    store = add_datastore(paths, "local", tmp_path / "local")
    remotes.create_remote(
        paths,
        "pbs2",
        {
            "host": host,
            "port": port,
            "auth-id": str(remote.sync_token),
            "password": remote.sync_secret,
            "fingerprint": fingerprint,
        },
    )
    syncjobs.create_job(paths, JOB, {"store": "local", "remote": "pbs2", "remote-store": remote.store_name})
    return store


@pytest.fixture
def local(
    paths: Paths, tmp_path: Path, remote: Installation, remote_subprocess: SubprocessServer
) -> Datastore:
    srv = remote_subprocess
    return configure(paths, tmp_path, remote, srv.host, srv.port, srv.fingerprint)


def test_run_pulls_and_task_commands_show_it(
    local: Datastore, remote: Installation, cli_env: dict[str, str], paths: Paths
) -> None:
    p = run_cli(cli_env, "sync-job", "run", JOB)
    assert snapshots(local) == snapshots(remote.store)
    first = p.stdout.splitlines()[0]
    assert first.startswith("starting task UPID:") and f":syncjob:{JOB}:root@pam:" in first
    upid = first.removeprefix("starting task ")
    assert p.stdout.rstrip().endswith("TASK OK")

    tasks = json.loads(run_cli(cli_env, "task", "list", "--output-format", "json").stdout)
    assert [(t["upid"], t["status"], t["worker_id"]) for t in tasks] == [(upid, "OK", JOB)]
    log = run_cli(cli_env, "task", "log", upid).stdout
    assert f"sync job {JOB}" in log and "TASK OK" in log and "snapshots synced" in log

    jobs = json.loads(run_cli(cli_env, "sync-job", "list", "--output-format", "json").stdout)
    assert jobs[0]["last-run-upid"] == upid and jobs[0]["last-run-state"] == "OK"
    assert jobs[0]["last-run-endtime"] >= jobs[0]["last-run-starttime"] == T.Upid.parse(upid).starttime
    table = run_cli(cli_env, "sync-job", "list").stdout
    assert "last run" in table and "OK" in table

    # a second run finds nothing new and is still a task of its own
    again = run_cli(cli_env, "sync-job", "run", JOB)
    assert "TASK OK" in again.stdout
    assert len(T.list_tasks(paths)) == 2


def test_second_run_of_a_running_job_is_refused(
    local: Datastore, cli_env: dict[str, str], paths: Paths
) -> None:
    holder = "UPID:n:00000001:00000001:00000001:syncjob:pbs2-local:root@pam:"
    with lock_job(paths, "sync", JOB) as lock:
        lock.set_task(holder)
        p = run_cli(cli_env, "sync-job", "run", JOB, check=False)
    assert p.returncode == Locked.exit_code
    assert f"already running (task {holder})" in p.stderr
    assert snapshots(local) == set()
    assert T.list_tasks(paths) == []


def test_failing_run_exits_non_zero_and_records_the_error(
    local: Datastore, cli_env: dict[str, str], paths: Paths
) -> None:
    syncjobs.update_job(paths, JOB, {"remote-store": "nosuchstore"})
    p = run_cli(cli_env, "sync-job", "run", JOB, check=False)
    assert p.returncode != 0 and "Traceback" not in p.stderr
    assert "TASK ERROR" in p.stdout
    st = load_job_state(paths, "sync", JOB)
    assert st is not None and st.kind == "finished" and st.status is not None
    assert st.status.startswith("ERROR: ")


def test_task_stop_on_a_running_pull_leaves_no_half_snapshot(
    local: Datastore, remote: Installation, cli_env: dict[str, str], paths: Paths
) -> None:
    big = write_snapshot(
        remote.store,
        "",
        BIG_SNAPSHOT,
        owner="admin@pbs",
        archives={"disk.fidx": os.urandom(2 * 1024 * 1024)},
        chunk_size=64 * 1024,
    )
    # 2 MiB of incompressible chunks at 64 KiB/s: the run lasts half a minute unless stopped
    syncjobs.update_job(paths, JOB, {"rate-in": "64KiB", "group-filter": [f"group:{BIG_SNAPSHOT[:6]}"]})
    with subprocess.Popen(
        [sys.executable, "-m", "asyncsync", "sync-job", "run", JOB],
        env=cli_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        try:
            assert proc.stdout is not None
            first = proc.stdout.readline()
            upid = first.strip().removeprefix("starting task ")
            running = json.loads(
                run_cli(cli_env, "task", "list", "--running", "--output-format", "json").stdout
            )
            assert [t["upid"] for t in running] == [upid]
            stop = run_cli(cli_env, "task", "stop", upid)
            assert "task aborted" in stop.stdout
            out, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    assert proc.returncode == 130, err
    assert "TASK ERROR: task aborted" in out
    assert snapshots(local) == set()
    assert temp_leftovers(local.root) == []
    info = T.get_task(paths, upid)
    assert str(info.state) == "task aborted"
    st = load_job_state(paths, "sync", JOB)
    assert st is not None and st.status == "ERROR: task aborted"

    # the rerun (unlimited) completes and fetches the snapshot whole
    syncjobs.update_job(paths, JOB, {}, delete=["rate-in"])
    run_cli(cli_env, "sync-job", "run", JOB)
    assert snapshots(local) == {("", BIG_SNAPSHOT)}
    assert set(big.all_digests) <= {p.name for p in (local.root / ".chunks").rglob("*") if p.is_file()}


# ---- the API, in-process ----------------------------------------------------------------------


@pytest.fixture
def api_users(paths: Paths) -> dict[str, tuple[AuthId, str]]:
    add_user(paths, "boss@pbs")
    grant(paths, "/", "Admin", "boss@pbs")
    add_user(paths, "peek@pbs")
    grant(paths, "/", "Audit", "peek@pbs")
    boss = add_token(paths, "boss@pbs", "t")
    peek = add_token(paths, "peek@pbs", "t")
    grant(paths, "/", "Admin", boss[0])
    grant(paths, "/", "Audit", peek[0])
    return {"boss": boss, "peek": peek}


async def test_api_run_list_and_tasks(
    paths: Paths,
    tmp_path: Path,
    remote: Installation,
    remote_server,  # type: ignore[no-untyped-def]
    api_users: dict[str, tuple[AuthId, str]],
) -> None:
    import asyncio

    local = await asyncio.to_thread(
        configure, paths, tmp_path, remote, remote_server.host, remote_server.port, remote_server.fingerprint
    )
    app = make_app(paths, options=TEST_OPTIONS)
    jobs_api.setup(app, scheduler=False)
    async with serve(paths, HOST, 0, options=TEST_OPTIONS, app=app) as info:

        async def client(who: str) -> Client:
            auth_id, secret = api_users[who]
            return await Client.connect(info.host, info.port, auth_id, secret, fingerprint=info.fingerprint)

        boss, peek = await client("boss"), await client("peek")
        try:
            with pytest.raises(PermissionDenied):
                await peek._json("POST", f"/admin/sync/{JOB}/run")
            upid = await boss._json("POST", f"/admin/sync/{JOB}/run")
            assert isinstance(upid, str) and f":syncjob:{JOB}:boss@pbs!t:" in upid
            service = app[jobs_api.JOBS]
            handle = next(h for h in service.tasks.running() if str(h.upid) == upid)
            assert str(await handle.wait()) == "OK"
            assert await asyncio.to_thread(snapshots, local) == await asyncio.to_thread(
                snapshots, remote.store
            )

            jobs = await peek._json("GET", "/admin/sync")
            assert [(j["id"], j["last-run-upid"], j["last-run-state"]) for j in jobs] == [(JOB, upid, "OK")]
            # peek sees every task only with Sys.Audit (Audit has it), boss its own anyway
            tasks = await peek._json("GET", "/nodes/localhost/tasks")
            assert [t["upid"] for t in tasks] == [upid]
            status = await boss._json("GET", f"/nodes/localhost/tasks/{upid}/status")
            assert status["status"] == "OK" and status["running"] is False
            lines = await boss._json("GET", f"/nodes/localhost/tasks/{upid}/log", params={"limit": "1000"})
            assert lines[0]["n"] == 1 and lines[-1]["t"].endswith("TASK OK")
        finally:
            await boss.aclose()
            await peek.aclose()


# ---- serve runs scheduled jobs (a real subprocess server) -------------------------------------


def wait_for_task(env: dict[str, str], within: float) -> list[dict[str, object]]:
    """Poll ``task list`` until a sync-job task has ended (real time: serve's clock is the wall clock)."""
    import time

    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        tasks = json.loads(run_cli(env, "task", "list", "--output-format", "json").stdout)
        if any(t["worker_type"] == "syncjob" and not t["running"] for t in tasks):
            return list(tasks)
        time.sleep(0.5)
    raise AssertionError(f"no scheduled run within {within} s")


def test_serve_runs_a_scheduled_job(
    local: Datastore, remote: Installation, cli_env: dict[str, str], paths: Paths
) -> None:
    # every 5 seconds (a seconds field): the first event comes a few seconds after start-up
    syncjobs.update_job(paths, JOB, {"schedule": "*:*:0/5"})
    with SubprocessServer(cli_env) as srv:
        tasks = wait_for_task(cli_env, 60)
        status = srv.stop()
    assert status == 0, srv.stderr
    first = next(t for t in reversed(tasks) if t["worker_type"] == "syncjob")
    assert first["worker_id"] == JOB and first["status"] == "OK" and first["user"] == "root@pam"
    assert snapshots(local) == snapshots(remote.store)
    assert "TASK OK" in run_cli(cli_env, "task", "log", str(first["upid"])).stdout
    # shutdown ends every run it started: nothing is left running or unknown
    after = json.loads(run_cli(cli_env, "task", "list", "--output-format", "json").stdout)
    assert all(not t["running"] and t["state"] in ("ok", "error") for t in after)
    jobs = json.loads(run_cli(cli_env, "sync-job", "list", "--output-format", "json").stdout)
    assert jobs[0]["last-run-starttime"] is not None and jobs[0]["next-run"] is not None


async def test_scheduled_run_through_the_job_service(
    paths: Paths,
    tmp_path: Path,
    remote: Installation,
    remote_server,  # type: ignore[no-untyped-def]
) -> None:
    """The server's job service: the scheduler (on a manual clock) starts a real pull as a task."""
    import asyncio
    import time

    from asyncsync.jobs.calendar import local_timezone, next_event
    from asyncsync.jobs.clock import ManualClock

    local = await asyncio.to_thread(
        configure, paths, tmp_path, remote, remote_server.host, remote_server.port, remote_server.fingerprint
    )
    await asyncio.to_thread(syncjobs.update_job, paths, JOB, {"schedule": "*:0/5"})
    clock = ManualClock(time.time())
    tz = await asyncio.to_thread(local_timezone)
    async with jobs_api.JobService(paths, clock=clock, tz=tz) as service:
        sched = service.scheduler
        assert sched is not None
        await asyncio.wait_for(sched.wait_idle(), 20)
        assert service.tasks.running() == [] and sched.running_jobs == frozenset()
        due = next_event("*:0/5", clock.now(), tz)
        assert due is not None
        # step from wake-up to wake-up (minute ticks) until the event
        while clock.now() < due:
            deadline = clock.next_deadline()
            assert deadline is not None and deadline <= due
            await clock.advance_to(deadline)
            await asyncio.wait_for(sched.wait_idle(), 20)
        assert sched.running_jobs == {JOB}
        async with asyncio.timeout(60):
            # the run is a real pull: watch the scheduler's own record of it
            while sched.running_jobs:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        assert service.runner.reports[JOB].ok
    assert await asyncio.to_thread(snapshots, local) == await asyncio.to_thread(snapshots, remote.store)
    st = await asyncio.to_thread(load_job_state, paths, "sync", JOB)
    assert st is not None and st.kind == "finished" and st.status == "OK"
    infos = await asyncio.to_thread(T.list_tasks, paths)
    assert [(i.upid.worker_id, str(i.state)) for i in infos] == [(JOB, "OK")]
