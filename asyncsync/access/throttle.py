"""A brake on password guessing: failed logins per key, with growing lockouts.

The first few failures (``free_failures``) cost nothing; each further failure
locks the key for ``base_delay * 2**k`` seconds, capped at ``max_delay``. A
success clears the key; a key without failures for ``forget_after`` seconds
is forgotten. At most ``max_keys`` keys are remembered (oldest dropped), so an
attacker inventing user names cannot grow memory without bound.

The clock is injectable (monotonic seconds) so tests need no sleeps. Plain
``def`` methods: nothing here waits; thread-safe via one lock.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import AuthenticationFailed


class LoginThrottled(AuthenticationFailed):
    """Too many failed logins; try again later."""

    def __init__(self, retry_after: float) -> None:
        self.retry_after = retry_after
        super().__init__(f"too many failed login attempts; try again in {max(1, round(retry_after))} s")


@dataclass(slots=True)
class _Entry:
    failures: int
    last_failure: float
    locked_until: float


class LoginThrottle:
    """Per-key failed-login counter with exponential lockout (see the module docstring)."""

    def __init__(
        self,
        *,
        free_failures: int = 3,
        base_delay: float = 1.0,
        max_delay: float = 300.0,
        forget_after: float = 3600.0,
        max_keys: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.free_failures = free_failures
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.forget_after = forget_after
        self.max_keys = max_keys
        self._clock = clock
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<LoginThrottle keys={len(self._entries)} free={self.free_failures} max={self.max_delay}s>"

    def _get(self, key: str, now: float) -> _Entry | None:
        e = self._entries.get(key)
        if e is not None and now - e.last_failure >= self.forget_after and now >= e.locked_until:
            del self._entries[key]
            return None
        return e

    def retry_after(self, key: str) -> float:
        """Seconds until ``key`` may try again (0.0 if it may try now)."""
        with self._lock:
            now = self._clock()
            e = self._get(key, now)
            return max(0.0, e.locked_until - now) if e is not None else 0.0

    def check(self, key: str) -> None:
        """Raise :class:`LoginThrottled` (an :class:`AuthenticationFailed`) if ``key`` is locked."""
        wait = self.retry_after(key)
        if wait > 0:
            raise LoginThrottled(wait)

    def record_failure(self, key: str) -> float:
        """Count a failed login for ``key``; return the lockout it now has (seconds, 0 if none)."""
        with self._lock:
            now = self._clock()
            e = self._get(key, now)
            if e is None:
                e = _Entry(0, now, now)
                self._entries[key] = e
                while len(self._entries) > self.max_keys:
                    self._entries.popitem(last=False)
            else:
                self._entries.move_to_end(key)
            e.failures += 1
            e.last_failure = now
            over = e.failures - self.free_failures
            delay = 0.0 if over <= 0 else min(self.max_delay, self.base_delay * 2 ** min(over - 1, 62))
            e.locked_until = now + delay
            return delay

    def record_success(self, key: str) -> None:
        """Forget the failures of ``key``."""
        with self._lock:
            self._entries.pop(key, None)

    def statistics(self) -> dict[str, int]:
        """How many keys are remembered and how many are locked right now."""
        with self._lock:
            now = self._clock()
            return {
                "keys": len(self._entries),
                "locked": sum(1 for e in self._entries.values() if e.locked_until > now),
            }


__all__ = ["LoginThrottle", "LoginThrottled"]
