"""Change stamps: how a process knows, without asking the database, that a cached fact is stale.

Caches of facts kept in the metadata database (who a credential belongs to and what it may do,
immutable-tag rules and quotas, public namespaces, which manifest a tag names) are only safe if
every process sees a change by the next request it answers. A `ChangeBoard` gives each *topic*
("auth", "rules", "repo:team/app", ...) a stamp: an opaque 64-bit value that is replaced by a
fresh one whenever a write touching that topic commits. A cache keeps, with each entry, the
stamp of its topic read *before* the entry was loaded from the database; the entry is good while
the stamp is unchanged. The cost of that check is one read from shared memory.

How a change reaches the stamps:

    unit of work ──tx.touch("auth")──▶ commit ──▶ board.bump(...)   this host, before the
                                         │        (mmap'ed file)    write returns
                                         └──▶ NOTIFY berth_changes  other hosts (PostgreSQL):
                                              (sent by the commit)  their listener bumps

- On one host every process that opens the same database maps the same small file of stamps
  (SQLite: next to the database file; PostgreSQL: in the data directory), so a change committed
  by one worker is seen by the next request on any worker: read-your-writes.
- Across hosts (PostgreSQL only), each serving process LISTENs; a notification arrives within
  milliseconds of the commit. It names the host it came from (`origin`, the same for every
  process mapping one stamp file), so a host skips its own: its commit bumped already. While a
  process is not listening (not started yet, connection lost) its board is *untrusted*: every
  `stamp()` is a value never seen before, so every cache misses and reads the database. After
  a reconnect every stamp is bumped, since notifications may have been missed.

Topics are hashed onto a fixed number of slots, so two topics may share a slot: that only
costs an extra reload, never a stale answer. A bump writes a random value rather than adding
one, so concurrent bumps from several processes need no lock: whichever write lands last, the
slot differs from every value a cache may hold.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import mmap
import os
import random
import socket
import struct
import threading
import zlib
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable
from pathlib import Path
from typing import Generic, TypeVar

log = logging.getLogger("berth.metadata")

SLOTS = 4096
_WORD = struct.Struct("<Q")
CHANNEL = "berth_changes"  # the PostgreSQL NOTIFY channel

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


EVERYTHING = "*"  # a topic that stands for every topic (a restore replaced every record)
# More topics of cached facts (besides identity, `metadata.identity.AUTH`; repositories,
# `repository_topic`; rules, `lifecycle.rules.TOPIC`; pull verdicts, `scan.vulndb.SCAN_TOPIC`):
# each is touched by every write that changes what its caches hold.
KEYS = "keys"  # token-signing keys (auth/tokens.py)
WEBHOOKS = "webhooks"  # webhook endpoints (webhooks/endpoints.py)


def repository_topic(name: str) -> str:
    """The topic of a repository's tags and manifests (touched by every change to them)."""
    return "repo:" + name


def _fresh() -> int:
    return random.getrandbits(64)


def _origin(fd: int) -> str:
    """This host in the notifications it sends: alike for every process that maps the stamp
    file `fd` (its device and inode, on this boot of this machine), unlike any other host."""
    boot = ""
    with contextlib.suppress(OSError):
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    st = os.fstat(fd)
    who = f"{boot} {socket.gethostname()} {st.st_dev} {st.st_ino}"
    return hashlib.blake2b(who.encode(), digest_size=8).hexdigest()


def slot_of(topic: str) -> int:
    """The slot of `topic`: a hash that every process computes alike (unlike `hash()`)."""
    return zlib.crc32(topic.encode()) % SLOTS


class ChangeBoard:
    """The stamps of one metadata database as seen by this process.

    `path` is the file shared by the processes of this host (created 0600 when missing); None
    keeps the stamps in this process only (a database no other process on this host writes,
    such as a test's). `trusted` False makes every stamp unique until `trust()` is called (a
    PostgreSQL process before its listener is up).
    """

    def __init__(self, path: Path | None = None, *, trusted: bool = True) -> None:
        self.path = path
        self._trusted = trusted
        self._file: mmap.mmap | bytearray
        self.origin = f"{_fresh():016x}"  # a process alone is a host of its own
        if path is None:
            self._file = bytearray(SLOTS * _WORD.size)
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            if os.fstat(fd).st_size < SLOTS * _WORD.size:
                os.ftruncate(fd, SLOTS * _WORD.size)
            self._file = mmap.mmap(fd, SLOTS * _WORD.size)
            self.origin = _origin(fd)
        finally:
            os.close(fd)

    @property
    def trusted(self) -> bool:
        return self._trusted

    def trust(self, trusted: bool = True) -> None:
        """Start (or stop) trusting the stamps. Starting again bumps every slot first: changes
        made while the stamps could not be kept current must not leave a cache looking fresh."""
        if trusted and not self._trusted:
            self.bump_all()
        self._trusted = trusted

    def stamp(self, topic: str) -> int:
        """The current stamp of `topic`; read it before loading what a cache will keep."""
        if not self._trusted:
            return _fresh()
        return int(_WORD.unpack_from(self._file, slot_of(topic) * _WORD.size)[0])

    def notice(self, payload: str) -> None:
        """A notification from the database (`ORIGIN TOPIC`): bump the topic unless this host
        sent it (its commit bumped already)."""
        origin, sep, topic = payload.partition(" ")
        if not sep:  # a host that does not say where it is from
            origin, topic = "", payload
        if origin != self.origin:
            self.bump((topic,))

    def bump(self, topics: Iterable[str]) -> None:
        """`topics` changed: give each a new stamp (called after the commit)."""
        topics = set(topics)
        if EVERYTHING in topics:
            self.bump_all()
            return
        for slot in {slot_of(t) for t in topics}:
            _WORD.pack_into(self._file, slot * _WORD.size, _fresh())

    def bump_all(self) -> None:
        """Everything may have changed (a restore, a missed notification)."""
        for slot in range(SLOTS):
            _WORD.pack_into(self._file, slot * _WORD.size, _fresh())

    def close(self) -> None:
        if isinstance(self._file, mmap.mmap):
            with contextlib.suppress(BufferError):
                self._file.close()


class StampedCache(Generic[K, V]):
    """A bounded map whose entries are good while their topic's stamp has not changed.

        stamp = board.stamp(topic)            # before the load
        value = cache.get(key, stamp)
        if value is None:
            value = await load()
            cache.put(key, value, stamp)

    Safe from any thread. The least recently stored entries go first once `size` entries (or
    `max_bytes`, as `weight` counts them) are reached; a value heavier than `max_bytes` is not
    kept at all.
    """

    def __init__(
        self,
        size: int = 10_000,
        *,
        max_bytes: int | None = None,
        weight: Callable[[V], int] | None = None,
    ) -> None:
        self.size = size
        self.max_bytes = max_bytes
        self._weight = weight or (lambda _: 0)
        self._bytes = 0
        self._entries: OrderedDict[K, tuple[int, V, int]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: K, stamp: int) -> V | None:
        hit = self._entries.get(key)
        if hit is None or hit[0] != stamp:
            return None
        return hit[1]

    def put(self, key: K, value: V, stamp: int) -> None:
        weight = self._weight(value)
        if self.max_bytes is not None and weight > self.max_bytes:
            return
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= old[2]
            self._entries[key] = (stamp, value, weight)
            self._bytes += weight
            while len(self._entries) > self.size or (
                self.max_bytes is not None and self._bytes > self.max_bytes
            ):
                self._bytes -= self._entries.popitem(last=False)[1][2]

    def discard(self, key: K) -> None:
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= old[2]

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0
