"""Basic sign-in on /v2 checks one set of credentials once at a time: a client opening many
connections at once on a cold process costs one password check, not one per connection."""

from __future__ import annotations

import base64
from typing import Any

import trio

from appliance.auth.service import SignInFailed
from appliance.server import Services
from tests.api.conftest import FakeClock
from tests.auth.conftest import PASSWORD, add_user


def _header(name: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{name}:{password}".encode()).decode()


async def test_concurrent_first_sign_ins_share_one_password_check(
    services: Services, clock: FakeClock, password_checks: list[str]
) -> None:
    await add_user(services, "carol", clock)
    checks = password_checks
    access = services.access
    got: list[Any] = []

    async def sign_in() -> None:
        got.append(await access.basic(_header("carol", PASSWORD), "carol", PASSWORD, None))

    async with trio.open_nursery() as nursery:
        for _ in range(16):
            nursery.start_soon(sign_in)
    assert len(got) == 16
    assert {p.name for p in got} == {"carol"}
    assert checks == [PASSWORD], "one check for sixteen concurrent sign-ins"
    assert not access._signing_in, "nothing is left behind once the checks are done"

    # A wrong password is checked by each caller in turn (each is refused and counted); the
    # right one afterwards is still a cache hit.
    refused = 0

    async def wrong() -> None:
        nonlocal refused
        try:
            await access.basic(_header("carol", "not-it"), "carol", "not-it", None)
        except SignInFailed:
            refused += 1

    async with trio.open_nursery() as nursery:
        for _ in range(3):
            nursery.start_soon(wrong)
    assert refused == 3
    assert checks.count("not-it") == 3
    assert not access._signing_in
