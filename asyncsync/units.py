"""Sizes and rates: ``20MiB``, ``1.5GiB``, ``500KiB``, ``64K``, ``1000`` (bytes); durations: ``25ms``."""

from __future__ import annotations

import re

from .errors import InvalidInput

_UNITS: dict[str, int] = {
    "": 1,
    "b": 1,
    "k": 1024,
    "kb": 1000,
    "kib": 1024,
    "m": 1024**2,
    "mb": 1000**2,
    "mib": 1024**2,
    "g": 1024**3,
    "gb": 1000**3,
    "gib": 1024**3,
    "t": 1024**4,
    "tb": 1000**4,
    "tib": 1024**4,
}
_SIZE_RE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*(?:/s)?\s*")


def parse_size(value: str | int, *, field: str = "size") -> int:
    """Parse a byte size; ``K``/``KiB`` are powers of 1024, ``KB`` of 1000.

    Raises :class:`InvalidInput` naming ``field`` for negative or malformed values.
    """
    if isinstance(value, int):
        if value < 0:
            raise InvalidInput(f"must not be negative: {value}", field=field)
        return value
    m = _SIZE_RE.fullmatch(value)
    if not m:
        raise InvalidInput(f"invalid size {value!r} (e.g. 20MiB, 1.5GiB, 500KiB)", field=field)
    unit = _UNITS.get(m.group(2).lower())
    if unit is None:
        raise InvalidInput(f"unknown unit {m.group(2)!r} in {value!r}", field=field)
    return int(float(m.group(1)) * unit)


_DURATION_UNITS: dict[str, float] = {
    "": 1.0,
    "ms": 0.001,
    "s": 1.0,
    "m": 60.0,
    "min": 60.0,
    "h": 3600.0,
    "d": 86400.0,
}
# one term: a number and an optional unit; "ms" and "min" before "m" so that "25ms" is not "25m" + "s"
_DURATION_TERM_RE = re.compile(r"(\d+(?:\.\d+)?)(ms|min|s|m|h|d)?", re.IGNORECASE)


def parse_duration(value: str | float, *, field: str = "duration") -> float:
    """Parse a duration into seconds: ``25ms``, ``1.5s``, ``90`` (seconds), ``1m30s``, ``2h``, ``1d``.

    Terms add up (``1m30s`` is 90 s); units are ``ms``, ``s``, ``m``/``min``, ``h``, ``d``
    (case-insensitive); a bare number is seconds. Raises :class:`InvalidInput` naming
    ``field`` for empty, malformed or negative values.
    """
    if isinstance(value, int | float):
        if value < 0 or value != value:  # value != value: NaN
            raise InvalidInput(f"must be a non-negative number of seconds: {value}", field=field)
        return float(value)
    text = value.strip().replace(" ", "")
    if not text:
        raise InvalidInput(f"empty duration {value!r} (e.g. 25ms, 1.5s, 1m30s)", field=field)
    pos, total = 0, 0.0
    while pos < len(text):
        m = _DURATION_TERM_RE.match(text, pos)
        if not m:
            raise InvalidInput(f"invalid duration {value!r} (e.g. 25ms, 1.5s, 1m30s)", field=field)
        total += float(m.group(1)) * _DURATION_UNITS[(m.group(2) or "").lower()]
        pos = m.end()
    return total


def format_size(n: float) -> str:
    """Human-readable binary size: ``1.5 GiB``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def format_rate(bytes_per_second: float) -> str:
    """``410.0 MiB/s``."""
    return f"{format_size(bytes_per_second)}/s"


__all__ = ["format_rate", "format_size", "parse_duration", "parse_size"]
