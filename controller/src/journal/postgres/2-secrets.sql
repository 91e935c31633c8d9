-- Version 2: build secrets sealed with STATE_KEY (see ../sealing.rs), one
-- row per unfinished build that has any, written in the commit that
-- writes its record and deleted when it has none left.
CREATE TABLE bakery_secrets (
    build_id text  PRIMARY KEY,
    sealed   bytea NOT NULL
);
