-- Who leads the background jobs (ops/jobs.py). On PostgreSQL the lock is a session advisory
-- lock held on a dedicated connection; this row only carries the fencing token: `generation`
-- grows by one at every change of leader and is checked in the same transaction as a
-- destructive delete, so a paused former leader can no longer delete anything.
CREATE TABLE leader_leases (
    name        TEXT COLLATE "C" PRIMARY KEY,
    holder      TEXT NOT NULL,
    generation  BIGINT NOT NULL,
    expires_at  DOUBLE PRECISION NOT NULL
);
