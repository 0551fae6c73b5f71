"""Where configuration and state live.

Config folder: explicit value, else ``ASYNCSYNC_CONFIG_DIR``, else ``/etc/asyncsync``
for root and ``~/.config/asyncsync`` for others. State folder: explicit value,
else ``ASYNCSYNC_STATE_DIR``, else ``/var/lib/asyncsync`` for root and
``~/.local/state/asyncsync`` for others.

This module (and the rest of :mod:`asyncsync.config`) is the only place that
reads environment variables; everything below receives plain values.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


def config_dir(explicit: str | os.PathLike[str] | None = None) -> Path:
    if explicit:
        return Path(explicit)
    env = os.environ.get("ASYNCSYNC_CONFIG_DIR")
    if env:
        return Path(env)
    if os.geteuid() == 0:
        return Path("/etc/asyncsync")
    return Path.home() / ".config" / "asyncsync"


def state_dir(explicit: str | os.PathLike[str] | None = None) -> Path:
    if explicit:
        return Path(explicit)
    env = os.environ.get("ASYNCSYNC_STATE_DIR")
    if env:
        return Path(env)
    if os.geteuid() == 0:
        return Path("/var/lib/asyncsync")
    return Path.home() / ".local" / "state" / "asyncsync"


@dataclass(frozen=True, slots=True)
class Paths:
    """The two folders of one installation."""

    config: Path
    state: Path

    @classmethod
    def resolve(
        cls,
        config: str | os.PathLike[str] | None = None,
        state: str | os.PathLike[str] | None = None,
    ) -> Paths:
        return cls(config_dir(config), state_dir(state))

    def config_file(self, name: str) -> Path:
        return self.config / name


__all__ = ["Paths", "config_dir", "state_dir"]
