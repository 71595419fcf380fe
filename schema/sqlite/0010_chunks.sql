-- Content-defined chunks (issue "only new bytes cross the tunnel").
--
-- A chunked upload (`compression = 'chunked'`) declares its NAR as a list
-- of chunks, in batches, before sending the zstd frames of those the
-- server lacks. `upload_manifest` is that manifest: for each entry, where its
-- frame comes from: 'sent' (next in the parts), 'repeat' (an earlier entry
-- of the same manifest), or 'held' (a frame already stored in blob `blob`
-- at `frame_offset`, `csize` bytes; the blob is claimed for the upload).
CREATE TABLE upload_manifest (
    upload_id     TEXT NOT NULL REFERENCES uploads(id) ON DELETE CASCADE,
    idx           INTEGER NOT NULL CHECK (idx >= 0),
    blake3        TEXT NOT NULL,
    size          INTEGER NOT NULL,
    csize         INTEGER NOT NULL,
    source        TEXT NOT NULL CHECK (source IN ('sent', 'repeat', 'held')),
    blob          TEXT,
    frame_offset  INTEGER,
    PRIMARY KEY (upload_id, idx)
);
-- "Came earlier in this manifest?", asked for every declared chunk.
CREATE INDEX upload_manifest_blake3 ON upload_manifest(upload_id, blake3);

-- Where each chunk's frame is stored: the stored file of a chunked NAR is
-- the concatenation of its chunks' frames, kept as ranges of blobs (its
-- parts, and the blobs held frames lie in: see nar_chunks.blob_offset
-- below), and each new chunk (by the blake3 of its bytes) is found here
-- for later uploads to reuse. Rows go with their blob.
CREATE TABLE chunk_frames (
    blake3        TEXT NOT NULL,
    blob          TEXT NOT NULL REFERENCES blobs(id) ON DELETE CASCADE,
    frame_offset  INTEGER NOT NULL,
    csize         INTEGER NOT NULL,
    size          INTEGER NOT NULL,
    PRIMARY KEY (blake3, blob)
);
CREATE INDEX chunk_frames_blob ON chunk_frames(blob);

-- A chunked NAR's file is ranges of blobs (its parts, and the blobs its
-- held chunks' frames lie in): where in its blob each piece starts.
ALTER TABLE nar_chunks ADD COLUMN blob_offset INTEGER NOT NULL DEFAULT 0;
