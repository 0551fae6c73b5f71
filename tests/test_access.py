"""Access control: privilege evaluation, passwords, tokens, tickets, throttling, the access files."""

from __future__ import annotations

import os
import stat
import string
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from asyncsync import access
from asyncsync.access import (
    ALL_PRIVILEGES,
    ROLES,
    AccessControl,
    LoginThrottle,
    LoginThrottled,
    Privilege,
    acl_update,
    create_user,
    generate_token,
)
from asyncsync.access.hashing import hash_password, hash_token_secret, verify_password, verify_token_secret
from asyncsync.access.tickets import TICKET_LIFETIME
from asyncsync.config.paths import Paths
from asyncsync.errors import (
    AlreadyExists,
    AuthenticationFailed,
    Conflict,
    InvalidInput,
    InvalidName,
    NotFound,
    PermissionDenied,
)
from asyncsync.names import ROOT_AUTH_ID, AuthId, Namespace

P = Privilege
SYNC = AuthId.parse("sync@pbs")
TOKEN = AuthId.parse("sync@pbs!tok")
NONE: frozenset[Privilege] = frozenset()
T0 = 1_800_000_000.0


class Clock:
    """A settable clock (epoch or monotonic seconds)."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def load(paths: Paths, clock: Clock | None = None) -> AccessControl:
    return AccessControl.load(paths, clock=clock or Clock())


# ---- the role table ---------------------------------------------------------------


def test_privilege_values_and_roles_follow_pbs() -> None:
    assert {p.value for p in Privilege} == {
        "Datastore.Audit",
        "Datastore.Read",
        "Datastore.Backup",
        "Datastore.Prune",
        "Datastore.Modify",
        "Datastore.Verify",
        "Remote.Audit",
        "Remote.Read",
        "Remote.Modify",
        "Sys.Audit",
        "Sys.Modify",
        "Permissions.Modify",
    }
    assert ROLES["Admin"] == ALL_PRIVILEGES
    assert ROLES["NoAccess"] == NONE
    assert ROLES["Audit"] == {P.DATASTORE_AUDIT, P.REMOTE_AUDIT, P.SYS_AUDIT}
    assert ROLES["DatastoreAdmin"] == {
        P.DATASTORE_AUDIT,
        P.DATASTORE_READ,
        P.DATASTORE_BACKUP,
        P.DATASTORE_PRUNE,
        P.DATASTORE_MODIFY,
        P.DATASTORE_VERIFY,
    }
    assert ROLES["DatastoreReader"] == {P.DATASTORE_AUDIT, P.DATASTORE_READ, P.DATASTORE_VERIFY}
    assert ROLES["DatastoreBackup"] == {P.DATASTORE_BACKUP}
    assert ROLES["DatastorePowerUser"] == {P.DATASTORE_BACKUP, P.DATASTORE_PRUNE}
    assert ROLES["DatastoreAudit"] == {P.DATASTORE_AUDIT}
    assert ROLES["RemoteAdmin"] == {P.REMOTE_AUDIT, P.REMOTE_READ, P.REMOTE_MODIFY}
    assert ROLES["RemoteAudit"] == {P.REMOTE_AUDIT}
    assert ROLES["RemoteSyncOperator"] == {P.REMOTE_AUDIT, P.REMOTE_READ}


# ---- ACL paths ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "canonical"),
    [
        ("/", "/"),
        ("/datastore", "/datastore"),
        ("/datastore/", "/datastore"),
        ("/datastore/store1", "/datastore/store1"),
        ("/datastore/store1/a/b/c/d/e/f/g", "/datastore/store1/a/b/c/d/e/f/g"),
        ("/remote", "/remote"),
        ("/remote/pbs2", "/remote/pbs2"),
        ("/remote/pbs2/store", "/remote/pbs2/store"),
        ("/system", "/system"),
        ("/access", "/access"),
    ],
)
def test_valid_acl_paths(path: str, canonical: str) -> None:
    assert access.normalize_acl_path(path) == canonical


@pytest.mark.parametrize(
    "path",
    [
        "",
        "datastore",
        "//",
        "/datastore//s",
        "/datastore/..",
        "/datastore/s/../x",
        "/datastore/.hidden",
        "/datastore/s/a/b/c/d/e/f/g/h",
        "/remote/r/s/t",
        "/remote/../x",
        "/system/x",
        "/access/users",
        "/etc",
        "/datastore/s\0",
        "/datastore/s p",
    ],
)
def test_invalid_acl_paths_are_refused(path: str) -> None:
    with pytest.raises(InvalidName):
        access.parse_acl_path(path)


def test_datastore_and_remote_acl_paths() -> None:
    assert access.datastore_acl_path("store", Namespace.parse("a/b")) == "/datastore/store/a/b"
    assert access.datastore_acl_path("store", Namespace()) == "/datastore/store"
    assert access.remote_acl_path("pbs2") == "/remote/pbs2"
    assert access.remote_acl_path("pbs2", "s") == "/remote/pbs2/s"
    with pytest.raises(InvalidName):
        access.datastore_acl_path("../x", Namespace())


_COMPONENT = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,8}", fullmatch=True).filter(lambda s: ".." not in s)


@given(st.text(alphabet=string.ascii_letters + "/._-\0 ", max_size=40))
def test_acl_path_parser_never_crashes_and_canonical_form_is_stable(text: str) -> None:
    try:
        canonical = access.normalize_acl_path(text)
    except InvalidName:
        return
    assert access.normalize_acl_path(canonical) == canonical


@given(_COMPONENT, st.lists(_COMPONENT, max_size=7))
def test_datastore_acl_path_round_trips(store: str, ns: list[str]) -> None:
    path = access.datastore_acl_path(store, Namespace(tuple(ns)))
    assert access.parse_acl_path(path) == ("datastore", store, *ns)


# ---- evaluation ----------------------------------------------------------------------

# (path an entry is set on, a path below it or None, an unrelated path)
PATH_KINDS = [
    ("/", "/datastore/s/a", None),
    ("/datastore", "/datastore/s", "/remote"),
    ("/datastore/s", "/datastore/s/a/b", "/datastore/t"),
    ("/datastore/s/a", "/datastore/s/a/b", "/datastore/s/b"),
    ("/remote", "/remote/r/s", "/datastore/s"),
    ("/remote/r", "/remote/r/s", "/remote/q"),
    ("/remote/r/s", None, "/remote/r/t"),
    ("/system", None, "/datastore"),
    ("/access", None, "/system"),
]


@pytest.mark.parametrize("propagate", [True, False], ids=["propagate", "no-propagate"])
@pytest.mark.parametrize(("path", "below", "other"), PATH_KINDS)
@pytest.mark.parametrize("role", list(ROLES))
def test_role_on_path_matrix(
    paths: Paths, role: str, path: str, below: str | None, other: str | None, propagate: bool
) -> None:
    create_user(paths, SYNC)
    acl_update(paths, path, role, SYNC, propagate=propagate)
    ac = load(paths)
    assert ac.privileges(SYNC, path) == ROLES[role]
    if below is not None:
        assert ac.privileges(SYNC, below) == (ROLES[role] if propagate else NONE)
    if other is not None:
        assert ac.privileges(SYNC, other) == NONE
    if path != "/":
        assert ac.privileges(SYNC, "/") == NONE
    # the user's entries give its tokens nothing
    tid, _ = generate_token(paths, SYNC, "tok")
    assert load(paths).privileges(tid, path) == NONE


def test_deeper_entry_replaces_inherited_roles(paths: Paths) -> None:
    create_user(paths, SYNC)
    acl_update(paths, "/", "Admin", SYNC)
    acl_update(paths, "/datastore/s", "DatastoreAudit", SYNC)
    ac = load(paths)
    assert ac.privileges(SYNC, "/datastore/s") == {P.DATASTORE_AUDIT}
    assert ac.privileges(SYNC, "/datastore/s/a/b") == {P.DATASTORE_AUDIT}
    assert ac.privileges(SYNC, "/datastore/t") == ALL_PRIVILEGES
    assert ac.privileges(SYNC, "/system") == ALL_PRIVILEGES


def test_non_propagating_deeper_entry_applies_only_on_its_path(paths: Paths) -> None:
    create_user(paths, SYNC)
    acl_update(paths, "/datastore", "DatastoreReader", SYNC)
    acl_update(paths, "/datastore/s", "DatastoreBackup", SYNC, propagate=False)
    ac = load(paths)
    assert ac.privileges(SYNC, "/datastore/s") == {P.DATASTORE_BACKUP}
    assert ac.privileges(SYNC, "/datastore/s/a") == ROLES["DatastoreReader"]


def test_roles_on_one_node_add_up(paths: Paths) -> None:
    create_user(paths, SYNC)
    acl_update(paths, "/datastore/s", "DatastoreBackup", SYNC)
    acl_update(paths, "/datastore/s", "DatastoreAudit", SYNC)
    assert load(paths).privileges(SYNC, "/datastore/s/a") == {P.DATASTORE_BACKUP, P.DATASTORE_AUDIT}


def test_no_access_masks_inherited_and_sibling_roles(paths: Paths) -> None:
    create_user(paths, SYNC)
    acl_update(paths, "/", "Admin", SYNC)
    acl_update(paths, "/datastore/s", "NoAccess", SYNC)
    acl_update(paths, "/datastore/s", "DatastoreReader", SYNC)
    acl_update(paths, "/datastore/u", "NoAccess", SYNC, propagate=False)
    ac = load(paths)
    assert ac.privileges(SYNC, "/datastore/s") == NONE
    assert ac.privileges(SYNC, "/datastore/s/a/b") == NONE
    assert ac.privileges(SYNC, "/datastore/t") == ALL_PRIVILEGES
    # not propagated: masks only its own path; below it "/" applies again
    assert ac.privileges(SYNC, "/datastore/u") == NONE
    assert ac.privileges(SYNC, "/datastore/u/a") == ALL_PRIVILEGES


def test_token_privileges_are_the_intersection_with_its_user(paths: Paths) -> None:
    create_user(paths, SYNC)
    tid, _ = generate_token(paths, SYNC, "tok")
    acl_update(paths, "/datastore/s", "DatastoreReader", SYNC)
    acl_update(paths, "/datastore/t", "DatastoreReader", SYNC)
    acl_update(paths, "/", "Admin", tid)
    acl_update(paths, "/datastore/t", "DatastoreAudit", tid)
    ac = load(paths)
    assert ac.privileges(tid, "/datastore/s/a") == ROLES["DatastoreReader"]
    assert ac.privileges(tid, "/datastore/t") == {P.DATASTORE_AUDIT}
    assert ac.privileges(tid, "/remote") == NONE  # the user has nothing there
    assert (
        ac.privileges(SYNC, "/datastore/t") == ROLES["DatastoreReader"]
    )  # token entries do not widen the user


def test_root_has_everything_and_its_tokens_only_their_entries(paths: Paths) -> None:
    rtok, _ = generate_token(paths, ROOT_AUTH_ID, "admin")
    acl_update(paths, "/datastore/s", "DatastoreReader", rtok)
    ac = load(paths)
    for path in ["/", "/datastore/s/a", "/remote/r/s", "/system", "/access"]:
        assert ac.privileges(ROOT_AUTH_ID, path) == ALL_PRIVILEGES
    assert ac.has_any_below(ROOT_AUTH_ID, "/remote")
    assert ac.privileges(rtok, "/datastore/s") == ROLES["DatastoreReader"]
    assert ac.privileges(rtok, "/system") == NONE


def test_unknown_disabled_and_expired_auth_ids_have_nothing(paths: Paths) -> None:
    clock = Clock()
    create_user(paths, SYNC, expire=int(T0) + 100)
    tid, secret = generate_token(paths, SYNC, "tok", expire=int(T0) + 50)
    acl_update(paths, "/", "Admin", SYNC)
    acl_update(paths, "/", "Admin", tid)
    ac = load(paths, clock)
    assert ac.privileges(SYNC, "/") == ALL_PRIVILEGES
    assert ac.privileges(tid, "/") == ALL_PRIVILEGES
    assert ac.authenticate_token(tid, secret) == tid
    assert ac.privileges(AuthId.parse("ghost@pbs"), "/") == NONE
    clock.now = T0 + 50  # the token expired, the user not yet
    assert ac.privileges(tid, "/") == NONE
    assert ac.privileges(SYNC, "/") == ALL_PRIVILEGES
    with pytest.raises(AuthenticationFailed):
        ac.authenticate_token(tid, secret)
    clock.now = T0 + 100
    assert ac.privileges(SYNC, "/") == NONE
    assert not ac.has_any_below(SYNC, "/")

    access.update_user(paths, SYNC, expire=0, enable=False)
    access.update_token(paths, SYNC, "tok", expire=0)
    ac = load(paths, clock)
    assert ac.privileges(SYNC, "/") == NONE
    assert ac.privileges(tid, "/") == NONE  # a disabled user's token is dead too
    with pytest.raises(AuthenticationFailed):
        ac.authenticate_token(tid, secret)
    access.update_user(paths, SYNC, enable=True)
    access.update_token(paths, SYNC, "tok", enable=False)
    ac = load(paths, clock)
    assert ac.privileges(SYNC, "/") == ALL_PRIVILEGES
    assert ac.privileges(tid, "/") == NONE


def test_check_raises_permission_denied(paths: Paths) -> None:
    create_user(paths, SYNC)
    acl_update(paths, "/datastore/s", "DatastoreBackup", SYNC)
    ac = load(paths)
    ac.check(SYNC, "/datastore/s", P.DATASTORE_BACKUP)
    ac.check(SYNC, "/datastore/s", P.DATASTORE_READ, P.DATASTORE_BACKUP, any_of=True)
    ac.check(SYNC, "/datastore/s", any_of=True)
    with pytest.raises(PermissionDenied, match=r"Datastore\.Read and Datastore\.Backup"):
        ac.check(SYNC, "/datastore/s", P.DATASTORE_READ, P.DATASTORE_BACKUP)
    with pytest.raises(PermissionDenied):
        ac.check(SYNC, "/datastore/t", any_of=True)
    with pytest.raises(InvalidName):
        ac.check(SYNC, "/datastore/../etc", P.DATASTORE_READ)


def test_has_any_below(paths: Paths) -> None:
    create_user(paths, SYNC)
    tid, _ = generate_token(paths, SYNC, "tok")
    acl_update(paths, "/datastore/s/a/b", "DatastoreReader", SYNC)
    acl_update(paths, "/datastore/s/a/b", "DatastoreReader", tid)
    ac = load(paths)
    for prefix in ["/", "/datastore", "/datastore/s", "/datastore/s/a", "/datastore/s/a/b"]:
        assert ac.has_any_below(SYNC, prefix), prefix
        assert ac.has_any_below(tid, prefix), prefix
    for prefix in ["/datastore/t", "/datastore/s/b", "/remote", "/system"]:
        assert not ac.has_any_below(SYNC, prefix), prefix
    # masked by NoAccess below: nothing left
    acl_update(paths, "/datastore/s/a/b", "NoAccess", SYNC)
    assert not load(paths).has_any_below(SYNC, "/datastore/s")


def test_has_any_below_sees_privileges_propagated_past_a_non_propagating_mask(paths: Paths) -> None:
    create_user(paths, SYNC)
    acl_update(paths, "/datastore", "DatastoreReader", SYNC)
    acl_update(paths, "/datastore/s", "NoAccess", SYNC, propagate=False)
    ac = load(paths)
    assert ac.privileges(SYNC, "/datastore/s") == NONE
    assert ac.has_any_below(SYNC, "/datastore/s")


def test_has_any_below_token_needs_its_user_too(paths: Paths) -> None:
    create_user(paths, SYNC)
    tid, _ = generate_token(paths, SYNC, "tok")
    acl_update(paths, "/datastore/s", "DatastoreReader", tid)
    acl_update(paths, "/datastore/t", "DatastoreReader", SYNC)
    ac = load(paths)
    assert not ac.has_any_below(tid, "/datastore")
    acl_update(paths, "/datastore/s/x", "DatastoreAudit", SYNC)
    ac = load(paths)
    assert ac.has_any_below(tid, "/datastore")
    assert ac.privileges(tid, "/datastore/s/x") == {P.DATASTORE_AUDIT}


def test_permissions_summary(paths: Paths) -> None:
    create_user(paths, SYNC)
    acl_update(paths, "/datastore/s", "DatastoreBackup", SYNC)
    perms = load(paths).permissions(SYNC)
    assert perms == {"/": NONE, "/datastore/s": {P.DATASTORE_BACKUP}}
    assert load(paths).permissions(SYNC, "/datastore/s/a/") == {"/datastore/s/a": {P.DATASTORE_BACKUP}}


# ---- passwords and tokens --------------------------------------------------------------


def test_scrypt_round_trip_and_wrong_password() -> None:
    h = hash_password("correct horse")
    assert h.startswith("$scrypt$ln=15,r=8,p=1$")
    assert "correct horse" not in h
    assert h != hash_password("correct horse")  # salted
    assert verify_password("correct horse", h)
    assert not verify_password("correct horsE", h)
    assert not verify_password("correct horse", None)
    for broken in ["", "$scrypt$", "$scrypt$ln=99,r=8,p=1$AAAA$AAAA", "$md5$x$y$z", h[:-4]]:
        assert not verify_password("correct horse", broken)


def test_token_secret_hash_round_trip() -> None:
    h = hash_token_secret("s3cret")
    assert verify_token_secret("s3cret", h)
    assert not verify_token_secret("s3creT", h)
    assert not verify_token_secret("s3cret", None)
    assert not verify_token_secret("s3cret", "$sha256$!!$!!")
    assert not verify_token_secret("\udcff", h)


def test_password_login(paths: Paths) -> None:
    create_user(paths, SYNC, "good password")
    create_user(paths, "nopw@pbs")
    ac = load(paths)
    assert ac.authenticate_password(SYNC, "good password") == SYNC
    for uid, pw in [
        (SYNC, "bad password"),
        (AuthId.parse("nopw@pbs"), ""),
        (AuthId.parse("ghost@pbs"), "good password"),
        (ROOT_AUTH_ID, ""),
        (TOKEN, "good password"),
    ]:
        with pytest.raises(AuthenticationFailed, match="authentication failed"):
            ac.authenticate_password(uid, pw)


def test_root_password_login_only_once_set(paths: Paths) -> None:
    with pytest.raises(AuthenticationFailed):
        load(paths).authenticate_password(ROOT_AUTH_ID, "root password")
    access.update_user(paths, ROOT_AUTH_ID, password="root password")
    assert load(paths).authenticate_password(ROOT_AUTH_ID, "root password") == ROOT_AUTH_ID
    access.set_password(paths, ROOT_AUTH_ID, None)
    with pytest.raises(AuthenticationFailed):
        load(paths).authenticate_password(ROOT_AUTH_ID, "root password")


def test_password_policy(paths: Paths) -> None:
    with pytest.raises(InvalidInput, match="at least 8"):
        create_user(paths, SYNC, "short")
    assert not (paths.config / "user.cfg").exists() or SYNC not in {
        u.userid for u in access.list_users(paths)
    }


def test_token_login_and_secret_not_stored(paths: Paths) -> None:
    create_user(paths, SYNC)
    tid, secret = generate_token(paths, SYNC, "tok", comment="for pbs2")
    assert tid == TOKEN
    assert len(secret) >= 40
    for f in paths.config.iterdir():
        assert secret.encode() not in f.read_bytes(), f
    ac = load(paths)
    assert ac.authenticate_token(tid, secret) == tid
    for bad_id, bad_secret in [
        (tid, secret + "x"),
        (tid, ""),
        (SYNC, secret),
        (AuthId.parse("sync@pbs!x"), secret),
    ]:
        with pytest.raises(AuthenticationFailed):
            ac.authenticate_token(bad_id, bad_secret)
    assert [t.comment for t in access.list_tokens(paths, SYNC)] == ["for pbs2"]
    with pytest.raises(AlreadyExists):
        generate_token(paths, SYNC, "tok")
    access.delete_token(paths, SYNC, "tok")
    ac.reload_if_changed()
    with pytest.raises(AuthenticationFailed):
        ac.authenticate_token(tid, secret)


# ---- tickets -----------------------------------------------------------------------------


def test_ticket_round_trip_expiry_and_csrf(paths: Paths) -> None:
    clock = Clock()
    create_user(paths, SYNC)
    ac = load(paths, clock)
    ticket, csrf = ac.issue_ticket(SYNC)
    assert ac.verify_ticket(ticket) == SYNC
    ac.verify_csrf(SYNC, ticket, csrf)
    with pytest.raises(AuthenticationFailed):
        ac.verify_csrf(SYNC, ticket, csrf[:-1] + ("A" if csrf[-1] != "A" else "B"))
    with pytest.raises(AuthenticationFailed):
        ac.verify_csrf(AuthId.parse("other@pbs"), ticket, csrf)
    clock.now = T0 + 10
    other_ticket, _ = ac.issue_ticket(SYNC)
    with pytest.raises(AuthenticationFailed):
        ac.verify_csrf(SYNC, other_ticket, csrf)  # bound to the ticket it came with
    clock.now = T0 + TICKET_LIFETIME - 1
    assert ac.verify_ticket(ticket) == SYNC
    clock.now = T0 + TICKET_LIFETIME
    with pytest.raises(AuthenticationFailed, match="expired"):
        ac.verify_ticket(ticket)
    clock.now = T0 - 301
    with pytest.raises(AuthenticationFailed, match="future"):
        ac.verify_ticket(ticket)


def test_tampered_or_foreign_tickets_are_refused(paths: Paths, tmp_path: Path) -> None:
    create_user(paths, SYNC)
    create_user(paths, "other@pbs")
    ac = load(paths)
    ticket, _ = ac.issue_ticket(SYNC)
    payload, _, sig = ticket.partition("::")
    later = payload[:-8] + f"{int(T0) + 3600:08X}"
    tampered = [
        ticket.replace("sync@pbs", "other@pbs"),
        f"{later}::{sig}",
        ticket[:-2] + ("AA" if not ticket.endswith("AA") else "BB"),
        payload,
        "",
        "x" * 5000,
        ticket.replace("ASYNCSYNC", "PBS"),
    ]
    for t in tampered:
        with pytest.raises(AuthenticationFailed):
            ac.verify_ticket(t)
    # another installation has another key
    other = Paths(tmp_path / "other-etc", tmp_path / "other-state")
    create_user(other, SYNC)
    with pytest.raises(AuthenticationFailed):
        load(other).verify_ticket(ticket)


def test_ticket_of_disabled_user_and_odd_user_names(paths: Paths) -> None:
    odd = AuthId.parse("a;b,c%d@pbs")
    create_user(paths, SYNC)
    create_user(paths, odd)
    ac = load(paths)
    ticket, _ = ac.issue_ticket(odd)
    assert set(ticket) <= set(string.ascii_letters + string.digits + ":@%-_")
    assert ac.verify_ticket(ticket) == odd
    ticket, _ = ac.issue_ticket(SYNC)
    access.update_user(paths, SYNC, enable=False)
    assert ac.reload_if_changed()
    with pytest.raises(AuthenticationFailed):
        ac.verify_ticket(ticket)
    with pytest.raises(AuthenticationFailed):
        ac.issue_ticket(TOKEN)


def test_authkey_is_made_once_and_kept(paths: Paths) -> None:
    ac = load(paths)
    key = (paths.config / "authkey").read_bytes()
    assert len(key) == 32
    ticket, _ = ac.issue_ticket(ROOT_AUTH_ID)
    assert load(paths).verify_ticket(ticket) == ROOT_AUTH_ID
    assert (paths.config / "authkey").read_bytes() == key
    assert [p.name for p in paths.config.iterdir() if p.name.startswith(".authkey")] == []


# ---- throttling ------------------------------------------------------------------------------


def test_throttle_locks_out_with_growing_delay() -> None:
    clock = Clock(0.0)
    t = LoginThrottle(free_failures=3, base_delay=1.0, max_delay=8.0, forget_after=600.0, clock=clock)
    for _ in range(3):
        t.check("u")
        assert t.record_failure("u") == 0.0
    assert t.record_failure("u") == 1.0
    with pytest.raises(LoginThrottled) as info:
        t.check("u")
    assert isinstance(info.value, AuthenticationFailed)
    assert info.value.retry_after == 1.0
    t.check("other")  # other keys are not affected
    clock.now = 1.0
    t.check("u")
    assert [t.record_failure("u") for _ in range(4)] == [2.0, 4.0, 8.0, 8.0]
    assert t.retry_after("u") == 8.0
    assert t.statistics() == {"keys": 1, "locked": 1}
    t.record_success("u")
    t.check("u")
    assert t.record_failure("u") == 0.0


def test_throttle_forgets_and_is_bounded() -> None:
    clock = Clock(0.0)
    t = LoginThrottle(free_failures=0, base_delay=1.0, forget_after=60.0, max_keys=3, clock=clock)
    assert t.record_failure("a") == 1.0
    clock.now = 61.0
    assert t.record_failure("a") == 1.0  # forgotten: starts over
    for k in "bcd":
        t.record_failure(k)
    assert t.statistics()["keys"] == 3
    assert t.retry_after("a") == 0.0  # evicted as the oldest


def test_password_guessing_is_throttled(paths: Paths) -> None:
    clock = Clock(0.0)
    create_user(paths, SYNC, "good password")
    ac = AccessControl.load(paths, throttle=LoginThrottle(free_failures=2, base_delay=30.0, clock=clock))
    for _ in range(3):
        with pytest.raises(AuthenticationFailed):
            ac.authenticate_password(SYNC, "guess")
    with pytest.raises(LoginThrottled):
        ac.authenticate_password(SYNC, "good password")  # even the right one, while locked
    clock.now = 30.0
    assert ac.authenticate_password(SYNC, "good password") == SYNC
    assert ac.throttle.retry_after(str(SYNC)) == 0.0


# ---- files and management --------------------------------------------------------------------


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_secret_files_are_owner_only(paths: Paths) -> None:
    create_user(paths, SYNC, "good password")
    generate_token(paths, SYNC, "tok")
    load(paths)
    for name in ["shadow.cfg", "token.shadow", "authkey"]:
        assert _mode(paths.config / name) == 0o600, name
    text = (paths.config / "user.cfg").read_text()
    assert "user: sync@pbs" in text
    assert "token: sync@pbs!tok" in text
    assert "hash" not in text


def test_remove_user_takes_tokens_passwords_and_acl_entries(paths: Paths) -> None:
    create_user(paths, SYNC, "good password")
    create_user(paths, "keep@pbs")
    tid, _ = generate_token(paths, SYNC, "tok")
    acl_update(paths, "/datastore/s", "DatastoreReader", SYNC)
    acl_update(paths, "/datastore/s", "DatastoreReader", tid)
    acl_update(paths, "/datastore/s", "DatastoreReader", "keep@pbs")
    access.remove_user(paths, SYNC)
    assert [str(e.auth_id) for e in access.acl_list(paths)] == ["keep@pbs"]
    for name in ["user.cfg", "shadow.cfg", "token.shadow", "acl.cfg"]:
        assert "sync@pbs" not in (paths.config / name).read_text(), name
    # a new user of the same name starts from nothing
    create_user(paths, SYNC)
    ac = load(paths)
    assert ac.privileges(SYNC, "/datastore/s") == NONE
    with pytest.raises(AuthenticationFailed):
        ac.authenticate_password(SYNC, "good password")
    with pytest.raises(NotFound):
        access.remove_user(paths, "ghost@pbs")
    with pytest.raises(InvalidInput):
        access.remove_user(paths, ROOT_AUTH_ID)


def test_management_refusals_change_nothing(paths: Paths) -> None:
    create_user(paths, SYNC, comment="first")
    generate_token(paths, SYNC, "tok")
    acl_update(paths, "/datastore/s", "DatastoreReader", SYNC)
    before = {p.name: p.read_bytes() for p in paths.config.iterdir()}
    with pytest.raises(AlreadyExists):
        create_user(paths, SYNC)
    with pytest.raises(AlreadyExists):
        create_user(paths, ROOT_AUTH_ID)
    with pytest.raises(InvalidName):
        create_user(paths, TOKEN)
    with pytest.raises(InvalidName):
        create_user(paths, "no-realm")
    with pytest.raises(InvalidInput):
        create_user(paths, "x@pbs", comment="two\nlines")
    with pytest.raises(InvalidInput):
        create_user(paths, "x@pbs", email="not an address")
    with pytest.raises(InvalidInput):
        access.update_user(paths, ROOT_AUTH_ID, comment="root")
    with pytest.raises(NotFound):
        acl_update(paths, "/", "Admin", "ghost@pbs")
    with pytest.raises(NotFound):
        acl_update(paths, "/", "Admin", "sync@pbs!ghost")
    with pytest.raises(InvalidName):
        acl_update(paths, "/", "Superuser", SYNC)
    with pytest.raises(InvalidName):
        acl_update(paths, "/datastore/../../etc", "Admin", SYNC)
    with pytest.raises(NotFound):
        access.acl_remove(paths, "/datastore/s", "DatastoreAdmin", SYNC)
    with pytest.raises(NotFound):
        generate_token(paths, "ghost@pbs", "tok")
    with pytest.raises(InvalidName):
        generate_token(paths, SYNC, "bad/name")
    with pytest.raises(NotFound):
        access.delete_token(paths, SYNC, "ghost")
    with pytest.raises(Conflict):
        access.update_user(paths, SYNC, comment="second", digest="0" * 64)
    after = {p.name: p.read_bytes() for p in paths.config.iterdir()}
    assert after == before


def test_update_user_and_acl_propagate_change(paths: Paths) -> None:
    create_user(paths, SYNC, comment="first", email="a@example.org")
    u = access.update_user(paths, SYNC, comment="second", email="")
    assert (u.comment, u.email, u.enable) == ("second", "", True)
    assert access.get_user(paths, SYNC) == u
    acl_update(paths, "/datastore/s", "DatastoreReader", SYNC)
    acl_update(paths, "/datastore/s", "DatastoreReader", SYNC, propagate=False)
    entries = access.acl_list(paths)
    assert [(e.path, e.role, e.propagate) for e in entries] == [("/datastore/s", "DatastoreReader", False)]
    assert access.acl_list(paths, path="/datastore/s/") == entries
    assert access.acl_list(paths, auth_id="other@pbs") == []
    assert [u.userid for u in access.list_users(paths)] == [ROOT_AUTH_ID, SYNC]


def test_reload_if_changed(paths: Paths) -> None:
    create_user(paths, SYNC)
    ac = load(paths)
    assert not ac.reload_if_changed()
    acl_update(paths, "/", "Audit", SYNC)
    assert ac.privileges(SYNC, "/") == NONE  # a snapshot until reloaded
    assert ac.reload_if_changed()
    assert ac.privileges(SYNC, "/") == ROLES["Audit"]
    # a broken hand edit keeps the last good state in force
    (paths.config / "acl.cfg").write_text("acl: /etc:sync@pbs:Admin\n")
    assert not ac.reload_if_changed()
    assert ac.privileges(SYNC, "/") == ROLES["Audit"]
