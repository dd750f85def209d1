-- Pull-through cache (proxy namespaces).

-- Namespaces that mirror an upstream registry, as configured (`proxy.upstreams`). A row is
-- written when Berth starts with the namespace configured; it keeps a team or personal
-- namespace from taking the name later, and says which upstream the cached content came from.
CREATE TABLE proxy_namespaces (
    name        TEXT PRIMARY KEY,
    upstream    TEXT NOT NULL,
    created_at  REAL NOT NULL
);

-- Where each cached tag pointed upstream when last checked. A tag is served from the cache
-- until `validated_at` is older than `proxy.tag_ttl`, then re-validated (a HEAD upstream).
CREATE TABLE proxy_tags (
    repository_id  INTEGER NOT NULL REFERENCES repositories (id) ON DELETE CASCADE,
    tag            TEXT NOT NULL,
    digest         TEXT NOT NULL,
    validated_at   REAL NOT NULL,
    PRIMARY KEY (repository_id, tag)
);

-- Manifests fetched from upstream whose blobs (or child manifests) are not all cached yet.
-- Served from here meanwhile; each is stored as a regular manifest (through the same path as
-- a push) as soon as everything it refers to is cached, and its row removed.
CREATE TABLE proxy_manifests (
    repository_id  INTEGER NOT NULL REFERENCES repositories (id) ON DELETE CASCADE,
    digest         TEXT NOT NULL,
    media_type     TEXT NOT NULL,
    payload        BLOB NOT NULL,
    fetched_at     REAL NOT NULL,
    PRIMARY KEY (repository_id, digest)
);
