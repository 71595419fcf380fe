-- Read-side extras: NAR listings (Nix's `.ls` JSON) and build logs.

-- The `.ls` listing of a NAR, built while it was verified: zstd-compressed
-- JSON. Shared, like the NAR, by every cache that links it.
CREATE TABLE nar_listings (
    nar_id   BIGINT PRIMARY KEY REFERENCES nars(id) ON DELETE CASCADE,
    listing  BYTEA NOT NULL
);

-- Build logs (`nix store copy-log --to`), per cache, keyed by the
-- derivation's store path base name ("<hash>-<name>.drv"); zstd-compressed.
CREATE TABLE build_logs (
    cache_id    BIGINT NOT NULL REFERENCES caches(id) ON DELETE CASCADE,
    drv         TEXT NOT NULL,
    log         BYTEA NOT NULL,
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (cache_id, drv)
);
