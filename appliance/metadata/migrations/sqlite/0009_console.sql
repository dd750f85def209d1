-- The web console: server-side sign-in sessions, and who pushed each manifest and tag.

-- A console session. The cookie holds a random id; only its HMAC is stored, so a copy of the
-- database signs nobody in. `csrf` is the token every state-changing form of the session
-- carries. A session ends at `expires_at` (absolute) or after an idle time (setting), and at
-- sign-out; signing in always makes a new one.
CREATE TABLE console_sessions (
    id_hash       TEXT PRIMARY KEY,
    user_id       INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    csrf          TEXT NOT NULL,
    via           TEXT NOT NULL,                -- password | ldap | saml
    created_at    REAL NOT NULL,
    last_seen_at  REAL NOT NULL,
    expires_at    REAL NOT NULL,
    notice        TEXT                          -- a message for the next page shown
);
CREATE INDEX console_sessions_user ON console_sessions (user_id);
CREATE INDEX console_sessions_expiry ON console_sessions (expires_at);

-- SAML authentication requests awaiting their response: a response must answer one of these,
-- once (replay protection), and before it expires.
CREATE TABLE saml_requests (
    request_id  TEXT PRIMARY KEY,
    created_at  REAL NOT NULL,
    expires_at  REAL NOT NULL
);

-- Who pushed: the user or robot whose credentials stored the manifest or moved the tag.
ALTER TABLE manifests ADD COLUMN pushed_by TEXT;
ALTER TABLE tags ADD COLUMN pushed_by TEXT;

-- The console lists the latest pushes, overall and per repository.
CREATE INDEX tags_updated ON tags (updated_at);
CREATE INDEX tags_repository_updated ON tags (repository_id, updated_at);
