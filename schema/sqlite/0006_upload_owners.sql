-- Who opened an upload: the first revocation id of the token (its
-- authority block), so a token and everything attenuated from it share
-- one quota of open uploads (`max-open-uploads-per-token`).
CREATE TABLE upload_owners (
    upload_id  TEXT PRIMARY KEY REFERENCES uploads(id) ON DELETE CASCADE,
    owner      TEXT NOT NULL
);
CREATE INDEX upload_owners_owner ON upload_owners(owner);
