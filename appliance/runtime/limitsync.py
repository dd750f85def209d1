"""Rate limits and sign-in lockouts that count across hosts: what each host's buckets gave out
is told to the other hosts every `ratelimit.sync_interval` seconds, and subtracted there.

One host's workers already share their buckets (runtime/buckets.py). Between hosts:

    worker takes a token ─▶ noted in its outbox ─▶ every interval: NOTIFY berth_limits
    (any host)                                      {"host": id, "tables": {...}}
                                                          │
    other hosts' agents ◀─ LISTEN berth_limits ◀──────────┘
      charge the host's shared buckets (a debt if need be), copy locks and resets

Every worker sends what it noted itself; on each receiving host only the host agent
(runtime/hosts.py) applies a message, since the host's workers share the buckets it changes, and
a host ignores its own messages. A charge may take a bucket below zero: the debt refills at
the key's rate, so that over time the hosts together keep to one rate.

**Precision.** A host learns of the others' use one interval late (plus the time a message
takes: milliseconds). So over any period the hosts together admit at most what one host would,
plus what the other hosts admitted in the last interval before it ended: at most
`(hosts - 1) x (rate x interval)` more once the burst is spent, and, when a key arrives with a
full bucket on every host at once, `(hosts - 1) x burst` more in that first interval. With the
defaults (1 s) and a rate of 10 a second on three hosts, a client can get 20 more requests than
the rate allows in a second, not three times the rate. A lock set on one host holds on the
others within the interval; failures counted on one host count everywhere. Messages missed
while a host cannot reach the database are not sent again: each host counts alone meanwhile.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import trio

from appliance.errors import BerthError
from appliance.metadata.db import MAX_MESSAGE, Database
from appliance.runtime.buckets import Outbox, SharedBuckets
from appliance.runtime.hosts import HostAgent

log = logging.getLogger("berth.ops")

CHANNEL = "berth_limits"
MAX_LOCK = 7 * 86400.0  # seconds: a longer lock in a message is not believed


@dataclass(frozen=True)
class Table:
    """A bucket table the hosts share, and the clock its times are on."""

    buckets: SharedBuckets
    clock: Callable[[], float]


def _finite(*values: Any) -> bool:
    return all(isinstance(v, int | float) and math.isfinite(v) for v in values)


def encode(host: str, outboxes: dict[str, Outbox]) -> Iterator[str]:
    """Messages (each within `MAX_MESSAGE` bytes) telling what `outboxes` hold."""
    items: list[tuple[str, str, list[Any]]] = []
    for name, box in outboxes.items():
        items += [("t", name, [h, *v]) for h, v in box.taken.items()]
        items += [("l", name, [h, *v]) for h, v in box.locked.items()]
        items += [("r", name, [h, v]) for h, v in box.reset.items()]
    message: dict[str, Any] = {"host": host}
    size = len(json.dumps(message))
    for kind, name, entry in items:
        cost = len(json.dumps(entry)) + len(name) + 16
        if size + cost > MAX_MESSAGE and len(message) > 1:
            yield json.dumps(message, separators=(",", ":"))
            message, size = {"host": host}, len(json.dumps({"host": host}))
        message.setdefault(kind, {}).setdefault(name, []).append(entry)
        size += cost
    if len(message) > 1:
        yield json.dumps(message, separators=(",", ":"))


class LimitSync:
    """Sends this process's bucket changes to the other hosts, and (as the host agent) applies
    theirs to this host's buckets. `tables` by name, the same names on every host."""

    def __init__(
        self,
        db: Database,
        tables: dict[str, Table],
        *,
        host: str,
        agent: HostAgent,
        interval: float = 1.0,
    ) -> None:
        self.db = db
        self.tables = tables
        self.host = host
        self.agent = agent
        self.interval = interval
        self.applied = 0  # messages applied (tests, metrics)
        for table in tables.values():
            table.buckets.noting = True

    def receive(self, payload: str) -> None:
        """A message from the channel (the listener's thread): apply it if it is another
        host's and this process is the host's agent. Malformed parts are ignored."""
        try:
            message = json.loads(payload)
        except ValueError:
            return
        if not isinstance(message, dict) or message.get("host") in (None, self.host):
            return
        if not self.agent.held():
            return
        for kind in ("t", "l", "r"):  # takes, then locks, then resets: the order they matter
            part = message.get(kind)
            if not isinstance(part, dict):
                continue
            for name, entries in part.items():
                table = self.tables.get(name)
                if table is None or not isinstance(entries, list):
                    continue
                now = table.clock()
                for entry in entries:
                    self._apply(kind, table.buckets, entry, now)
        self.applied += 1

    @staticmethod
    def _apply(kind: str, buckets: SharedBuckets, entry: Any, now: float) -> None:
        if not isinstance(entry, list) or not entry or not isinstance(entry[0], int):
            return
        key_hash = entry[0]
        if not 0 < key_hash < 1 << 64:
            return
        if kind == "t" and len(entry) == 4 and _finite(*entry[1:]):
            rate, burst, amount = entry[1:]
            if rate >= 0 and burst > 0 and 0 < amount <= burst * 1000:
                buckets.charge(key_hash, rate, burst, amount, now)
        elif kind == "l" and len(entry) == 4 and _finite(*entry[1:]):
            rate, burst, seconds = entry[1:]
            if rate >= 0 and burst > 0 and 0 < seconds <= MAX_LOCK:
                buckets.lock_key(key_hash, now + seconds, rate, burst, now)
        elif kind == "r" and len(entry) == 2 and _finite(entry[1]) and entry[1] > 0:
            buckets.reset_key(key_hash, entry[1], now)

    async def send(self) -> int:
        """Send what was noted since the last call; returns how many messages."""
        outboxes = {name: table.buckets.drain() for name, table in self.tables.items()}
        outboxes = {name: box for name, box in outboxes.items() if box}
        sent = 0
        for payload in encode(self.host, outboxes):
            await self.db.publish(CHANNEL, payload)
            sent += 1
        return sent

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen (through the database's listener) and send every `interval`, until
        cancelled. What cannot be sent while the database is away is dropped."""
        self.db.subscribe(CHANNEL, self.receive)
        task_status.started()
        warned = 0.0
        while True:
            await trio.sleep(self.interval)
            self.agent.held()  # take the agent's part when its holder has gone
            try:
                await self.send()
            except BerthError as e:
                if time.monotonic() - warned > 60:
                    warned = time.monotonic()
                    log.warning("cannot tell the other hosts what rate limits counted: %s", e)
