"""Events recorded in the transaction of the change they report: the webhook event queue, and
for each registry change its audit row and its webhook event together.

`emit(tx, action, repository=..., ...)` queues one event in the caller's transaction, so an
event exists exactly when its change committed; the leader delivers it later
(`webhooks/delivery.py`). Events have the shape of the Distribution registry's notifications
(`application/vnd.docker.distribution.events.v1+json`), so receivers written for it work
unchanged.

The metadata store runs the registry-change functions below from inside the unit of work that
makes the change, through its write hook (`Recorded` in registry/effects.py, registered at
assembly). The actor is the current request's caller (`context.py`): a signed-in user,
`robot:<ns>+<name>`, or `system` outside a request.
"""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from appliance import context
from appliance.metadata import audit
from appliance.metadata.db import Tx

# The Distribution registry's three actions, then Berth's own: `vulnerability` (a new critical
# finding in an image) and `backup` (a scheduled or requested backup failed), which receivers
# written for Distribution simply ignore.
ACTIONS = ("push", "pull", "delete", "vulnerability", "backup")


def event_payload(
    action: str,
    *,
    repository: str,
    digest: str | None = None,
    tag: str | None = None,
    media_type: str | None = None,
    size: int | None = None,
    actor: str | None = None,
    at: float | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """One Distribution-style event (without its envelope). An instance event (a backup) has
    no repository: its target is empty and its details are in `berth`."""
    now = time.time() if at is None else at
    target: dict[str, Any] = {"repository": repository} if repository else {}
    if media_type is not None:
        target["mediaType"] = media_type
    if size is not None:
        target["size"] = size
        target["length"] = size
    if digest is not None:
        target["digest"] = digest
    if tag is not None:
        target["tag"] = tag
    event: dict[str, Any] = {
        "id": str(uuid.uuid4()),
        "timestamp": datetime.fromtimestamp(now, UTC).isoformat().replace("+00:00", "Z"),
        "action": action,
        "target": target,
        "actor": {"name": actor} if actor else {},
    }
    request = context.current()
    if request is not None:
        event["request"] = {"id": request.request_id, "addr": request.source or ""}
    if extra:
        event["berth"] = extra
    return event


def emit(tx: Tx, action: str, *, repository: str, **fields: Any) -> None:
    """Queue one event (one of `ACTIONS`) in `tx`; it is delivered after `tx` commits, in
    order, to every endpoint that wants it. `fields` are `event_payload`'s (digest, tag,
    media_type, size, actor, and extra members for the event's `berth` object: JSON, no
    secret). `repository=""` makes an instance event, which only the instance-wide endpoints
    receive."""
    if action not in ACTIONS:
        raise ValueError(f"unknown webhook action {action!r}")
    now = time.time()
    payload = event_payload(action, repository=repository, at=now, **fields)
    queue(tx, [(now, action, repository, payload)])


def queue(tx: Tx, events: list[tuple[float, str, str, dict[str, Any]]]) -> None:
    """Queue prepared events (at, action, repository, payload) in `tx`, in list order."""
    tx.executemany(
        "INSERT INTO webhook_events (at, action, namespace, repository, payload) "
        "VALUES (:at, :action, :namespace, :repository, :payload)",
        [
            {
                "at": at,
                "action": action,
                "namespace": repository.split("/", 1)[0],
                "repository": repository,
                "payload": json.dumps(payload, sort_keys=True, default=str),
            }
            for at, action, repository, payload in events
        ],
    )


# -- registry changes ------------------------------------------------------------------


def manifest_pushed(  # noqa: PLR0917 (one argument per fact of the push)
    tx: Tx,
    repository: str,
    digest: str,
    media_type: str,
    size: int,
    tag: str | None,
    moved_from: str | None,
) -> None:
    """A manifest PUT committed (`tag` moved away from `moved_from` when that is a digest)."""
    actor = context.actor()
    details: dict[str, Any] = {"tag": tag} if tag is not None else {}
    audit.record(tx, actor, "manifest.push", f"{repository}@{digest}", **details)
    if tag is not None and moved_from is not None and moved_from != digest:
        moved: dict[str, Any] = {"from": moved_from, "to": digest}
        audit.record(tx, actor, "tag.move", f"{repository}:{tag}", **moved)
    emit(
        tx,
        "push",
        repository=repository,
        digest=digest,
        tag=tag,
        media_type=media_type,
        size=size,
        actor=actor,
    )


def tag_deleted(tx: Tx, repository: str, tag: str, digest: str, *, audited: bool) -> None:
    """A tag was removed (`audited`: the caller wrote its own audit row)."""
    actor = context.actor()
    if not audited:
        audit.record(tx, actor, "tag.delete", f"{repository}:{tag}", digest=digest)
    emit(tx, "delete", repository=repository, tag=tag, digest=digest, actor=actor)


def manifest_deleted(tx: Tx, repository: str, digest: str, tags: list[str]) -> None:
    actor = context.actor()
    audit.record(tx, actor, "manifest.delete", f"{repository}@{digest}", tags=tags)
    emit(tx, "delete", repository=repository, digest=digest, actor=actor)


def blob_deleted(tx: Tx, repository: str, digest: str) -> None:
    actor = context.actor()
    audit.record(tx, actor, "blob.delete", f"{repository}@{digest}")
    emit(
        tx,
        "delete",
        repository=repository,
        digest=digest,
        media_type="application/octet-stream",
        actor=actor,
    )
