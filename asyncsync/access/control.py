""":class:`AccessControl`: who may log in, and what an auth-id may do where.

Evaluation follows Proxmox Backup Server. For one auth-id, walk from ``/``
down to the path; at each node with entries for that auth-id, take its roles
(at ancestors only those with ``propagate``; at the path itself all). A node
that yields roles *replaces* what was inherited; ``NoAccess`` among them
masks everything else at that node. User entries and token entries are
separate auth-ids: a user's entries say nothing about its tokens. A token's
privileges are those of its own entries intersected with its user's.
``root@pam`` has every privilege everywhere. A disabled, expired or unknown
auth-id (or a token of such a user) has none and cannot authenticate.

The object holds an immutable snapshot of the access files; the query methods
(:meth:`privileges`, :meth:`check`, :meth:`verify_ticket`, ...) touch no file
and are safe on an event loop. :meth:`load` and :meth:`reload_if_changed` read
files, and :meth:`authenticate_password` runs scrypt: call those in a worker
thread from async code.
"""

from __future__ import annotations

import logging
import os
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from ..config.paths import Paths
from ..errors import AsyncSyncError, AuthenticationFailed, PermissionDenied
from ..names import ROOT_AUTH_ID, AuthId
from . import store
from .hashing import verify_password, verify_token_secret
from .logincache import VerifiedPasswords
from .privileges import (
    ALL_PRIVILEGES,
    NO_ACCESS,
    NO_PRIVILEGES,
    ROLES,
    AclPath,
    Privilege,
    format_acl_path,
    parse_acl_path,
)
from .store import AclEntry, TokenInfo, UserInfo
from .throttle import LoginThrottle
from .tickets import TICKET_LIFETIME, check_csrf, make_csrf, make_ticket, parse_ticket

log = logging.getLogger(__name__)

_WATCHED = (store.USER_FILE, store.SHADOW_FILE, store.TOKEN_SHADOW_FILE, store.ACL_FILE)
_Stamp = tuple[tuple[int, int, int] | None, ...]
# node -> auth-id -> role -> propagate
_Tree = dict[AclPath, dict[AuthId, dict[str, bool]]]
# a child name no real path has: evaluates "just below a node, where no entries are"
_ANY_CHILD = "\0"


@dataclass(frozen=True, slots=True)
class _State:
    stamp: _Stamp
    users: dict[AuthId, UserInfo]
    tokens: dict[AuthId, TokenInfo]
    passwords: dict[AuthId, str]
    token_secrets: dict[AuthId, str]
    tree: _Tree

    # evaluation lives on the snapshot, so one query never mixes two snapshots
    # when another thread reloads meanwhile

    def is_active(self, auth_id: AuthId, now: float) -> bool:
        u = self.users.get(auth_id.userid)
        if u is None or not u.is_active(now):
            return False
        if auth_id.is_token:
            t = self.tokens.get(auth_id)
            return t is not None and t.is_active(now)
        return True

    def roles(self, auth_id: AuthId, comps: AclPath) -> dict[str, bool]:
        roles = _node_roles(self.tree.get(()), auth_id, not comps)
        for i in range(1, len(comps) + 1):
            found = _node_roles(self.tree.get(comps[:i]), auth_id, i == len(comps))
            if found:
                roles = found  # the deeper node replaces what was inherited
        return roles

    def own_privileges(self, auth_id: AuthId, comps: AclPath) -> frozenset[Privilege]:
        if auth_id == ROOT_AUTH_ID:
            return ALL_PRIVILEGES
        privs: set[Privilege] = set()
        for role in self.roles(auth_id, comps):
            privs |= ROLES.get(role, NO_PRIVILEGES)
        return frozenset(privs)

    def privileges(self, auth_id: AuthId, comps: AclPath, now: float) -> frozenset[Privilege]:
        if not self.is_active(auth_id, now):
            return NO_PRIVILEGES
        privs = self.own_privileges(auth_id, comps)
        if auth_id.is_token and privs:
            privs &= self.own_privileges(auth_id.userid, comps)
        return privs

    def relevant_nodes(self, auth_id: AuthId) -> list[AclPath]:
        """Nodes with entries for ``auth_id`` or its user: the only places privileges change."""
        relevant = {auth_id, auth_id.userid}
        return [node for node, entries in self.tree.items() if relevant & entries.keys()]


def _stamp(paths: Paths) -> _Stamp:
    out: list[tuple[int, int, int] | None] = []
    for name in _WATCHED:
        try:
            st = os.stat(paths.config_file(name))
        except FileNotFoundError:
            out.append(None)
        else:
            out.append((st.st_mtime_ns, st.st_size, st.st_ino))
    return tuple(out)


def _read_state(paths: Paths) -> _State:
    # stamp first: a change racing with the read makes the next check reload again
    stamp = _stamp(paths)
    users, tokens = store.users_from(store.user_file(paths).read())
    tree: _Tree = {}
    for e in store.acl_from(store.acl_file(paths).read()):
        tree.setdefault(parse_acl_path(e.path), {}).setdefault(e.auth_id, {})[e.role] = e.propagate
    return _State(
        stamp,
        users,
        tokens,
        store.hashes_from(store.shadow_file(paths).read()),
        store.hashes_from(store.token_shadow_file(paths).read()),
        tree,
    )


def _node_roles(node: dict[AuthId, dict[str, bool]] | None, auth_id: AuthId, exact: bool) -> dict[str, bool]:
    """Roles a node contributes for ``auth_id`` (PBS ``extract_user_roles``)."""
    if node is None:
        return {}
    out: dict[str, bool] = {}
    for role, propagate in node.get(auth_id, {}).items():
        if propagate or exact:
            if role == NO_ACCESS:
                return {NO_ACCESS: False}
            out[role] = propagate
    return out


class AccessControl:
    """A snapshot of users, tokens, secrets and ACLs, with the checks the server needs."""

    def __init__(
        self,
        paths: Paths,
        state: _State,
        authkey: bytes,
        *,
        clock: Callable[[], float] = time.time,
        throttle: LoginThrottle | None = None,
        ticket_lifetime: int = TICKET_LIFETIME,
        verified: VerifiedPasswords | None = None,
    ) -> None:
        self.paths = paths
        self._state = state
        self._key = authkey
        self._clock = clock
        self.throttle = throttle if throttle is not None else LoginThrottle()
        self.ticket_lifetime = ticket_lifetime
        #: passwords verified recently: a repeated login skips scrypt (see :mod:`.logincache`)
        self.verified = verified if verified is not None else VerifiedPasswords()
        self._reload_lock = threading.Lock()

    @classmethod
    def load(
        cls,
        paths: Paths,
        *,
        clock: Callable[[], float] = time.time,
        throttle: LoginThrottle | None = None,
        make_authkey: bool = True,
    ) -> AccessControl:
        """Read all access files (and make the ticket key on first use); blocking.

        ``clock`` (epoch seconds) decides ticket age and account expiry; tests
        inject one. ``throttle`` brakes password guessing per user id. With
        ``make_authkey=False`` (read-only queries such as ``user permissions``) a
        missing ticket key is not written; a throw-away key stands in, so tickets
        issued by that object are valid for it alone.
        """
        key = store.load_authkey(paths, create=make_authkey) or secrets.token_bytes(store.AUTHKEY_BYTES)
        return cls(paths, _read_state(paths), key, clock=clock, throttle=throttle)

    def __repr__(self) -> str:
        s = self._state
        n_acl = sum(len(r) for node in s.tree.values() for r in node.values())
        return f"<AccessControl {self.paths.config} users={len(s.users)} tokens={len(s.tokens)} acl={n_acl}>"

    def reload_if_changed(self) -> bool:
        """Re-read the access files if any changed (by stat); blocking. True if it reloaded.

        A file that no longer parses keeps the previous snapshot in force (and
        is logged), so a broken hand edit does not lock everybody out.
        """
        with self._reload_lock:
            if _stamp(self.paths) == self._state.stamp:
                return False
            try:
                self._state = _read_state(self.paths)
            except AsyncSyncError as exc:
                log.warning("access files not reloaded, keeping the previous ones: %s", exc)
                return False
            # not needed for correctness (the stored hash is part of each entry's key)
            self.verified.clear()
            return True

    # ---- who is active --------------------------------------------------------

    def user(self, userid: AuthId) -> UserInfo | None:
        return self._state.users.get(userid.userid)

    def token(self, tokenid: AuthId) -> TokenInfo | None:
        return self._state.tokens.get(tokenid)

    def is_active(self, auth_id: AuthId) -> bool:
        """True if ``auth_id`` exists, is enabled and has not expired (for a token: and its user)."""
        return self._state.is_active(auth_id, self._clock())

    # ---- authentication ---------------------------------------------------------

    def authenticate_password(self, userid: AuthId, password: str) -> AuthId:
        """Check a password login; blocking (scrypt, ~0.1 s): use a worker thread from async code.

        Raises :class:`AuthenticationFailed` for a wrong password, an unknown,
        disabled or expired user, a user without a password, or a token id; and
        :class:`~asyncsync.access.LoginThrottled` (a subclass) while the user id is
        locked after repeated failures. The message never says which.

        The right password given again within :attr:`verified`'s time to live is
        accepted without a second scrypt (:mod:`.logincache` says why that is
        safe); the throttle and the activity check run on every login all the same.
        """
        if userid.is_token:
            raise AuthenticationFailed("authentication failed")
        key = str(userid)
        self.throttle.check(key)
        state = self._state
        stored = state.passwords.get(userid)
        ok = self.verified.check(userid, stored, password)
        if not ok:
            ok = verify_password(password, stored)
            if ok and stored is not None:
                self.verified.remember(userid, stored, password)
        if not ok or not state.is_active(userid, self._clock()):
            self.throttle.record_failure(key)
            raise AuthenticationFailed("authentication failed")
        self.throttle.record_success(key)
        return userid

    def authenticate_token(self, tokenid: AuthId, secret: str) -> AuthId:
        """Check an API token and its secret (fast; safe on the event loop)."""
        state = self._state
        if not tokenid.is_token or not state.is_active(tokenid, self._clock()):
            raise AuthenticationFailed("authentication failed")
        if not verify_token_secret(secret, state.token_secrets.get(tokenid)):
            raise AuthenticationFailed("authentication failed")
        return tokenid

    def issue_ticket(self, userid: AuthId) -> tuple[str, str]:
        """A login ticket for ``userid`` and its CSRF token (call after a successful login)."""
        if userid.is_token:
            raise AuthenticationFailed("API tokens cannot get a login ticket")
        ticket = make_ticket(self._key, userid, self._clock())
        return ticket, make_csrf(self._key, userid, ticket)

    def verify_ticket(self, ticket: str) -> AuthId:
        """The user of a valid, unexpired ticket who is still active; else :class:`AuthenticationFailed`."""
        userid = parse_ticket(self._key, ticket, self._clock(), lifetime=self.ticket_lifetime)
        if not self.is_active(userid):
            raise AuthenticationFailed("authentication failed")
        return userid

    def verify_csrf(self, userid: AuthId, ticket: str, csrf: str) -> None:
        """Raise :class:`AuthenticationFailed` unless ``csrf`` was issued with ``ticket`` to ``userid``."""
        check_csrf(self._key, userid, ticket, csrf)

    # ---- authorization -------------------------------------------------------------

    def privileges(self, auth_id: AuthId, path: str) -> frozenset[Privilege]:
        """Effective privileges of ``auth_id`` on ``path`` (:class:`InvalidName` for a bad path)."""
        return self._state.privileges(auth_id, parse_acl_path(path), self._clock())

    def has(self, auth_id: AuthId, path: str, *privs: Privilege, any_of: bool = False) -> bool:
        """True if :meth:`check` with the same arguments would pass (for filtering lists)."""
        have = self.privileges(auth_id, path)
        return (bool(have & set(privs)) if privs else bool(have)) if any_of else set(privs) <= have

    def check(self, auth_id: AuthId, path: str, *privs: Privilege, any_of: bool = False) -> None:
        """Raise :class:`PermissionDenied` unless ``auth_id`` has all of ``privs`` on ``path``.

        With ``any_of``, one of them suffices (and with no ``privs`` given, any
        privilege at all).
        """
        if not self.has(auth_id, path, *privs, any_of=any_of):
            need = (" or " if any_of else " and ").join(p.value for p in privs) or "any privilege"
            raise PermissionDenied(f"permission check failed: {auth_id} needs {need} on {path}")

    def has_any_below(self, auth_id: AuthId, path_prefix: str) -> bool:
        """True if ``auth_id`` has some privilege on ``path_prefix`` or on any path below it.

        Used to decide whether to show a namespace whose children may be visible.
        """
        comps = parse_acl_path(path_prefix)
        state, now = self._state, self._clock()
        if not state.is_active(auth_id, now):
            return False
        if auth_id == ROOT_AUTH_ID:
            return True
        # privileges only change at nodes with entries for the auth-id or its user: check each
        # such node at or below the prefix, and just below it (where only propagated roles count)
        candidates = [comps] + [
            node
            for node in state.relevant_nodes(auth_id)
            if len(node) > len(comps) and node[: len(comps)] == comps
        ]
        return any(
            state.privileges(auth_id, node, now) or state.privileges(auth_id, (*node, _ANY_CHILD), now)
            for node in candidates
        )

    def permissions(self, auth_id: AuthId, path: str | None = None) -> dict[str, frozenset[Privilege]]:
        """Effective privileges on ``path``, or (without) on ``/`` and every path with an entry that matters.

        For ``user permissions`` and a permissions API; sorted by path.
        """
        state, now = self._state, self._clock()
        if path is not None:
            comps = parse_acl_path(path)
            return {format_acl_path(comps): state.privileges(auth_id, comps, now)}
        nodes = {(), *state.relevant_nodes(auth_id)}
        return {format_acl_path(n): state.privileges(auth_id, n, now) for n in sorted(nodes)}

    def acl_entries(self) -> list[AclEntry]:
        """The ACL entries of this snapshot, sorted."""
        entries = [
            AclEntry(format_acl_path(node), a, role, prop)
            for node, by_auth in self._state.tree.items()
            for a, roles in by_auth.items()
            for role, prop in roles.items()
        ]
        return sorted(entries, key=AclEntry.sort_key)


__all__ = ["AccessControl"]
