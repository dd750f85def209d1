-- The registry core: repositories, blobs, manifests, tags, uploads and the GC review queues.

CREATE TABLE repositories (
    id          INTEGER PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    created_at  REAL NOT NULL
);

CREATE TABLE blobs (
    digest       TEXT PRIMARY KEY,
    size         INTEGER NOT NULL,
    storage_key  TEXT NOT NULL,
    created_at   REAL NOT NULL
);

-- What a repository may read: blobs pushed to it or mounted into it.
CREATE TABLE repository_blobs (
    repository_id  INTEGER NOT NULL REFERENCES repositories (id) ON DELETE CASCADE,
    digest         TEXT NOT NULL REFERENCES blobs (digest),
    created_at     REAL NOT NULL,
    PRIMARY KEY (repository_id, digest)
);
CREATE INDEX repository_blobs_digest ON repository_blobs (digest);

CREATE TABLE manifests (
    id              INTEGER PRIMARY KEY,
    repository_id   INTEGER NOT NULL REFERENCES repositories (id) ON DELETE CASCADE,
    digest          TEXT NOT NULL,
    media_type      TEXT NOT NULL,
    artifact_type   TEXT,
    annotations     TEXT,
    payload         BLOB NOT NULL,
    subject_digest  TEXT,
    config_digest   TEXT,
    total_size      INTEGER NOT NULL,
    created_at      REAL NOT NULL,
    UNIQUE (repository_id, digest)
);
CREATE INDEX manifests_subject ON manifests (repository_id, subject_digest)
    WHERE subject_digest IS NOT NULL;

-- An index and the manifests it lists.
CREATE TABLE manifest_references (
    parent_id  INTEGER NOT NULL REFERENCES manifests (id) ON DELETE CASCADE,
    child_id   INTEGER NOT NULL REFERENCES manifests (id),
    PRIMARY KEY (parent_id, child_id)
);
CREATE INDEX manifest_references_child ON manifest_references (child_id);

-- The blobs an image manifest needs (config and layers).
CREATE TABLE manifest_layers (
    manifest_id  INTEGER NOT NULL REFERENCES manifests (id) ON DELETE CASCADE,
    digest       TEXT NOT NULL,
    PRIMARY KEY (manifest_id, digest)
);
CREATE INDEX manifest_layers_digest ON manifest_layers (digest);

CREATE TABLE tags (
    repository_id  INTEGER NOT NULL REFERENCES repositories (id) ON DELETE CASCADE,
    name           TEXT NOT NULL,
    manifest_id    INTEGER NOT NULL REFERENCES manifests (id),
    updated_at     REAL NOT NULL,
    pulled_at      REAL,
    PRIMARY KEY (repository_id, name)
);
CREATE INDEX tags_manifest ON tags (manifest_id);

CREATE TABLE uploads (
    id             TEXT PRIMARY KEY,
    repository_id  INTEGER NOT NULL REFERENCES repositories (id) ON DELETE CASCADE,
    size           INTEGER NOT NULL DEFAULT 0,
    started_at     REAL NOT NULL,
    updated_at     REAL NOT NULL
);
CREATE INDEX uploads_updated ON uploads (updated_at);

-- Blobs and manifests that may have lost their last reference, to be reviewed after a delay.
CREATE TABLE gc_blob_queue (
    digest        TEXT PRIMARY KEY,
    review_after  REAL NOT NULL
);
CREATE INDEX gc_blob_queue_due ON gc_blob_queue (review_after);

CREATE TABLE gc_manifest_queue (
    manifest_id   INTEGER PRIMARY KEY,
    review_after  REAL NOT NULL
);
CREATE INDEX gc_manifest_queue_due ON gc_manifest_queue (review_after);
