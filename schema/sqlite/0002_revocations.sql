-- Revoked token block ids (hex). A token fails when any of its blocks'
-- revocation ids is listed here.
CREATE TABLE revoked_ids (
    id          TEXT PRIMARY KEY,
    revoked_at  INTEGER NOT NULL
);
