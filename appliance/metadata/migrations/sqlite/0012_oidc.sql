-- OpenID Connect sign-in and CI identity tokens (appliance/auth/oidc.py, appliance/auth/citrust.py).

-- A console sign-in on its way through an OpenID provider. The callback deletes the row
-- (DELETE ... RETURNING), so each `state` is good once, on whichever worker or host gets it.
-- Only hashes of the state and of the browser's binding cookie are kept.
CREATE TABLE oidc_states (
    state_hash     TEXT PRIMARY KEY,
    provider       TEXT NOT NULL,
    binding_hash   TEXT NOT NULL,
    nonce          TEXT NOT NULL,
    code_verifier  TEXT NOT NULL,                -- PKCE (S256)
    next_path      TEXT NOT NULL,
    created_at     REAL NOT NULL,
    expires_at     REAL NOT NULL
);
CREATE INDEX oidc_states_expiry ON oidc_states (expires_at);

-- CI trust rules: a JWT from `issuer` for `audience` whose claims hold every `claims` pair
-- (a JSON object, exact string match) may pull (or push) repositories of the namespace whose
-- path below it matches `repository` (a glob). `jwks` holds the issuer's public keys for
-- offline sites (NULL: fetched through the issuer's discovery document).
-- Rules are never edited, only added and removed, and a registry token issued from a CI
-- token names the rules that matched by id (auth/credentials.py): AUTOINCREMENT, so that the
-- id of a removed rule is never given to a new one (PostgreSQL's identity never reuses either).
CREATE TABLE ci_trust_rules (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    namespace_id  INTEGER NOT NULL REFERENCES namespaces (id) ON DELETE CASCADE,
    issuer        TEXT NOT NULL,
    audience      TEXT NOT NULL,
    claims        TEXT NOT NULL,
    access        TEXT NOT NULL,                 -- pull | push
    repository    TEXT NOT NULL,
    jwks          TEXT,
    template      TEXT,                          -- gitlab | github | forgejo | NULL
    description   TEXT NOT NULL DEFAULT '',
    created_by    TEXT NOT NULL,
    created_at    REAL NOT NULL
);
CREATE INDEX ci_trust_rules_issuer ON ci_trust_rules (issuer);
CREATE INDEX ci_trust_rules_namespace ON ci_trust_rules (namespace_id);
