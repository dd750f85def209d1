-- Vulnerability scanning: the scan queue, the SBOM and findings of each image, the imported
-- advisory data, and the pull policy of each namespace.

-- Image manifests waiting for SBOM extraction (filled in the transaction of the push).
CREATE TABLE scan_queue (
    manifest_id  INTEGER PRIMARY KEY REFERENCES manifests (id) ON DELETE CASCADE,
    queued_at    REAL NOT NULL,
    attempts     INTEGER NOT NULL DEFAULT 0,
    not_before   REAL NOT NULL DEFAULT 0
);
CREATE INDEX scan_queue_due ON scan_queue (not_before);

-- One report per image manifest digest (the same bytes give the same packages in any
-- repository). `sbom` is the CycloneDX JSON document, kept so that new advisories are matched
-- without reading a layer again; `vulndb_version` is the advisory data it was matched against.
CREATE TABLE scan_reports (
    digest          TEXT PRIMARY KEY,
    status          TEXT NOT NULL,
    error           TEXT,
    sbom            TEXT,
    sbom_digest     TEXT,
    packages        INTEGER NOT NULL DEFAULT 0,
    scanned_at      REAL NOT NULL,
    matched_at      REAL,
    vulndb_version  INTEGER NOT NULL DEFAULT 0
);

CREATE TABLE scan_findings (
    digest       TEXT NOT NULL REFERENCES scan_reports (digest) ON DELETE CASCADE,
    advisory_id  TEXT NOT NULL,
    purl         TEXT NOT NULL,
    package      TEXT NOT NULL,
    installed    TEXT NOT NULL,
    fixed        TEXT,
    severity     TEXT NOT NULL,
    rank         INTEGER NOT NULL,
    summary      TEXT,
    PRIMARY KEY (digest, advisory_id, purl)
);
CREATE INDEX scan_findings_advisory ON scan_findings (advisory_id);

-- Advisory data, imported offline. Every import is numbered; an advisory remembers the import
-- that last changed it, so the database's version is the newest import that changed anything.
CREATE TABLE vulndb_imports (
    id           INTEGER PRIMARY KEY,
    source       TEXT NOT NULL,
    path         TEXT NOT NULL,
    imported_at  REAL NOT NULL,
    added        INTEGER NOT NULL,
    changed      INTEGER NOT NULL,
    unchanged    INTEGER NOT NULL,
    failed       INTEGER NOT NULL
);

CREATE TABLE vulndb_advisories (
    source        TEXT NOT NULL,
    id            TEXT NOT NULL,
    severity      TEXT NOT NULL,
    summary       TEXT,
    modified      TEXT,
    content_hash  TEXT NOT NULL,
    import_id     INTEGER NOT NULL REFERENCES vulndb_imports (id),
    PRIMARY KEY (source, id)
);

-- What an advisory affects: a package of one ecosystem (a Package URL type), optionally one
-- distribution release, with OSV-style ranges (JSON events) and explicit versions (JSON list).
CREATE TABLE vulndb_affected (
    source       TEXT NOT NULL,
    advisory_id  TEXT NOT NULL,
    ecosystem    TEXT NOT NULL,
    distro       TEXT NOT NULL,
    package      TEXT NOT NULL,
    ranges       TEXT NOT NULL,
    versions     TEXT NOT NULL,
    severity     TEXT,
    FOREIGN KEY (source, advisory_id) REFERENCES vulndb_advisories (source, id) ON DELETE CASCADE
);
CREATE INDEX vulndb_affected_package ON vulndb_affected (ecosystem, package);
CREATE INDEX vulndb_affected_advisory ON vulndb_affected (source, advisory_id);

-- Pull policy per namespace: refuse images with a finding at or above `block_severity`;
-- images without a report follow `unscanned` ('allow' or 'deny').
CREATE TABLE scan_policies (
    namespace       TEXT PRIMARY KEY,
    block_severity  TEXT NOT NULL,
    unscanned       TEXT NOT NULL,
    updated_at      REAL NOT NULL
);

-- Advisories a namespace accepts, each until its expiry (NULL: until removed).
CREATE TABLE scan_exceptions (
    namespace    TEXT NOT NULL REFERENCES scan_policies (namespace) ON DELETE CASCADE,
    advisory_id  TEXT NOT NULL,
    expires_at   REAL,
    reason       TEXT NOT NULL DEFAULT '',
    created_at   REAL NOT NULL,
    created_by   TEXT NOT NULL,
    PRIMARY KEY (namespace, advisory_id)
);

-- Bumped by every import, policy change and finished scan: serving processes compare it now
-- and then to drop their cached pull verdicts. No row yet means generation 0.
CREATE TABLE scan_generation (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    generation  INTEGER NOT NULL
);
