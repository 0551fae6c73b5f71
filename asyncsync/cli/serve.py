"""Commands: serve (not yet written)."""

from __future__ import annotations

import click

commands: list[click.Command] = []
