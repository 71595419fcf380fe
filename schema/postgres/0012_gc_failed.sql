-- Deletions a garbage collection run could not do (each logged; the next
-- run tries them again).
ALTER TABLE gc_last_run ADD COLUMN failed BIGINT NOT NULL DEFAULT 0;
