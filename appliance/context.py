"""The request a piece of work is done for: its id and the client's address.

Set once per HTTP request by the operations middleware (`api/middleware.py`) in a context variable,
so that code far from HTTP (an audit row written in a worker thread, a log line) can name the
request without it being passed down. trio copies context variables into the tasks it starts,
and `trio.to_thread.run_sync` runs its function in a copy of the caller's context, so the
values follow the work into the database threads.
"""

from __future__ import annotations

import contextvars
import itertools
import os
import secrets
from dataclasses import dataclass


@dataclass(slots=True)
class RequestContext:
    """Who is asking: `request_id` as sent in `X-Request-Id`, `source` the client address,
    `actor` how the audit log names the caller once sign-in has found out (None before)."""

    request_id: str
    source: str | None
    actor: str | None = None


_CURRENT: contextvars.ContextVar[RequestContext | None] = contextvars.ContextVar(
    "berth_request", default=None
)


def current() -> RequestContext | None:
    """The request being served, or None outside a request (CLI, background jobs)."""
    return _CURRENT.get()


def begin(request_id: str, source: str | None) -> contextvars.Token[RequestContext | None]:
    """Make (`request_id`, `source`) the current request; `end(token)` restores the previous."""
    return _CURRENT.set(RequestContext(request_id, source))


def end(token: contextvars.Token[RequestContext | None]) -> None:
    _CURRENT.reset(token)


def actor(default: str = "system") -> str:
    """How the audit log names whoever the current work is done for: the signed-in caller,
    `anonymous` in a request nobody signed in to, `default` outside a request."""
    request = _CURRENT.get()
    if request is None:
        return default
    return request.actor or "anonymous"


def set_actor(name: str) -> None:
    """Record who the current request's caller is (called once sign-in has decided)."""
    request = _CURRENT.get()
    if request is not None:
        request.actor = name


class _RequestIds:
    """Request ids of this process: 8 random bytes drawn once (again in a forked child) and a
    counter, 32 hex digits. Unique across processes and restarts without a system call per
    request; they only name requests in logs and headers, so they need not be unpredictable."""

    def __init__(self) -> None:
        self.reseed()

    def reseed(self) -> None:
        self.prefix = secrets.token_hex(8)
        self.counter = itertools.count()

    def next(self) -> str:
        return f"{self.prefix}{next(self.counter) & 0xFFFF_FFFF_FFFF_FFFF:016x}"


_IDS = _RequestIds()
os.register_at_fork(after_in_child=_IDS.reseed)


def new_request_id() -> str:
    """A fresh request id (32 hex digits, unique in this process and across processes)."""
    return _IDS.next()


_ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.:")


def accept_request_id(value: str | None) -> str:
    """The client's own `X-Request-Id` when it is a short plain token, else a fresh one (a
    request id ends up in logs: it must not carry line breaks or markup)."""
    if value and len(value) <= 128 and all(c in _ID_CHARS for c in value):
        return value
    return new_request_id()
