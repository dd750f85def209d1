-- The web console: server-side sign-in sessions, and who pushed each manifest and tag.
-- The PostgreSQL twin of sqlite/0009_console.sql.

CREATE TABLE console_sessions (
    id_hash       TEXT PRIMARY KEY,
    user_id       BIGINT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    csrf          TEXT NOT NULL,
    via           TEXT NOT NULL,                -- password | ldap | saml
    created_at    DOUBLE PRECISION NOT NULL,
    last_seen_at  DOUBLE PRECISION NOT NULL,
    expires_at    DOUBLE PRECISION NOT NULL,
    notice        TEXT                          -- a message for the next page shown
);
CREATE INDEX console_sessions_user ON console_sessions (user_id);
CREATE INDEX console_sessions_expiry ON console_sessions (expires_at);

-- SAML authentication requests awaiting their response: a response must answer one of these,
-- once (replay protection), and before it expires.
CREATE TABLE saml_requests (
    request_id  TEXT PRIMARY KEY,
    created_at  DOUBLE PRECISION NOT NULL,
    expires_at  DOUBLE PRECISION NOT NULL
);

ALTER TABLE manifests ADD COLUMN pushed_by TEXT;
ALTER TABLE tags ADD COLUMN pushed_by TEXT;

CREATE INDEX tags_updated ON tags (updated_at);
CREATE INDEX tags_repository_updated ON tags (repository_id, updated_at);
