-- Backups: one row per backup taken (or being taken) by this installation. The backup target
-- holds the same facts in each backup's manifest, so a target can be listed after a disaster
-- without this table. `status` is running, succeeded or failed; `heartbeat_at` moves while a
-- backup runs, so one whose process died is told apart from one still copying.
CREATE TABLE backups (
    id               TEXT PRIMARY KEY,
    target           TEXT NOT NULL,
    trigger          TEXT NOT NULL,
    actor            TEXT NOT NULL,
    status           TEXT NOT NULL,
    started_at       REAL NOT NULL,
    heartbeat_at     REAL NOT NULL,
    finished_at      REAL,
    size             INTEGER NOT NULL DEFAULT 0,
    copied           INTEGER NOT NULL DEFAULT 0,
    files            INTEGER NOT NULL DEFAULT 0,
    blobs            INTEGER NOT NULL DEFAULT 0,
    encrypted        INTEGER NOT NULL DEFAULT 0,
    error            TEXT,
    verified_at      REAL,
    verify_status    TEXT,
    verify_error     TEXT,
    pruned_at        REAL
);
CREATE INDEX backups_started ON backups (started_at);
