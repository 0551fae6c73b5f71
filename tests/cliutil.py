"""Helpers for tests that run the real CLI in a subprocess and read its tables."""

from __future__ import annotations

import subprocess
import sys


def run(env: dict[str, str], *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    """``python -m asyncsync ARGS`` with ``env``; with ``ok`` the exit status must be 0."""
    proc = subprocess.run(
        [sys.executable, "-m", "asyncsync", *args], env=env, capture_output=True, text=True, timeout=60
    )
    if ok:
        assert proc.returncode == 0, proc.stderr
    return proc


def table_rows(text: str) -> list[list[str]]:
    """The cells of every body/header row of a box-drawing table."""
    return [
        [c.strip() for c in line.strip().strip("│").split("│")]
        for line in text.splitlines()
        if line.startswith("│")
    ]
