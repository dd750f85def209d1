"""The audit log: one row per change, written in the transaction that makes the change.

`record(tx, actor, action, target, **details)` is called inside the caller's unit of work, so
a change and its audit row commit (or roll back) together. `actor` is who did it (a user name,
`robot:<ns>+<name>`, `cli`, `system`), `action` a dotted verb (`user.create`,
`signin.failure`), `target` what it was done to. Details must be JSON-serialisable and must
never contain a secret.
"""

from __future__ import annotations

import json
import time
from typing import Any

from appliance.metadata.db import Tx


def record(
    tx: Tx, actor: str, action: str, target: str, *, at: float | None = None, **details: Any
) -> None:
    """Append one audit event in `tx`."""
    tx.execute(
        "INSERT INTO audit_events (at, actor, action, target, details) "
        "VALUES (:at, :actor, :action, :target, :details)",
        {
            "at": time.time() if at is None else at,
            "actor": actor,
            "action": action,
            "target": target,
            "details": json.dumps(details, sort_keys=True, default=str),
        },
    )


def events(tx: Tx, limit: int = 100, action: str | None = None) -> list[dict[str, Any]]:
    """The newest `limit` events, newest first (optionally only one action)."""
    where = "" if action is None else "WHERE action = :action "
    rows = tx.execute(
        "SELECT at, actor, action, target, details FROM audit_events "  # noqa: S608
        f"{where}ORDER BY id DESC LIMIT :limit",
        {"action": action, "limit": limit} if action is not None else {"limit": limit},
    )
    return [
        {"at": r[0], "actor": r[1], "action": r[2], "target": r[3], "details": json.loads(r[4])}
        for r in rows
    ]
