"""TLS certificate and fingerprint: helpers, `cert info|update`, and what the server really presents."""
# ruff: noqa: F811  (pytest fixtures imported from serverutil are redefined as parameters)

from __future__ import annotations

import asyncio
import hashlib
import json
import socket
import ssl
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from serverutil import HOST, Installation, remote, running_server  # noqa: F401

from asyncsync.config.paths import Paths
from asyncsync.errors import InvalidInput, NotFound
from asyncsync.tls import (
    CertPaths,
    cert_info,
    ensure_certificate,
    fingerprint_of_der,
    format_fingerprint,
    generate_certificate,
    normalize_fingerprint,
    parse_fingerprint,
)


def presented_fingerprint(host: str, port: int) -> str:
    """SHA-256 of the DER certificate the server presents, read with plain ``ssl`` (blocking)."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection((host, port), timeout=10) as sock, ctx.wrap_socket(sock) as tls:
        der = tls.getpeercert(binary_form=True)
    assert der
    return ":".join(f"{b:02x}" for b in hashlib.sha256(der).digest())


def cli(paths: Paths, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "asyncsync",
            "--config-dir",
            str(paths.config),
            "--state-dir",
            str(paths.state),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )


@given(st.binary(min_size=32, max_size=32))
def test_fingerprint_round_trip(raw: bytes) -> None:
    text = format_fingerprint(raw)
    assert len(text) == 95 and text == text.lower()
    assert parse_fingerprint(text) == raw
    assert parse_fingerprint(text.upper()) == raw
    assert parse_fingerprint(text.replace(":", "")) == raw
    assert normalize_fingerprint(f"  {text.upper()}\n") == text


@pytest.mark.parametrize(
    "bad",
    ["", "00", "zz:" * 31 + "zz", "00:" * 32, "00:" * 31 + "0", "00-" * 31 + "00", "00:" * 15 + "00"],
)
def test_bad_fingerprints_are_refused(bad: str) -> None:
    with pytest.raises(InvalidInput, match="fingerprint"):
        parse_fingerprint(bad)
    with pytest.raises(InvalidInput):
        format_fingerprint(b"\x00" * 20)


def test_ensure_certificate_makes_a_private_key_once(paths: Paths) -> None:
    target = CertPaths.default(paths)
    with pytest.raises(NotFound):
        cert_info(target.cert)
    info = ensure_certificate(target)
    assert target.key.stat().st_mode & 0o777 == 0o600
    assert target.cert.name == "proxy.pem" and target.key.name == "proxy.key"
    der = ssl.PEM_cert_to_DER_cert(target.cert.read_text())
    assert info.fingerprint == fingerprint_of_der(der)
    assert "127.0.0.1" in info.san and "::1" in info.san
    assert info.not_after > info.not_before
    assert ensure_certificate(target).fingerprint == info.fingerprint  # kept, not remade
    again = generate_certificate(target, hostname="backup.example", days=10)
    assert again.fingerprint != info.fingerprint
    assert "CN=backup.example" in again.subject
    assert (again.not_after - again.not_before).days == 10
    assert target.key.stat().st_mode & 0o777 == 0o600


async def test_cert_info_matches_what_the_server_presents(remote: Installation) -> None:
    async with running_server(remote.paths) as srv:
        seen = await asyncio.to_thread(presented_fingerprint, srv.host, srv.port)
        out = await asyncio.to_thread(cli, remote.paths, "cert", "info")
    assert out.returncode == 0, out.stderr
    line = next(ln for ln in out.stdout.splitlines() if ln.startswith("Fingerprint (sha256): "))
    assert line.split(": ", 1)[1] == seen == srv.fingerprint
    assert "Subject: " in out.stdout and "Not After : " in out.stdout


async def test_cert_update_changes_the_served_certificate(remote: Installation) -> None:
    async with running_server(remote.paths) as srv:
        before = srv.fingerprint
    out = await asyncio.to_thread(cli, remote.paths, "cert", "update")
    assert out.returncode == 0, out.stderr
    new_fp = out.stdout.strip().split(": ", 1)[1]
    assert new_fp != before
    info = json.loads(
        (await asyncio.to_thread(cli, remote.paths, "cert", "info", "--output-format", "json")).stdout
    )
    assert info["fingerprint"] == new_fp
    async with running_server(remote.paths) as srv:
        assert await asyncio.to_thread(presented_fingerprint, srv.host, srv.port) == new_fp


async def test_server_uses_a_given_certificate(paths: Paths, tmp_path: Path) -> None:
    custom = CertPaths(tmp_path / "custom.pem", tmp_path / "custom.key")
    info = await asyncio.to_thread(generate_certificate, custom, hostname="custom.example")
    async with running_server(paths, cert=custom) as srv:
        assert srv.fingerprint == info.fingerprint
        assert await asyncio.to_thread(presented_fingerprint, HOST, srv.port) == info.fingerprint
    # the default pair was not created
    assert not (paths.config / "proxy.pem").exists()


def test_cert_info_without_certificate_is_a_clear_error(paths: Paths) -> None:
    out = cli(paths, "cert", "info")
    assert out.returncode == NotFound.exit_code
    assert out.stderr.startswith("error: no certificate") and "Traceback" not in out.stderr


def test_serve_rejects_half_a_certificate_pair(paths: Paths, tmp_path: Path) -> None:
    out = cli(paths, "serve", "--listen", "127.0.0.1:0", "--cert", str(tmp_path / "x.pem"))
    assert out.returncode == 2 and "--cert and --key go together" in out.stderr
