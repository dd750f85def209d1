"""Registry changes, recorded once: an audit row and a webhook event, in the change's own
transaction.

The metadata store runs these from inside the unit of work that makes the change, through its
write hook (`Recorded`, registered at assembly: registry/effects.py), so the record exists
exactly when the change committed. The actor is the current request's caller
(`ops/context.py`): a signed-in user, `robot:<ns>+<name>`, or `system` outside a request.
"""

from __future__ import annotations

from typing import Any

from appliance.metadata.db import Tx
from appliance.metadata.store import Pushed, WriteEffects
from appliance.ops import audit, context, webhooks


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
    webhooks.emit(
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
    webhooks.emit(tx, "delete", repository=repository, tag=tag, digest=digest, actor=actor)


def manifest_deleted(tx: Tx, repository: str, digest: str, tags: list[str]) -> None:
    actor = context.actor()
    audit.record(tx, actor, "manifest.delete", f"{repository}@{digest}", tags=tags)
    webhooks.emit(tx, "delete", repository=repository, digest=digest, actor=actor)


def blob_deleted(tx: Tx, repository: str, digest: str) -> None:
    actor = context.actor()
    audit.record(tx, actor, "blob.delete", f"{repository}@{digest}")
    webhooks.emit(
        tx,
        "delete",
        repository=repository,
        digest=digest,
        media_type="application/octet-stream",
        actor=actor,
    )


class Recorded(WriteEffects):
    """The registry's write hook (metadata/store.py) as audit rows and webhook events."""

    def manifest_pushed(self, tx: Tx, push: Pushed) -> None:
        manifest_pushed(
            tx,
            push.repository,
            push.digest,
            push.manifest.media_type,
            push.size,
            push.tag,
            push.moved_from,
        )

    def tag_deleted(self, tx: Tx, repository: str, tag: str, digest: str, *, audited: bool) -> None:
        tag_deleted(tx, repository, tag, digest, audited=audited)

    def manifest_deleted(self, tx: Tx, repository: str, digest: str, tags: list[str]) -> None:
        manifest_deleted(tx, repository, digest, tags)

    def blob_deleted(self, tx: Tx, repository: str, digest: str) -> None:
        blob_deleted(tx, repository, digest)
