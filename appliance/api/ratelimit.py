"""Rate limits: token buckets per user and per client address, for pulls, pushes and sign-ins.

A bucket holds up to `burst` tokens and refills at `rate` tokens a second; each request takes
one token from its user's bucket and one from its address's bucket, and is refused while either
is empty. The buckets are shared by every serving process of the host (runtime/buckets.py), so the
configured rate holds for the host whatever worker a request reaches.

Refusals carry what a client needs to back off: `Retry-After` (seconds) and the
`RateLimit-Limit`, `RateLimit-Remaining`, `RateLimit-Reset` headers (IETF httpapi draft).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client import Counter

from appliance.config import Config
from appliance.runtime.buckets import SharedBuckets
from appliance.runtime.metrics import REGISTRY

KINDS = ("pull", "push", "signin")

LIMITED = Counter(
    "berth_rate_limited_requests",
    "Requests refused by a rate limit.",
    ["kind"],
    registry=REGISTRY,
)


@dataclass(frozen=True)
class Limit:
    rate: float  # tokens a second; 0: unlimited
    burst: float


class RateLimited(Exception):
    """Over a limit: `retry_after` seconds until one more request would pass."""

    def __init__(self, kind: str, limit: Limit, retry_after: float) -> None:
        super().__init__(f"too many {kind} requests; retry in {math.ceil(retry_after)} s")
        self.kind = kind
        self.limit = limit
        self.retry_after = retry_after

    @property
    def headers(self) -> dict[str, str]:
        seconds = str(max(1, math.ceil(self.retry_after)))
        return {
            "retry-after": seconds,
            "ratelimit-limit": str(int(self.limit.burst)),
            "ratelimit-remaining": "0",
            "ratelimit-reset": seconds,
        }


class RateLimiter:
    """Token buckets keyed by (kind, who). `check` is synchronous and takes microseconds."""

    def __init__(
        self,
        limits: dict[str, Limit],
        *,
        exempt_admins: bool = True,
        exempt_robots: bool = False,
        clock: Callable[[], float] = time.monotonic,
        buckets: SharedBuckets | None = None,
    ) -> None:
        self.limits = {k: v for k, v in limits.items() if v.rate > 0}
        self.exempt_admins = exempt_admins
        self.exempt_robots = exempt_robots
        self.clock = clock
        self.buckets = buckets or SharedBuckets()

    @classmethod
    def from_config(cls, config: Config, buckets: SharedBuckets | None = None) -> RateLimiter:
        limits = {
            kind: Limit(
                config[f"ratelimit.{kind}_rate"], max(1.0, config[f"ratelimit.{kind}_burst"])
            )
            for kind in KINDS
        }
        return cls(
            limits,
            exempt_admins=config["ratelimit.exempt_admins"],
            exempt_robots=config["ratelimit.exempt_robots"],
            buckets=buckets,
        )

    @property
    def enabled(self) -> bool:
        return bool(self.limits)

    def exempt(self, *, admin: bool, robot: bool) -> bool:
        return (admin and self.exempt_admins) or (robot and self.exempt_robots)

    def check(self, kind: str, user: str | None, address: str | None) -> None:
        """Take one token for `kind` from the user's and the address's bucket, or raise
        RateLimited (taking none) when either is empty."""
        limit = self.limits.get(kind)
        if limit is None:
            return
        keys = [f"{kind}:u:{user}"] if user else []
        if address:
            keys.append(f"{kind}:a:{address}")
        if not keys:
            return
        taken = self.buckets.take(keys, limit.rate, limit.burst, self.clock())
        if not taken[0].ok:
            LIMITED.labels(kind).inc()
            lowest = min(t.tokens for t in taken)
            raise RateLimited(kind, limit, (1.0 - lowest) / limit.rate)
