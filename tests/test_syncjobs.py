"""Sync jobs: sync.cfg and the ``asyncsync sync-job`` commands end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from cliutil import run, table_rows

from asyncsync.config import remotes, syncjobs
from asyncsync.config.datastores import create_datastore
from asyncsync.config.paths import Paths
from asyncsync.datastore.chunkstore import SyncLevel
from asyncsync.errors import AlreadyExists, Conflict, InvalidInput, NotFound
from asyncsync.names import AuthId, GroupId, Namespace

JOB = "pbs2-local"


@pytest.fixture
def setup(paths: Paths, tmp_path: Path) -> Paths:
    """A remote ``pbs2`` and local datastores ``local`` and ``other``."""
    remotes.create_remote(paths, "pbs2", {"host": "pbs2.example", "auth-id": "sync@pam", "password": "pw"})
    create_datastore(paths, "local", tmp_path / "ds-local", sync_level=SyncLevel.NONE)
    create_datastore(paths, "other", tmp_path / "ds-other", sync_level=SyncLevel.NONE)
    return paths


def sync_cfg(paths: Paths) -> Path:
    return paths.config / "sync.cfg"


def test_reference_examples(cli_env: dict[str, str], setup: Paths) -> None:
    """Every sync-job example of the Proxmox page, as written."""
    paths = setup
    env = {**cli_env, "TZ": "Europe/Vienna"}
    run(
        env,
        *f"sync-job create {JOB} --remote pbs2 --remote-store local --store local".split(),
        "--schedule",
        "Wed 02:30",
    )
    assert sync_cfg(paths).read_text() == (
        f"sync: {JOB}\n\tstore local\n\tremote pbs2\n\tremote-store local\n\tschedule Wed 02:30\n"
    )
    run(env, "sync-job", "update", JOB, "--comment", "offsite")

    rows = table_rows(run(env, "sync-job", "list").stdout)
    # the scheduler adds "last run" and "state" columns; ours keep their order
    head = rows[0]
    assert head[:5] == ["id", "store", "remote", "remote-store", "schedule"]
    assert head.index("next run") < head.index("comment") == len(head) - 1
    assert rows[1][:5] == [JOB, "local", "pbs2", "local", "Wed 02:30"]
    assert rows[1][-1] == "offsite"
    nxt = datetime.fromisoformat(rows[1][head.index("next run")])
    assert (nxt.weekday(), nxt.hour, nxt.minute) == (2, 2, 30)
    if nxt.tzinfo is None:  # local wall time of the CLI's zone
        nxt = nxt.replace(tzinfo=ZoneInfo("Europe/Vienna"))
    assert nxt > datetime.now(UTC)

    for f in ("type:ct", "group:vm/100", r"regex:^vm/1\d{2,3}$", r"exclude:regex:^vm/1\d{2,3}$"):
        run(env, "sync-job", "update", JOB, "--group-filter", f)
        # one --group-filter replaces the whole list
        assert syncjobs.get_job(paths, JOB).values["group-filter"] == [f]
    run(env, "sync-job", "update", JOB, "--rate-in", "20MiB")

    assert sync_cfg(paths).read_text() == (
        f"sync: {JOB}\n\tstore local\n\tremote pbs2\n\tremote-store local\n"
        "\tgroup-filter exclude:regex:^vm/1\\d{2,3}$\n"
        "\tschedule Wed 02:30\n\tcomment offsite\n\trate-in 20MiB\n"
    )
    job = syncjobs.get_job(paths, JOB)
    assert job.rate_in == 20 * 1024 * 1024
    assert not job.group_filter.matches(GroupId.parse("vm/123"))
    assert job.group_filter.matches(GroupId.parse("vm/99"))

    shown = json.loads(run(env, "sync-job", "show", JOB, "--output-format", "json").stdout)
    assert shown["rate-in"] == "20MiB" and shown["comment"] == "offsite"
    assert shown["group-filter"] == [r"exclude:regex:^vm/1\d{2,3}$"]
    assert shown["digest"] == syncjobs.config_file(paths).read().digest
    assert isinstance(shown["next-run"], int)
    text = run(env, "sync-job", "show", JOB).stdout
    assert "20MiB" in text and "Wed 02:30" in text

    records = json.loads(run(env, "sync-job", "list", "--output-format", "json-pretty").stdout)
    assert [r["id"] for r in records] == [JOB]

    run(env, "sync-job", "remove", JOB)
    assert sync_cfg(paths).read_text() == ""
    gone = run(env, "sync-job", "show", JOB, ok=False)
    assert gone.returncode == NotFound.exit_code


def test_all_fields_typed(cli_env: dict[str, str], setup: Paths) -> None:
    run(
        cli_env,
        *["sync-job", "create", "full", "--remote", "pbs2", "--remote-store", "rs", "--store", "local"],
        *["--ns", "a/b", "--remote-ns", "x/y/z", "--max-depth", "4"],
        *["--group-filter", "type:vm", "--group-filter", "exclude:group:vm/100"],
        *["--remove-vanished", "1", "--owner", "sync@pbs!tok", "--rate-in", "1.5GiB", "--burst-in", "64MiB"],
        *["--transfer-last", "3", "--verified-only", "true", "--group-workers", "4", "--fetch-workers", "16"],
        *["--max-inflight", "128MiB", "--schedule", "mon..fri 22:00", "--comment", "all of it"],
    )
    job = syncjobs.get_job(setup, "full")
    assert (job.store, job.remote, job.remote_store) == ("local", "pbs2", "rs")
    assert job.ns == Namespace.parse("a/b") and job.remote_ns == Namespace.parse("x/y/z")
    assert job.max_depth == 4 and job.remove_vanished and job.verified_only
    assert job.owner == AuthId.parse("sync@pbs!tok")
    assert job.rate_in == int(1.5 * 1024**3) and job.burst_in == 64 * 1024**2
    assert (job.transfer_last, job.group_workers, job.fetch_workers) == (3, 4, 16)
    assert job.max_inflight == 128 * 1024**2
    assert len(job.group_filter.filters) == 2
    assert job.datastore_acl_path == "/datastore/local/a/b"
    assert job.remote_acl_path == "/remote/pbs2/rs"
    assert "\tgroup-filter type:vm\n\tgroup-filter exclude:group:vm/100\n" in sync_cfg(setup).read_text()
    assert "\trate-in 1.5GiB\n" in sync_cfg(setup).read_text()

    run(
        cli_env,
        *[
            "sync-job",
            "update",
            "full",
            "--delete",
            "ns",
            "--delete",
            "max-depth",
            "--delete",
            "group-filter",
        ],
        *["--remove-vanished", "false", "--delete", "owner", "--delete", "fetch-workers"],
    )
    job = syncjobs.get_job(setup, "full")
    assert job.ns.is_root and job.max_depth is None and not job.group_filter
    assert not job.remove_vanished and job.owner == AuthId.parse("root@pam")
    assert job.fetch_workers == syncjobs.DEFAULT_FETCH_WORKERS
    # defaults when nothing is set
    syncjobs.create_job(setup, "plain", {"remote": "pbs2", "remote-store": "s", "store": "other"})
    plain = syncjobs.get_job(setup, "plain")
    assert (plain.group_workers, plain.fetch_workers, plain.max_inflight) == (2, 8, 64 * 1024**2)
    assert plain.rate_in is None and plain.schedule is None and plain.max_depth is None


CREATE = ["sync-job", "create", "j", "--remote", "pbs2", "--remote-store", "rs", "--store", "local"]


INVALID = [
    (["--remote", "nope"], "remote", "unknown remote"),
    (["--store", "nope"], "store", "unknown local datastore"),
    (["--store", "../x"], "store", "invalid"),
    (["--group-filter", "regex:(unclosed"], "group-filter", "regex"),
    (["--group-filter", "kind:x"], "group-filter", "kind"),
    (["--group-filter", "type:disk"], "group-filter", "type"),
    (["--schedule", "Wed 25:30"], "schedule", ""),
    (["--schedule", "blursday"], "schedule", ""),
    (["--ns", "a/b/c/d", "--max-depth", "4"], "max-depth", "7 levels"),
    (["--remote-ns", "a/b/c/d/e/f", "--max-depth", "2"], "max-depth", "7 levels"),
    (["--max-depth", "8"], "max-depth", "at most 7"),
    (["--max-depth", "-1"], "max-depth", "negative"),
    (["--ns", "a/../b"], "ns", "invalid"),
    (["--rate-in", "-5MiB"], "rate-in", "negative"),
    (["--rate-in", "fast"], "rate-in", "invalid size"),
    (["--burst-in", "10XB"], "burst-in", "unit"),
    (["--transfer-last", "-1"], "transfer-last", "negative"),
    (["--transfer-last", "two"], "transfer-last", "integer"),
    (["--remove-vanished", "maybe"], "remove-vanished", "boolean"),
    (["--verified-only", "2"], "verified-only", "boolean"),
    (["--owner", "nobody"], "owner", "auth-id"),
    (["--group-workers", "0"], "group-workers", "at least 1"),
    (["--fetch-workers", "1000"], "fetch-workers", "at most"),
    (["--max-inflight", "1MiB"], "max-inflight", "at least"),
    (["--comment", "a\nb"], "comment", "line break"),
    (["--rate-in", "0"], "rate-in", "at least 1"),
    (["--burst-in", "5MiB"], "burst-in", "needs rate-in"),
]


def _as_values(args: list[str]) -> dict[str, object]:
    values: dict[str, object] = {}
    for flag, value in zip(args[::2], args[1::2], strict=True):
        key = flag.removeprefix("--")
        values[key] = [value] if key == "group-filter" else value
    return values


@pytest.mark.parametrize(("args", "field", "words"), INVALID)
def test_invalid_values_refused(setup: Paths, args: list[str], field: str, words: str) -> None:
    """Library level, every case, create and update: refused naming the field, file unchanged."""
    syncjobs.create_job(setup, "keep", {"remote": "pbs2", "remote-store": "rs", "store": "local"})
    before = sync_cfg(setup).read_bytes()
    base = {"remote": "pbs2", "remote-store": "rs", "store": "local"}
    with pytest.raises(InvalidInput) as create_err:
        syncjobs.create_job(setup, "j", {**base, **_as_values(args)})
    with pytest.raises(InvalidInput) as update_err:
        syncjobs.update_job(setup, "keep", _as_values(args))
    for err in (create_err.value, update_err.value):
        assert str(err).startswith(f"{field}:") and words in str(err)
    assert sync_cfg(setup).read_bytes() == before


# one case per kind of check, through the real CLI
CLI_CASES = [INVALID[i] for i in (0, 1, 3, 6, 8, 13, 16, 19)]


@pytest.mark.parametrize(("args", "field", "words"), CLI_CASES)
def test_invalid_values_refused_cli(
    cli_env: dict[str, str], setup: Paths, args: list[str], field: str, words: str
) -> None:
    syncjobs.create_job(setup, "keep", {"remote": "pbs2", "remote-store": "rs", "store": "local"})
    before = sync_cfg(setup).read_bytes()
    proc = run(cli_env, "sync-job", "update", "keep", *args, ok=False)
    assert proc.returncode == InvalidInput.exit_code, proc.stderr
    line = proc.stderr.strip()
    assert line.startswith(f"error: {field}:") and words in line, line
    assert "Traceback" not in proc.stderr
    assert sync_cfg(setup).read_bytes() == before


def test_other_refusals(cli_env: dict[str, str], setup: Paths) -> None:
    run(cli_env, *CREATE)
    before = sync_cfg(setup).read_bytes()
    dup = run(cli_env, *CREATE, ok=False)
    assert dup.returncode == AlreadyExists.exit_code
    missing = run(cli_env, "sync-job", "create", "k", "--remote", "pbs2", "--store", "local", ok=False)
    assert missing.returncode == InvalidInput.exit_code and "remote-store:" in missing.stderr
    bad = run(cli_env, *CREATE[:2], "k", *CREATE[3:], "--rate-in", "-1", ok=False)
    assert bad.returncode == InvalidInput.exit_code and bad.stderr.startswith("error: rate-in:")
    nodelete = run(cli_env, "sync-job", "update", "j", "--delete", "store", ok=False)
    assert nodelete.returncode != 0 and "store" in nodelete.stderr
    unknown = run(cli_env, "sync-job", "update", "ghost", "--comment", "x", ok=False)
    assert unknown.returncode == NotFound.exit_code
    assert sync_cfg(setup).read_bytes() == before


def test_stale_digest_refused(cli_env: dict[str, str], setup: Paths) -> None:
    run(cli_env, *CREATE)
    digest = json.loads(run(cli_env, "sync-job", "show", "j", "--output-format", "json").stdout)["digest"]
    run(cli_env, "sync-job", "update", "j", "--comment", "mine", "--digest", digest)
    after = sync_cfg(setup).read_bytes()
    stale = run(cli_env, "sync-job", "update", "j", "--comment", "theirs", "--digest", digest, ok=False)
    assert stale.returncode == Conflict.exit_code and "digest" in stale.stderr
    stale = run(cli_env, "sync-job", "remove", "j", "--digest", digest, ok=False)
    assert stale.returncode == Conflict.exit_code
    assert sync_cfg(setup).read_bytes() == after
    assert syncjobs.get_job(setup, "j").comment == "mine"


def test_concurrent_updates_lose_nothing(cli_env: dict[str, str], setup: Paths) -> None:
    syncjobs.create_job(setup, "j", {"remote": "pbs2", "remote-store": "rs", "store": "local"})
    updates = [
        ["--comment", "c"],
        ["--ns", "n1"],
        ["--remote-ns", "r1"],
        ["--max-depth", "3"],
        ["--group-filter", "type:ct"],
        ["--owner", "a@pam"],
        ["--schedule", "daily"],
        ["--rate-in", "5MiB"],
        ["--transfer-last", "2"],
        ["--fetch-workers", "4"],
    ]
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "asyncsync", "sync-job", "update", "j", *u],
            env=cli_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for u in updates
    ]
    for p in procs:
        _, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
    v = syncjobs.get_job(setup, "j").values
    for flag, value in updates:
        key = flag.removeprefix("--")
        assert v[key] == ([value] if key == "group-filter" else value), key


def test_remote_in_use_and_library_api(setup: Paths) -> None:
    job = syncjobs.create_job(
        setup, "lib", {"remote": "pbs2", "remote-store": "s", "store": "local", "max-depth": 0, "comment": ""}
    )
    assert job.max_depth == 0 and "comment" not in job.values
    assert syncjobs.list_jobs(setup) == [job]
    assert syncjobs.jobs_using_remote(setup, "pbs2") == ["lib"]
    with pytest.raises(Conflict, match="lib"):
        remotes.remove_remote(setup, "pbs2")
    with pytest.raises(InvalidInput, match="unknown sync job property"):
        syncjobs.update_job(setup, "lib", {"rate": "1"})
    # an empty list clears the filters (the API's way of saying --delete group-filter)
    syncjobs.update_job(setup, "lib", {"group-filter": ["type:vm"]})
    assert syncjobs.update_job(setup, "lib", {"group-filter": []}).group_filter.filters == ()
    # the authorize hook runs inside the lock with old and new, and can veto the write
    seen: list[tuple[str | None, str | None]] = []

    def veto(old: syncjobs.SyncJobConfig | None, new: syncjobs.SyncJobConfig | None) -> None:
        seen.append((old.store if old else None, new.store if new else None))
        raise NotFound("vetoed")

    before = sync_cfg(setup).read_bytes()
    with pytest.raises(NotFound, match="vetoed"):
        syncjobs.update_job(setup, "lib", {"store": "other"}, authorize=veto)
    with pytest.raises(NotFound, match="vetoed"):
        syncjobs.remove_job(setup, "lib", authorize=veto)
    assert seen == [("local", "other"), ("local", None)]
    assert sync_cfg(setup).read_bytes() == before
    syncjobs.remove_job(setup, "lib")
    remotes.remove_remote(setup, "pbs2")


def test_next_run_never(cli_env: dict[str, str], setup: Paths) -> None:
    syncjobs.create_job(
        setup, "leap", {"remote": "pbs2", "remote-store": "s", "store": "local", "schedule": "2021-02-29"}
    )
    job = syncjobs.get_job(setup, "leap")
    assert syncjobs.next_run(job, datetime(2020, 1, 1, tzinfo=UTC)) is None
    unscheduled = syncjobs.SyncJobConfig(id="x", store="local", remote="pbs2", remote_store="s")
    assert syncjobs.next_run(unscheduled, datetime.now(UTC)) is None
    rows = table_rows(run(cli_env, "sync-job", "list").stdout)
    assert rows[1][0] == "leap" and rows[1][rows[0].index("next run")] == "never"


def test_removed_job_forgets_its_state(cli_env: dict[str, str], setup: Paths) -> None:
    """A new job reusing a removed job's id starts fresh (no inherited last run)."""
    from asyncsync.jobs import state
    from asyncsync.jobs.tasks import TaskManager

    syncjobs.create_job(setup, "j", {"remote": "pbs2", "remote-store": "rs", "store": "local"})
    upid = TaskManager(setup).new_upid("syncjob", "j", "root@pam")
    state.record_started(setup, state.SYNC_JOB_TYPE, "j", upid)
    path = state.state_path(setup, state.SYNC_JOB_TYPE, "j")
    assert path.exists()
    run(cli_env, "sync-job", "remove", "j")
    assert not path.exists()
