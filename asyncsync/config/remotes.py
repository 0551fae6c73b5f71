"""``remote.cfg``: the other asyncsync (or Proxmox Backup) servers this installation pulls from.

::

    remote: pbs2
        host pbs2.example
        auth-id sync@pam
        fingerprint 64:d3:ff:...:ab:fe
        comment offsite

``port`` is written only when it differs from 8007. The secret (a user's
password or an API token's secret) never appears in ``remote.cfg``: it lives in
``remote.shadow`` (mode 0600, same section syntax, key ``password`` holding the
base64 of the UTF-8 secret so that any characters, including leading blanks,
survive the line-based syntax).

Every change goes through :func:`create_remote`, :func:`update_remote` or
:func:`remove_remote`: they validate every value (the error names the field),
take the file lock, check the digest the caller last saw, and write nothing if
anything is wrong. Both files are locked for a change (``remote.cfg`` first,
then ``remote.shadow``: one order everywhere, so two writers cannot deadlock).
The digest is that of ``remote.cfg``.

Blocking: every function here does file I/O; call it from a worker thread on an
event loop.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import AlreadyExists, Conflict, InvalidInput, InvalidName, NotFound
from ..names import AuthId, safe_id
from .paths import Paths
from .section import Section, SectionConfigFile, check_deletable

FILE_NAME = "remote.cfg"
SHADOW_FILE_NAME = "remote.shadow"
SECTION_TYPE = "remote"
DEFAULT_PORT = 8007

#: keys that ``remote.cfg`` may hold, in the order they are written
CONFIG_KEYS = ("host", "port", "auth-id", "fingerprint", "comment")
#: keys a caller may set (``password`` goes to the shadow file)
SETTABLE_KEYS = frozenset({*CONFIG_KEYS, "password"})
#: keys ``update --delete`` may clear
DELETABLE_KEYS = frozenset({"port", "fingerprint", "comment"})

_DNS_LABEL_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_FINGERPRINT_RE = re.compile(r"[0-9a-fA-F]{2}(?::[0-9a-fA-F]{2}){31}")
_HEX64_RE = re.compile(r"[0-9a-fA-F]{64}")


# ---- value checks ---------------------------------------------------------------


def check_host(value: str) -> str:
    """Check a host: a DNS name, an IPv4 address, ``[IPv6]`` or a plain IPv6 address.

    Returns the text as given (stripped); raises :class:`InvalidInput` naming ``host``.
    """
    if not isinstance(value, str):
        raise InvalidInput("must be a string", field="host")
    host = value.strip()
    if not host:
        raise InvalidInput("must not be empty", field="host")
    inner = host[1:-1] if host.startswith("[") and host.endswith("]") else None
    if inner is not None:
        try:
            ipaddress.IPv6Address(inner)
        except ValueError:
            raise InvalidInput(f"invalid IPv6 address {host!r}", field="host") from None
        return host
    if ":" in host:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise InvalidInput(
                f"invalid host {host!r} (a port goes into --port; IPv6 as [addr])", field="host"
            ) from None
        return host
    labels = host.removesuffix(".").split(".")
    if len(host) > 253 or not all(_DNS_LABEL_RE.fullmatch(label) for label in labels):
        raise InvalidInput(f"invalid host {host!r} (expected a DNS name, IPv4 or [IPv6])", field="host")
    if all(label.isdigit() for label in labels):
        # all-numeric: must be a real dotted-quad, not "300.1" or "10.0.0.999"
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise InvalidInput(f"invalid IPv4 address {host!r}", field="host") from None
    return host


def check_port(value: str | int) -> int:
    """Check a TCP port (1..65535)."""
    try:
        port = int(value)
    except (TypeError, ValueError):
        raise InvalidInput(f"invalid port {value!r}", field="port") from None
    if isinstance(value, bool) or not 1 <= port <= 65535:
        raise InvalidInput(f"port {value!r} out of range 1..65535", field="port")
    return port


def check_fingerprint(value: str) -> str:
    """Check a SHA-256 certificate fingerprint: 32 colon-separated hex bytes (or 64 hex digits).

    Returns the canonical lowercase colon-separated form.
    """
    if not isinstance(value, str):
        raise InvalidInput("must be a string", field="fingerprint")
    fp = value.strip()
    if _HEX64_RE.fullmatch(fp):
        fp = ":".join(fp[i : i + 2] for i in range(0, 64, 2))
    if not _FINGERPRINT_RE.fullmatch(fp):
        raise InvalidInput(
            f"invalid fingerprint {value!r} (expected 32 colon-separated hex bytes, 64:d3:...:fe)",
            field="fingerprint",
        )
    return fp.lower()


def check_auth_id(value: str) -> AuthId:
    """Check ``user@realm`` or ``user@realm!token``."""
    try:
        return AuthId.parse(value)
    except InvalidName as exc:
        raise InvalidInput(str(exc), field="auth-id") from None


def check_comment(value: str) -> str:
    """A one-line comment (the file syntax is line based)."""
    if not isinstance(value, str):
        raise InvalidInput("must be a string", field="comment")
    if "\n" in value or "\r" in value:
        raise InvalidInput("must not contain a line break", field="comment")
    return value.strip()


def check_password(value: str) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidInput("must not be empty", field="password")
    if "\n" in value or "\r" in value or "\0" in value:
        raise InvalidInput("must not contain a line break or NUL", field="password")
    return value


def check_name(value: str) -> str:
    try:
        return safe_id(value, "remote name")
    except InvalidName as exc:
        raise InvalidInput(str(exc), field="name") from None


def _normalize(key: str, value: Any) -> str:
    """The text stored for ``key`` (validated); raises :class:`InvalidInput` naming the key."""
    if key == "host":
        return check_host(value)
    if key == "port":
        return str(check_port(value))
    if key == "auth-id":
        return str(check_auth_id(value))
    if key == "fingerprint":
        return check_fingerprint(value)
    if key == "comment":
        return check_comment(value)
    if key == "password":
        return check_password(value)
    raise InvalidInput(f"unknown remote property {key!r}", field=key)


# ---- typed view -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RemoteConfig:
    """One remote, validated. The secret is not part of it: see :func:`remote_secret`."""

    name: str
    host: str
    auth_id: AuthId
    port: int = DEFAULT_PORT
    fingerprint: str | None = None
    comment: str = ""

    @property
    def bare_host(self) -> str:
        """The host without IPv6 brackets (what socket APIs and ``yarl.URL.build`` want)."""
        return self.host[1:-1] if self.host.startswith("[") else self.host

    @property
    def url_host(self) -> str:
        """The host as it appears in a URL (IPv6 in brackets)."""
        h = self.bare_host
        return f"[{h}]" if ":" in h else h

    @property
    def base_url(self) -> str:
        return f"https://{self.url_host}:{self.port}"

    @classmethod
    def from_section(cls, s: Section) -> RemoteConfig:
        """Build from a parsed section; raises :class:`InvalidInput` if a value is missing or bad."""
        host = s.get("host")
        auth = s.get("auth-id") or s.get("userid")
        if not host:
            raise InvalidInput(f"remote {s.id} has no host", field="host")
        if not auth:
            raise InvalidInput(f"remote {s.id} has no auth-id", field="auth-id")
        port = s.get("port")
        fp = s.get("fingerprint")
        return cls(
            name=s.id,
            host=check_host(host),
            auth_id=check_auth_id(auth),
            port=check_port(port) if port else DEFAULT_PORT,
            fingerprint=check_fingerprint(fp) if fp else None,
            comment=s.get("comment", "") or "",
        )

    def to_json(self) -> dict[str, Any]:
        """The public view (never the secret)."""
        return {
            "name": self.name,
            "host": self.host,
            "port": self.port,
            "auth-id": str(self.auth_id),
            "fingerprint": self.fingerprint,
            "comment": self.comment,
        }


# ---- files ----------------------------------------------------------------------


def config_file(paths: Paths) -> SectionConfigFile:
    return SectionConfigFile(paths.config_file(FILE_NAME), frozenset({SECTION_TYPE}))


def shadow_file(paths: Paths) -> SectionConfigFile:
    return SectionConfigFile(paths.config_file(SHADOW_FILE_NAME), frozenset({SECTION_TYPE}), mode=0o600)


def _encode_secret(secret: str) -> str:
    return base64.b64encode(secret.encode()).decode()


def _decode_secret(name: str, text: str) -> str:
    try:
        return base64.b64decode(text.encode(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        raise InvalidInput(f"the stored secret of remote {name!r} is malformed", field="password") from None


def _ordered(values: Mapping[str, str | list[str]]) -> dict[str, str | list[str]]:
    return {k: values[k] for k in CONFIG_KEYS if k in values}


# ---- reading --------------------------------------------------------------------


def list_remotes(paths: Paths) -> tuple[list[RemoteConfig], str]:
    """All remotes (sorted by name) and the digest of ``remote.cfg``."""
    data = config_file(paths).read()
    items = [RemoteConfig.from_section(s) for s in data.sections.values()]
    return sorted(items, key=lambda r: r.name), data.digest


def get_remote_with_digest(paths: Paths, name: str) -> tuple[RemoteConfig, str]:
    check_name(name)
    data = config_file(paths).read()
    return RemoteConfig.from_section(data.require(name, "remote")), data.digest


def get_remote(paths: Paths, name: str) -> RemoteConfig:
    """The remote ``name``; :class:`NotFound` if it is not configured."""
    return get_remote_with_digest(paths, name)[0]


def remote_exists(paths: Paths, name: str) -> bool:
    return config_file(paths).read().get(name) is not None


def remote_secret(paths: Paths, name: str) -> str:
    """The password or token secret of ``name`` (from the 0600 shadow file)."""
    check_name(name)
    s = shadow_file(paths).read().get(name)
    text = s.get("password") if s is not None else None
    if not text:
        raise NotFound(f"no secret is stored for remote {name!r}")
    return _decode_secret(name, text)


# ---- changing -------------------------------------------------------------------

#: called inside the lock with (old config or None, new config or None) before anything is
#: written; raising aborts the change (used by the API for permission checks)
Authorize = Callable[[RemoteConfig | None, RemoteConfig | None], None]


def _check_keys(values: Mapping[str, Any]) -> None:
    for key in values:
        if key not in SETTABLE_KEYS:
            raise InvalidInput(f"unknown remote property {key!r}", field=key)


def create_remote(
    paths: Paths,
    name: str,
    values: Mapping[str, Any],
    *,
    authorize: Authorize | None = None,
) -> RemoteConfig:
    """Add remote ``name``. ``values`` uses the file's keys: ``host``, ``auth-id`` and
    ``password`` are required; ``port``, ``fingerprint``, ``comment`` optional.

    Raises :class:`InvalidInput` (naming the field), :class:`AlreadyExists`.
    """
    check_name(name)
    _check_keys(values)
    for required in ("host", "auth-id", "password"):
        if values.get(required) in (None, ""):
            raise InvalidInput("is required", field=required)
    stored = {k: _normalize(k, v) for k, v in values.items() if v is not None}
    secret = stored.pop("password")
    if stored.get("port") == str(DEFAULT_PORT):
        del stored["port"]
    if stored.get("comment") == "":
        del stored["comment"]
    section = Section(SECTION_TYPE, name, _ordered(stored))
    cfg = RemoteConfig.from_section(section)
    with config_file(paths).modify() as data:
        if name in data.sections:
            raise AlreadyExists(f"remote {name!r} already exists")
        if authorize is not None:
            authorize(None, cfg)
        data.sections[name] = section
        with shadow_file(paths).modify() as shadow:
            shadow.sections[name] = Section(SECTION_TYPE, name, {"password": _encode_secret(secret)})
    return cfg


def update_remote(
    paths: Paths,
    name: str,
    values: Mapping[str, Any],
    *,
    delete: Iterable[str] = (),
    digest: str | None = None,
    authorize: Authorize | None = None,
) -> RemoteConfig:
    """Change remote ``name``: clear the keys in ``delete``, then set ``values``.

    ``digest`` (if given) must be the current digest of ``remote.cfg``, else
    :class:`Conflict`. Nothing is written if any value is invalid.
    """
    check_name(name)
    _check_keys(values)
    to_delete = check_deletable(delete, sorted(DELETABLE_KEYS))
    changes = {k: _normalize(k, v) for k, v in values.items() if v is not None}
    secret = changes.pop("password", None)
    with config_file(paths).modify(digest) as data:
        s = data.require(name, "remote")
        old = RemoteConfig.from_section(s)
        new_values = dict(s.values)
        new_values.pop("userid", None)  # the older key, rewritten as auth-id
        new_values["auth-id"] = str(old.auth_id)
        for key in to_delete:
            new_values.pop(key, None)
        new_values.update(changes)
        if new_values.get("port") == str(DEFAULT_PORT):
            del new_values["port"]
        if new_values.get("comment") == "":
            del new_values["comment"]
        section = Section(SECTION_TYPE, name, _ordered(new_values))
        cfg = RemoteConfig.from_section(section)
        if authorize is not None:
            authorize(old, cfg)
        data.sections[name] = section
        if secret is not None:
            with shadow_file(paths).modify() as shadow:
                shadow.sections[name] = Section(SECTION_TYPE, name, {"password": _encode_secret(secret)})
    return cfg


def remove_remote(
    paths: Paths,
    name: str,
    *,
    digest: str | None = None,
    authorize: Authorize | None = None,
) -> RemoteConfig:
    """Remove remote ``name`` and its secret.

    Refused with :class:`Conflict` while a sync job uses the remote (the job
    would fail at its next run; remove or retarget the job first).
    """
    check_name(name)
    # read here (not imported at module level): syncjobs imports this module
    from .syncjobs import jobs_using_remote

    with config_file(paths).modify(digest) as data:
        old = RemoteConfig.from_section(data.require(name, "remote"))
        if authorize is not None:
            authorize(old, None)
        # sync-job create/update hold remote.cfg's lock while they check that their remote
        # exists, so no job can start using this remote between this check and the write
        users = jobs_using_remote(paths, name)
        if users:
            raise Conflict(f"remote {name!r} is used by sync job(s) {', '.join(users)}")
        del data.sections[name]
        with shadow_file(paths).modify() as shadow:
            shadow.sections.pop(name, None)
    return old


__all__ = [
    "DEFAULT_PORT",
    "DELETABLE_KEYS",
    "FILE_NAME",
    "SHADOW_FILE_NAME",
    "Authorize",
    "RemoteConfig",
    "check_auth_id",
    "check_fingerprint",
    "check_host",
    "check_port",
    "create_remote",
    "get_remote",
    "get_remote_with_digest",
    "list_remotes",
    "remote_exists",
    "remote_secret",
    "remove_remote",
    "update_remote",
]
