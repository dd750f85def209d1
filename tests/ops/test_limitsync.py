"""Rate limits and lockouts across hosts (runtime/limitsync.py): what one host's buckets gave out,
locked and reset reaches another's, hostile or broken messages change nothing, messages stay
within what NOTIFY carries, and the channel works on a real PostgreSQL."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import pytest
import trio

from appliance.metadata.db import MAX_MESSAGE, Options, open_database
from appliance.runtime.buckets import SharedBuckets, _hash
from appliance.runtime.hosts import HostAgent
from appliance.runtime.limitsync import CHANNEL, LimitSync, Table, encode

RATE, BURST = 1.0, 5.0
NOW = 1000.0


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


def host(
    name: str, clock: Clock, agent: HostAgent | None = None
) -> tuple[SharedBuckets, LimitSync]:
    buckets = SharedBuckets()
    sync = LimitSync(
        None,  # type: ignore[arg-type]  # receive and encode need no database
        {"ratelimit": Table(buckets, clock)},
        host=name,
        agent=agent or HostAgent(None),
    )
    return buckets, sync


def messages(sync: LimitSync) -> list[str]:
    return list(encode(sync.host, {n: t.buckets.drain() for n, t in sync.tables.items()}))


def take(buckets: SharedBuckets, key: str = "user:rita", cost: float = 1.0) -> bool:
    return buckets.take([key], RATE, BURST, NOW, cost=cost)[0].ok


def test_what_one_host_gave_out_is_charged_on_the_other() -> None:
    clock = Clock()
    here, here_sync = host("a", clock)
    there, there_sync = host("b", clock)
    for _ in range(4):
        assert take(here)
    sent = messages(here_sync)
    assert len(sent) == 1
    there_sync.receive(sent[0])
    assert there_sync.applied == 1
    assert take(there)  # 5 - 4 = 1 left there too
    assert not take(there)
    # Nothing is sent twice, and what `there` took goes back the other way.
    assert messages(here_sync) == []
    for payload in messages(there_sync):
        here_sync.receive(payload)
    assert not take(here)


def test_a_debt_refills_at_the_rate() -> None:
    """Charges may take a bucket below zero: together the hosts keep to one rate."""
    clock = Clock()
    here, here_sync = host("a", clock)
    there, there_sync = host("b", clock)
    assert take(there, cost=BURST)
    assert take(here, cost=BURST)
    for payload in messages(here_sync):
        there_sync.receive(payload)  # there: 0 - 5 = -5
    assert there.peek("user:rita", RATE, BURST, NOW).tokens == pytest.approx(-BURST)
    assert not there.take(["user:rita"], RATE, BURST, NOW + 5.0)[0].ok  # back to 0
    assert there.take(["user:rita"], RATE, BURST, NOW + 6.0)[0].ok


def test_locks_and_resets_reach_the_other_host() -> None:
    clock = Clock()
    here, here_sync = host("a", clock)
    there, there_sync = host("b", clock)
    here.lock("user:locky", NOW + 60, RATE, BURST, NOW)
    for payload in messages(here_sync):
        there_sync.receive(payload)
    assert there.peek("user:locky", RATE, BURST, NOW).locked_until == pytest.approx(NOW + 60)
    assert not take(there, "user:locky")
    # A reset (a successful sign-in) refills the bucket everywhere; a lock stays a lock.
    for _ in range(3):
        assert take(here, "user:resetty")
    for payload in messages(here_sync):
        there_sync.receive(payload)
    assert there.peek("user:resetty", RATE, BURST, NOW).tokens == pytest.approx(BURST - 3)
    here.reset("user:resetty", BURST, NOW)
    for payload in messages(here_sync):
        there_sync.receive(payload)
    assert there.peek("user:resetty", RATE, BURST, NOW).tokens == pytest.approx(BURST)


def test_a_host_ignores_its_own_messages_and_only_the_agent_applies(tmp_path: Path) -> None:
    clock = Clock()
    here, here_sync = host("a", clock)
    assert take(here)
    (payload,) = messages(here_sync)
    here_sync.receive(payload)  # its own: not charged twice
    assert here.peek("user:rita", RATE, BURST, NOW).tokens == pytest.approx(BURST - 1)

    holder = HostAgent(tmp_path / "host-agent")
    assert holder.held()
    other_worker = HostAgent(tmp_path / "host-agent")  # another worker of host b
    there, there_sync = host("b", clock, other_worker)
    there_sync.receive(payload)
    assert there_sync.applied == 0  # the agent (holder) applies it for the whole host
    assert there.peek("user:rita", RATE, BURST, NOW).tokens == pytest.approx(BURST)
    holder.close()


@pytest.mark.parametrize(
    "payload",
    [
        "not json",
        "[1, 2]",
        json.dumps({"t": {"ratelimit": [[_hash("user:rita"), RATE, BURST, 3]]}}),  # no host
        json.dumps({"host": "x", "t": {"ratelimit": [[0, RATE, BURST, 3]]}}),  # free slot
        json.dumps({"host": "x", "t": {"ratelimit": [[1 << 64, RATE, BURST, 3]]}}),
        json.dumps({"host": "x", "t": {"ratelimit": [[_hash("user:rita"), RATE, BURST, 1e9]]}}),
        json.dumps({"host": "x", "t": {"ratelimit": [[_hash("user:rita"), -1, BURST, 3]]}}),
        json.dumps({"host": "x", "t": {"ratelimit": [[_hash("user:rita"), RATE, 0, 3]]}}),
        json.dumps({"host": "x", "t": {"ratelimit": [[_hash("user:rita"), RATE, BURST, -3]]}}),
        json.dumps({"host": "x", "t": {"ratelimit": [[_hash("user:rita"), "1", BURST, 3]]}}),
        json.dumps({"host": "x", "t": {"ratelimit": [[_hash("user:rita"), RATE, BURST]]}}),
        f'{{"host": "x", "t": {{"ratelimit": [[{_hash("user:rita")}, NaN, 5, 3]]}}}}',
        f'{{"host": "x", "t": {{"ratelimit": [[{_hash("user:rita")}, 1, Infinity, 3]]}}}}',
        json.dumps({"host": "x", "l": {"ratelimit": [[_hash("user:rita"), RATE, BURST, 1e12]]}}),
        json.dumps({"host": "x", "r": {"ratelimit": [[_hash("user:rita"), "5"]]}}),
        json.dumps({"host": "x", "t": {"other-table": [[_hash("user:rita"), RATE, BURST, 3]]}}),
        json.dumps({"host": "x", "t": {"ratelimit": {"not": "a list"}}}),
        json.dumps({"host": "x", "t": {"ratelimit": ["not a list", None, []]}}),
    ],
)
def test_hostile_or_broken_messages_change_nothing(payload: str) -> None:
    clock = Clock()
    there, there_sync = host("b", clock)
    assert take(there)
    there_sync.receive(payload)
    state = there.peek("user:rita", RATE, BURST, NOW)
    assert state.tokens == pytest.approx(BURST - 1)
    assert state.locked_until == 0.0
    assert not math.isnan(state.tokens)


def test_messages_stay_within_what_notify_carries() -> None:
    clock = Clock()
    here, here_sync = host("a", clock)
    for i in range(2000):
        assert take(here, f"address:198.51.100.{i}")
    sent = messages(here_sync)
    assert len(sent) > 1
    assert all(len(p.encode()) <= MAX_MESSAGE for p in sent)
    there, there_sync = host("b", clock)
    for payload in sent:
        there_sync.receive(payload)
    for i in (0, 999, 1999):
        key = f"address:198.51.100.{i}"
        assert there.peek(key, RATE, BURST, NOW).tokens == pytest.approx(BURST - 1)


async def test_the_channel_carries_messages_between_hosts_on_postgresql(
    postgres_database: Callable[[], str], tmp_path: Path
) -> None:
    url = postgres_database()
    here = open_database(url, Options(changes_path=tmp_path / "a" / "changes"))
    there = open_database(url, Options(changes_path=tmp_path / "b" / "changes"))
    got: list[str] = []
    there.subscribe(CHANNEL, got.append)
    with pytest.raises(ValueError, match="not a channel name"):
        there.subscribe("berth_changes", got.append)  # the change stamps' own channel
    with pytest.raises(ValueError, match="not a channel name"):
        there.subscribe("x; DROP TABLE users", got.append)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(there.watch_changes)
            with trio.fail_after(10):
                while not there.changes.trusted:  # noqa: ASYNC110 (another thread sets it)
                    await trio.sleep(0.01)
            await trio.sleep(0.2)  # the listener LISTENs on the subscribed channel next
            await here.publish(CHANNEL, '{"host": "a"}')
            with trio.fail_after(5):
                while not got:  # noqa: ASYNC110 (the listener's thread appends)
                    await trio.sleep(0.01)
            assert got == ['{"host": "a"}']
            with pytest.raises(ValueError, match="longer than"):
                await here.publish(CHANNEL, "x" * (MAX_MESSAGE + 1))
            nursery.cancel_scope.cancel()
    finally:
        here.close()
        there.close()
