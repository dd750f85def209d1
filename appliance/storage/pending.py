"""A blocking call started in a worker thread now and awaited later: the read-ahead both object
store backends use to fetch the next piece of a blob while the caller sends this one."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Generic, TypeVar

import outcome
import trio

T = TypeVar("T")


class Pending(Generic[T]):
    """A blocking call started in a worker thread now and awaited later: read-ahead without a
    nursery (which an async generator may not hold across a `yield`)."""

    def __init__(self) -> None:
        self._done = trio.Event()
        self._outcome: outcome.Outcome[T] | None = None

    @classmethod
    async def start(cls, fn: Callable[[], T], limiter: trio.CapacityLimiter) -> Pending[T]:
        self = cls()
        await limiter.acquire_on_behalf_of(self)
        token = trio.lowlevel.current_trio_token()

        def deliver(result: outcome.Outcome[T]) -> None:
            def finish() -> None:
                limiter.release_on_behalf_of(self)
                self._outcome = result
                self._done.set()

            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(finish)

        trio.lowlevel.start_thread_soon(fn, deliver)
        return self

    async def result(self) -> T:
        """The call's return value (or its exception). Cancelling this wait does not stop
        the call."""
        await self._done.wait()
        assert self._outcome is not None
        return self._outcome.unwrap()
