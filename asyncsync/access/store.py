"""The access files in the config folder, and the functions that manage them.

==================  ======  ====================================================
file                mode    content
==================  ======  ====================================================
``user.cfg``        0644    ``user: sync@pam`` (enable, expire, comment, email),
                            ``token: sync@pam!name`` (enable, expire, comment)
``shadow.cfg``      0600    ``password: sync@pam`` with ``hash $scrypt$...``
``token.shadow``    0600    ``token: sync@pam!name`` with ``hash $sha256$...``
``acl.cfg``         0644    ``acl: PATH:AUTH-ID:ROLE`` with ``propagate 0|1``
``authkey``         0600    32 random bytes: the HMAC key for login tickets
==================  ======  ====================================================

One ACL entry is one section; its id joins path, auth-id and role with ``:``,
a character none of the three may contain, so ids are unique and parse back.

``root@pam`` is built in: it is never written to ``user.cfg``, cannot be
removed or disabled, and may log in with a password only once one was set
(:func:`set_password`). It may own tokens.

Every change takes the lock of ``user.cfg`` first, then (as needed) ``acl.cfg``,
``shadow.cfg``, ``token.shadow`` -- always in this order, so concurrent
writers cannot deadlock, and a user cannot vanish while an ACL entry or token
for it is being added. Removal writes the dependent files first and
``user.cfg`` last: a crash in between leaves the user with fewer rights, never
a stale right for a later user of the same name.

All functions here block (file I/O, password hashing).
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config.paths import Paths
from ..config.section import Section, SectionConfigFile, SectionData, Value
from ..datastore.chunkstore import tmp_name
from ..errors import AlreadyExists, InvalidInput, InvalidName, NotFound, StorageError
from ..names import ROOT_AUTH_ID, AuthId
from .hashing import check_password_policy, hash_password, hash_token_secret, new_token_secret
from .privileges import check_role, format_acl_path, parse_acl_path

USER_FILE = "user.cfg"
SHADOW_FILE = "shadow.cfg"
TOKEN_SHADOW_FILE = "token.shadow"
ACL_FILE = "acl.cfg"
AUTHKEY_FILE = "authkey"
AUTHKEY_BYTES = 32

_EMAIL_RE = re.compile(r"[^\s@]{1,128}@[^\s@]{1,253}")
_MAX_COMMENT = 4096
MAX_EXPIRE = 253402300799  # 9999-12-31T23:59:59Z


def user_file(paths: Paths) -> SectionConfigFile:
    return SectionConfigFile(paths.config_file(USER_FILE), frozenset({"user", "token"}))


def shadow_file(paths: Paths) -> SectionConfigFile:
    return SectionConfigFile(paths.config_file(SHADOW_FILE), frozenset({"password"}), mode=0o600)


def token_shadow_file(paths: Paths) -> SectionConfigFile:
    return SectionConfigFile(paths.config_file(TOKEN_SHADOW_FILE), frozenset({"token"}), mode=0o600)


def acl_file(paths: Paths) -> SectionConfigFile:
    return SectionConfigFile(paths.config_file(ACL_FILE), frozenset({"acl"}))


# ---- value checks -------------------------------------------------------------


def _as_auth_id(value: AuthId | str, what: str = "auth-id") -> AuthId:
    if isinstance(value, AuthId):
        return value
    try:
        return AuthId.parse(value)
    except InvalidName as exc:
        raise InvalidName(
            f"invalid {what} {value!r} (expected user@realm{'!token' if what != 'userid' else ''})"
        ) from exc


def parse_userid(value: AuthId | str) -> AuthId:
    """A user id (``user@realm``); a token id is refused with :class:`InvalidName`."""
    a = _as_auth_id(value, "userid")
    if a.is_token:
        raise InvalidName(f"{a} is a token id, expected a user id (user@realm)")
    return a


def parse_tokenid(value: AuthId | str) -> AuthId:
    """A token id (``user@realm!name``); a user id is refused with :class:`InvalidName`."""
    a = _as_auth_id(value, "token id")
    if not a.is_token:
        raise InvalidName(f"{a} is a user id, expected a token id (user@realm!name)")
    return a


def _check_comment(comment: str) -> str:
    if "\n" in comment or "\r" in comment or len(comment) > _MAX_COMMENT:
        raise InvalidInput("must be one line of at most 4096 characters", field="comment")
    return comment.strip()


def _check_email(email: str) -> str:
    if email and not _EMAIL_RE.fullmatch(email):
        raise InvalidInput(f"invalid e-mail address {email!r}", field="email")
    return email


def _check_expire(expire: int) -> int:
    if not isinstance(expire, int) or not 0 <= expire <= MAX_EXPIRE:
        raise InvalidInput(f"must be epoch seconds between 0 (never) and {MAX_EXPIRE}", field="expire")
    return expire


def _parse_bool(value: str | None, default: bool, what: str) -> bool:
    if value is None or value == "":
        return default
    v = value.lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    raise InvalidInput(f"invalid boolean {value!r}", field=what)


def _parse_int(value: str | None, what: str) -> int:
    if value is None or value == "":
        return 0
    try:
        return _check_expire(int(value))
    except ValueError:
        raise InvalidInput(f"invalid number {value!r}", field=what) from None


# ---- records ------------------------------------------------------------------


def _account_values(enable: bool, expire: int, comment: str) -> dict[str, Value]:
    """The ``user.cfg`` keys a user and a token share."""
    values: dict[str, Value] = {"enable": "1" if enable else "0", "expire": str(expire)}
    if comment:
        values["comment"] = comment
    return values


@dataclass(frozen=True, slots=True)
class UserInfo:
    """One user; ``expire`` is epoch seconds, 0 for never."""

    userid: AuthId
    enable: bool = True
    expire: int = 0
    comment: str = ""
    email: str = ""

    def is_active(self, now: float) -> bool:
        return self.enable and (self.expire == 0 or now < self.expire)

    @classmethod
    def from_section(cls, s: Section) -> UserInfo:
        return cls(
            parse_userid(s.id),
            _parse_bool(s.get("enable"), True, "enable"),
            _parse_int(s.get("expire"), "expire"),
            s.get("comment", "") or "",
            s.get("email", "") or "",
        )

    def to_section(self) -> Section:
        values = _account_values(self.enable, self.expire, self.comment)
        if self.email:
            values["email"] = self.email
        return Section("user", str(self.userid), values)

    def to_json(self) -> dict[str, Any]:
        return {
            "userid": str(self.userid),
            "enable": self.enable,
            "expire": self.expire,
            "comment": self.comment,
            "email": self.email,
        }


ROOT_USER = UserInfo(ROOT_AUTH_ID, comment="built-in superuser")


@dataclass(frozen=True, slots=True)
class TokenInfo:
    """One API token; ``expire`` is epoch seconds, 0 for never."""

    tokenid: AuthId
    enable: bool = True
    expire: int = 0
    comment: str = ""

    def is_active(self, now: float) -> bool:
        return self.enable and (self.expire == 0 or now < self.expire)

    @classmethod
    def from_section(cls, s: Section) -> TokenInfo:
        return cls(
            parse_tokenid(s.id),
            _parse_bool(s.get("enable"), True, "enable"),
            _parse_int(s.get("expire"), "expire"),
            s.get("comment", "") or "",
        )

    def to_section(self) -> Section:
        return Section("token", str(self.tokenid), _account_values(self.enable, self.expire, self.comment))

    def to_json(self) -> dict[str, Any]:
        return {
            "tokenid": str(self.tokenid),
            "name": self.tokenid.token,
            "enable": self.enable,
            "expire": self.expire,
            "comment": self.comment,
        }


@dataclass(frozen=True, slots=True)
class AclEntry:
    """One ACL entry: ``role`` for ``auth_id`` on ``path`` (canonical text)."""

    path: str
    auth_id: AuthId
    role: str
    propagate: bool = True

    def sort_key(self) -> tuple[str, str, str]:
        return (self.path, str(self.auth_id), self.role)

    @property
    def section_id(self) -> str:
        return f"{self.path}:{self.auth_id}:{self.role}"

    @classmethod
    def from_section(cls, s: Section) -> AclEntry:
        parts = s.id.split(":")
        if len(parts) != 3:
            raise InvalidInput(f"invalid ACL entry id {s.id!r} (expected PATH:AUTH-ID:ROLE)")
        path, auth, role = parts
        return cls(
            format_acl_path(parse_acl_path(path)),
            _as_auth_id(auth),
            check_role(role),
            _parse_bool(s.get("propagate"), True, "propagate"),
        )

    def to_section(self) -> Section:
        return Section("acl", self.section_id, {"propagate": "1" if self.propagate else "0"})

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "auth-id": str(self.auth_id),
            "type": "token" if self.auth_id.is_token else "user",
            "role": self.role,
            "propagate": self.propagate,
        }


# ---- parsing whole files ------------------------------------------------------


def users_from(data: SectionData) -> tuple[dict[AuthId, UserInfo], dict[AuthId, TokenInfo]]:
    """Users and tokens of a parsed ``user.cfg`` (``root@pam`` is added, never read)."""
    users: dict[AuthId, UserInfo] = {ROOT_AUTH_ID: ROOT_USER}
    tokens: dict[AuthId, TokenInfo] = {}
    for s in data.sections.values():
        if s.type == "user":
            u = UserInfo.from_section(s)
            if u.userid != ROOT_AUTH_ID:
                users[u.userid] = u
        else:
            t = TokenInfo.from_section(s)
            tokens[t.tokenid] = t
    return users, tokens


def hashes_from(data: SectionData) -> dict[AuthId, str]:
    """The ``hash`` value of each section of a shadow file, by auth-id."""
    out: dict[AuthId, str] = {}
    for s in data.sections.values():
        h = s.get("hash")
        if h:
            out[_as_auth_id(s.id)] = h
    return out


def acl_from(data: SectionData) -> list[AclEntry]:
    return sorted((AclEntry.from_section(s) for s in data.sections.values()), key=AclEntry.sort_key)


# ---- authkey --------------------------------------------------------------------


def load_authkey(paths: Paths, *, create: bool = True) -> bytes | None:
    """The ticket HMAC key, made on first use (0600; created atomically, so racing makers agree).

    With ``create=False`` a missing key is not made and None is returned.
    """
    path = paths.config_file(AUTHKEY_FILE)
    try:
        key = path.read_bytes()
    except FileNotFoundError:
        if not create:
            return None
        key = _create_authkey(path)
    except OSError as exc:
        raise StorageError(f"cannot read {path}: {exc.strerror}") from exc
    if len(key) < AUTHKEY_BYTES:
        raise StorageError(f"{path} is too short to be a ticket key; remove it to make a new one")
    return key


def _create_authkey(path: Path) -> bytes:
    tmp = path.with_name(tmp_name(path.name))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.fchmod(fd, 0o600)
            os.write(fd, secrets.token_bytes(AUTHKEY_BYTES))
            os.fsync(fd)
        finally:
            os.close(fd)
        # link, not rename: it fails if another process made the key first, and then we use theirs
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
        return path.read_bytes()
    except OSError as exc:
        raise StorageError(f"cannot create {path}: {exc.strerror}") from exc
    finally:
        tmp.unlink(missing_ok=True)


# ---- users ------------------------------------------------------------------------


def _require_user(users: dict[AuthId, UserInfo], userid: AuthId) -> UserInfo:
    u = users.get(userid)
    if u is None:
        raise NotFound(f"user {userid} does not exist")
    return u


def _read_users(
    paths: Paths, data: SectionData | None = None
) -> tuple[dict[AuthId, UserInfo], dict[AuthId, TokenInfo]]:
    return users_from(data if data is not None else user_file(paths).read())


def _purge(paths: Paths, userid: AuthId, *, user_too: bool, token: AuthId | None = None) -> None:
    """Remove ACL entries and secrets of ``userid``'s tokens (and of the user with ``user_too``).

    With ``token`` only that token's entries go. The caller holds the lock of
    ``user.cfg``. Files that hold nothing to remove are not rewritten.
    """

    def doomed(a: AuthId) -> bool:
        if token is not None:
            return a == token
        return a.userid == userid and (user_too or a.is_token)

    files: list[tuple[SectionConfigFile, bool]] = [
        (acl_file(paths), True),
        (shadow_file(paths), False),
        (token_shadow_file(paths), False),
    ]
    for f, is_acl in files:
        if token is not None and f.path.name == SHADOW_FILE:
            continue

        def ids(sections: dict[str, Section], is_acl: bool = is_acl) -> list[str]:
            out = []
            for sid, s in sections.items():
                a = AclEntry.from_section(s).auth_id if is_acl else _as_auth_id(sid)
                if doomed(a):
                    out.append(sid)
            return out

        if ids(f.read().sections):
            with f.modify() as data:
                for sid in ids(data.sections):
                    del data.sections[sid]


def _set_password_locked(paths: Paths, userid: AuthId, password_hash: str | None) -> None:
    with shadow_file(paths).modify() as data:
        if password_hash is None:
            data.sections.pop(str(userid), None)
        else:
            data.sections[str(userid)] = Section("password", str(userid), {"hash": password_hash})


def create_user(
    paths: Paths,
    userid: AuthId | str,
    password: str | None = None,
    *,
    comment: str = "",
    enable: bool = True,
    expire: int | None = None,
    email: str = "",
) -> UserInfo:
    """Add a user (``user@realm``); without ``password`` it cannot log in with one (tokens only).

    Raises :class:`AlreadyExists` if it exists (``root@pam`` always does).
    """
    uid = parse_userid(userid)
    info = UserInfo(uid, enable, _check_expire(expire or 0), _check_comment(comment), _check_email(email))
    pw_hash = hash_password(check_password_policy(password)) if password is not None else None
    with user_file(paths).modify() as data:
        users, _ = _read_users(paths, data)
        if uid in users:
            raise AlreadyExists(f"user {uid} already exists")
        # remnants of an earlier user of this name (after a crash) must not carry over
        _purge(paths, uid, user_too=True)
        if pw_hash is not None:
            _set_password_locked(paths, uid, pw_hash)
        data.sections[str(uid)] = info.to_section()
    return info


def get_user(paths: Paths, userid: AuthId | str) -> UserInfo:
    users, _ = _read_users(paths)
    return _require_user(users, parse_userid(userid))


def list_users(paths: Paths) -> list[UserInfo]:
    """All users, ``root@pam`` first, then sorted by id."""
    users, _ = _read_users(paths)
    return sorted(users.values(), key=lambda u: (u.userid != ROOT_AUTH_ID, u.userid))


def update_user(
    paths: Paths,
    userid: AuthId | str,
    *,
    password: str | None = None,
    comment: str | None = None,
    enable: bool | None = None,
    expire: int | None = None,
    email: str | None = None,
    digest: str | None = None,
) -> UserInfo:
    """Change a user's settings (``None`` keeps a value; ``""`` clears comment/email; expire 0 = never).

    For ``root@pam`` only the password may be changed. ``digest`` (of ``user.cfg``)
    makes the update refuse with :class:`Conflict` if the file changed since.
    """
    uid = parse_userid(userid)
    if uid == ROOT_AUTH_ID and (comment, enable, expire, email) != (None, None, None, None):
        raise InvalidInput("root@pam is built in: only its password can be changed")
    if comment is not None:
        comment = _check_comment(comment)
    if email is not None:
        email = _check_email(email)
    if expire is not None:
        _check_expire(expire)
    pw_hash = hash_password(check_password_policy(password)) if password is not None else None
    with user_file(paths).modify(digest) as data:
        users, _ = _read_users(paths, data)
        u = _require_user(users, uid)
        if uid != ROOT_AUTH_ID:
            u = UserInfo(
                uid,
                u.enable if enable is None else enable,
                u.expire if expire is None else expire,
                u.comment if comment is None else comment,
                u.email if email is None else email,
            )
            data.sections[str(uid)] = u.to_section()
        if pw_hash is not None:
            _set_password_locked(paths, uid, pw_hash)
    return u


def set_password(paths: Paths, userid: AuthId | str, password: str | None) -> None:
    """Set (or with ``None`` remove) a user's password; the user must exist."""
    uid = parse_userid(userid)
    pw_hash = hash_password(check_password_policy(password)) if password is not None else None
    f = user_file(paths)
    with f.lock():
        users, _ = _read_users(paths)
        _require_user(users, uid)
        _set_password_locked(paths, uid, pw_hash)


def remove_user(paths: Paths, userid: AuthId | str) -> UserInfo:
    """Remove a user with its password, its tokens and every ACL entry of it or its tokens."""
    uid = parse_userid(userid)
    if uid == ROOT_AUTH_ID:
        raise InvalidInput("root@pam is built in and cannot be removed")
    with user_file(paths).modify() as data:
        users, tokens = _read_users(paths, data)
        u = _require_user(users, uid)
        _purge(paths, uid, user_too=True)
        del data.sections[str(uid)]
        for t in tokens:
            if t.userid == uid:
                del data.sections[str(t)]
    return u


# ---- tokens -----------------------------------------------------------------------


def _tokenid(userid: AuthId | str, name: str) -> AuthId:
    uid = parse_userid(userid)
    try:
        return AuthId(uid.user, uid.realm, name)
    except InvalidName as exc:
        raise InvalidName(f"invalid token name {name!r} ([A-Za-z0-9_][A-Za-z0-9._-]*)") from exc


def generate_token(
    paths: Paths,
    userid: AuthId | str,
    name: str,
    *,
    comment: str = "",
    enable: bool = True,
    expire: int | None = None,
) -> tuple[AuthId, str]:
    """Make API token ``userid!name``; returns its id and secret (the secret is not kept, only a hash)."""
    tid = _tokenid(userid, name)
    info = TokenInfo(tid, enable, _check_expire(expire or 0), _check_comment(comment))
    secret = new_token_secret()
    with user_file(paths).modify() as data:
        users, tokens = _read_users(paths, data)
        _require_user(users, tid.userid)
        if tid in tokens:
            raise AlreadyExists(f"token {tid} already exists")
        _purge(paths, tid.userid, user_too=False, token=tid)
        with token_shadow_file(paths).modify() as shadow:
            shadow.sections[str(tid)] = Section("token", str(tid), {"hash": hash_token_secret(secret)})
        data.sections[str(tid)] = info.to_section()
    return tid, secret


def update_token(
    paths: Paths,
    userid: AuthId | str,
    name: str,
    *,
    comment: str | None = None,
    enable: bool | None = None,
    expire: int | None = None,
) -> TokenInfo:
    """Change a token's comment, enable flag or expiry (``None`` keeps a value)."""
    tid = _tokenid(userid, name)
    if comment is not None:
        comment = _check_comment(comment)
    if expire is not None:
        _check_expire(expire)
    with user_file(paths).modify() as data:
        _, tokens = _read_users(paths, data)
        t = tokens.get(tid)
        if t is None:
            raise NotFound(f"token {tid} does not exist")
        t = TokenInfo(
            tid,
            t.enable if enable is None else enable,
            t.expire if expire is None else expire,
            t.comment if comment is None else comment,
        )
        data.sections[str(tid)] = t.to_section()
    return t


def delete_token(paths: Paths, userid: AuthId | str, name: str) -> TokenInfo:
    """Delete a token with its secret and its ACL entries."""
    tid = _tokenid(userid, name)
    with user_file(paths).modify() as data:
        _, tokens = _read_users(paths, data)
        t = tokens.get(tid)
        if t is None:
            raise NotFound(f"token {tid} does not exist")
        _purge(paths, tid.userid, user_too=False, token=tid)
        del data.sections[str(tid)]
    return t


def list_tokens(paths: Paths, userid: AuthId | str) -> list[TokenInfo]:
    """The tokens of one user, sorted by name; :class:`NotFound` if the user does not exist."""
    uid = parse_userid(userid)
    users, tokens = _read_users(paths)
    _require_user(users, uid)
    return sorted((t for t in tokens.values() if t.tokenid.userid == uid), key=lambda t: t.tokenid)


# ---- ACL ----------------------------------------------------------------------------


def acl_list(paths: Paths, *, path: str | None = None, auth_id: AuthId | str | None = None) -> list[AclEntry]:
    """ACL entries, sorted; optionally only those on exactly ``path`` or for ``auth_id``."""
    entries = acl_from(acl_file(paths).read())
    if path is not None:
        p = format_acl_path(parse_acl_path(path))
        entries = [e for e in entries if e.path == p]
    if auth_id is not None:
        a = _as_auth_id(auth_id)
        entries = [e for e in entries if e.auth_id == a]
    return entries


def acl_update(
    paths: Paths,
    path: str,
    role: str,
    auth_id: AuthId | str,
    *,
    propagate: bool = True,
    delete: bool = False,
) -> AclEntry:
    """Grant ``role`` on ``path`` to ``auth_id`` (or change its propagate flag), or with ``delete`` revoke it.

    The auth-id must be an existing user or token. Revoking an entry that does
    not exist raises :class:`NotFound`. Returns the entry granted or revoked.
    """
    entry = AclEntry(format_acl_path(parse_acl_path(path)), _as_auth_id(auth_id), check_role(role), propagate)
    with user_file(paths).lock(), acl_file(paths).modify() as data:
        if delete:
            old = data.sections.pop(entry.section_id, None)
            if old is None:
                raise NotFound(f"no ACL entry {entry.role} for {entry.auth_id} on {entry.path}")
            return AclEntry.from_section(old)
        users, tokens = _read_users(paths)
        if entry.auth_id.is_token:
            if entry.auth_id not in tokens:
                raise NotFound(f"token {entry.auth_id} does not exist")
        else:
            _require_user(users, entry.auth_id)
        data.sections[entry.section_id] = entry.to_section()
    return entry


def acl_remove(paths: Paths, path: str, role: str, auth_id: AuthId | str) -> AclEntry:
    """Revoke one ACL entry; :class:`NotFound` if there is no such entry."""
    return acl_update(paths, path, role, auth_id, delete=True)


__all__ = [
    "ACL_FILE",
    "AUTHKEY_FILE",
    "ROOT_USER",
    "SHADOW_FILE",
    "TOKEN_SHADOW_FILE",
    "USER_FILE",
    "AclEntry",
    "TokenInfo",
    "UserInfo",
    "acl_list",
    "acl_remove",
    "acl_update",
    "create_user",
    "delete_token",
    "generate_token",
    "get_user",
    "list_tokens",
    "list_users",
    "parse_tokenid",
    "parse_userid",
    "remove_user",
    "set_password",
    "update_token",
    "update_user",
]
