"""asyncsync as a benchmarked tool: a server process and ``asyncsync pull`` processes, via the real CLI.

Set-up (config folders, datastores, the user's password, remotes) is done
in-process with the library's config functions (untimed; a CLI call costs a
second or two of start-up on a loaded 2-core machine). The server runs
as ``asyncsync serve --listen 127.0.0.1:0 [--no-tls]`` in its own process; each
pull is its own process, so its wall time, CPU and peak RSS are its own.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from asyncsync.access import set_password
from asyncsync.config.datastores import create_datastore, remove_datastore
from asyncsync.config.paths import Paths
from asyncsync.config.remotes import create_remote, remove_remote
from asyncsync.datastore.chunkstore import SyncLevel
from asyncsync.datastore.datastore import Datastore

from .procs import Run, Server, measure_with_server, run_measured

PASSWORD = "bench-password-1"
AUTH_ID = "root@pam"
_LISTEN_RE = r"listening on (https?)://127\.0\.0\.1:(\d+)(?:, fingerprint ([0-9A-Fa-f:]+))?"


def tool_env() -> dict[str, str]:
    """The environment asyncsync processes run in: this one, minus ``PYTHONDONTWRITEBYTECODE``.

    An installed asyncsync has its bytecode compiled (pip does that at install
    time); a machine that sets ``PYTHONDONTWRITEBYTECODE`` (some CI images do)
    would make every asyncsync process of the bench recompile the whole package,
    ~0.3 s of CPU per process, which no user pays. :func:`compile_package` writes
    the bytecode once before anything is timed.
    """
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def compile_package() -> None:
    """Compile asyncsync's bytecode (as ``pip install`` does), so no timed run pays for it."""
    import asyncsync

    root = Path(asyncsync.__file__).parent
    cmd = [sys.executable, "-m", "compileall", "-q", str(root)]
    subprocess.run(cmd, env=tool_env(), check=False, capture_output=True)


class Installation:
    """One config + state folder pair, set up through the library, and the CLI bound to it."""

    def __init__(self, folder: Path, exe: Sequence[str]) -> None:
        self.folder = folder
        self.paths = Paths(folder / "etc", folder / "state")
        self.paths.config.mkdir(parents=True, exist_ok=True)
        self.paths.state.mkdir(parents=True, exist_ok=True)
        self.exe = list(exe)
        self.env = {
            **tool_env(),
            "ASYNCSYNC_CONFIG_DIR": str(self.paths.config),
            "ASYNCSYNC_STATE_DIR": str(self.paths.state),
        }

    def cmd(self, *args: str) -> list[str]:
        return [*self.exe, *args]


def unavailable_reason(exe: Sequence[str]) -> str | None:
    """None if this asyncsync has ``serve`` and ``pull``; else why asyncsync is skipped."""
    try:
        import click

        from asyncsync.cli.main import cli

        ctx = click.Context(cli)
        # commands load lazily: ask the group, which imports the command's module
        missing = [c for c in ("serve", "pull") if cli.get_command(ctx, c) is None]
    except Exception as exc:  # any import failure means: not usable yet
        return f"asyncsync CLI does not load: {exc}"
    if missing:
        return f"asyncsync has no {' / '.join(missing)} command yet"
    return None


def remote_plain_http_key() -> str | None:
    """The remote.cfg key that selects plain HTTP, if the remote configuration has one."""
    try:
        from asyncsync.config.remotes import SETTABLE_KEYS
    except ImportError:
        return None
    for key in ("tls", "no-tls", "scheme", "insecure-http"):
        if key in SETTABLE_KEYS:
            return key
    return None


class AsyncsyncServer:
    """A running ``asyncsync serve`` (plain or TLS)."""

    def __init__(self, inst: Installation, *, tls: bool, log: Path, extra_args: Sequence[str] = ()) -> None:
        args = ["serve", "--listen", "127.0.0.1:0", "--no-access-log"]
        if not tls:
            args.append("--no-tls")
        args += extra_args
        label = " ".join(["asyncsync serve", *args[4:]])
        self.server = Server(label, inst.cmd(*args), log=log, env=inst.env)
        self.tls = tls
        self.port = 0
        self.fingerprint: str | None = None

    def wait_ready(self) -> AsyncsyncServer:
        try:
            m = self.server.wait_for_output(_LISTEN_RE, timeout=90)
        except BaseException:
            self.server.stop()
            raise
        self.tls = m.group(1) == "https"
        self.port = int(m.group(2))
        self.fingerprint = m.group(3)
        return self

    def stop(self) -> None:
        self.server.stop()


@dataclass(frozen=True, slots=True)
class Remote:
    name: str
    port: int
    fingerprint: str | None
    tls: bool


class Asyncsync:
    """The server installation (source datastores, the user) and the client installation (target, remotes).

    Measured: ``asyncsync serve`` and ``asyncsync pull`` processes. Not measured:
    the set-up, done in-process with the library's config functions.
    """

    def __init__(self, workdir: Path, exe: Sequence[str] | None = None) -> None:
        self.exe = list(exe) if exe else [sys.executable, "-m", "asyncsync"]
        self.server_inst = Installation(workdir / "server", self.exe)
        self.client_inst = Installation(workdir / "client", self.exe)
        self._sources: dict[str, Path] = {}
        self._targets: dict[str, Path] = {}
        self._remotes: dict[str, Remote] = {}
        self.plain_key = remote_plain_http_key()
        set_password(self.server_inst.paths, AUTH_ID, PASSWORD)

    @property
    def plain_via_cli(self) -> bool:
        """Whether a plain-HTTP pull can go through the CLI (else :mod:`bench.pullproc` runs it)."""
        return self.plain_key is not None

    def add_source(self, name: str, path: Path) -> None:
        """Register an existing datastore on the server side (once per name)."""
        if self._sources.get(name) == path:
            return
        if name in self._sources:
            remove_datastore(self.server_inst.paths, name)
        create_datastore(self.server_inst.paths, name, path, sync_level=SyncLevel.NONE)
        self._sources[name] = path

    def start_server(self, *, tls: bool, log: Path, extra_args: Sequence[str] = ()) -> AsyncsyncServer:
        """Start a server (``extra_args``: more ``serve`` options, e.g. ``--response-delay 25ms``).

        Call :meth:`AsyncsyncServer.wait_ready` before using it.
        """
        return AsyncsyncServer(self.server_inst, tls=tls, log=log, extra_args=extra_args)

    def set_remote(self, name: str, port: int, fingerprint: str | None, *, tls: bool) -> None:
        """Create or replace remote ``name`` pointing at 127.0.0.1:``port``."""
        values: dict[str, object] = {
            "host": "127.0.0.1",
            "port": port,
            "auth-id": AUTH_ID,
            "password": PASSWORD,
        }
        if fingerprint:
            values["fingerprint"] = fingerprint
        if not tls and self.plain_key is not None:
            values[self.plain_key] = {"tls": "0", "no-tls": "1", "scheme": "http"}.get(self.plain_key, "1")
        if name in self._remotes:
            remove_remote(self.client_inst.paths, name)
        create_remote(self.client_inst.paths, name, values)
        self._remotes[name] = Remote(name, port, fingerprint, tls)

    def reset_target(self, name: str, path: Path, template: Path | None = None) -> None:
        """Make ``path`` an empty datastore (or a hard-linked copy of ``template``) registered as ``name``."""
        if path.exists():
            subprocess.run(["rm", "-rf", str(path)], check=True)
        if template is not None:
            subprocess.run(["cp", "-al", str(template), str(path)], check=True)
        else:
            Datastore.create(path, name, SyncLevel.NONE)
        if self._targets.get(name) != path:
            if name in self._targets:
                remove_datastore(self.client_inst.paths, name)
            create_datastore(self.client_inst.paths, name, path, sync_level=SyncLevel.NONE)
            self._targets[name] = path

    def pull(
        self,
        remote: str,
        store: str,
        target: str,
        *,
        log: Path,
        server: AsyncsyncServer | None,
        rate_in: str | None = None,
        timeout: float = 3600.0,
    ) -> Run:
        """One measured pull of remote ``store`` into local datastore ``target``.

        ``asyncsync pull`` (the CLI) unless the remote is plain HTTP and the remote
        configuration cannot say so; then the library pull in :mod:`bench.pullproc`.
        """
        r = self._remotes[remote]
        if r.tls or self.plain_via_cli:
            cmd = self.client_inst.cmd("pull", remote, store, target, "--output-format", "json")
            if rate_in:
                cmd += ["--rate-in", rate_in]
            cwd = None
        else:
            cmd = [
                sys.executable,
                "-m",
                "bench.pullproc",
                "--port",
                str(r.port),
                "--no-tls",
                "--password",
                PASSWORD,
                "--store",
                store,
                "--target",
                str(self._targets[target]),
            ]
            if rate_in:
                cmd += ["--rate-in", rate_in]
            cwd = Path(__file__).resolve().parent.parent
        return measure_with_server(
            server.server if server else None,
            lambda: run_measured(cmd, log=log, env=self.client_inst.env, cwd=cwd, timeout=timeout),
        )


__all__ = [
    "AUTH_ID",
    "PASSWORD",
    "Asyncsync",
    "AsyncsyncServer",
    "Installation",
    "remote_plain_http_key",
    "unavailable_reason",
]
