-- What the status page (`GET /`) shows beyond cache_stats: when each
-- cache last published a path, and what the last garbage collection did.

ALTER TABLE cache_stats ADD COLUMN last_push INTEGER;

UPDATE cache_stats SET last_push =
    (SELECT MAX(p.created_at) FROM paths p WHERE p.cache_id = cache_stats.cache_id);

CREATE TRIGGER cache_stats_last_push AFTER INSERT ON paths
BEGIN
    UPDATE cache_stats SET last_push = MAX(COALESCE(last_push, 0), NEW.created_at)
    WHERE cache_id = NEW.cache_id;
END;

-- The last garbage collection run, by the server's periodic collector or
-- by `ferry gc`: one row, replaced by each run that finishes.
CREATE TABLE gc_last_run (
    id                 INTEGER PRIMARY KEY CHECK (id = 1),
    started_at         INTEGER NOT NULL,
    finished_at        INTEGER NOT NULL,
    paths_expired      INTEGER NOT NULL,
    uploads_removed    INTEGER NOT NULL,
    nars_removed       INTEGER NOT NULL,
    blobs_removed      INTEGER NOT NULL,
    bytes_freed        INTEGER NOT NULL,
    leftovers_removed  INTEGER NOT NULL
);
