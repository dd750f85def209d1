-- Identity and access: users, namespaces and roles, robots, hashed tokens, the audit log.

CREATE TABLE users (
    id             INTEGER PRIMARY KEY,
    name           TEXT NOT NULL UNIQUE,
    email          TEXT,
    display_name   TEXT,
    password_hash  TEXT,                       -- argon2id; NULL: no password (LDAP, SAML, robots)
    source         TEXT NOT NULL DEFAULT 'local',  -- local | ldap
    external_id    TEXT,                       -- the LDAP DN
    is_admin       INTEGER NOT NULL DEFAULT 0,
    disabled       INTEGER NOT NULL DEFAULT 0,
    created_at     REAL NOT NULL,
    last_login_at  REAL
);

-- Team and personal namespaces share one name space (the first path segment of a repository).
CREATE TABLE namespaces (
    id          INTEGER PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    public      INTEGER NOT NULL DEFAULT 0,
    owner_user  INTEGER REFERENCES users (id) ON DELETE CASCADE,  -- set for a personal namespace
    created_at  REAL NOT NULL
);

CREATE TABLE memberships (
    namespace_id  INTEGER NOT NULL REFERENCES namespaces (id) ON DELETE CASCADE,
    user_id       INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    role          TEXT NOT NULL,               -- reader | developer | maintainer | owner
    source        TEXT NOT NULL DEFAULT 'manual',  -- manual | ldap (re-synced) | personal
    created_at    REAL NOT NULL,
    PRIMARY KEY (namespace_id, user_id)
);
CREATE INDEX memberships_user ON memberships (user_id);

-- A robot account belongs to one namespace and acts only there.
CREATE TABLE robots (
    id            INTEGER PRIMARY KEY,
    namespace_id  INTEGER NOT NULL REFERENCES namespaces (id) ON DELETE CASCADE,
    name          TEXT NOT NULL,
    role          TEXT NOT NULL,
    description   TEXT NOT NULL DEFAULT '',
    created_by    TEXT NOT NULL,
    created_at    REAL NOT NULL,
    UNIQUE (namespace_id, name)
);

-- Personal access tokens, robot secrets and refresh tokens, stored as HMAC-SHA-256.
CREATE TABLE tokens (
    id            INTEGER PRIMARY KEY,
    kind          TEXT NOT NULL,               -- pat | robot | refresh
    user_id       INTEGER REFERENCES users (id) ON DELETE CASCADE,
    robot_id      INTEGER REFERENCES robots (id) ON DELETE CASCADE,
    name          TEXT NOT NULL DEFAULT '',
    scopes        TEXT NOT NULL DEFAULT '',    -- space-separated: read_registry write_registry api
    secret_hash   TEXT NOT NULL UNIQUE,
    created_at    REAL NOT NULL,
    expires_at    REAL,
    last_used_at  REAL,
    revoked_at    REAL
);
CREATE INDEX tokens_user ON tokens (user_id);
CREATE INDEX tokens_robot ON tokens (robot_id);

CREATE TABLE audit_events (
    id       INTEGER PRIMARY KEY,
    at       REAL NOT NULL,
    actor    TEXT NOT NULL,
    action   TEXT NOT NULL,
    target   TEXT NOT NULL,
    details  TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX audit_events_at ON audit_events (at);
