"""``asyncsync remote create|update|list|show|remove|scan`` (remote.cfg)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import click

from ..config import remotes as cfg
from ..names import Namespace, format_time
from .common import get_paths, output_format_option, print_kv, print_table, run_async

LIST_COLUMNS = ("name", "host", "userid", "fingerprint", "comment")


@click.group("remote")
def remote() -> None:
    """Manage remotes: other servers to pull datastores from (remote.cfg)."""


def _values(
    host: str | None,
    port: int | None,
    auth_id: str | None,
    password: str | None,
    fingerprint: str | None,
    comment: str | None,
) -> dict[str, Any]:
    return {
        k: v
        for k, v in {
            "host": host,
            "port": port,
            "auth-id": auth_id,
            "password": password,
            "fingerprint": fingerprint,
            "comment": comment,
        }.items()
        if v is not None
    }


def _auth_id(auth_id: str | None, userid: str | None) -> str | None:
    if auth_id is not None and userid is not None and auth_id != userid:
        raise click.UsageError("give --auth-id or --userid (its older spelling), not both")
    return auth_id if auth_id is not None else userid


_host_option = click.option("--host", help="DNS name, IPv4 address or [IPv6] address of the remote.")
_port_option = click.option("--port", type=int, default=None, help="TCP port (default 8007).")
_auth_option = click.option("--auth-id", "auth_id", help="user@realm or API token user@realm!name.")
_userid_option = click.option("--userid", help="Older spelling of --auth-id.")
_password_option = click.option("--password", help="Password of the user, or the API token's secret.")
_fp_option = click.option(
    "--fingerprint", help="SHA-256 fingerprint of the remote's certificate (32 hex bytes, colon-separated)."
)
_comment_option = click.option("--comment", help="Free-text comment.")


def _remote_options(f: Callable[..., None]) -> Callable[..., None]:
    """The options ``create`` and ``update`` share, in their help order."""
    for option in reversed(
        (
            _host_option,
            _port_option,
            _auth_option,
            _userid_option,
            _password_option,
            _fp_option,
            _comment_option,
        )
    ):
        f = option(f)
    return f


@remote.command("create")
@click.argument("name")
@_remote_options
def create(
    name: str,
    host: str | None,
    port: int | None,
    auth_id: str | None,
    userid: str | None,
    password: str | None,
    fingerprint: str | None,
    comment: str | None,
) -> None:
    """Add remote NAME (needs --host, --auth-id/--userid and --password).

    Without --password the secret is asked for on a terminal (and stays out of the shell history).
    """
    if password is None and sys.stdin.isatty():
        password = click.prompt("Password or token secret", hide_input=True)
    values = _values(host, port, _auth_id(auth_id, userid), password, fingerprint, comment)
    r = cfg.create_remote(get_paths(), name, values)
    click.echo(f"created remote {r.name} ({r.auth_id} at {r.host}:{r.port})")


@remote.command("update")
@click.argument("name")
@_remote_options
@click.option(
    "--delete",
    "delete",
    multiple=True,
    type=click.Choice(sorted(cfg.DELETABLE_KEYS)),
    help="Clear a property (repeatable).",
)
@click.option("--digest", default=None, help="Refuse if remote.cfg changed since this digest (see show).")
def update(
    name: str,
    host: str | None,
    port: int | None,
    auth_id: str | None,
    userid: str | None,
    password: str | None,
    fingerprint: str | None,
    comment: str | None,
    delete: tuple[str, ...],
    digest: str | None,
) -> None:
    """Change remote NAME's settings."""
    values = _values(host, port, _auth_id(auth_id, userid), password, fingerprint, comment)
    cfg.update_remote(get_paths(), name, values, delete=delete, digest=digest)
    click.echo(f"updated remote {name}")


@remote.command("list")
@output_format_option
def list_(output_format: str) -> None:
    """List remotes (never their secrets)."""
    items, digest = cfg.list_remotes(get_paths())
    print_table(
        LIST_COLUMNS,
        [(r.name, r.host, str(r.auth_id), r.fingerprint or "", r.comment) for r in items],
        output_format=output_format,
        records=[{**r.to_json(), "digest": digest} for r in items],
    )


@remote.command("show")
@click.argument("name")
@output_format_option
def show(name: str, output_format: str) -> None:
    """Show remote NAME's configuration and the file's digest (for update --digest)."""
    r, digest = cfg.get_remote_with_digest(get_paths(), name)
    print_kv({**r.to_json(), "digest": digest}, output_format=output_format)


@remote.command("remove")
@click.argument("name")
@click.option("--digest", default=None, help="Refuse if remote.cfg changed since this digest.")
def remove(name: str, digest: str | None) -> None:
    """Remove remote NAME and its stored secret."""
    cfg.remove_remote(get_paths(), name, digest=digest)
    click.echo(f"removed remote {name}")


@remote.command("scan")
@click.argument("name")
@click.argument("store", required=False)
@click.option("--namespaces", "what", flag_value="namespaces", help="List STORE's namespaces.")
@click.option("--groups", "what", flag_value="groups", help="List STORE's backup groups (the default).")
@click.option("--ns", default="", help="Namespace: parent for --namespaces, location for --groups.")
@click.option(
    "--max-depth", type=click.IntRange(0, 7), default=None, help="Namespace levels below --ns (--namespaces)."
)
@output_format_option
def scan(
    name: str, store: str | None, what: str | None, ns: str, max_depth: int | None, output_format: str
) -> None:
    """Ask remote NAME what it holds: its datastores, or STORE's namespaces or groups."""
    if store is None and what is not None:
        raise click.UsageError(f"--{what} needs a STORE")
    namespace = Namespace.parse(ns)
    paths = get_paths()
    r = cfg.get_remote(paths, name)
    secret = cfg.remote_secret(paths, name)

    from ..client import Client  # aiohttp: imported only by the command that talks to a remote

    async def ask() -> tuple[list[str], list[list[str]], list[dict[str, Any]]]:
        async with await Client.connect(r.host, r.port, r.auth_id, secret, fingerprint=r.fingerprint) as c:
            if store is None:
                stores = await c.list_datastores()
                rows = [[str(d.get("store", "")), str(d.get("comment") or "")] for d in stores]
                return ["store", "comment"], rows, stores
            if what == "namespaces":
                spaces = await c.list_namespaces(store, namespace, max_depth)
                return ["namespace"], [[str(n) or "/"] for n in spaces], [{"ns": str(n)} for n in spaces]
            groups = await c.list_groups(store, namespace)
            return (
                ["group", "last backup", "backups", "owner"],
                [
                    [
                        str(g.group),
                        format_time(g.last_backup) if g.last_backup is not None else "",
                        str(g.backup_count),
                        str(g.owner or ""),
                    ]
                    for g in sorted(groups, key=lambda g: g.group)
                ],
                [g.to_json() for g in groups],
            )

    columns, rows, records = run_async(ask)
    print_table(columns, rows, output_format=output_format, records=records)


commands: list[click.Command] = [remote]
