"""Certificate fingerprints: SHA-256 of the DER certificate as ``aa:bb:...`` (as Proxmox shows it).

Kept apart from :mod:`asyncsync.tls` (which loads ``cryptography`` to make and
read certificates) so that a client that only pins a fingerprint does not pay
for that import. :func:`parse_fingerprint` also accepts upper case and the form
without colons, so an administrator may paste either.
"""

from __future__ import annotations

import hashlib
import re

from .errors import InvalidInput

_FP_RE = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){31}|[0-9a-f]{64}")


def format_fingerprint(raw: bytes) -> str:
    """32 raw bytes as ``aa:bb:...`` (lowercase)."""
    if len(raw) != 32:
        raise InvalidInput(f"a SHA-256 fingerprint has 32 bytes, not {len(raw)}", field="fingerprint")
    return ":".join(f"{b:02x}" for b in raw)


def parse_fingerprint(value: str) -> bytes:
    """Parse ``aa:bb:...`` (32 bytes, any case, colons optional) to raw bytes.

    Raises :class:`InvalidInput` naming the field ``fingerprint``.
    """
    v = value.strip().lower() if isinstance(value, str) else ""
    if not _FP_RE.fullmatch(v):
        raise InvalidInput(
            f"invalid SHA-256 fingerprint {value!r} (expected 32 colon-separated hex bytes)",
            field="fingerprint",
        )
    return bytes.fromhex(v.replace(":", ""))


def normalize_fingerprint(value: str) -> str:
    """The canonical form (lowercase, with colons) of a fingerprint string."""
    return format_fingerprint(parse_fingerprint(value))


def fingerprint_of_der(der: bytes) -> str:
    """The fingerprint of a DER-encoded certificate."""
    return format_fingerprint(hashlib.sha256(der).digest())


__all__ = ["fingerprint_of_der", "format_fingerprint", "normalize_fingerprint", "parse_fingerprint"]
