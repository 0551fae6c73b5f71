"""The section-config file syntax that Proxmox administrators know, read and written once.

::

    remote: pbs2
        host pbs2.example
        auth-id sync@pam

A file is a sequence of sections separated by blank lines. A section starts
with ``TYPE: ID`` and holds indented ``key value`` lines; a key given several
times (e.g. ``group-filter``) becomes a list. ``#`` starts a comment line.

Writes take an exclusive lock (``.<name>.lck`` beside the file) and replace
the file atomically (temp file, fsync, rename). :meth:`SectionConfigFile.modify`
accepts the digest the user last saw and refuses with :class:`Conflict` if the
file changed since. The digest is the SHA-256 of the file's bytes (of the empty
string if the file does not exist).

Blocking: callers on an event loop use a worker thread.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..datastore.chunkstore import tmp_name
from ..errors import Conflict, InvalidInput, NotFound, StorageError

Value = str | list[str]
_HEADER_RE = re.compile(r"([a-z][a-z0-9-]*):\s+(\S+)\s*")
_KEY_RE = re.compile(r"[a-z][a-z0-9-]*")


@dataclass(slots=True)
class Section:
    """One ``TYPE: ID`` block with its key/value pairs (values are strings or lists)."""

    type: str
    id: str
    values: dict[str, Value] = field(default_factory=dict)

    def get(self, key: str, default: str | None = None) -> str | None:
        v = self.values.get(key)
        if isinstance(v, list):
            return v[-1] if v else default
        return v if v is not None else default

    def get_list(self, key: str) -> list[str]:
        v = self.values.get(key)
        if v is None:
            return []
        return list(v) if isinstance(v, list) else [v]


@dataclass(slots=True)
class SectionData:
    """Parsed content of one file plus the digest of the bytes it came from."""

    sections: dict[str, Section]
    digest: str

    def get(self, id: str) -> Section | None:
        return self.sections.get(id)

    def require(self, id: str, what: str) -> Section:
        """Section ``id``; :class:`NotFound` ("``what`` 'id' is not configured") if there is none."""
        s = self.sections.get(id)
        if s is None:
            raise NotFound(f"{what} {id!r} is not configured")
        return s


def check_deletable(keys: Iterable[str], deletable: Sequence[str]) -> list[str]:
    """``keys`` as a list, or :class:`InvalidInput` (field ``delete``) naming the first key not in
    ``deletable`` (listed in the given order) -- the ``update --delete`` check of every config file."""
    out = list(keys)
    for key in out:
        if key not in deletable:
            raise InvalidInput(f"cannot delete {key!r} (deletable: {', '.join(deletable)})", field="delete")
    return out


def parse(text: str, *, source: str = "config", types: frozenset[str] | None = None) -> dict[str, Section]:
    """Parse section-config text; raises :class:`InvalidInput` with a line number on errors."""
    sections: dict[str, Section] = {}
    current: Section | None = None
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.rstrip()
        if not line.strip() or line.lstrip().startswith("#"):
            if not line.strip():
                current = None
            continue
        if line[0] in " \t":
            if current is None:
                raise InvalidInput(f"{source}:{lineno}: property outside of a section")
            key, _, value = line.strip().partition(" ")
            if not _KEY_RE.fullmatch(key):
                raise InvalidInput(f"{source}:{lineno}: invalid key {key!r}")
            value = value.strip()
            old = current.values.get(key)
            if old is None:
                current.values[key] = value
            elif isinstance(old, list):
                old.append(value)
            else:
                current.values[key] = [old, value]
            continue
        m = _HEADER_RE.fullmatch(line)
        if not m:
            raise InvalidInput(f"{source}:{lineno}: expected 'TYPE: ID', got {line!r}")
        stype, sid = m.group(1), m.group(2)
        if types is not None and stype not in types:
            raise InvalidInput(f"{source}:{lineno}: unknown section type {stype!r}")
        if sid in sections:
            raise InvalidInput(f"{source}:{lineno}: duplicate id {sid!r}")
        current = Section(stype, sid)
        sections[sid] = current
    return sections


def render(sections: dict[str, Section]) -> str:
    """The text of ``sections``; values must not contain newlines."""
    out: list[str] = []
    for s in sections.values():
        out.append(f"{s.type}: {s.id}")
        for key, value in s.values.items():
            for v in value if isinstance(value, list) else [value]:
                if "\n" in v or "\r" in v:
                    raise InvalidInput(f"value of {key} must not contain a line break", field=key)
                out.append(f"\t{key} {v}".rstrip())
        out.append("")
    return "\n".join(out)


def digest_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class SectionConfigFile:
    """One config file: read, and locked read-modify-write with digest check."""

    def __init__(self, path: Path, types: frozenset[str], *, mode: int = 0o644) -> None:
        self.path = path
        self.types = types
        self.mode = mode

    def __repr__(self) -> str:
        return f"SectionConfigFile({str(self.path)!r})"

    def read(self) -> SectionData:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            data = b""
        except OSError as exc:
            raise StorageError(f"cannot read {self.path}: {exc.strerror}") from exc
        try:
            text = data.decode()
        except UnicodeDecodeError:
            raise InvalidInput(f"{self.path} is not valid UTF-8") from None
        return SectionData(parse(text, source=str(self.path), types=self.types), digest_of(data))

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path.parent / f".{self.path.name}.lck", os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise StorageError(f"cannot lock {self.path}: {exc.strerror or exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def modify(self, expected_digest: str | None = None) -> Iterator[SectionData]:
        """Lock, read, let the caller change the sections, then write atomically.

        If the block raises, nothing is written. ``expected_digest`` (if given)
        must equal the digest of the current file.
        """
        with self.lock():
            data = self.read()
            if expected_digest is not None and expected_digest != data.digest:
                raise Conflict(
                    f"{self.path.name} was changed by someone else (digest mismatch); reload and retry"
                )
            yield data
            self.write(data.sections)

    def write(self, sections: dict[str, Section]) -> None:
        """Replace the file atomically (the caller holds the lock)."""
        payload = render(sections).encode()
        tmp = self.path.with_name(tmp_name(self.path.name))
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, self.mode)
            try:
                os.fchmod(fd, self.mode)
                os.write(fd, payload)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise StorageError(f"cannot write {self.path}: {exc.strerror}") from exc


__all__ = [
    "Section",
    "SectionConfigFile",
    "SectionData",
    "Value",
    "check_deletable",
    "digest_of",
    "parse",
    "render",
]
