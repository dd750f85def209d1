"""The audit log: one row per change, written in the transaction that makes the change.

`record(tx, actor, action, target, **details)` is called inside the caller's unit of work, so
a change and its audit row commit (or roll back) together. `actor` is who did it (a user name,
`robot:<ns>+<name>`, `cli`, `system`), `action` a dotted verb (`user.create`,
`signin.failure`), `target` what it was done to. Details must be JSON-serialisable and must
never contain a secret.

The source address and request id are taken from the request being served
(`context.py`), so callers do not pass them; outside a request both are NULL.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

from appliance import context
from appliance.metadata.db import Tx
from appliance.metadata.leader import Fence, check_fence


def record(
    tx: Tx, actor: str, action: str, target: str, *, at: float | None = None, **details: Any
) -> None:
    """Append one audit event in `tx`, with the current request's source and id."""
    request = context.current()
    tx.execute(
        "INSERT INTO audit_events (at, actor, action, target, details, source, request_id) "
        "VALUES (:at, :actor, :action, :target, :details, :source, :request_id)",
        {
            "at": time.time() if at is None else at,
            "actor": actor,
            "action": action,
            "target": target,
            "details": json.dumps(details, sort_keys=True, default=str),
            "source": request.source if request is not None else None,
            "request_id": request.request_id if request is not None else None,
        },
    )


def events(tx: Tx, limit: int = 100, action: str | None = None) -> list[dict[str, Any]]:
    """The newest `limit` events, newest first (optionally only one action)."""
    return query(tx, limit=limit, action=action)


_COLUMNS = "id, at, actor, action, target, details, source, request_id"


def _row(r: tuple[Any, ...]) -> dict[str, Any]:
    return {
        "id": int(r[0]),
        "at": float(r[1]),
        "actor": r[2],
        "action": r[3],
        "target": r[4],
        "details": json.loads(r[5]),
        "source": r[6],
        "request_id": r[7],
    }


def _filters(
    since: float | None,
    until: float | None,
    actor: str | None,
    action: str | None,
    target: str | None,
) -> tuple[str, dict[str, Any]]:
    """A WHERE clause and its parameters. `action` ending in `.` or `*` matches a prefix
    (`token.*`); `target` matches a prefix too (`team/` for everything under team)."""
    where: list[str] = []
    params: dict[str, Any] = {}
    if since is not None:
        where.append("at >= :since")
        params["since"] = since
    if until is not None:
        where.append("at < :until")
        params["until"] = until
    if actor is not None:
        where.append("actor = :actor")
        params["actor"] = actor
    if action is not None:
        if action.endswith(("*", ".")):
            where.append("action LIKE :action ESCAPE '\\'")
            params["action"] = _like_prefix(action.rstrip("*"))
        else:
            where.append("action = :action")
            params["action"] = action
    if target is not None:
        where.append("target LIKE :target ESCAPE '\\'")
        params["target"] = _like_prefix(target)
    return (" WHERE " + " AND ".join(where) if where else ""), params


def _like_prefix(text: str) -> str:
    """A LIKE pattern (with ESCAPE '\\') matching strings that start with `text`."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def query(
    tx: Tx,
    *,
    limit: int = 100,
    before_id: int | None = None,
    since: float | None = None,
    until: float | None = None,
    actor: str | None = None,
    action: str | None = None,
    target: str | None = None,
) -> list[dict[str, Any]]:
    """Events matching the filters, newest first, at most `limit`, older than `before_id`
    (the cursor of the next page). The one audit search: `/api/v1/audit`, the console's audit
    page and (through `export`) `berth audit export` all filter here, so they agree."""
    clause, params = _filters(since, until, actor, action, target)
    if before_id is not None:
        clause += (" AND " if clause else " WHERE ") + "id < :before"
        params["before"] = before_id
    params["limit"] = limit
    rows = tx.execute(
        f"SELECT {_COLUMNS} FROM audit_events{clause} ORDER BY id DESC LIMIT :limit",  # noqa: S608
        params,
    )
    return [_row(r) for r in rows]


def export(
    tx: Tx,
    *,
    since: float | None = None,
    until: float | None = None,
    actor: str | None = None,
    action: str | None = None,
    target: str | None = None,
) -> Iterator[dict[str, Any]]:
    """Every matching event, oldest first, streamed (for `berth audit export`)."""
    clause, params = _filters(since, until, actor, action, target)
    sql = f"SELECT {_COLUMNS} FROM audit_events{clause} ORDER BY id"  # noqa: S608
    for r in tx.iterate(sql, params):
        yield _row(r)


def prune(tx: Tx, before: float, fence: Fence | None = None) -> int:
    """Delete events older than `before` (in the leader, fenced); returns how many."""
    if fence is not None:
        check_fence(tx, fence)
    gone = tx.execute(
        "DELETE FROM audit_events WHERE at < :before RETURNING id", {"before": before}
    )
    return len(gone)
