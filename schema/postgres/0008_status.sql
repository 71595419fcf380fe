-- What the status page (`GET /`) shows beyond cache_stats: when each
-- cache last published a path, and what the last garbage collection did.

ALTER TABLE cache_stats ADD COLUMN last_push BIGINT;

UPDATE cache_stats SET last_push =
    (SELECT MAX(p.created_at) FROM paths p WHERE p.cache_id = cache_stats.cache_id);

CREATE FUNCTION cache_stats_last_push() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE cache_stats SET last_push = GREATEST(COALESCE(last_push, 0), NEW.created_at)
    WHERE cache_id = NEW.cache_id;
    RETURN NULL;
END
$$;
CREATE TRIGGER cache_stats_last_push AFTER INSERT ON paths
    FOR EACH ROW EXECUTE FUNCTION cache_stats_last_push();

-- The last garbage collection run, by the server's periodic collector or
-- by `ferry gc`: one row, replaced by each run that finishes.
CREATE TABLE gc_last_run (
    id                 BIGINT PRIMARY KEY CHECK (id = 1),
    started_at         BIGINT NOT NULL,
    finished_at        BIGINT NOT NULL,
    paths_expired      BIGINT NOT NULL,
    uploads_removed    BIGINT NOT NULL,
    nars_removed       BIGINT NOT NULL,
    blobs_removed      BIGINT NOT NULL,
    bytes_freed        BIGINT NOT NULL,
    leftovers_removed  BIGINT NOT NULL
);
