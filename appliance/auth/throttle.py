"""Slow down, then lock, repeated failed sign-ins per account and per client address.

In memory, per process: after `slow_after` failures within `window` seconds each further
failure is answered after a growing delay (up to `max_delay`); at `threshold` failures the key
is locked for `lockout` seconds, during which even the right password is refused. Unknown
account names are counted exactly like known ones, so a lock says nothing about existence.
Addresses get five times the account threshold (many people may share one NAT address).
The clock is injected.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

MAX_KEYS = 100_000


@dataclass
class _Entry:
    failures: list[float] = field(default_factory=list)
    locked_until: float = 0.0


class SignInThrottle:
    def __init__(  # noqa: PLR0917
        self,
        clock: Callable[[], float],
        threshold: int = 10,
        window: float = 900.0,
        lockout: float = 900.0,
        slow_after: int = 3,
        max_delay: float = 2.0,
    ) -> None:
        self.clock = clock
        self.threshold = threshold
        self.window = window
        self.lockout = lockout
        self.slow_after = slow_after
        self.max_delay = max_delay
        self._entries: dict[str, _Entry] = {}

    @staticmethod
    def keys(account: str, address: str | None) -> list[str]:
        keys = [f"account:{account.lower()}"] if account else []
        if address:
            keys.append(f"address:{address}")
        return keys

    def _limit(self, key: str) -> int:
        return self.threshold * (5 if key.startswith("address:") else 1)

    def locked_for(self, keys: list[str]) -> float:
        """Seconds until every key is unlocked (0: not locked)."""
        now = self.clock()
        waits = [e.locked_until - now for k in keys if (e := self._entries.get(k)) is not None]
        return max([0.0, *waits])

    def delay(self, keys: list[str]) -> float:
        """How long to hold back the answer to a failure now."""
        now = self.clock()
        worst = 0
        for k in keys:
            e = self._entries.get(k)
            if e is not None:
                worst = max(worst, sum(1 for t in e.failures if t > now - self.window))
        over = worst - self.slow_after
        return 0.0 if over < 0 else min(self.max_delay, 0.1 * (2**over))

    def failure(self, keys: list[str]) -> None:
        now = self.clock()
        if len(self._entries) > MAX_KEYS:
            self._prune(now)
        for k in keys:
            e = self._entries.setdefault(k, _Entry())
            e.failures = [t for t in e.failures if t > now - self.window]
            e.failures.append(now)
            if len(e.failures) >= self._limit(k):
                e.locked_until = now + self.lockout
                e.failures.clear()

    def success(self, keys: list[str]) -> None:
        for k in keys:
            if k.startswith("account:"):
                self._entries.pop(k, None)

    def _prune(self, now: float) -> None:
        for k in [
            k
            for k, e in self._entries.items()
            if e.locked_until < now and not any(t > now - self.window for t in e.failures)
        ]:
            del self._entries[k]
