"""Every cache of a fact that matters follows the change stamps, on every host: two hosts (each
its own stamp file, as two machines have) on one PostgreSQL database, a change made through one
and seen by the other within a second. No time-to-live is involved: the clocks never move.

Covered here: immutable-tag rules and quotas (lifecycle/rules.py), the scan pull policies
(scan/policy.py), whether any webhook endpoint wants pull events (webhooks/batching.py), and the
token-signing keys (auth/tokens.py). Credentials, roles and public namespaces follow the
`auth` stamp (tests/server/test_workers.py, tests/multihost/)."""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
import trio

from appliance.auth.secrets import ServerSecret
from appliance.auth.tokens import KeyRing
from appliance.lifecycle.rules import Rules
from appliance.metadata import identity
from appliance.metadata.db import Database, Options, open_database
from appliance.scan import policy as scan_policy
from appliance.scan.policy import PullGate
from appliance.webhooks.batching import PullEvents
from appliance.webhooks.endpoints import add_endpoint, remove_endpoint
from tests.support.postgres import migrated

NOW = 1_800_000_000.0


def clock() -> float:
    return NOW


async def seen_within(what: str, check: Callable[[], Awaitable[bool]], seconds: float) -> float:
    """Poll `check` until true; fail naming `what` after `seconds`. Returns the time taken."""
    started = time.monotonic()
    with trio.move_on_after(seconds):
        while not await check():  # noqa: ASYNC110 (a fact another host makes)
            await trio.sleep(0.01)
        return time.monotonic() - started
    raise AssertionError(f"{what} was not seen by the other host within {seconds} s")


@pytest.fixture
async def hosts(
    postgres_database: Callable[[], str], tmp_path: Path
) -> AsyncIterator[tuple[Database, Database]]:
    url = migrated(postgres_database())
    here = open_database(url, Options(changes_path=tmp_path / "here" / "changes"))
    there = open_database(url, Options(changes_path=tmp_path / "there" / "changes"))
    try:
        async with trio.open_nursery() as nursery:
            for db in (here, there):
                await nursery.start(db.watch_changes)
            with trio.fail_after(10):
                while not (here.changes.trusted and there.changes.trusted):  # noqa: ASYNC110
                    await trio.sleep(0.01)
            await here.write(lambda tx: identity.create_namespace(tx, "team", NOW))
            yield here, there
            nursery.cancel_scope.cancel()
    finally:
        here.close()
        there.close()


async def test_rules_and_quotas(hosts: tuple[Database, Database]) -> None:
    here, there = hosts
    writer, reader = Rules(here, clock), Rules(there, clock)
    assert not await there.read(lambda tx: reader.quota_limited(tx, "team/app"))
    assert await there.read(lambda tx: reader.immutable_rule(tx, "team/app", "v1")) is None
    await writer.set_quota("admin", "team", 1000)
    await seen_within(
        "a new quota",
        lambda: there.read(lambda tx: reader.quota_limited(tx, "team/app")),
        1.0,
    )
    rule = await writer.add_immutable_rule("admin", "team", "v.*")

    async def protected() -> bool:
        found = await there.read(lambda tx: reader.immutable_rule(tx, "team/app", "v1"))
        return found is not None and found.id == rule.id

    await seen_within("a new immutable rule", protected, 1.0)
    await writer.remove_immutable_rule("admin", "team", rule.id)

    async def unprotected() -> bool:
        return await there.read(lambda tx: reader.immutable_rule(tx, "team/app", "v1")) is None

    await seen_within("a removed immutable rule", unprotected, 1.0)


async def test_scan_pull_policies(hosts: tuple[Database, Database]) -> None:
    here, there = hosts
    gate = PullGate(there, clock)
    assert await gate._current() == {}
    await here.write(lambda tx: scan_policy.set_policy(tx, "admin", "team", "high", "deny", NOW))

    async def has_policy() -> bool:
        return "team" in await gate._current()

    await seen_within("a new pull policy", has_policy, 1.0)
    await here.write(lambda tx: scan_policy.delete_policy(tx, "admin", "team", NOW))

    async def no_policy() -> bool:
        return "team" not in await gate._current()

    await seen_within("a deleted pull policy", no_policy, 1.0)


async def test_webhook_endpoints_wanting_pulls(hosts: tuple[Database, Database]) -> None:
    here, there = hosts
    events = PullEvents(there)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(events.run, False, 0.05)

        async def wanted() -> bool:
            return events.wanted

        async def not_wanted() -> bool:
            return not events.wanted

        await seen_within("the first look", not_wanted, 1.0)
        endpoint, _ = await here.write(
            lambda tx: add_endpoint(tx, "admin", "team", "https://hooks.example/in", actions="pull")
        )
        await seen_within("an endpoint that wants pulls", wanted, 1.0)
        await here.write(lambda tx: remove_endpoint(tx, "admin", "team", endpoint))
        await seen_within("the endpoint's removal", not_wanted, 1.0)
        nursery.cancel_scope.cancel()


async def test_signing_keys(hosts: tuple[Database, Database], tmp_path: Path) -> None:
    here, there = hosts
    path = tmp_path / "secret"
    path.write_bytes(os.urandom(32))
    path.chmod(0o600)
    secret = ServerSecret.load(path)
    rotating = KeyRing(here, secret, clock, overlap=360)
    await trio.to_thread.run_sync(rotating.ensure_sync)
    verifying = KeyRing(there, secret, clock, overlap=360)
    await verifying.reload()
    key = await trio.to_thread.run_sync(rotating.rotate_sync)
    assert verifying.public_key(key.kid) is None

    async def known() -> bool:
        await verifying.refresh()  # what a token request does: reads only when stamped
        return verifying.public_key(key.kid) is not None

    await seen_within("a rotated key", known, 1.0)
