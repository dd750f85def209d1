"""Retry backoff, written once: how long to wait before the next attempt.

Every retrying loop uses it: the object stores (S3, Azure) and PostgreSQL between attempts,
webhook delivery between failed batches, and sign-in's slow-down after failures.
"""

from __future__ import annotations

import random


def delay(attempt: int, base: float, cap: float) -> float:
    """`base`·2^`attempt` seconds, at most `cap`. The exponent is bounded, so a long run of
    failures cannot overflow the arithmetic."""
    return min(cap, base * 2.0 ** min(max(attempt, 0), 64))


def full_jitter(attempt: int, base: float, cap: float, rng: random.Random) -> float:
    """Uniform in [0, `delay(attempt, base, cap)`]: clients that failed together spread out
    instead of retrying together."""
    return rng.uniform(0, delay(attempt, base, cap))
