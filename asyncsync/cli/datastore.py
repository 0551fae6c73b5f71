"""``asyncsync datastore create|list|show|update|remove``."""

from __future__ import annotations

from pathlib import Path

import click

from ..config import datastores as cfg
from ..datastore.chunkstore import SyncLevel
from .common import get_paths, output_format_option, print_kv, print_table

SYNC_LEVELS = click.Choice([s.value for s in SyncLevel])


@click.group("datastore")
def datastore() -> None:
    """Manage the datastores of this installation (datastore.cfg)."""


@datastore.command("create")
@click.argument("name")
@click.argument("path", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--sync-level",
    type=SYNC_LEVELS,
    default="filesystem",
    show_default=True,
    help="Durability: none, filesystem (syncfs before each commit), file (fsync each file).",
)
@click.option("--comment", default="", help="Free-text comment.")
def create(name: str, path: Path, sync_level: str, comment: str) -> None:
    """Create datastore NAME at PATH (an empty folder, or an existing datastore to register)."""
    c = cfg.create_datastore(get_paths(), name, path, sync_level=SyncLevel(sync_level), comment=comment)
    click.echo(f"created datastore {c.name} at {c.path}")


@datastore.command("list")
@output_format_option
def list_(output_format: str) -> None:
    """List configured datastores."""
    items = cfg.list_datastores(get_paths())
    print_table(
        ["name", "path", "sync-level", "comment"],
        [(d.name, d.path, d.sync_level.value, d.comment) for d in items],
        output_format=output_format,
        records=[d.to_json() for d in items],
    )


@datastore.command("show")
@click.argument("name")
@output_format_option
def show(name: str, output_format: str) -> None:
    """Show one datastore's configuration (with the digest of datastore.cfg for --digest)."""
    paths = get_paths()
    data = {**cfg.get_datastore(paths, name).to_json(), "digest": cfg.config_file(paths).read().digest}
    print_kv(data, output_format=output_format)


@datastore.command("update")
@click.argument("name")
@click.option("--sync-level", type=SYNC_LEVELS, default=None)
@click.option("--comment", default=None)
@click.option("--digest", default=None, help="Refuse if the config changed since this digest.")
def update(name: str, sync_level: str | None, comment: str | None, digest: str | None) -> None:
    """Change a datastore's settings."""
    cfg.update_datastore(
        get_paths(),
        name,
        sync_level=SyncLevel(sync_level) if sync_level else None,
        comment=comment,
        digest=digest,
    )
    click.echo(f"updated datastore {name}")


@datastore.command("remove")
@click.argument("name")
@click.option("--destroy-data", is_flag=True, help="Also delete the datastore's folder and all its data.")
def remove(name: str, destroy_data: bool) -> None:
    """Unregister a datastore (its data stays unless --destroy-data)."""
    c = cfg.remove_datastore(get_paths(), name, destroy_data=destroy_data)
    click.echo(
        f"removed datastore {name}"
        + (f" and deleted {c.path}" if destroy_data else f" (data kept in {c.path})")
    )


commands: list[click.Command] = [datastore]
