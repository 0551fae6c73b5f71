"""Remotes: remote.cfg + remote.shadow, and the ``asyncsync remote`` commands end to end."""

from __future__ import annotations

import asyncio
import base64
import json
import stat
import subprocess
import sys
from subprocess import PIPE

import pytest
from cliutil import run, table_rows
from hypothesis import given
from hypothesis import strategies as st
from serverutil import (
    Installation,
    RunningServer,
    remote,  # noqa: F401 - fixture
    remote_server,  # noqa: F401 - fixture
)

from asyncsync.config import remotes
from asyncsync.config.paths import Paths
from asyncsync.errors import AlreadyExists, Conflict, FingerprintMismatch, InvalidInput, NotFound

FP = ":".join(f"{b:02x}" for b in range(0x40, 0x60))  # 32 bytes
FP2 = ":".join(["ab"] * 32)


def test_reference_examples(cli_env: dict[str, str], paths: Paths) -> None:
    """The Proxmox page's remote commands, as written (with a full fingerprint)."""
    run(
        cli_env,
        *["remote", "create", "pbs2", "--host", "pbs2.mydomain.example"],
        *["--userid", "sync@pam", "--password"],
        "SECRET",
        "--fingerprint",
        FP,
    )
    cfg_path = paths.config / "remote.cfg"
    shadow = paths.config / "remote.shadow"
    assert cfg_path.read_text() == (
        f"remote: pbs2\n\thost pbs2.mydomain.example\n\tauth-id sync@pam\n\tfingerprint {FP}\n"
    )
    assert stat.S_IMODE(shadow.stat().st_mode) == 0o600
    assert "SECRET" not in cfg_path.read_text()
    assert base64.b64encode(b"SECRET").decode() in shadow.read_text()
    assert remotes.remote_secret(paths, "pbs2") == "SECRET"

    run(cli_env, "remote", "update", "pbs2", "--host", "pbs2.example")
    assert "\thost pbs2.example\n" in cfg_path.read_text()
    assert remotes.remote_secret(paths, "pbs2") == "SECRET"  # untouched by a host change

    out = run(cli_env, "remote", "list").stdout
    rows = table_rows(out)
    assert rows[0] == ["name", "host", "userid", "fingerprint", "comment"]
    assert rows[1] == ["pbs2", "pbs2.example", "sync@pam", FP, ""]
    assert "SECRET" not in out and "U0VDUkVU" not in out

    records = json.loads(run(cli_env, "remote", "list", "--output-format", "json").stdout)
    assert [r["name"] for r in records] == ["pbs2"]
    assert records[0]["auth-id"] == "sync@pam" and records[0]["port"] == 8007
    assert all("password" not in r for r in records)

    shown = json.loads(run(cli_env, "remote", "show", "pbs2", "--output-format", "json-pretty").stdout)
    assert shown["host"] == "pbs2.example"
    assert shown["digest"] == remotes.config_file(paths).read().digest
    text = run(cli_env, "remote", "show", "pbs2").stdout
    assert "pbs2.example" in text and "SECRET" not in text

    run(cli_env, "remote", "remove", "pbs2")
    assert cfg_path.read_text() == ""
    assert "pbs2" not in shadow.read_text()
    gone = run(cli_env, "remote", "show", "pbs2", ok=False)
    assert gone.returncode == NotFound.exit_code and "pbs2" in gone.stderr


def test_token_ipv6_port_and_password_change(cli_env: dict[str, str], paths: Paths) -> None:
    run(
        cli_env,
        *["remote", "create", "r6", "--host", "[::1]", "--port", "8008"],
        *["--auth-id", "sync@pbs!tok1", "--password"],
        " s3cret with blanks ",
        "--comment",
        "lab box",
    )
    text = (paths.config / "remote.cfg").read_text()
    assert text == "remote: r6\n\thost [::1]\n\tport 8008\n\tauth-id sync@pbs!tok1\n\tcomment lab box\n"
    r = remotes.get_remote(paths, "r6")
    assert (r.bare_host, r.url_host, r.port, r.auth_id.token) == ("::1", "[::1]", 8008, "tok1")
    assert remotes.remote_secret(paths, "r6") == " s3cret with blanks "

    # back to the default port: the line disappears; a new secret replaces the old one
    run(cli_env, "remote", "update", "r6", "--port", "8007", "--password", "new", "--delete", "comment")
    assert (paths.config / "remote.cfg").read_text() == "remote: r6\n\thost [::1]\n\tauth-id sync@pbs!tok1\n"
    assert remotes.remote_secret(paths, "r6") == "new"
    assert stat.S_IMODE((paths.config / "remote.shadow").stat().st_mode) == 0o600

    run(cli_env, "remote", "update", "r6", "--host", "2001:db8::5", "--fingerprint", FP2.upper())
    r = remotes.get_remote(paths, "r6")
    assert r.url_host == "[2001:db8::5]" and r.fingerprint == FP2  # stored lowercase


BASE = ["remote", "create", "pbs2", "--host", "pbs2.example", "--auth-id", "sync@pam", "--password", "pw"]


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (["--host", "bad_host!"], "host"),
        (["--host", "pbs2.example:8007"], "host"),
        (["--host", "[::g]"], "host"),
        (["--host", "300.1.2.3"], "host"),
        (["--port", "0"], "port"),
        (["--port", "70000"], "port"),
        (["--auth-id", "sync"], "auth-id"),
        (["--auth-id", "sync@pam!"], "auth-id"),
        (["--fingerprint", ":".join(["ab"] * 31)], "fingerprint"),
        (["--fingerprint", "64:d3:ff:3a:50:38:53:5a:9b:f7:50:...:ab:fe"], "fingerprint"),
        (["--password", ""], "password"),
        (["--comment", "two\nlines"], "comment"),
    ],
)
def test_create_invalid_values_refused(
    cli_env: dict[str, str], paths: Paths, args: list[str], field: str
) -> None:
    remotes.create_remote(paths, "keep", {"host": "keep.example", "auth-id": "a@pam", "password": "x"})
    before = (paths.config / "remote.cfg").read_bytes()
    shadow_before = (paths.config / "remote.shadow").read_bytes()
    # later options override the base ones (click keeps the last value)
    proc = run(cli_env, *BASE, *args, ok=False)
    assert proc.returncode == InvalidInput.exit_code, proc.stderr
    assert f"{field}:" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert (paths.config / "remote.cfg").read_bytes() == before
    assert (paths.config / "remote.shadow").read_bytes() == shadow_before


def test_update_refusals_leave_files_unchanged(cli_env: dict[str, str], paths: Paths) -> None:
    run(cli_env, *BASE)
    cfg_path = paths.config / "remote.cfg"
    before = cfg_path.read_bytes()
    digest = remotes.config_file(paths).read().digest

    dup = run(cli_env, *BASE, ok=False)
    assert dup.returncode == AlreadyExists.exit_code and "already exists" in dup.stderr

    bad = run(cli_env, "remote", "update", "pbs2", "--port", "x", ok=False)
    assert bad.returncode != 0 and "port" in bad.stderr
    bad = run(cli_env, "remote", "update", "pbs2", "--fingerprint", "zz", "--comment", "c", ok=False)
    assert bad.returncode == InvalidInput.exit_code and "fingerprint:" in bad.stderr
    bad = run(cli_env, "remote", "update", "pbs2", "--delete", "host", ok=False)
    assert bad.returncode != 0
    both = run(cli_env, "remote", "update", "pbs2", "--auth-id", "a@pam", "--userid", "b@pam", ok=False)
    assert both.returncode != 0 and "--userid" in both.stderr
    missing = run(cli_env, "remote", "update", "nope", "--comment", "x", ok=False)
    assert missing.returncode == NotFound.exit_code
    assert cfg_path.read_bytes() == before

    # a digest from before someone else's change is refused
    run(cli_env, "remote", "update", "pbs2", "--comment", "first", "--digest", digest)
    stale = run(cli_env, "remote", "update", "pbs2", "--comment", "second", "--digest", digest, ok=False)
    assert stale.returncode == Conflict.exit_code and "digest" in stale.stderr
    assert remotes.get_remote(paths, "pbs2").comment == "first"
    stale = run(cli_env, "remote", "remove", "pbs2", "--digest", digest, ok=False)
    assert stale.returncode == Conflict.exit_code
    assert remotes.remote_exists(paths, "pbs2")


def test_concurrent_updates_lose_nothing(cli_env: dict[str, str], paths: Paths) -> None:
    names = [f"r{i}" for i in range(10)]
    for n in names:
        remotes.create_remote(paths, n, {"host": f"{n}.example", "auth-id": "sync@pam", "password": "pw"})
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "asyncsync",
                "remote",
                "update",
                n,
                "--comment",
                f"c-{n}",
                "--password",
                n,
            ],
            env=cli_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for n in names
    ]
    for p in procs:
        _, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
    for n in names:
        assert remotes.get_remote(paths, n).comment == f"c-{n}"
        assert remotes.remote_secret(paths, n) == n


def test_library_api(paths: Paths) -> None:
    r = remotes.create_remote(
        paths, "lib", {"host": "10.0.0.1", "port": 9000, "auth-id": "x@pbs", "password": "p", "comment": ""}
    )
    assert r.base_url == "https://10.0.0.1:9000"
    assert remotes.list_remotes(paths)[0] == [r]
    with pytest.raises(InvalidInput, match="unknown remote property"):
        remotes.update_remote(paths, "lib", {"secret": "x"})
    with pytest.raises(NotFound):
        remotes.remote_secret(paths, "other")
    # the older key "userid" in a hand-written file is read and rewritten as auth-id
    remotes.config_file(paths).path.write_text("remote: old\n\thost h.example\n\tuserid u@pam\n")
    assert remotes.get_remote(paths, "old").auth_id.user == "u"
    remotes.update_remote(paths, "old", {"comment": "migrated"})
    assert "\tauth-id u@pam\n" in remotes.config_file(paths).path.read_text()


@given(st.binary(min_size=32, max_size=32), st.booleans(), st.booleans())
def test_fingerprint_forms(raw: bytes, colons: bool, upper: bool) -> None:
    text = ":".join(f"{b:02x}" for b in raw) if colons else raw.hex()
    text = text.upper() if upper else text
    assert remotes.check_fingerprint(text) == ":".join(f"{b:02x}" for b in raw)


@pytest.mark.parametrize(
    "host", ["pbs2.example", "localhost", "a-b.c", "192.168.1.2", "[::1]", "::1", "fe80::1", "x."]
)
def test_valid_hosts(host: str) -> None:
    assert remotes.check_host(host) == host


@pytest.mark.parametrize("host", ["", "-a.example", "a..b", "[1.2.3.4]", "1.2.3", "a b", "http://x", "[::1"])
def test_invalid_hosts(host: str) -> None:
    with pytest.raises(InvalidInput, match="host"):
        remotes.check_host(host)


def test_secret_file_is_private_from_the_start(paths: Paths) -> None:
    remotes.create_remote(paths, "p", {"host": "h.example", "auth-id": "a@pam", "password": "pw"})
    assert stat.S_IMODE((paths.config / "remote.shadow").stat().st_mode) == 0o600
    assert not list(paths.config.glob("remote.shadow.*"))  # no temp file left behind


# ---- scan against a real server -------------------------------------------------------------


async def arun(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    """The CLI in a subprocess without blocking the loop the in-process server runs on."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "asyncsync", *args, env=env, stdout=PIPE, stderr=PIPE
    )
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_scan_real_server(
    cli_env: dict[str, str],
    paths: Paths,
    remote: Installation,  # noqa: F811 - fixture
    remote_server: RunningServer,  # noqa: F811 - fixture
) -> None:
    assert remote_server.fingerprint is not None
    await asyncio.to_thread(
        remotes.create_remote,
        paths,
        "lab",
        {
            "host": remote_server.host,
            "port": remote_server.port,
            "auth-id": str(remote.sync_token),
            "password": remote.sync_secret,
            "fingerprint": remote_server.fingerprint,
        },
    )
    rc, out, err = await arun(cli_env, "remote", "scan", "lab")
    assert rc == 0, err
    assert ["store", ""] in table_rows(out)

    rc, out, err = await arun(cli_env, "remote", "scan", "lab", "store", "--namespaces")
    assert rc == 0, err
    assert [r[0] for r in table_rows(out)[1:]] == ["/", "a", "a/b"]

    rc, out, err = await arun(cli_env, "remote", "scan", "lab", "store")  # groups by default
    assert rc == 0, err
    rows = table_rows(out)
    assert rows[0] == ["group", "last backup", "backups", "owner"]
    assert {r[0]: r[2] for r in rows[1:]} == {"ct/200": "1", "host/web": "1", "vm/100": "2"}
    vm = next(r for r in rows if r[0] == "vm/100")
    assert vm[1] == "2026-11-21T08:00:00Z" and vm[3] == "admin@pbs"

    rc, out, err = await arun(
        cli_env, "remote", "scan", "lab", "store", "--groups", "--ns", "a", "--output-format", "json"
    )
    assert rc == 0, err
    assert [(g["backup-type"], g["backup-id"]) for g in json.loads(out)] == [("vm", "300")]

    # a wrong pinned fingerprint is refused, naming what the server presented
    await asyncio.to_thread(remotes.update_remote, paths, "lab", {"fingerprint": FP})
    rc, out, err = await arun(cli_env, "remote", "scan", "lab")
    assert rc == FingerprintMismatch.exit_code and remote_server.fingerprint in err
    assert "Traceback" not in err
