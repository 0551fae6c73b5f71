"""Shared test fixtures.

An autouse fixture fails any test in which asyncsync code blocks a running
event loop (blockbuster). Fixtures that need the file system do their set-up
before the loop runs, or in a thread.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from blockbuster import BlockBuster, blockbuster_ctx

from asyncsync.config.paths import Paths
from asyncsync.datastore.chunkstore import SyncLevel
from asyncsync.datastore.datastore import Datastore


@pytest.fixture(autouse=True)
def blockbuster() -> Iterator[BlockBuster]:
    with blockbuster_ctx("asyncsync") as bb:
        yield bb


@pytest.fixture
def paths(tmp_path: Path) -> Paths:
    """A private config and state folder."""
    p = Paths(tmp_path / "etc", tmp_path / "state")
    p.config.mkdir()
    p.state.mkdir()
    return p


@pytest.fixture
def cli_env(paths: Paths) -> dict[str, str]:
    """Environment for running the CLI in a subprocess against ``paths``."""
    env = dict(os.environ)
    env["ASYNCSYNC_CONFIG_DIR"] = str(paths.config)
    env["ASYNCSYNC_STATE_DIR"] = str(paths.state)
    env.pop("TZ", None)
    return env


@pytest.fixture
def store(tmp_path: Path) -> Datastore:
    """An empty datastore with no fsync (tests do not need durability)."""
    return Datastore.create(tmp_path / "store", "store", SyncLevel.NONE)
