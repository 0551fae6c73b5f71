"""``asyncsync sync-job create|update|list|show|remove`` (sync.cfg).

:data:`sync_job` is the click group; other modules add subcommands to it
(``sync-job run``). The ``list`` table is built by :data:`LIST_COLUMNS`: a list
of (title, cell function) that other modules may extend (last run, state).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

import click

from ..config import syncjobs as cfg
from ..config.syncjobs import SyncJobConfig
from ..jobs.state import SYNC_JOB_TYPE, forget_job
from .common import get_paths, output_format_option, print_kv, print_table


@click.group("sync-job")
def sync_job() -> None:
    """Manage sync jobs: what to pull from which remote into which datastore (sync.cfg)."""


def _format_time(t: datetime | None) -> str:
    return t.isoformat(timespec="minutes") if t is not None else ""


def _next_run(job: SyncJobConfig, now: datetime) -> str:
    if not job.schedule:
        return ""
    t = cfg.next_run(job, now)
    return _format_time(t) if t is not None else "never"


#: the ``list`` table: (column title, cell of a job given the current local time)
LIST_COLUMNS: list[tuple[str, Callable[[SyncJobConfig, datetime], str]]] = [
    ("id", lambda j, now: j.id),
    ("store", lambda j, now: j.store + (f":{j.ns}" if j.ns.parts else "")),
    ("remote", lambda j, now: j.remote),
    ("remote-store", lambda j, now: j.remote_store + (f":{j.remote_ns}" if j.remote_ns.parts else "")),
    ("schedule", lambda j, now: j.schedule or ""),
    ("next run", _next_run),
    ("comment", lambda j, now: j.comment),
]


def job_row(job: SyncJobConfig, now: datetime) -> list[str]:
    """One ``list`` row: the cells of :data:`LIST_COLUMNS` for ``job``."""
    return [cell(job, now) for _, cell in LIST_COLUMNS]


#: extra fields of a ``list`` JSON record, added by other modules (job state: last run, next run)
RECORD_EXTRAS: list[Callable[[SyncJobConfig, datetime], dict[str, Any]]] = []


def job_record(job: SyncJobConfig, now: datetime, digest: str) -> dict[str, Any]:
    """One ``list --output-format json`` record: the stored values plus ``next-run`` (epoch)."""
    rec = job.to_json()
    t = cfg.next_run(job, now) if job.schedule else None
    rec["next-run"] = int(t.timestamp()) if t is not None else None
    for extra in RECORD_EXTRAS:
        rec.update(extra(job, now))
    rec["digest"] = digest
    return rec


def _now() -> datetime:
    from ..jobs.calendar import local_timezone

    return datetime.now(local_timezone())


def _bool(value: str | None, key: str) -> bool | None:
    return None if value is None else cfg.parse_bool(value, key)


def _options(f: Callable[..., Any]) -> Callable[..., Any]:
    """The options ``create`` and ``update`` share (applied bottom-up)."""
    opts = [
        click.option("--remote", help="Remote to pull from (see `asyncsync remote list`)."),
        click.option("--remote-store", help="Datastore on the remote."),
        click.option("--store", help="Local datastore to pull into."),
        click.option("--ns", help="Local namespace anchor (default: root)."),
        click.option("--remote-ns", help="Remote namespace anchor (default: root)."),
        click.option("--max-depth", help="Sub-namespace levels to include, 0..7 (default: all)."),
        click.option(
            "--group-filter",
            multiple=True,
            help="[include:|exclude:]type:T | group:T/ID | regex:RE (repeatable; replaces the list).",
        ),
        click.option("--remove-vanished", help="0|1: remove local snapshots that vanished on the remote."),
        click.option("--owner", help="Owner of synced groups (default root@pam)."),
        click.option("--schedule", help="Calendar event, e.g. 'Wed 02:30', 'hourly', 'mon..fri 22:00'."),
        click.option("--comment", help="Free-text comment."),
        click.option("--rate-in", help="Download rate limit per second, e.g. 20MiB."),
        click.option("--burst-in", help="Burst size above the rate, e.g. 64MiB."),
        click.option("--transfer-last", help="Only the newest N snapshots of each group."),
        click.option("--verified-only", help="0|1: only snapshots whose verification passed."),
        click.option(
            "--group-workers", help=f"Groups pulled in parallel (default {cfg.DEFAULT_GROUP_WORKERS})."
        ),
        click.option(
            "--fetch-workers", help=f"Chunk requests in flight (default {cfg.DEFAULT_FETCH_WORKERS})."
        ),
        click.option("--max-inflight", help="Bytes of chunks in flight, e.g. 64MiB (default 64MiB)."),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


def _values(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Click's keyword arguments -> config keys, dropping options not given."""
    values: dict[str, Any] = {}
    for name, value in kwargs.items():
        key = name.replace("_", "-")
        if key == "group-filter":
            if value:
                values[key] = list(value)
        elif value is not None:
            values[key] = value
    return values


@sync_job.command("create")
@click.argument("id")
@_options
def create(id: str, **kwargs: Any) -> None:
    """Create sync job ID (needs --remote, --remote-store and --store)."""
    job = cfg.create_job(get_paths(), id, _values(kwargs))
    click.echo(f"created sync job {job.id}")


@sync_job.command("update")
@click.argument("id")
@_options
@click.option(
    "--delete",
    "delete",
    multiple=True,
    type=click.Choice([k for k in cfg.KEYS if k in cfg.DELETABLE_KEYS]),
    help="Clear a property (repeatable).",
)
@click.option("--digest", default=None, help="Refuse if sync.cfg changed since this digest (see show).")
def update(id: str, delete: tuple[str, ...], digest: str | None, **kwargs: Any) -> None:
    """Change sync job ID; --group-filter given once or more replaces the whole list."""
    cfg.update_job(get_paths(), id, _values(kwargs), delete=delete, digest=digest)
    click.echo(f"updated sync job {id}")


@sync_job.command("list")
@output_format_option
def list_(output_format: str) -> None:
    """List sync jobs with their next scheduled run."""
    jobs, digest = cfg.list_jobs_with_digest(get_paths())
    now = _now()
    print_table(
        [title for title, _ in LIST_COLUMNS],
        [job_row(j, now) for j in jobs],
        output_format=output_format,
        records=[job_record(j, now, digest) for j in jobs],
    )


@sync_job.command("show")
@click.argument("id")
@output_format_option
def show(id: str, output_format: str) -> None:
    """Show sync job ID and the file's digest (for update --digest)."""
    job, digest = cfg.get_job_with_digest(get_paths(), id)
    rec = job_record(job, _now(), digest)
    if output_format == "text":
        if isinstance(rec.get("group-filter"), list):
            rec["group-filter"] = "\n".join(rec["group-filter"])
        # booleans as the file spells them, not Python's True/False
        rec = {k: (str(v).lower() if isinstance(v, bool) else v) for k, v in rec.items()}
        t = cfg.next_run(job, _now()) if job.schedule else None
        rec["next-run"] = _format_time(t) if t is not None else None
    print_kv(rec, output_format=output_format)


@sync_job.command("remove")
@click.argument("id")
@click.option("--digest", default=None, help="Refuse if sync.cfg changed since this digest.")
def remove(id: str, digest: str | None) -> None:
    """Remove sync job ID."""
    cfg.remove_job(get_paths(), id, digest=digest)
    forget_job(get_paths(), SYNC_JOB_TYPE, id)
    click.echo(f"removed sync job {id}")


commands: list[click.Command] = [sync_job]

__all__ = ["LIST_COLUMNS", "RECORD_EXTRAS", "commands", "job_record", "job_row", "sync_job"]
