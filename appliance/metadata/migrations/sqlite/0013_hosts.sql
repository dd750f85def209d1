-- Several hosts on one database: the token-signing keys every host signs and verifies with,
-- and the hosts themselves.

-- Registry token signing keys (auth/tokens.py). `sealed` is the PKCS#8 private key, encrypted
-- and authenticated with AES-256-GCM under a key derived from the server secret that every
-- host shares (auth/secrets.py), bound to its `kid`: the database alone signs nothing. The
-- newest key signs; every key here verifies; `berth keys rotate` adds one and drops those
-- superseded longer ago than a token lives.
CREATE TABLE signing_keys (
    kid         TEXT PRIMARY KEY,
    created_at  REAL NOT NULL,
    sealed      TEXT NOT NULL
);

-- Each serving host, as it last said it was (ops/hosts.py): what `berth ctl doctor` compares.
-- `secret_fingerprint` is a one-way value derived from the server secret; `storage` names the
-- blob store (backend, endpoint, bucket, prefix); `instance` is a random id of the host's data
-- directory, so that two hosts registering under one name are noticed. Process state: not
-- copied or backed up.
CREATE TABLE hosts (
    name                TEXT PRIMARY KEY,
    instance            TEXT NOT NULL,
    version             TEXT NOT NULL,
    secret_fingerprint  TEXT NOT NULL,
    schema_version      INTEGER NOT NULL,
    storage             TEXT NOT NULL,
    address             TEXT NOT NULL,
    started_at          REAL NOT NULL,
    last_seen           REAL NOT NULL
);
