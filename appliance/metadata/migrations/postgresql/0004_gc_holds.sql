-- Holds on garbage collection. A backup (or any reader that must copy what a snapshot
-- references) inserts a row before it takes its snapshot, renews `expires_at` while it works
-- and deletes the row when done. While any unexpired hold exists the collector deletes
-- nothing (it checks in the same transaction as its delete), so bytes that a snapshot
-- references cannot vanish under the copy. A holder that dies stops renewing, and its hold
-- lapses at `expires_at`.
CREATE TABLE gc_holds (
    id          BIGSERIAL PRIMARY KEY,
    holder      TEXT NOT NULL,
    created_at  DOUBLE PRECISION NOT NULL,
    expires_at  DOUBLE PRECISION NOT NULL
);
CREATE INDEX gc_holds_expiry ON gc_holds (expires_at);
