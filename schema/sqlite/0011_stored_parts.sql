-- Plain parts stored compressed (issue "plain ingest writes the data once").
--
-- A part of a plain NAR upload (`compression = 'none'`) is compressed as it
-- arrives, into independent zstd frames, and only that is written: the
-- stored file is the concatenation of the parts' files, so they become the
-- NAR's blobs as they are. `blake3` and `size` stay those of the bytes as
-- sent (what the client is told, and resumes by); `blob` and `blob_size`
-- name the file kept (NULL: the part is kept as sent, and `blake3` names
-- it). GC keeps every blob a part row names, under either name.
ALTER TABLE upload_parts ADD COLUMN blob TEXT;
ALTER TABLE upload_parts ADD COLUMN blob_size INTEGER;
CREATE INDEX upload_parts_blob ON upload_parts(blob);
