"""Named locks shared by the processes of one host: one upstream fetch of a blob however many
workers are asked for it at once.

A lock is one byte of a file (`<data_dir>/run/locks`) locked with `fcntl.lockf`, at an offset
hashed from its name, so the file never grows and needs no cleaning. Two names may hash to one
byte: two unrelated holders on different processes then take turns, which only costs time
(with 2^20 bytes, rarely). POSIX record locks belong to a process, not to a file descriptor:
within a process the callers must already exclude each other (the pull-through cache's single
flight does), and the file stays open for the process's life (closing any descriptor of it
would drop every lock the process holds).

Waiting polls (`POLL` seconds) rather than blocking in a thread, so a cancelled wait leaves
nothing behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import trio

SPAN = 1 << 20
POLL = 0.02


class HostLocks:
    """Locks named by strings, exclusive across the processes sharing `path`."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)

    @staticmethod
    def _offset(name: str) -> int:
        return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest()) % SPAN

    def _try(self, offset: int) -> bool:
        try:
            fcntl.lockf(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, offset)
        except (BlockingIOError, PermissionError):  # held by another process
            return False
        return True

    @contextlib.asynccontextmanager
    async def hold(self, name: str) -> AsyncIterator[bool]:
        """Hold the lock `name` for the block; yields True when it was free at once, False
        when this process waited for another that held it (which has likely done the work)."""
        offset = self._offset(name)
        first = self._try(offset)
        while not first and not self._try(offset):  # noqa: ASYNC110 (another process frees it)
            await trio.sleep(POLL)
        try:
            yield first
        finally:
            fcntl.lockf(self._fd, fcntl.LOCK_UN, 1, offset)

    def close(self) -> None:
        os.close(self._fd)
