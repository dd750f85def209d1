"""Token buckets shared by every serving process of one host: rate limits and sign-in lockouts
that hold for the host as a whole, however the requests spread over its workers.

The table lives in a small file mapped into each process (`<data_dir>/run/buckets`); updates
take an exclusive `flock` on it (and a thread lock, since `flock` does not separate threads of
one process) for the few microseconds a read-modify-write lasts. A process without a data
directory (a test's in-process app) keeps the table in its own memory.

Across hosts (runtime/limitsync.py), what a process takes, locks and resets is also noted in its
`outbox` (when `noting` is on), sent to the other hosts every second, and applied there by
`charge`, `lock_key` and `reset_key`: a charge takes tokens without asking, so a bucket may go
below zero, and that debt is what keeps several hosts to one rate over time.

Layout: `SLOTS` slots of 32 bytes, `(key hash, tokens, stamp, locked_until)`, a key hash of 0
meaning free. A key is looked for in `PROBES` consecutive slots from the one its hash names;
when all of them belong to other keys, the one whose bucket has refilled the longest ago is
taken over (a full bucket carries no information, so forgetting it changes no answer). Times
are whatever clock the caller passes, the same in every process (`time.monotonic()` is
system-wide on Linux).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import mmap
import os
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

SLOTS = 1 << 14
PROBES = 16
_SLOT = struct.Struct("<Qddd")


def _hash(key: str) -> int:
    value = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little")
    return value or 1  # 0 marks a free slot


@dataclass
class Outbox:
    """What this process did to the buckets since it last sent it to the other hosts: per key
    hash, (rate, burst, tokens taken); locks (rate, burst, seconds left); resets (burst)."""

    taken: dict[int, list[float]] = field(default_factory=dict)
    locked: dict[int, tuple[float, float, float]] = field(default_factory=dict)
    reset: dict[int, float] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.taken or self.locked or self.reset)


@dataclass(frozen=True)
class Taken:
    """The outcome of `SharedBuckets.take`."""

    ok: bool  # a token was taken
    tokens: float  # tokens left (after taking, when ok)
    locked_until: float  # the key's lock, if any (0: none)


class SharedBuckets:
    """Token buckets by key, shared through `path` (None: this process's memory only)."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self.noting = False  # keep an outbox for the other hosts (runtime/limitsync.py)
        self._outbox = Outbox()
        self._thread_lock = threading.Lock()
        self._fd: int | None = None
        self._table: mmap.mmap | bytearray
        if path is None:
            self._table = bytearray(SLOTS * _SLOT.size)
            return
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            if os.fstat(fd).st_size < SLOTS * _SLOT.size:
                os.ftruncate(fd, SLOTS * _SLOT.size)
            self._table = mmap.mmap(fd, SLOTS * _SLOT.size)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with self._thread_lock:
            if self._fd is None:
                yield
                return
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)

    def _find(self, key_hash: int, rate: float, burst: float, now: float) -> int:
        """The offset of `key_hash`'s slot, claiming one when it has none."""
        start = key_hash % SLOTS
        victim, victim_full_since = -1, float("inf")
        for i in range(PROBES):
            offset = ((start + i) % SLOTS) * _SLOT.size
            owner, tokens, stamp, locked = _SLOT.unpack_from(self._table, offset)
            if owner == key_hash:
                return offset
            if owner == 0:
                victim, victim_full_since = offset, float("-inf")
                break
            # When this bucket will have been full (and unlocked): the earlier, the better
            # a victim. Buckets of other rates are judged by this one's: close enough.
            full_at = stamp + (burst - tokens) / rate if rate > 0 else stamp
            full_since = max(full_at, locked)
            if full_since < victim_full_since:
                victim, victim_full_since = offset, full_since
        _SLOT.pack_into(self._table, victim, key_hash, burst, now, 0.0)
        return victim

    def take(
        self, keys: list[str], rate: float, burst: float, now: float, *, cost: float = 1.0
    ) -> list[Taken]:
        """Refill each key's bucket (at `rate` a second, up to `burst`) and, when none of them
        is empty or locked, take `cost` from each. Atomic over all `keys`."""
        hashes = [_hash(k) for k in keys]
        with self._locked():
            slots = []
            for key_hash in hashes:
                offset = self._find(key_hash, rate, burst, now)
                _, tokens, stamp, locked = _SLOT.unpack_from(self._table, offset)
                tokens = min(burst, tokens + max(0.0, now - stamp) * rate)
                slots.append((offset, key_hash, tokens, locked))
            ok = all(tokens >= cost and locked <= now for _, _, tokens, locked in slots)
            out = []
            for offset, key_hash, tokens, locked in slots:
                left = tokens - cost if ok else tokens
                _SLOT.pack_into(self._table, offset, key_hash, left, now, locked)
                out.append(Taken(ok, left, locked if locked > now else 0.0))
                if ok and self.noting:
                    noted = self._outbox.taken.setdefault(key_hash, [rate, burst, 0.0])
                    noted[2] += cost
            return out

    def charge(self, key_hash: int, rate: float, burst: float, amount: float, now: float) -> None:
        """Take `amount` tokens that another host gave out, whatever the bucket holds (it may
        go below zero: a debt that refills at `rate`)."""
        with self._locked():
            offset = self._find(key_hash, rate, burst, now)
            _, tokens, stamp, locked = _SLOT.unpack_from(self._table, offset)
            tokens = min(burst, tokens + max(0.0, now - stamp) * rate) - amount
            _SLOT.pack_into(self._table, offset, key_hash, tokens, now, locked)

    def drain(self) -> Outbox:
        """What was noted since the last call (and forget it)."""
        with self._thread_lock:
            out, self._outbox = self._outbox, Outbox()
        return out

    def peek(self, key: str, rate: float, burst: float, now: float) -> Taken:
        """A key's bucket as it stands now, without taking anything."""
        key_hash = _hash(key)
        with self._locked():
            start = key_hash % SLOTS
            for i in range(PROBES):
                offset = ((start + i) % SLOTS) * _SLOT.size
                owner, tokens, stamp, locked = _SLOT.unpack_from(self._table, offset)
                if owner == key_hash:
                    tokens = min(burst, tokens + max(0.0, now - stamp) * rate)
                    return Taken(tokens >= 1.0, tokens, locked if locked > now else 0.0)
        return Taken(True, burst, 0.0)

    def lock(self, key: str, until: float, rate: float, burst: float, now: float) -> None:
        """Refuse `key` until `until`; its bucket starts full again afterwards."""
        key_hash = _hash(key)
        self.lock_key(key_hash, until, rate, burst, now)
        if self.noting:
            with self._thread_lock:
                self._outbox.locked[key_hash] = (rate, burst, until - now)

    def lock_key(self, key_hash: int, until: float, rate: float, burst: float, now: float) -> None:
        """`lock` by key hash (a lock another host set)."""
        with self._locked():
            offset = self._find(key_hash, rate, burst, now)
            _SLOT.pack_into(self._table, offset, key_hash, burst, until, until)

    def reset(self, key: str, burst: float, now: float) -> None:
        """Forget what `key` has used (a successful sign-in clears its failures)."""
        key_hash = _hash(key)
        self.reset_key(key_hash, burst, now)
        if self.noting:
            with self._thread_lock:
                self._outbox.taken.pop(key_hash, None)
                self._outbox.reset[key_hash] = burst

    def reset_key(self, key_hash: int, burst: float, now: float) -> None:
        """`reset` by key hash (a reset another host made)."""
        with self._locked():
            start = key_hash % SLOTS
            for i in range(PROBES):
                offset = ((start + i) % SLOTS) * _SLOT.size
                owner, _, _, locked = _SLOT.unpack_from(self._table, offset)
                if owner == key_hash:
                    _SLOT.pack_into(self._table, offset, key_hash, burst, now, locked)
                    return

    def close(self) -> None:
        if isinstance(self._table, mmap.mmap):
            with contextlib.suppress(BufferError):
                self._table.close()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __del__(self) -> None:  # the owner (a limiter, a throttle) is gone
        self.close()
