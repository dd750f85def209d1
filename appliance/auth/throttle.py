"""Slow down, then lock, repeated failed sign-ins per account and per client address.

Failures are counted in a leaky bucket per key, shared by every serving process of the host
(runtime/buckets.py): each failure adds one, and `threshold` failures leak away over `window`
seconds. After `slow_after` failures still counted, each further failure is answered after a
growing delay (up to `max_delay`); when `threshold` are counted the key is locked for
`lockout` seconds, during which even the right password is refused. Unknown account names are
counted exactly like known ones, so a lock says nothing about existence. Addresses get five
times the account threshold (many people may share one NAT address). The clock is injected.
"""

from __future__ import annotations

from collections.abc import Callable

from appliance import backoff
from appliance.runtime.buckets import SharedBuckets


class SignInThrottle:
    def __init__(  # noqa: PLR0917
        self,
        clock: Callable[[], float],
        threshold: int = 10,
        window: float = 900.0,
        lockout: float = 900.0,
        slow_after: int = 3,
        max_delay: float = 2.0,
        buckets: SharedBuckets | None = None,
    ) -> None:
        self.clock = clock
        self.threshold = threshold
        self.window = window
        self.lockout = lockout
        self.slow_after = slow_after
        self.max_delay = max_delay
        self.buckets = buckets or SharedBuckets()

    @staticmethod
    def keys(account: str, address: str | None) -> list[str]:
        keys = [f"account:{account.lower()}"] if account else []
        if address:
            keys.append(f"address:{address}")
        return keys

    def _shape(self, key: str) -> tuple[float, float]:
        """(leak rate, capacity) of a key's bucket."""
        limit = float(max(1, self.threshold) * (5 if key.startswith("address:") else 1))
        return limit / max(self.window, 1e-9), limit

    def locked_for(self, keys: list[str]) -> float:
        """Seconds until every key is unlocked (0: not locked)."""
        now = self.clock()
        waits = [self.buckets.peek(k, *self._shape(k), now).locked_until - now for k in keys]
        return max([0.0, *waits])

    def _counted(self, key: str, now: float) -> float:
        rate, capacity = self._shape(key)
        return capacity - self.buckets.peek(key, rate, capacity, now).tokens

    def delay(self, keys: list[str]) -> float:
        """How long to hold back the answer to a failure now."""
        now = self.clock()
        worst = max([0.0, *(self._counted(k, now) for k in keys)])
        over = round(worst) - self.slow_after
        return 0.0 if over < 0 else backoff.delay(over, 0.1, self.max_delay)

    def failure(self, keys: list[str]) -> None:
        now = self.clock()
        for k in keys:
            rate, capacity = self._shape(k)
            (taken,) = self.buckets.take([k], rate, capacity, now)
            if not taken.ok or taken.tokens < 1.0:  # the bucket is full of failures
                self.buckets.lock(k, now + self.lockout, rate, capacity, now)

    def success(self, keys: list[str]) -> None:
        now = self.clock()
        for k in keys:
            if k.startswith("account:"):
                self.buckets.reset(k, self._shape(k)[1], now)
