"""Reusable helpers and fixtures to run a real asyncsync server in tests.

Import what you need in a test module (fixtures must be imported by name so
pytest finds them)::

    from serverutil import Installation, remote, remote_server, write_snapshot  # noqa: F401

Building blocks (plain blocking functions: call them from sync fixtures or in
a worker thread, never directly on a running event loop):

* :func:`add_datastore` registers a datastore in ``datastore.cfg`` (sync-level none);
* :func:`write_snapshot` writes one committed snapshot with real chunks, indexes
  (``.didx``/``.fidx``), blobs and a manifest, and returns its digests;
* :func:`add_user`, :func:`add_token`, :func:`grant` manage users, API tokens
  and ACL entries through :mod:`asyncsync.access`.

Servers:

* :func:`running_server` (async context manager): the server in the test's
  event loop, on ``127.0.0.1`` with real TLS on an ephemeral port; yields a
  :class:`RunningServer` whose :meth:`~RunningServer.client` connects a
  pinned :class:`~asyncsync.client.Client`.
* :class:`SubprocessServer`: ``python -m asyncsync serve --listen 127.0.0.1:0``
  as a child process; reads the "listening on ..., fingerprint ..." line for
  port and fingerprint; :meth:`~SubprocessServer.stop` sends SIGTERM and waits.

Fixtures:

* ``remote`` -> :class:`Installation`: a config folder (its own, not the
  ``paths`` fixture's) with datastore ``store`` holding :data:`STANDARD_SNAPSHOTS`
  (root namespace and namespace ``a``), an admin user with password, and a
  read-only API token ``sync@pbs!pull`` (DatastoreReader on ``/datastore/store``).
* ``remote_server`` -> :class:`RunningServer` serving ``remote`` in-process.
* ``remote_subprocess`` -> :class:`SubprocessServer` serving ``remote``.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from asyncsync import access
from asyncsync.client import Client
from asyncsync.config.datastores import create_datastore
from asyncsync.config.paths import Paths
from asyncsync.datastore.chunkstore import SyncLevel
from asyncsync.datastore.datastore import Datastore
from asyncsync.datastore.index import DynamicIndex, FixedIndex
from asyncsync.datastore.manifest import Manifest
from asyncsync.names import AuthId, Namespace, SnapshotId
from asyncsync.server.app import ServerOptions, serve
from asyncsync.server.readers import ReaderLimits
from asyncsync.sync.pull import PullOptions, PullReport, pull
from asyncsync.sync.source import HttpSource

HOST = "127.0.0.1"
ADMIN = AuthId.parse("admin@pbs")
ADMIN_PASSWORD = "admin-password-1"
SYNC_USER = AuthId.parse("sync@pbs")
SYNC_TOKEN_NAME = "pull"

#: options for test servers: re-read access files on every request, quick shutdown, no access log noise
TEST_OPTIONS = ServerOptions(
    access_reload_interval=0.0,
    shutdown_timeout=2.0,
    access_log=False,
    readers=ReaderLimits(max_per_user=64, idle_timeout=600.0),
)


# ---- building installations (blocking) -------------------------------------------------------


def make_paths(base: Path) -> Paths:
    """A fresh config + state folder under ``base``."""
    p = Paths(base / "etc", base / "state")
    p.config.mkdir(parents=True, exist_ok=True)
    p.state.mkdir(parents=True, exist_ok=True)
    return p


def add_datastore(paths: Paths, name: str, root: Path) -> Datastore:
    """Create and register datastore ``name`` at ``root`` (sync-level none: tests need no fsync)."""
    cfg = create_datastore(paths, name, root, sync_level=SyncLevel.NONE)
    return cfg.open()


def add_user(paths: Paths, userid: AuthId | str, password: str | None = None) -> AuthId:
    uid = AuthId.parse(str(userid))
    access.create_user(paths, uid, password)
    return uid


def add_token(paths: Paths, userid: AuthId | str, name: str) -> tuple[AuthId, str]:
    """Make API token ``userid!name``; returns (token id, secret)."""
    return access.generate_token(paths, userid, name)


def grant(paths: Paths, path: str, role: str, auth_id: AuthId | str, *, propagate: bool = True) -> None:
    access.acl_update(paths, path, role, auth_id, propagate=propagate)


@dataclass(frozen=True)
class WrittenSnapshot:
    """A snapshot written by :func:`write_snapshot`."""

    ns: Namespace
    snapshot: SnapshotId
    manifest: Manifest
    #: archive name -> the chunk digests of its index, in index order
    digests: dict[str, list[str]]
    #: archive name -> original content
    contents: dict[str, bytes]

    @property
    def all_digests(self) -> list[str]:
        """Every distinct digest of the snapshot, in first-seen order."""
        seen: dict[str, None] = {}
        for ds in self.digests.values():
            for d in ds:
                seen.setdefault(d, None)
        return list(seen)


def _chunks(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)] or []


def write_snapshot(
    store: Datastore,
    ns: Namespace | str,
    snap: SnapshotId | str,
    *,
    owner: AuthId | str,
    archives: Mapping[str, bytes] | None = None,
    chunk_size: int = 4096,
    unprotected: dict[str, Any] | None = None,
    protected: bool = False,
) -> WrittenSnapshot:
    """Write one committed snapshot (namespace and group created as needed).

    ``archives`` maps names to contents: ``*.didx`` and ``*.fidx`` are cut into
    ``chunk_size`` chunks stored in the chunk store, ``*.blob`` are stored as
    blobs. Default: a small ``root.didx`` and ``qemu-server.conf.blob`` whose
    contents depend on the snapshot name (so snapshots share few chunks).
    """
    ns = ns if isinstance(ns, Namespace) else Namespace.parse(ns)
    snap = snap if isinstance(snap, SnapshotId) else SnapshotId.parse(snap)
    owner = owner if isinstance(owner, AuthId) else AuthId.parse(owner)
    if archives is None:
        seed = str(snap).encode()
        archives = {
            "root.didx": b"".join(seed + i.to_bytes(4, "little") * 40 for i in range(300)),
            "qemu-server.conf.blob": b"config of " + seed,
        }
    store.create_namespace(ns, parents=True)
    store.ensure_group(ns, snap.group, owner)
    digests: dict[str, list[str]] = {}
    with store.begin_snapshot(ns, snap) as w:
        for name, data in archives.items():
            if name.endswith(".blob"):
                w.add_blob(name, data)
                continue
            pieces = _chunks(data, chunk_size)
            names = [store.chunks.insert_data(p)[0] for p in pieces]
            digests[name] = names
            raw = tuple(bytes.fromhex(d) for d in names)
            if name.endswith(".fidx"):
                w.add_index(name, FixedIndex(raw, len(data), chunk_size))
            else:
                ends, pos = [], 0
                for p in pieces:
                    pos += len(p)
                    ends.append(pos)
                w.add_index(name, DynamicIndex(tuple(zip(ends, raw, strict=True))))
        manifest = w.commit(unprotected)
    if protected:
        store.set_protected(ns, snap, True)
    return WrittenSnapshot(ns, snap, manifest, digests, dict(archives))


# ---- the standard remote ---------------------------------------------------------------------

#: (namespace, snapshot, owner) of the ``remote`` fixture's datastore ``store``
STANDARD_SNAPSHOTS: tuple[tuple[str, str, str], ...] = (
    ("", "vm/100/2026-11-20T08:00:00Z", "admin@pbs"),
    ("", "vm/100/2026-11-21T08:00:00Z", "admin@pbs"),
    ("", "ct/200/2026-11-20T09:00:00Z", "backup1@pbs"),
    ("", "host/web/2026-11-20T10:00:00Z", "backup1@pbs!tok"),
    ("a", "vm/300/2026-11-22T08:00:00Z", "admin@pbs"),
    ("a/b", "host/db/2026-11-22T09:00:00Z", "backup1@pbs"),
)


@dataclass
class Installation:
    """A config folder with a datastore, users, tokens and ACLs (see the module docstring)."""

    paths: Paths
    store: Datastore
    store_name: str
    #: (namespace, snapshot) -> what was written
    snapshots: dict[tuple[str, str], WrittenSnapshot]
    admin: AuthId = ADMIN
    admin_password: str = ADMIN_PASSWORD
    sync_token: AuthId = field(
        default_factory=lambda: AuthId(SYNC_USER.user, SYNC_USER.realm, SYNC_TOKEN_NAME)
    )
    sync_secret: str = ""

    def env(self) -> dict[str, str]:
        """Environment for ``python -m asyncsync`` against this installation."""
        env = dict(os.environ)
        env["ASYNCSYNC_CONFIG_DIR"] = str(self.paths.config)
        env["ASYNCSYNC_STATE_DIR"] = str(self.paths.state)
        env.pop("TZ", None)
        return env


def make_installation(base: Path, *, store_name: str = "store") -> Installation:
    """Build the standard installation under ``base`` (blocking; ~0.3 s for password hashing)."""
    paths = make_paths(base)
    store = add_datastore(paths, store_name, base / "stores" / store_name)
    snaps: dict[tuple[str, str], WrittenSnapshot] = {}
    for ns, snap, owner in STANDARD_SNAPSHOTS:
        snaps[(ns, snap)] = write_snapshot(store, ns, snap, owner=owner)
    add_user(paths, ADMIN, ADMIN_PASSWORD)
    grant(paths, "/", "Admin", ADMIN)
    add_user(paths, SYNC_USER)
    tokenid, secret = add_token(paths, SYNC_USER, SYNC_TOKEN_NAME)
    grant(paths, f"/datastore/{store_name}", "DatastoreReader", SYNC_USER)
    grant(paths, f"/datastore/{store_name}", "DatastoreReader", tokenid)
    return Installation(paths, store, store_name, snaps, sync_token=tokenid, sync_secret=secret)


# ---- in-process server -----------------------------------------------------------------------


@dataclass(frozen=True)
class RunningServer:
    """A server listening on ``host:port``; :meth:`client` connects a pinned client."""

    paths: Paths
    host: str
    port: int
    tls: bool
    fingerprint: str | None

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.port}"

    async def client(self, auth_id: AuthId | str, secret: str, **kwargs: Any) -> Client:
        """``Client.connect`` to this server, pinned to its fingerprint (close it!)."""
        kwargs.setdefault("fingerprint", self.fingerprint)
        kwargs.setdefault("tls", self.tls)
        kwargs.setdefault("retries", 0)
        return await Client.connect(self.host, self.port, AuthId.parse(str(auth_id)), secret, **kwargs)


@contextlib.asynccontextmanager
async def running_server(
    paths: Paths, *, tls: bool = True, options: ServerOptions = TEST_OPTIONS, **kwargs: Any
) -> AsyncIterator[RunningServer]:
    """Serve ``paths`` in the running event loop on 127.0.0.1 (ephemeral port, real TLS)."""
    async with serve(paths, HOST, 0, tls=tls, options=options, **kwargs) as info:
        yield RunningServer(paths, info.host, info.port, info.tls, info.fingerprint)


# ---- subprocess server -----------------------------------------------------------------------

_READY_RE = re.compile(r"listening on (https?)://(\S+?):(\d+)(?:, fingerprint ([0-9a-f:]{95}))?")


class SubprocessServer:
    """``python -m asyncsync serve`` in a child process (use as a context manager)."""

    def __init__(self, env: Mapping[str, str], *args: str, startup_timeout: float = 30.0) -> None:
        cmd = [
            sys.executable,
            "-m",
            "asyncsync",
            "serve",
            "--listen",
            f"{HOST}:0",
            "--shutdown-timeout",
            "2",
            *args,
        ]
        # stderr (log, access log) goes to a file: a pipe nobody reads would fill up and stall the server
        self._stderr_file = tempfile.TemporaryFile()  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            cmd, env=dict(env), stdout=subprocess.PIPE, stderr=self._stderr_file, text=True
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()  # blocks until ready (or exit); the test timeout bounds it
        m = _READY_RE.search(line)
        if not m:
            self.proc.kill()
            self.proc.communicate(timeout=startup_timeout)
            raise RuntimeError(f"server did not start: {line!r} {self._read_stderr()}")
        self.tls = m.group(1) == "https"
        self.host = m.group(2)
        self.port = int(m.group(3))
        self.fingerprint = m.group(4)
        self.stderr = ""

    def _read_stderr(self) -> str:
        self._stderr_file.seek(0)
        return self._stderr_file.read().decode(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        """Send ``sig``, wait for the exit, keep stderr in :attr:`stderr`; returns the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.communicate()
            raise
        finally:
            self.stderr = self._read_stderr()
            self._stderr_file.close()
        return self.proc.returncode

    def __enter__(self) -> SubprocessServer:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.stop()


# ---- fixtures -------------------------------------------------------------------------------


async def http_source(srv: RunningServer, inst: Installation, **kw: Any) -> HttpSource:
    """A pull source on ``inst``'s store through ``srv``, logged in with its sync token, pinned."""
    return await HttpSource.connect(
        srv.host,
        srv.port,
        inst.sync_token,
        inst.sync_secret,
        inst.store_name,
        fingerprint=srv.fingerprint,
        name="pbs2",
        **kw,
    )


async def http_pull(srv: RunningServer, inst: Installation, dst: Datastore, **kw: Any) -> PullReport:
    """One pull of ``inst``'s store through ``srv`` into ``dst``; ``kw`` are :class:`PullOptions`."""
    source = await http_source(srv, inst)
    try:
        return await pull(source, dst, PullOptions(**kw))
    finally:
        await source.aclose()


@pytest.fixture
def remote(tmp_path: Path) -> Installation:
    """The standard installation (see the module docstring), in its own folder."""
    return make_installation(tmp_path / "remote")


@pytest.fixture
async def remote_server(remote: Installation) -> AsyncIterator[RunningServer]:
    """The server of ``remote``, in-process on 127.0.0.1 with TLS."""
    async with running_server(remote.paths) as srv:
        yield srv


@pytest.fixture
def remote_subprocess(remote: Installation) -> Iterator[SubprocessServer]:
    """The server of ``remote`` as ``python -m asyncsync serve`` (stopped with SIGTERM after the test)."""
    with SubprocessServer(remote.env()) as srv:
        yield srv


__all__ = [
    "ADMIN",
    "ADMIN_PASSWORD",
    "HOST",
    "STANDARD_SNAPSHOTS",
    "SYNC_USER",
    "TEST_OPTIONS",
    "Installation",
    "RunningServer",
    "SubprocessServer",
    "WrittenSnapshot",
    "add_datastore",
    "add_token",
    "add_user",
    "grant",
    "make_installation",
    "make_paths",
    "remote",
    "remote_server",
    "remote_subprocess",
    "running_server",
    "write_snapshot",
]
