-- Lifecycle: cleanup policies, immutable tag rules and namespace quotas (appliance/lifecycle/).

-- A cleanup policy applies to one namespace ("team": every repository under it) or one
-- repository ("team/app"). `settings` is a JSON object (keep_recent, keep_regex, remove_regex,
-- older_than_days, time_basis). A policy runs only after a preview of its current settings:
-- `previewed_at` is cleared by every change.
CREATE TABLE cleanup_policies (
    id            INTEGER PRIMARY KEY,
    scope         TEXT NOT NULL,
    settings      TEXT NOT NULL,
    enabled       INTEGER NOT NULL DEFAULT 1,
    created_by    TEXT NOT NULL,
    created_at    REAL NOT NULL,
    updated_at    REAL NOT NULL,
    previewed_at  REAL,
    last_run_at   REAL,
    last_result   TEXT
);
CREATE INDEX cleanup_policies_scope ON cleanup_policies (scope);

-- Tags matching `pattern` (a regular expression, matched in full) in any repository of
-- `namespace` cannot be moved to another manifest or deleted.
CREATE TABLE immutable_tag_rules (
    id          INTEGER PRIMARY KEY,
    namespace   TEXT NOT NULL,
    pattern     TEXT NOT NULL,
    created_by  TEXT NOT NULL,
    created_at  REAL NOT NULL,
    UNIQUE (namespace, pattern)
);

-- The most bytes of distinct blobs the repositories of a namespace may hold together.
CREATE TABLE namespace_quotas (
    namespace    TEXT PRIMARY KEY,
    limit_bytes  INTEGER NOT NULL,
    updated_by   TEXT NOT NULL,
    updated_at   REAL NOT NULL
);
