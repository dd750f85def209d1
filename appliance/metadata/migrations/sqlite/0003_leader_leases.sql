-- Who leads the background jobs (ops/jobs.py). On SQLite the lease row itself is the lock: a
-- process holds it until `expires_at` unless it renews it. `generation` grows by one at every
-- change of leader; it is the fencing token checked in the same transaction as a destructive
-- delete, so a paused former leader can no longer delete anything.
CREATE TABLE leader_leases (
    name        TEXT PRIMARY KEY,
    holder      TEXT NOT NULL,
    generation  INTEGER NOT NULL,
    expires_at  REAL NOT NULL
);
