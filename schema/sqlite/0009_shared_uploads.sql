-- Several instances on one database (PostgreSQL) share uploads.
--
-- `verify_lease`: while an instance verifies and publishes an upload it
-- renews this time (unix seconds) every few seconds; another instance
-- takes the upload over only once it has passed (the first instance
-- stopped). SQLite has one server at a time: its leases are cleared at
-- start.
ALTER TABLE uploads ADD COLUMN verify_lease INTEGER NOT NULL DEFAULT 0;

-- GC keeps every blob a part row names (a part's copy in a shared blob
-- store): looked up by blake3.
CREATE INDEX upload_parts_blake3 ON upload_parts(blake3);
