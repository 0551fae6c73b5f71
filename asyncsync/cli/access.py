"""``asyncsync user ...`` and ``asyncsync acl ...``: users, API tokens and ACL entries."""

from __future__ import annotations

import sys

import click

from .. import access
from ..errors import InvalidInput
from ..names import AuthId, format_time
from .common import get_paths, output_format_option, print_json, print_table

ENABLE = click.Choice(["0", "1"])
EXPIRE = click.IntRange(min=0)


def _bool(value: str | None) -> bool | None:
    return None if value is None else value == "1"


def _expire_text(expire: int) -> str:
    return "never" if expire == 0 else format_time(expire)


def _password(password: str | None, password_stdin: bool) -> str | None:
    """The password from ``--password`` or the first line of stdin (``--password-stdin``)."""
    if password is not None and password_stdin:
        raise InvalidInput("give either --password or --password-stdin, not both")
    if password_stdin:
        line = sys.stdin.readline()
        if not line:
            raise InvalidInput("--password-stdin: nothing on standard input")
        return line.rstrip("\r\n")
    return password


password_option = click.option("--password", default=None, help="The password (at least 8 characters).")
password_stdin_option = click.option(
    "--password-stdin", is_flag=True, help="Read the password from the first line of standard input."
)


@click.group("user")
def user() -> None:
    """Manage users and their API tokens (user.cfg; secrets in files readable by the owner only)."""


@user.command("create")
@click.argument("userid")
@password_option
@password_stdin_option
@click.option("--comment", default="", help="Free-text comment.")
@click.option("--email", default="", help="E-mail address.")
@click.option("--enable", type=ENABLE, default="1", show_default=True, help="1: may log in; 0: disabled.")
@click.option("--expire", type=EXPIRE, default=0, help="Account expiry (epoch seconds; 0: never).")
def create(
    userid: str,
    password: str | None,
    password_stdin: bool,
    comment: str,
    email: str,
    enable: str,
    expire: int,
) -> None:
    """Create user USERID (name@realm). Without a password it can only use API tokens."""
    u = access.create_user(
        get_paths(),
        userid,
        _password(password, password_stdin),
        comment=comment,
        email=email,
        enable=enable == "1",
        expire=expire,
    )
    click.echo(f"created user {u.userid}")


@user.command("list")
@output_format_option
def list_(output_format: str) -> None:
    """List users (root@pam is built in)."""
    users = access.list_users(get_paths())
    print_table(
        ["userid", "enable", "expire", "email", "comment"],
        [(u.userid, int(u.enable), _expire_text(u.expire), u.email, u.comment) for u in users],
        output_format=output_format,
        records=[u.to_json() for u in users],
    )


@user.command("update")
@click.argument("userid")
@password_option
@password_stdin_option
@click.option("--comment", default=None, help="Free-text comment ('' clears it).")
@click.option("--email", default=None, help="E-mail address ('' clears it).")
@click.option("--enable", type=ENABLE, default=None, help="1: may log in; 0: disabled.")
@click.option("--expire", type=EXPIRE, default=None, help="Account expiry (epoch seconds; 0: never).")
@click.option("--digest", default=None, help="Refuse if user.cfg changed since this digest.")
def update(
    userid: str,
    password: str | None,
    password_stdin: bool,
    comment: str | None,
    email: str | None,
    enable: str | None,
    expire: int | None,
    digest: str | None,
) -> None:
    """Change a user's password or settings (for root@pam only the password)."""
    access.update_user(
        get_paths(),
        userid,
        password=_password(password, password_stdin),
        comment=comment,
        email=email,
        enable=_bool(enable),
        expire=expire,
        digest=digest,
    )
    click.echo(f"updated user {userid}")


@user.command("remove")
@click.argument("userid")
def remove(userid: str) -> None:
    """Remove a user with its password, tokens and ACL entries."""
    u = access.remove_user(get_paths(), userid)
    click.echo(f"removed user {u.userid} (and its tokens and ACL entries)")


@user.command("generate-token")
@click.argument("userid")
@click.argument("tokenname")
@click.option("--comment", default="", help="Free-text comment.")
@click.option("--expire", type=EXPIRE, default=0, help="Token expiry (epoch seconds; 0: never).")
@output_format_option
def generate_token(userid: str, tokenname: str, comment: str, expire: int, output_format: str) -> None:
    """Make API token USERID!TOKENNAME and print its secret (shown only this once)."""
    tokenid, secret = access.generate_token(get_paths(), userid, tokenname, comment=comment, expire=expire)
    notice = "The secret is shown only once: store it now (it cannot be shown again)."
    if output_format != "text":
        print_json({"tokenid": str(tokenid), "value": secret}, output_format)
        click.echo(notice, err=True)
        return
    click.echo(f"created token {tokenid}")
    click.echo(f"secret: {secret}")
    click.echo(notice)


@user.command("update-token")
@click.argument("userid")
@click.argument("tokenname")
@click.option("--comment", default=None, help="Free-text comment ('' clears it).")
@click.option("--enable", type=ENABLE, default=None, help="1: usable; 0: disabled.")
@click.option("--expire", type=EXPIRE, default=None, help="Token expiry (epoch seconds; 0: never).")
def update_token(
    userid: str, tokenname: str, comment: str | None, enable: str | None, expire: int | None
) -> None:
    """Change an API token's comment, enable flag or expiry."""
    t = access.update_token(
        get_paths(), userid, tokenname, comment=comment, enable=_bool(enable), expire=expire
    )
    click.echo(f"updated token {t.tokenid}")


@user.command("delete-token")
@click.argument("userid")
@click.argument("tokenname")
def delete_token(userid: str, tokenname: str) -> None:
    """Delete an API token with its secret and ACL entries."""
    t = access.delete_token(get_paths(), userid, tokenname)
    click.echo(f"deleted token {t.tokenid}")


@user.command("list-tokens")
@click.argument("userid")
@output_format_option
def list_tokens(userid: str, output_format: str) -> None:
    """List a user's API tokens."""
    tokens = access.list_tokens(get_paths(), userid)
    print_table(
        ["tokenid", "enable", "expire", "comment"],
        [(t.tokenid, int(t.enable), _expire_text(t.expire), t.comment) for t in tokens],
        output_format=output_format,
        records=[t.to_json() for t in tokens],
    )


@user.command("permissions")
@click.argument("authid")
@click.option("--path", default=None, help="Only this ACL path (default: / and every path with an entry).")
@output_format_option
def permissions(authid: str, path: str | None, output_format: str) -> None:
    """Show the effective privileges of a user or token."""
    auth_id = AuthId.parse(authid)
    ac = access.AccessControl.load(get_paths(), make_authkey=False)
    perms = ac.permissions(auth_id, path)
    print_table(
        ["path", "privileges"],
        [(p, ", ".join(sorted(privs)) or "-") for p, privs in perms.items()],
        output_format=output_format,
        records={p: sorted(privs) for p, privs in perms.items()},
    )


@click.group("acl")
def acl() -> None:
    """Manage access control lists (acl.cfg): which role an auth-id has on a path."""


@acl.command("update")
@click.argument("path")
@click.argument("role")
@click.option("--auth-id", "auth_id", required=True, help="User (name@realm) or token (name@realm!token).")
@click.option("--propagate", type=ENABLE, default="1", show_default=True, help="1: also applies below PATH.")
def acl_update(path: str, role: str, auth_id: str, propagate: str) -> None:
    """Give AUTH-ID the role ROLE on PATH (e.g. /datastore/store1 DatastoreReader)."""
    e = access.acl_update(get_paths(), path, role, auth_id, propagate=propagate == "1")
    click.echo(f"granted {e.role} on {e.path} to {e.auth_id} (propagate {int(e.propagate)})")


@acl.command("list")
@click.option("--path", default=None, help="Only entries on exactly this path.")
@click.option("--auth-id", "auth_id", default=None, help="Only entries of this user or token.")
@output_format_option
def acl_list(path: str | None, auth_id: str | None, output_format: str) -> None:
    """List ACL entries."""
    entries = access.acl_list(get_paths(), path=path, auth_id=auth_id)
    print_table(
        ["path", "auth-id", "role", "propagate"],
        [(e.path, e.auth_id, e.role, int(e.propagate)) for e in entries],
        output_format=output_format,
        records=[e.to_json() for e in entries],
    )


@acl.command("remove")
@click.argument("path")
@click.argument("role")
@click.option("--auth-id", "auth_id", required=True, help="User (name@realm) or token (name@realm!token).")
def acl_remove(path: str, role: str, auth_id: str) -> None:
    """Take the role ROLE on PATH away from AUTH-ID."""
    e = access.acl_remove(get_paths(), path, role, auth_id)
    click.echo(f"removed {e.role} on {e.path} from {e.auth_id}")


commands: list[click.Command] = [user, acl]
