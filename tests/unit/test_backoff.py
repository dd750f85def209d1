"""The one retry backoff (appliance/backoff.py) every retrying loop uses."""

from __future__ import annotations

import random

from appliance import backoff


def test_delay_doubles_from_base_up_to_the_cap() -> None:
    assert [backoff.delay(n, 0.1, 5.0) for n in range(8)] == [
        0.1,
        0.2,
        0.4,
        0.8,
        1.6,
        3.2,
        5.0,
        5.0,
    ]
    assert backoff.delay(0, 1.0, 300.0) == 1.0
    assert backoff.delay(10_000, 1.0, 300.0) == 300.0  # a long outage cannot overflow it
    assert backoff.delay(-3, 1.0, 300.0) == 1.0


def test_full_jitter_stays_within_the_delay_and_spreads() -> None:
    rng = random.Random(3)
    drawn = [backoff.full_jitter(4, 0.1, 5.0, rng) for _ in range(200)]
    assert all(0.0 <= d <= 1.6 for d in drawn)
    assert max(drawn) > 1.2
    assert min(drawn) < 0.4
    again = random.Random(3)
    assert drawn[0] == again.uniform(0, 1.6)  # the caller's generator: seeded tests repeat
