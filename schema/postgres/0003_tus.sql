-- tus 1.0 uploads: the protocol's view of an engine upload (same id).
-- 'single' and 'final' uploads verify and publish like any upload;
-- 'partial' ones (concatenation) are parts-only buckets that a final
-- upload absorbs.
CREATE TABLE tus_uploads (
    id             TEXT PRIMARY KEY REFERENCES uploads(id) ON DELETE CASCADE,
    kind           TEXT NOT NULL CHECK (kind IN ('single', 'partial', 'final')),
    -- NULL while the length is deferred (creation-defer-length).
    upload_length  BIGINT,
    -- Upload-Metadata as the client sent it, echoed by HEAD.
    metadata       TEXT NOT NULL DEFAULT '',
    -- For 'final': the partial upload URLs it was created from.
    concat         TEXT NOT NULL DEFAULT ''
);
