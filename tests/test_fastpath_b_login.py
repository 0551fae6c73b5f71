"""A repeated password login skips scrypt, and nothing else about logins changes.

Security properties under test (see ``asyncsync/access/logincache.py``): wrong
passwords always pay for scrypt and count for the throttle; a changed password
or a disabled user takes effect at once; entries expire; the record is bounded.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from asyncsync.access import (
    AccessControl,
    LoginThrottle,
    LoginThrottled,
    VerifiedPasswords,
    create_user,
    set_password,
    update_user,
)
from asyncsync.access import control as control_mod
from asyncsync.config.paths import Paths
from asyncsync.errors import AuthenticationFailed, InvalidInput
from asyncsync.names import AuthId

USER = AuthId.parse("sync@pbs")
PASSWORD = "correct horse battery"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def scrypt_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Counts the real password verifications (scrypt) AccessControl runs."""
    calls: list[str] = []
    real: Callable[[str, str | None], bool] = control_mod.verify_password

    def counting(password: str, stored: str | None) -> bool:
        calls.append(password)
        return real(password, stored)

    monkeypatch.setattr(control_mod, "verify_password", counting)
    return calls


def make_access(paths: Paths, clock: Clock, **kw: object) -> AccessControl:
    create_user(paths, USER, PASSWORD)
    access = AccessControl.load(paths)
    access.verified = VerifiedPasswords(ttl=60.0, clock=clock, **kw)  # type: ignore[arg-type]
    return access


def test_second_login_skips_scrypt_wrong_passwords_never_do(paths: Paths, scrypt_calls: list[str]) -> None:
    access = make_access(paths, Clock())
    assert access.authenticate_password(USER, PASSWORD) == USER
    assert access.authenticate_password(USER, PASSWORD) == USER
    assert scrypt_calls == [PASSWORD]
    assert access.verified.hits == 1
    for _ in range(2):
        with pytest.raises(AuthenticationFailed):
            access.authenticate_password(USER, PASSWORD + "x")
    assert scrypt_calls == [PASSWORD, PASSWORD + "x", PASSWORD + "x"]
    # unknown users never hit either (the dummy hash runs, as before)
    with pytest.raises(AuthenticationFailed):
        access.authenticate_password(AuthId.parse("nobody@pbs"), PASSWORD)
    assert len(scrypt_calls) == 4


def test_entries_expire(paths: Paths, scrypt_calls: list[str]) -> None:
    clock = Clock()
    access = make_access(paths, clock)
    access.authenticate_password(USER, PASSWORD)
    clock.now += 59
    access.authenticate_password(USER, PASSWORD)
    assert len(scrypt_calls) == 1
    clock.now += 1  # 60 s after the real verification: verified again, not extended by hits
    access.authenticate_password(USER, PASSWORD)
    assert len(scrypt_calls) == 2


def test_changed_password_and_disabled_user_take_effect_at_once(
    paths: Paths, scrypt_calls: list[str]
) -> None:
    access = make_access(paths, Clock())
    access.authenticate_password(USER, PASSWORD)
    set_password(paths, USER, "a new password!")
    assert access.reload_if_changed()
    with pytest.raises(AuthenticationFailed):
        access.authenticate_password(USER, PASSWORD)
    assert access.authenticate_password(USER, "a new password!") == USER
    access.authenticate_password(USER, "a new password!")
    update_user(paths, USER, enable=False)
    assert access.reload_if_changed()
    with pytest.raises(AuthenticationFailed):
        access.authenticate_password(USER, "a new password!")


def test_a_stale_entry_never_matches_a_new_hash_even_without_reload(paths: Paths) -> None:
    cache = VerifiedPasswords(ttl=60.0, clock=Clock())
    cache.remember(USER, "$scrypt$old", PASSWORD)
    assert cache.check(USER, "$scrypt$old", PASSWORD)
    assert not cache.check(USER, "$scrypt$new", PASSWORD)
    assert not cache.check(USER, None, PASSWORD)
    assert not cache.check(AuthId.parse("other@pbs"), "$scrypt$old", PASSWORD)


def test_throttle_still_applies_to_a_remembered_password(paths: Paths) -> None:
    clock = Clock()
    create_user(paths, USER, PASSWORD)
    access = AccessControl.load(paths, throttle=LoginThrottle(free_failures=1, clock=clock))
    access.verified = VerifiedPasswords(ttl=60.0, clock=clock)
    access.authenticate_password(USER, PASSWORD)
    for _ in range(2):
        with pytest.raises(AuthenticationFailed):
            access.authenticate_password(USER, "wrong password")
    with pytest.raises(LoginThrottled):
        access.authenticate_password(USER, PASSWORD)


def test_bounded_and_disabled() -> None:
    clock = Clock()
    cache = VerifiedPasswords(ttl=60.0, max_entries=2, clock=clock)
    for i in range(3):
        cache.remember(USER, f"h{i}", PASSWORD)
    assert len(cache) == 2
    assert not cache.check(USER, "h0", PASSWORD)
    assert cache.check(USER, "h2", PASSWORD)
    off = VerifiedPasswords(ttl=0)
    off.remember(USER, "h", PASSWORD)
    assert not off.check(USER, "h", PASSWORD) and len(off) == 0
    with pytest.raises(InvalidInput):
        VerifiedPasswords(ttl=-1)
