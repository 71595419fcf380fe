-- ferry schema, version 1. Append-only: later changes go in new files.
-- Times are Unix seconds (INTEGER). Hashes are written as Nix writes them
-- ("sha256:<nix32>"); blob ids are lowercase blake3 hex.

CREATE TABLE caches (
    id              INTEGER PRIMARY KEY,
    name            TEXT NOT NULL UNIQUE,
    public          INTEGER NOT NULL DEFAULT 0,
    priority        INTEGER NOT NULL DEFAULT 41,
    store_dir       TEXT NOT NULL DEFAULT '/nix/store',
    -- NULL keeps paths forever.
    retention_secs  INTEGER,
    -- Nix secret key form "name:base64(seed ++ public)".
    signing_key     TEXT NOT NULL,
    -- JSON array of key names whose signatures mark upstream paths.
    upstream_keys   TEXT NOT NULL DEFAULT '["cache.nixos.org-1"]',
    created_at      INTEGER NOT NULL
);

-- One row per distinct NAR, shared by every cache that holds it.
CREATE TABLE nars (
    id           INTEGER PRIMARY KEY,
    nar_hash     TEXT NOT NULL UNIQUE,
    nar_size     INTEGER NOT NULL CHECK (nar_size > 0),
    compression  TEXT NOT NULL,
    file_hash    TEXT NOT NULL UNIQUE,
    file_size    INTEGER NOT NULL,
    created_at   INTEGER NOT NULL
);

-- A stored NAR file is the concatenation of its chunks, in seq order.
CREATE TABLE nar_chunks (
    nar_id  INTEGER NOT NULL REFERENCES nars(id) ON DELETE CASCADE,
    seq     INTEGER NOT NULL,
    blob    TEXT NOT NULL,
    size    INTEGER NOT NULL,
    PRIMARY KEY (nar_id, seq)
);
CREATE INDEX nar_chunks_blob ON nar_chunks(blob);

-- A store path published in one cache. The narinfo is rendered and signed
-- at publish time, so reads never sign.
CREATE TABLE paths (
    id             INTEGER PRIMARY KEY,
    cache_id       INTEGER NOT NULL REFERENCES caches(id) ON DELETE CASCADE,
    hash_part      TEXT NOT NULL,
    store_path     TEXT NOT NULL,
    nar_id         INTEGER NOT NULL REFERENCES nars(id),
    narinfo        TEXT NOT NULL,
    created_at     INTEGER NOT NULL,
    last_access    INTEGER NOT NULL,
    UNIQUE (cache_id, hash_part)
);
CREATE INDEX paths_nar ON paths(nar_id);

-- Uploads not yet committed (and committed ones, until collected).
CREATE TABLE uploads (
    id             TEXT PRIMARY KEY,
    cache_id       INTEGER NOT NULL REFERENCES caches(id) ON DELETE CASCADE,
    store_path     TEXT NOT NULL,
    nar_hash       TEXT NOT NULL,
    nar_size       INTEGER NOT NULL,
    -- JSON: references, deriver, ca, sigs as declared.
    meta           TEXT NOT NULL,
    compression    TEXT NOT NULL,
    state          TEXT NOT NULL CHECK (state IN ('open', 'verifying', 'committed', 'failed')),
    -- Parts count given to `complete`, once it has been called.
    total_parts    INTEGER,
    -- JSON error object when state = 'failed'.
    error          TEXT,
    created_at     INTEGER NOT NULL,
    expires_at     INTEGER NOT NULL
);
CREATE INDEX uploads_cache ON uploads(cache_id, state);
CREATE INDEX uploads_expiry ON uploads(expires_at);

CREATE TABLE upload_parts (
    upload_id  TEXT NOT NULL REFERENCES uploads(id) ON DELETE CASCADE,
    n          INTEGER NOT NULL CHECK (n >= 1),
    size       INTEGER NOT NULL,
    blake3     TEXT NOT NULL,
    PRIMARY KEY (upload_id, n)
);
