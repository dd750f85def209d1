-- Operations: where an audited change came from, and the webhook notification queue.

-- The source address and request id of the request that made the change (NULL for the CLI
-- and background jobs).
ALTER TABLE audit_events ADD COLUMN source TEXT;
ALTER TABLE audit_events ADD COLUMN request_id TEXT;
CREATE INDEX audit_events_actor ON audit_events (actor, at);
CREATE INDEX audit_events_action ON audit_events (action, at);

-- Registry events (push, pull, delete) waiting to be delivered, in order. `payload` is one
-- Distribution-style event (JSON) without its envelope. Rows are pruned once every endpoint
-- has moved past them, or when older than the retention.
CREATE TABLE webhook_events (
    id          INTEGER PRIMARY KEY,
    at          REAL NOT NULL,
    action      TEXT NOT NULL,
    namespace   TEXT NOT NULL,
    repository  TEXT NOT NULL,
    payload     TEXT NOT NULL
);
CREATE INDEX webhook_events_at ON webhook_events (at);
CREATE INDEX webhook_events_namespace ON webhook_events (namespace, id);

-- Endpoints registered for one namespace through the management API (instance-wide
-- endpoints come from the configuration). `secret` signs each delivery (HMAC-SHA-256); it is
-- needed in clear to sign and is never returned by the API after creation.
CREATE TABLE webhook_endpoints (
    id            INTEGER PRIMARY KEY,
    namespace_id  INTEGER NOT NULL REFERENCES namespaces (id) ON DELETE CASCADE,
    url           TEXT NOT NULL,
    secret        TEXT NOT NULL,
    actions       TEXT NOT NULL DEFAULT 'push,pull,delete',
    enabled       INTEGER NOT NULL DEFAULT 1,
    created_at    REAL NOT NULL,
    created_by    TEXT NOT NULL
);
CREATE INDEX webhook_endpoints_namespace ON webhook_endpoints (namespace_id);

-- How far each endpoint has been delivered (`endpoint`: 'ns:<id>' or 'config:<hash>'), and
-- its retry state: events go out in id order, and a failure holds the endpoint's cursor
-- until `next_attempt_at` (exponential backoff), so order survives an endpoint being down.
CREATE TABLE webhook_cursors (
    endpoint         TEXT PRIMARY KEY,
    last_event_id    INTEGER NOT NULL,
    failures         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  REAL NOT NULL DEFAULT 0,
    last_error       TEXT
);

-- The delivery log: one row per attempt (a batch of events in one envelope).
CREATE TABLE webhook_deliveries (
    id              INTEGER PRIMARY KEY,
    endpoint        TEXT NOT NULL,
    at              REAL NOT NULL,
    first_event_id  INTEGER NOT NULL,
    last_event_id   INTEGER NOT NULL,
    events          INTEGER NOT NULL,
    attempt         INTEGER NOT NULL,
    status          INTEGER,
    error           TEXT,
    duration        REAL NOT NULL
);
CREATE INDEX webhook_deliveries_endpoint ON webhook_deliveries (endpoint, id);
CREATE INDEX webhook_deliveries_at ON webhook_deliveries (at);
