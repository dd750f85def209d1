"""The webhook tables: endpoints, each endpoint's cursor in the event queue, the delivery log.

Every statement the webhook feature runs is here; the queue's rows are written by
`metadata/events.py` (in the transaction of the change they report), and the modules beside
this one decide what to write. Endpoint keys: `config:<hash>` for an endpoint of the
configuration, `ns:<id>` for a namespace's.
"""

from __future__ import annotations

import json
import time
from typing import Any

from appliance.errors import NotFound
from appliance.metadata.changes import WEBHOOKS
from appliance.metadata.db import Tx
from appliance.metadata.leader import Fence, check_fence

# -- endpoints -------------------------------------------------------------------------------


def endpoint_rows(tx: Tx, namespace: str | None = None) -> list[tuple[Any, ...]]:
    """(id, url, secret, actions, namespace) of the endpoints registered for namespaces (one
    namespace, or all), in id order."""
    where = "" if namespace is None else "WHERE n.name = :ns "
    return tx.execute(
        "SELECT e.id, e.url, e.secret, e.actions, n.name FROM webhook_endpoints e "  # noqa: S608
        f"JOIN namespaces n ON n.id = e.namespace_id {where}ORDER BY e.id",
        {"ns": namespace} if namespace is not None else {},
    )


def insert_endpoint(
    tx: Tx, actor: str, namespace: str, url: str, *, actions: str, secret: str
) -> int:
    """Register an endpoint for `namespace`; returns its id. Its cursor starts after the events
    already queued. Raises NotFound when the namespace does not exist."""
    ns_id = tx.scalar("SELECT id FROM namespaces WHERE name = :n", {"n": namespace})
    if ns_id is None:
        raise NotFound(f"namespace {namespace} does not exist")
    row = tx.one(
        "INSERT INTO webhook_endpoints (namespace_id, url, secret, actions, enabled, "
        "created_at, created_by) VALUES (:ns, :url, :secret, :actions, 1, :now, :actor) "
        "RETURNING id",
        {
            "ns": ns_id,
            "url": url,
            "secret": secret,
            "actions": actions,
            "now": time.time(),
            "actor": actor,
        },
    )
    assert row is not None
    endpoint_id = int(row[0])
    tx.touch(WEBHOOKS)  # every process notes pull events at once if this one wants them
    start = tx.scalar("SELECT MAX(id) FROM webhook_events") or 0
    tx.execute(
        "INSERT INTO webhook_cursors (endpoint, last_event_id) VALUES (:e, :last)",
        {"e": f"ns:{endpoint_id}", "last": int(start)},
    )
    return endpoint_id


def delete_endpoint(tx: Tx, namespace: str, endpoint_id: int) -> str | None:
    """Remove a namespace's endpoint and its cursor; returns its URL, or None when `namespace`
    has no such endpoint."""
    gone = tx.execute(
        "DELETE FROM webhook_endpoints WHERE id = :id AND namespace_id = "
        "(SELECT id FROM namespaces WHERE name = :ns) RETURNING url",
        {"id": endpoint_id, "ns": namespace},
    )
    if not gone:
        return None
    tx.touch(WEBHOOKS)
    tx.execute("DELETE FROM webhook_cursors WHERE endpoint = :e", {"e": f"ns:{endpoint_id}"})
    return str(gone[0][0])


def namespace_pulls(tx: Tx) -> bool:
    """Whether an enabled namespace endpoint wants pull events."""
    return (
        tx.scalar(
            "SELECT 1 FROM webhook_endpoints WHERE enabled = 1 AND actions LIKE '%pull%' LIMIT 1"
        )
        is not None
    )


# -- cursors and the queue -------------------------------------------------------------------


def cursor_states(tx: Tx) -> dict[str, tuple[Any, ...]]:
    """Each endpoint's delivery state by key: (delivered through, failures, next attempt, last
    error)."""
    rows = tx.execute(
        "SELECT endpoint, last_event_id, failures, next_attempt_at, last_error FROM webhook_cursors"
    )
    return {r[0]: tuple(r[1:]) for r in rows}


def ensure_cursors(tx: Tx, keys: list[str]) -> None:
    """A new endpoint starts after the events already queued (no flood of history)."""
    start = int(tx.scalar("SELECT MAX(id) FROM webhook_events") or 0)
    tx.executemany(
        "INSERT INTO webhook_cursors (endpoint, last_event_id) VALUES (:e, :last) "
        "ON CONFLICT (endpoint) DO NOTHING",
        [{"e": k, "last": start} for k in keys],
    )


def cursor(tx: Tx, key: str) -> tuple[int, int, float] | None:
    """(last event id acknowledged, failures in a row, next attempt at) of endpoint `key`."""
    row = tx.one(
        "SELECT last_event_id, failures, next_attempt_at FROM webhook_cursors WHERE endpoint = :e",
        {"e": key},
    )
    return None if row is None else (int(row[0]), int(row[1]), float(row[2]))


def next_events(
    tx: Tx, namespace: str | None, after: int, limit: int
) -> list[tuple[int, str, dict[str, Any]]]:
    """(id, action, payload) of the events after `after`: all of them, or `namespace`'s."""
    if namespace is None:
        rows = tx.execute(
            "SELECT id, action, payload FROM webhook_events WHERE id > :after "
            "ORDER BY id LIMIT :limit",
            {"after": after, "limit": limit},
        )
    else:
        rows = tx.execute(
            "SELECT id, action, payload FROM webhook_events WHERE namespace = :ns "
            "AND id > :after ORDER BY id LIMIT :limit",
            {"ns": namespace, "after": after, "limit": limit},
        )
    return [(int(r[0]), r[1], json.loads(r[2])) for r in rows]


def advance(tx: Tx, key: str, last: int) -> None:
    """Endpoint `key` has every event up to `last`: its failures are forgotten."""
    tx.execute(
        "UPDATE webhook_cursors SET last_event_id = :last, failures = 0, next_attempt_at = 0, "
        "last_error = NULL WHERE endpoint = :e",
        {"e": key, "last": last},
    )


def record_attempt(  # noqa: PLR0917 (one argument per column of the log)
    tx: Tx,
    key: str,
    at: float,
    first: int,
    last: int,
    events: int,
    attempt: int,
    status: int | None,
    error: str | None,
    duration: float,
) -> None:
    """One row of the delivery log."""
    tx.execute(
        "INSERT INTO webhook_deliveries (endpoint, at, first_event_id, last_event_id, "
        "events, attempt, status, error, duration) VALUES (:e, :at, :first, :last, "
        ":n, :attempt, :status, :error, :duration)",
        {
            "e": key,
            "at": at,
            "first": first,
            "last": last,
            "n": events,
            "attempt": attempt,
            "status": status,
            "error": error,
            "duration": duration,
        },
    )


def failed(tx: Tx, key: str, retry_at: float, error: str) -> None:
    """Endpoint `key` failed once more: the same batch again at `retry_at`."""
    tx.execute(
        "UPDATE webhook_cursors SET failures = failures + 1, "
        "next_attempt_at = :at, last_error = :error WHERE endpoint = :e",
        {"e": key, "at": retry_at, "error": error},
    )


def prune(tx: Tx, configured: list[str], cutoff: float, fence: Fence | None = None) -> None:
    """Forget events every endpoint has (or older than `cutoff`) but the newest, delivery log
    rows older than `cutoff`, and the cursors of configuration endpoints not in `configured`."""
    if fence is not None:
        check_fence(tx, fence)
    params: dict[str, Any] = {f"k{i}": k for i, k in enumerate(configured)}
    keep = f" AND endpoint NOT IN ({', '.join(f':{name}' for name in params)})" if params else ""
    tx.execute(
        f"DELETE FROM webhook_cursors WHERE endpoint LIKE 'config:%'{keep}",  # noqa: S608
        params,
    )
    low = tx.scalar("SELECT MIN(last_event_id) FROM webhook_cursors")
    if low is None:  # nobody listens: nothing to keep
        low = tx.scalar("SELECT MAX(id) FROM webhook_events")
    # The newest event is kept, delivered or not: SQLite numbers a new row
    # MAX(id) + 1, so an emptied table would number the next events from 1 again,
    # below every cursor, and they would never be sent.
    tx.execute(
        "DELETE FROM webhook_events WHERE (id <= :low OR at < :cutoff) "
        "AND id < (SELECT MAX(id) FROM webhook_events)",
        {"low": int(low or 0), "cutoff": cutoff},
    )
    tx.execute("DELETE FROM webhook_deliveries WHERE at < :cutoff", {"cutoff": cutoff})


def deliveries(tx: Tx, endpoint: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
    """The delivery log, newest first."""
    where = "" if endpoint is None else "WHERE endpoint = :e "
    rows = tx.execute(
        "SELECT id, endpoint, at, first_event_id, last_event_id, events, attempt, status, "  # noqa: S608
        f"error, duration FROM webhook_deliveries {where}ORDER BY id DESC LIMIT :limit",
        {"e": endpoint, "limit": limit} if endpoint is not None else {"limit": limit},
    )
    names = (
        "id",
        "endpoint",
        "at",
        "first_event_id",
        "last_event_id",
        "events",
        "attempt",
        "status",
        "error",
        "duration",
    )
    return [dict(zip(names, r, strict=True)) for r in rows]
