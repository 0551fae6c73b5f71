"""Privileges, roles and ACL paths (the vocabulary of access control).

The role table follows Proxmox Backup Server. ACL paths form a small tree::

    /
    /access
    /datastore
    /datastore/{store}
    /datastore/{store}/{ns...}        (at most 7 namespace levels)
    /remote
    /remote/{remote}
    /remote/{remote}/{store}
    /system

Every component is checked with :mod:`asyncsync.names` before a path is
accepted; a bad path raises :class:`~asyncsync.errors.InvalidName`.
"""

from __future__ import annotations

from enum import StrEnum

from ..errors import InvalidName
from ..names import MAX_NAMESPACE_DEPTH, Namespace, safe_id


class Privilege(StrEnum):
    """One thing an auth-id may do on an ACL path."""

    DATASTORE_AUDIT = "Datastore.Audit"
    DATASTORE_READ = "Datastore.Read"
    DATASTORE_BACKUP = "Datastore.Backup"
    DATASTORE_PRUNE = "Datastore.Prune"
    DATASTORE_MODIFY = "Datastore.Modify"
    DATASTORE_VERIFY = "Datastore.Verify"
    REMOTE_AUDIT = "Remote.Audit"
    REMOTE_READ = "Remote.Read"
    REMOTE_MODIFY = "Remote.Modify"
    SYS_AUDIT = "Sys.Audit"
    SYS_MODIFY = "Sys.Modify"
    PERMISSIONS_MODIFY = "Permissions.Modify"

    @classmethod
    def parse(cls, value: str) -> Privilege:
        try:
            return cls(value)
        except ValueError:
            raise InvalidName(f"unknown privilege {value!r}") from None


P = Privilege
ALL_PRIVILEGES: frozenset[Privilege] = frozenset(Privilege)
NO_PRIVILEGES: frozenset[Privilege] = frozenset()

#: the role that masks every privilege at the path it is set on (and below, when propagated)
NO_ACCESS = "NoAccess"

#: role name -> privileges (Proxmox Backup Server's table)
ROLES: dict[str, frozenset[Privilege]] = {
    "Admin": ALL_PRIVILEGES,
    "Audit": frozenset({P.DATASTORE_AUDIT, P.REMOTE_AUDIT, P.SYS_AUDIT}),
    NO_ACCESS: NO_PRIVILEGES,
    "DatastoreAdmin": frozenset(p for p in Privilege if p.value.startswith("Datastore.")),
    "DatastoreReader": frozenset({P.DATASTORE_AUDIT, P.DATASTORE_READ, P.DATASTORE_VERIFY}),
    "DatastoreBackup": frozenset({P.DATASTORE_BACKUP}),
    "DatastorePowerUser": frozenset({P.DATASTORE_BACKUP, P.DATASTORE_PRUNE}),
    "DatastoreAudit": frozenset({P.DATASTORE_AUDIT}),
    "RemoteAdmin": frozenset(p for p in Privilege if p.value.startswith("Remote.")),
    "RemoteAudit": frozenset({P.REMOTE_AUDIT}),
    "RemoteSyncOperator": frozenset({P.REMOTE_AUDIT, P.REMOTE_READ}),
}


def check_role(role: str) -> str:
    """Return ``role`` if it is a known role name, else raise :class:`InvalidName`."""
    if role not in ROLES:
        raise InvalidName(f"unknown role {role!r} (known: {', '.join(ROLES)})")
    return role


AclPath = tuple[str, ...]
"""A parsed ACL path: its components, ``()`` for ``/``."""


def parse_acl_path(path: str) -> AclPath:
    """Parse and validate an ACL path; raises :class:`InvalidName` naming what was wrong.

    One trailing ``/`` is tolerated (``/datastore/`` is ``/datastore``).
    """
    if not isinstance(path, str) or not path.startswith("/"):
        raise InvalidName(f"invalid ACL path {path!r} (must start with '/')")
    if "//" in path:
        raise InvalidName(f"invalid ACL path {path!r} (empty component)")
    body = path[1:]
    if body.endswith("/"):
        body = body[:-1]
    if not body:
        return ()
    comps = tuple(body.split("/"))
    if any(not c for c in comps):
        raise InvalidName(f"invalid ACL path {path!r} (empty component)")
    top, rest = comps[0], comps[1:]
    if top == "datastore":
        if rest:
            safe_id(rest[0], "datastore name")
            if len(rest) - 1 > MAX_NAMESPACE_DEPTH:
                raise InvalidName(f"invalid ACL path {path!r} (namespace deeper than {MAX_NAMESPACE_DEPTH})")
            Namespace(rest[1:])
    elif top == "remote":
        if len(rest) > 2:
            raise InvalidName(f"invalid ACL path {path!r} (expected /remote/{{remote}}/{{store}})")
        for c, what in zip(rest, ("remote name", "datastore name"), strict=False):
            safe_id(c, what)
    elif top in ("system", "access"):
        if rest:
            raise InvalidName(f"invalid ACL path {path!r} (nothing below /{top})")
    else:
        raise InvalidName(
            f"invalid ACL path {path!r} (expected /, /access, /datastore/..., /remote/... or /system)"
        )
    return comps


def format_acl_path(comps: AclPath) -> str:
    """The canonical text of a parsed path."""
    return "/" + "/".join(comps)


def normalize_acl_path(path: str) -> str:
    """Validate ``path`` and return its canonical text."""
    return format_acl_path(parse_acl_path(path))


def datastore_acl_path(store: str, ns: Namespace | None = None) -> str:
    """The ACL path of a datastore namespace: ``/datastore/store/a/b`` (``/datastore/store`` for root)."""
    safe_id(store, "datastore name")
    if ns is None or ns.is_root:
        return f"/datastore/{store}"
    return f"/datastore/{store}/{ns}"


def remote_acl_path(remote: str, store: str | None = None) -> str:
    """The ACL path of a remote (or one of its datastores)."""
    safe_id(remote, "remote name")
    if store is None:
        return f"/remote/{remote}"
    return f"/remote/{remote}/{safe_id(store, 'datastore name')}"


__all__ = [
    "ALL_PRIVILEGES",
    "NO_ACCESS",
    "NO_PRIVILEGES",
    "ROLES",
    "AclPath",
    "Privilege",
    "check_role",
    "datastore_acl_path",
    "format_acl_path",
    "normalize_acl_path",
    "parse_acl_path",
    "remote_acl_path",
]
