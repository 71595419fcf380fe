-- The database owns every file of the blob store.
--
-- A blob has a row here before its file appears in the store, and keeps it
-- until its file is gone. Its state follows from what refers to it:
--   pending       an upload's publish is moving it in (upload_blobs);
--   live          a stored NAR is made of it (nar_chunks);
--   unreferenced  neither: garbage collection deletes the file, then the
--                 row, inside one write transaction.
-- Files the store holds without a row are leftovers (of a crash, or of a
-- version before this table) and are swept once older than the grace.

CREATE TABLE blobs (
    id          TEXT PRIMARY KEY,
    size        BIGINT NOT NULL,
    created_at  BIGINT NOT NULL
);

-- Blobs an upload's publish claimed before its first rename into the
-- store; the commit that publishes the path releases them, and so does
-- the upload's removal (expiry, abandon, cache destroyed).
CREATE TABLE upload_blobs (
    upload_id  TEXT NOT NULL REFERENCES uploads(id) ON DELETE CASCADE,
    blob       TEXT NOT NULL,
    PRIMARY KEY (upload_id, blob)
);
CREATE INDEX upload_blobs_blob ON upload_blobs(blob);

INSERT INTO blobs (id, size, created_at)
    SELECT blob, MAX(size), CAST(EXTRACT(EPOCH FROM now()) AS BIGINT)
    FROM nar_chunks GROUP BY blob
    ON CONFLICT DO NOTHING;
