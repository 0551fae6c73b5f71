"""``asyncsync backup``, ``restore``, ``namespace …``, ``snapshot …``, ``verify``, ``gc``.

Commands parse arguments, call :mod:`asyncsync.backup` / :mod:`asyncsync.datastore`,
and print. ``--store S`` names a datastore of ``datastore.cfg``.
"""

from __future__ import annotations

from pathlib import Path

import click

from ..backup.reader import restore as restore_archive
from ..backup.writer import ArchiveSource, BackupOptions
from ..backup.writer import backup as make_backup
from ..config.datastores import open_datastore
from ..datastore.datastore import Datastore
from ..datastore.gc import DEFAULT_GRACE_SECONDS
from ..datastore.gc import gc as collect_garbage
from ..datastore.verify import verify as verify_store
from ..errors import IntegrityError, InvalidInput
from ..names import AuthId, GroupId, Namespace, SnapshotId, parse_time
from ..units import format_size, parse_duration, parse_size
from .common import (
    byte_progress,
    get_paths,
    isatty,
    output_format_option,
    print_json,
    print_table,
    run_async,
    warn,
)

store_option = click.option("--store", "store_name", required=True, help="Datastore name (datastore.cfg).")
ns_option = click.option("--ns", default="", help="Namespace, e.g. a/b (default: the root namespace).")


def _open(name: str) -> Datastore:
    return open_datastore(get_paths(), name)


def _size(value: str, field: str) -> int:
    return parse_size(value, field=field)


# ---------------------------------------------------------------- backup / restore


@click.command("backup")
@store_option
@ns_option
@click.option("--backup-time", default=None, help="RFC 3339 time of the snapshot (default: now).")
@click.option("--owner", default="root@pam", show_default=True, help="Owner of a new backup group (auth-id).")
@click.option("--chunk-size", default="4MiB", show_default=True, help="Fixed chunk size of .fidx images.")
@click.option(
    "--avg-chunk-size",
    default="4MiB",
    show_default=True,
    help="Average FastCDC chunk size of .didx archives.",
)
@click.option(
    "--progress/--no-progress",
    "progress",
    default=None,
    help="Live bytes read and rate on stderr (default: when stderr is a terminal).",
)
@output_format_option
@click.argument("group")
@click.argument("archives", nargs=-1, required=True)
def backup_cmd(
    store_name: str,
    ns: str,
    backup_time: str | None,
    owner: str,
    chunk_size: str,
    avg_chunk_size: str,
    progress: bool | None,
    output_format: str,
    group: str,
    archives: tuple[str, ...],
) -> None:
    """Make one snapshot of GROUP (TYPE/ID) from ARCHIVES.

    Each archive is NAME.didx=DIR_OR_FILE (folder as content-defined chunks),
    NAME.fidx=IMAGE (fixed-size chunks) or NAME.blob=SMALLFILE (at most 16 MiB).
    """
    gid = GroupId.parse(group)
    namespace = Namespace.parse(ns)
    sources = [ArchiveSource.parse(a) for a in archives]
    when = parse_time(backup_time) if backup_time else None
    auth = AuthId.parse(owner)
    options = BackupOptions(
        chunk_size=_size(chunk_size, "chunk-size"), avg_chunk_size=_size(avg_chunk_size, "avg-chunk-size")
    )
    store = _open(store_name)
    show = isatty() and output_format == "text" if progress is None else progress
    with byte_progress(show, "reading") as update:
        on_progress = None if update is None else lambda p: update(p.bytes_read, p.archive)
        report = run_async(
            lambda: make_backup(
                store,
                namespace,
                gid,
                sources,
                backup_time=when,
                owner=auth,
                options=options,
                warn=warn,
                progress=on_progress,
            )
        )
    if output_format == "text":
        click.echo(report.summary())
    else:
        print_json(report.to_json(), output_format)


@click.command("restore")
@store_option
@ns_option
@output_format_option
@click.argument("snapshot")
@click.argument("archive")
@click.argument("target", type=click.Path(path_type=Path))
def restore_cmd(
    store_name: str, ns: str, output_format: str, snapshot: str, archive: str, target: Path
) -> None:
    """Restore ARCHIVE of SNAPSHOT (TYPE/ID/TIME) to TARGET (a new file, or a new or empty folder)."""
    snap = SnapshotId.parse(snapshot)
    namespace = Namespace.parse(ns)
    store = _open(store_name)
    report = run_async(lambda: restore_archive(store, namespace, snap, archive, target))
    if output_format == "text":
        click.echo(report.summary())
    else:
        print_json(report.to_json(), output_format)


# ---------------------------------------------------------------- namespaces


@click.group("namespace")
def namespace() -> None:
    """Create, list and remove namespaces of a datastore."""


@namespace.command("create")
@store_option
@click.option("--parents", is_flag=True, help="Also create missing parent namespaces.")
@click.argument("ns")
def ns_create(store_name: str, parents: bool, ns: str) -> None:
    """Create namespace NS (e.g. a/b)."""
    n = Namespace.parse(ns)
    if n.is_root:
        raise InvalidInput("the root namespace always exists", field="ns")
    created = _open(store_name).create_namespace(n, parents=parents)
    click.echo(f"created namespace {n}" if created else f"namespace {n} already exists")


@namespace.command("list")
@store_option
@click.option("--max-depth", type=click.IntRange(0, 7), default=None, help="Levels below NS to show.")
@output_format_option
@click.argument("ns", required=False, default="")
def ns_list(store_name: str, max_depth: int | None, output_format: str, ns: str) -> None:
    """List NS (default: root) and the namespaces below it."""
    store = _open(store_name)
    items = store.list_namespaces(Namespace.parse(ns), max_depth)
    rows = [(str(n) or "/", len(store.list_groups(n))) for n in items]
    print_table(
        ["namespace", "groups"],
        rows,
        output_format=output_format,
        records=[{"ns": str(n), "groups": g} for n, (_, g) in zip(items, rows, strict=True)],
    )


@namespace.command("remove")
@store_option
@click.option("--delete-groups", is_flag=True, help="Also delete the groups and snapshots in it.")
@click.argument("ns")
def ns_remove(store_name: str, delete_groups: bool, ns: str) -> None:
    """Remove namespace NS and the namespaces below it (refused if not empty, unless --delete-groups)."""
    n = Namespace.parse(ns)
    _open(store_name).remove_namespace(n, delete_groups=delete_groups)
    click.echo(f"removed namespace {n}")


# ---------------------------------------------------------------- snapshots


@click.group("snapshot")
def snapshot() -> None:
    """List, forget and protect snapshots."""


@snapshot.command("list")
@store_option
@ns_option
@output_format_option
@click.argument("group", required=False)
def snap_list(store_name: str, ns: str, output_format: str, group: str | None) -> None:
    """List the snapshots of a namespace (or of one GROUP, TYPE/ID)."""
    namespace = Namespace.parse(ns)
    store = _open(store_name)
    if not store.namespace_exists(namespace):
        raise InvalidInput(f"namespace {namespace} does not exist", field="ns")
    groups = [GroupId.parse(group)] if group else store.list_groups(namespace)
    infos = [i for g in groups for i in store.list_snapshots(namespace, g)]
    print_table(
        ["snapshot", "size", "files", "protected", "verify", "comment"],
        [
            (
                str(i.snapshot),
                format_size(i.size),
                len(i.files),
                "yes" if i.protected else "",
                i.verify_state or "none",
                i.comment,
            )
            for i in infos
        ],
        output_format=output_format,
        records=[i.to_json() for i in infos],
    )


@snapshot.command("forget")
@store_option
@ns_option
@click.argument("snapshot_arg", metavar="SNAPSHOT")
def snap_forget(store_name: str, ns: str, snapshot_arg: str) -> None:
    """Remove SNAPSHOT (TYPE/ID/TIME); a protected snapshot is refused. Run gc to free its chunks."""
    snap = SnapshotId.parse(snapshot_arg)
    namespace = Namespace.parse(ns)
    store = _open(store_name)
    with store.group_lock(namespace, snap.group):
        store.remove_snapshot(namespace, snap)
    click.echo(f"removed snapshot {snap}")


@snapshot.command("protected")
@store_option
@ns_option
@output_format_option
@click.argument("snapshot_arg", metavar="SNAPSHOT")
@click.argument("value", required=False, type=click.Choice(["0", "1", "true", "false"]))
def snap_protected(
    store_name: str, ns: str, output_format: str, snapshot_arg: str, value: str | None
) -> None:
    """Show whether SNAPSHOT is protected, or set it (1) / clear it (0)."""
    snap = SnapshotId.parse(snapshot_arg)
    namespace = Namespace.parse(ns)
    store = _open(store_name)
    if value is not None:
        store.set_protected(namespace, snap, value in ("1", "true"))
    elif not store.snapshot_exists(namespace, snap):
        store.load_manifest(namespace, snap)  # raises NotFound with the usual message
    protected = store.is_protected(namespace, snap)
    if output_format == "text":
        click.echo(f"{snap}: {'protected' if protected else 'not protected'}")
    else:
        print_json({"snapshot": str(snap), "protected": protected}, output_format)


# ---------------------------------------------------------------- verify / gc


@click.command("verify")
@store_option
@click.option("--ns", default=None, help="Verify only this namespace and the ones below it.")
@output_format_option
@click.argument("snapshot_arg", metavar="[SNAPSHOT]", required=False)
def verify_cmd(store_name: str, ns: str | None, output_format: str, snapshot_arg: str | None) -> None:
    """Re-read and check every chunk and index (of SNAPSHOT, or of all snapshots).

    Damaged chunks are renamed aside (<digest>.bad); each snapshot's result is
    recorded in its manifest. Exits with status 6 if anything failed.
    """
    store = _open(store_name)
    namespace = Namespace.parse(ns)
    if snapshot_arg:
        one = (namespace, SnapshotId.parse(snapshot_arg))
        if not store.snapshot_exists(*one):
            store.load_manifest(*one)  # raises NotFound with the usual message
        targets: list[tuple[Namespace, SnapshotId]] | None = [one]
    elif ns is not None:
        targets = [
            (n, i.snapshot)
            for n in store.list_namespaces(namespace)
            for g in store.list_groups(n)
            for i in store.list_snapshots(n, g)
        ]
    else:
        targets = None
    report = run_async(lambda: verify_store(store, targets))
    if output_format == "text":
        for res in report.failed:
            for err in res.errors:
                click.echo(f"{res.ref}: {err}", err=True)
        for digest in sorted(report.bad_chunks):
            click.echo(f"damaged chunk {digest} (renamed to {digest}.bad)", err=True)
        click.echo(report.summary())
    else:
        print_json(report.to_json(), output_format)
    if not report.ok:
        raise IntegrityError(f"verification failed for {len(report.failed)} snapshot(s)")


@click.command("gc")
@store_option
@click.option(
    "--grace",
    default=None,
    help=f"Keep unreferenced chunks newer than this (default 24h5m = {DEFAULT_GRACE_SECONDS} s), e.g. 1h, 0.",
)
@output_format_option
def gc_cmd(store_name: str, grace: str | None, output_format: str) -> None:
    """Remove chunks that no snapshot references (mark, then sweep with a grace period)."""
    seconds = DEFAULT_GRACE_SECONDS if grace is None else parse_duration(grace, field="grace")
    store = _open(store_name)
    report = run_async(lambda: collect_garbage(store, grace_seconds=seconds))
    if output_format == "text":
        click.echo(report.summary())
    else:
        print_json(report.to_json(), output_format)


commands: list[click.Command] = [backup_cmd, restore_cmd, namespace, snapshot, verify_cmd, gc_cmd]
