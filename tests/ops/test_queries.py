"""The operations tables through both dialects: audit filters (prefix patterns with `_` and
`%` in them), the webhook queue, namespace endpoints and housekeeping, on SQLite and
PostgreSQL alike."""

from __future__ import annotations

from appliance import config as settings
from appliance import context
from appliance.metadata import audit
from appliance.metadata.db import Database, Tx
from appliance.metadata.events import emit
from appliance.webhooks.delivery import Deliverer
from appliance.webhooks.endpoints import (
    add_endpoint,
    namespace_endpoints,
    redact_url,
    remove_endpoint,
)


def test_audit_filters(db: Database) -> None:
    def seed(tx: Tx) -> None:
        token = context.begin("rid-1", "192.0.2.7")
        try:
            audit.record(tx, "alice", "token.create", "alice/1", at=100.0, scopes=["api"])
            audit.record(tx, "alice", "token.revoke", "1", at=200.0)
            audit.record(tx, "bob", "tokenXcreate", "a_b/x", at=300.0)
            audit.record(tx, "bob", "manifest.push", "a_b/app@sha256:1", at=400.0)
            audit.record(tx, "bob", "manifest.push", "aXb/app@sha256:2", at=500.0)
        finally:
            context.end(token)

    db.run_sync_write(seed)

    def actions(**filters: object) -> list[str]:
        return [e["action"] for e in db.run_sync_read(lambda tx: audit.query(tx, **filters))]

    assert actions(action="token.*") == ["token.revoke", "token.create"]  # not tokenXcreate
    assert actions(action="token.create") == ["token.create"]
    assert actions(actor="bob", target="a_b/") == ["manifest.push", "tokenXcreate"]
    assert actions(since=200.0, until=400.0) == ["tokenXcreate", "token.revoke"]
    events = db.run_sync_read(lambda tx: list(audit.export(tx, actor="alice")))
    assert [e["at"] for e in events] == [100.0, 200.0]
    assert events[0]["source"] == "192.0.2.7"
    assert events[0]["request_id"] == "rid-1"
    assert events[0]["details"] == {"scopes": ["api"]}
    assert db.run_sync_write(lambda tx: audit.prune(tx, 250.0)) == 2
    assert len(actions()) == 3


async def test_webhook_queue_and_endpoints(db: Database) -> None:
    def seed(tx: Tx) -> None:
        tx.execute("INSERT INTO namespaces (name, public, created_at) VALUES ('team', 0, 1.0)")

    db.run_sync_write(seed)
    endpoint_id, secret = db.run_sync_write(
        lambda tx: add_endpoint(
            tx, "alice", "team", "https://u:p@hooks.example/x?k=v", actions="push"
        )
    )
    assert len(secret) >= 32
    db.run_sync_write(lambda tx: emit(tx, "push", repository="team/app", tag="1"))
    db.run_sync_write(lambda tx: emit(tx, "delete", repository="other/app"))
    found = db.run_sync_read(lambda tx: namespace_endpoints(tx, "team"))
    assert [(e.id, e.namespace, sorted(e.actions)) for e in found] == [
        (endpoint_id, "team", ["push"])
    ]
    assert redact_url(found[0].url) == "https://hooks.example/x"
    config = settings.load(None, environ={}, overrides={"webhooks.endpoints": ""})
    deliverer = Deliverer(db, config)
    await deliverer.prune()
    left = db.run_sync_read(lambda tx: tx.execute("SELECT action FROM webhook_events ORDER BY id"))
    assert [r[0] for r in left] == ["push", "delete"]  # the team endpoint has not had them
    db.run_sync_write(lambda tx: remove_endpoint(tx, "alice", "team", endpoint_id))
    await deliverer.prune()
    # Nobody listens: everything goes but the newest event, which keeps the numbering going.
    left = db.run_sync_read(lambda tx: tx.execute("SELECT action FROM webhook_events ORDER BY id"))
    assert [r[0] for r in left] == ["delete"]
    actions = [e["action"] for e in db.run_sync_read(audit.query)]
    assert actions == ["webhook.delete", "webhook.create"]
