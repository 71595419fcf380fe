-- Per-cache path count and published bytes, kept up to date by triggers,
-- so `/metrics` reads a row per cache instead of joining every path.
CREATE TABLE cache_stats (
    cache_id  INTEGER PRIMARY KEY REFERENCES caches(id) ON DELETE CASCADE,
    paths     INTEGER NOT NULL DEFAULT 0,
    bytes     INTEGER NOT NULL DEFAULT 0
);

INSERT INTO cache_stats (cache_id, paths, bytes)
    SELECT c.id, COUNT(p.id), COALESCE(SUM(n.file_size), 0)
    FROM caches c LEFT JOIN paths p ON p.cache_id = c.id
    LEFT JOIN nars n ON n.id = p.nar_id
    GROUP BY c.id;

CREATE TRIGGER cache_stats_new_cache AFTER INSERT ON caches
BEGIN
    INSERT INTO cache_stats (cache_id) VALUES (NEW.id);
END;

CREATE TRIGGER cache_stats_path_added AFTER INSERT ON paths
BEGIN
    UPDATE cache_stats SET paths = paths + 1,
        bytes = bytes + (SELECT file_size FROM nars WHERE id = NEW.nar_id)
    WHERE cache_id = NEW.cache_id;
END;

CREATE TRIGGER cache_stats_path_removed AFTER DELETE ON paths
BEGIN
    UPDATE cache_stats SET paths = paths - 1,
        bytes = bytes - COALESCE((SELECT file_size FROM nars WHERE id = OLD.nar_id), 0)
    WHERE cache_id = OLD.cache_id;
END;
