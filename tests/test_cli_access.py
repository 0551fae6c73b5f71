"""``asyncsync user`` and ``asyncsync acl`` end to end: the real CLI in a subprocess."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import pytest
from click.testing import CliRunner

from asyncsync.access import ROLES, AccessControl, create_user
from asyncsync.cli.main import cli
from asyncsync.config.paths import Paths
from asyncsync.names import AuthId


def run(
    env: dict[str, str], *args: str, stdin: str | None = None, ok: bool = True
) -> subprocess.CompletedProcess[str]:
    p = subprocess.run(
        [sys.executable, "-m", "asyncsync", *args],
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )
    if ok:
        assert p.returncode == 0, p.stderr
    return p


def snapshot(paths: Paths) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in paths.config.iterdir() if not p.name.endswith(".lck")}


def test_user_token_acl_life_cycle(paths: Paths, cli_env: dict[str, str]) -> None:
    out = run(
        cli_env,
        "user",
        "create",
        "sync@pbs",
        "--password-stdin",
        "--comment",
        "pulls",
        stdin="good password\n",
    )
    assert out.stdout.strip() == "created user sync@pbs"
    assert stat.S_IMODE(os.stat(paths.config / "shadow.cfg").st_mode) == 0o600
    assert "good password" not in (paths.config / "shadow.cfg").read_text()
    assert "user: sync@pbs" in (paths.config / "user.cfg").read_text()

    out = run(cli_env, "user", "generate-token", "sync@pbs", "tok", "--comment", "pbs2")
    lines = out.stdout.splitlines()
    assert lines[0] == "created token sync@pbs!tok"
    secret = lines[1].removeprefix("secret: ")
    assert "shown only once" in out.stdout
    assert stat.S_IMODE(os.stat(paths.config / "token.shadow").st_mode) == 0o600
    assert all(secret not in v.decode(errors="replace") for v in snapshot(paths).values())

    run(cli_env, "acl", "update", "/datastore/store1", "DatastoreReader", "--auth-id", "sync@pbs")
    run(
        cli_env,
        "acl",
        "update",
        "/datastore/store1/",
        "DatastoreBackup",
        "--auth-id",
        "sync@pbs!tok",
        "--propagate",
        "0",
    )
    assert (
        "acl: /datastore/store1:sync@pbs!tok:DatastoreBackup\n\tpropagate 0"
        in (paths.config / "acl.cfg").read_text()
    )

    ac = AccessControl.load(paths)
    token = AuthId.parse("sync@pbs!tok")
    assert ac.authenticate_password(AuthId.parse("sync@pbs"), "good password") == AuthId.parse("sync@pbs")
    assert ac.authenticate_token(token, secret) == token

    table = run(cli_env, "user", "list").stdout
    assert "│ sync@pbs │" in table and "│ root@pam │" in table and "pulls" in table
    tokens = json.loads(run(cli_env, "user", "list-tokens", "sync@pbs", "--output-format", "json").stdout)
    assert tokens == [
        {"tokenid": "sync@pbs!tok", "name": "tok", "enable": True, "expire": 0, "comment": "pbs2"}
    ]
    acl = run(cli_env, "acl", "list").stdout.splitlines()
    assert [line for line in acl if "/datastore/store1" in line] == [
        "│ /datastore/store1 │ sync@pbs     │ DatastoreReader │ 1         │",
        "│ /datastore/store1 │ sync@pbs!tok │ DatastoreBackup │ 0         │",
    ]

    perms = json.loads(
        run(
            cli_env,
            "user",
            "permissions",
            "sync@pbs",
            "--path",
            "/datastore/store1/ns",
            "--output-format",
            "json",
        ).stdout
    )
    assert perms == {"/datastore/store1/ns": sorted(ROLES["DatastoreReader"])}
    text = run(cli_env, "user", "permissions", "sync@pbs!tok").stdout
    assert "/datastore/store1" in text  # the token's own entry, intersected with the user: nothing left
    assert "Datastore.Backup" not in text

    run(cli_env, "acl", "remove", "/datastore/store1", "DatastoreBackup", "--auth-id", "sync@pbs!tok")
    run(cli_env, "user", "update", "sync@pbs", "--enable", "0", "--comment", "")
    assert "enable 0" in (paths.config / "user.cfg").read_text()
    run(cli_env, "user", "delete-token", "sync@pbs", "tok")
    out = run(cli_env, "user", "remove", "sync@pbs")
    assert "removed user sync@pbs" in out.stdout
    for name in ["user.cfg", "shadow.cfg", "token.shadow", "acl.cfg"]:
        assert "sync@pbs" not in (paths.config / name).read_text(), name


def test_root_password(paths: Paths, cli_env: dict[str, str]) -> None:
    run(cli_env, "user", "update", "root@pam", "--password", "root password")
    root = AuthId.parse("root@pam")
    assert AccessControl.load(paths).authenticate_password(root, "root password") == root


INVALID = [
    (["user", "create", "no-realm"], None, "invalid userid"),
    (["user", "create", "sync@pbs!tok"], None, "token id"),
    (["user", "create", "other@pbs", "--password", "short"], None, "at least 8 characters"),
    (["user", "create", "other@pbs", "--password-stdin"], "", "nothing on standard input"),
    (["user", "create", "other@pbs", "--password", "x" * 8, "--password-stdin"], "y" * 8, "not both"),
    (["user", "create", "sync@pbs"], None, "already exists"),
    (["user", "create", "other@pbs", "--email", "not-an-address"], None, "e-mail"),
    (["user", "update", "root@pam", "--comment", "x"], None, "only its password"),
    (["user", "update", "ghost@pbs", "--comment", "x"], None, "does not exist"),
    (["user", "update", "sync@pbs", "--comment", "x", "--digest", "0" * 64], None, "digest mismatch"),
    (["user", "remove", "root@pam"], None, "cannot be removed"),
    (["user", "generate-token", "sync@pbs", "bad/name"], None, "invalid token name"),
    (["user", "generate-token", "ghost@pbs", "tok"], None, "does not exist"),
    (["user", "delete-token", "sync@pbs", "ghost"], None, "does not exist"),
    (["user", "list-tokens", "ghost@pbs"], None, "does not exist"),
    (["acl", "update", "/datastore/../etc", "Admin", "--auth-id", "sync@pbs"], None, "invalid"),
    (["acl", "update", "/system/x", "Admin", "--auth-id", "sync@pbs"], None, "nothing below /system"),
    (["acl", "update", "/", "Superuser", "--auth-id", "sync@pbs"], None, "unknown role"),
    (["acl", "update", "/", "Admin", "--auth-id", "ghost@pbs"], None, "does not exist"),
    (["acl", "update", "/", "Admin", "--auth-id", "bad id"], None, "invalid auth-id"),
    (["acl", "remove", "/", "Admin", "--auth-id", "sync@pbs"], None, "no ACL entry"),
    (["user", "permissions", "sync@pbs", "--path", "/etc"], None, "invalid ACL path"),
]


@pytest.mark.parametrize(("args", "stdin", "message"), INVALID)
def test_invalid_input_is_refused_with_one_line(
    paths: Paths, args: list[str], stdin: str | None, message: str
) -> None:
    """Every refusal in-process (fast): one ``error:`` line, nothing on stdout, no file touched."""
    create_user(paths, "sync@pbs")
    before = snapshot(paths)
    result = CliRunner().invoke(cli, ["--config-dir", str(paths.config), *args], input=stdin)
    assert result.exit_code not in (0, None), result.output
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and message in lines[0]
    assert snapshot(paths) == before


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["acl", "update", "/datastore/../etc", "Admin", "--auth-id", "sync@pbs"], "invalid"),
        (["user", "permissions", "sync@pbs", "--path", "/etc"], "invalid ACL path"),
    ],
)
def test_invalid_input_in_a_subprocess(
    paths: Paths, cli_env: dict[str, str], args: list[str], message: str
) -> None:
    create_user(paths, "sync@pbs")
    before = snapshot(paths)
    p = run(cli_env, *args, ok=False)
    assert p.returncode == 2
    assert p.stdout == ""
    assert p.stderr.startswith("error: ") and message in p.stderr and p.stderr.count("\n") == 1
    assert snapshot(paths) == before
