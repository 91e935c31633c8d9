-- Version 1 of bakery's state in PostgreSQL (see ../postgres.rs).
-- Applied once, under the migration lock, by the first controller that
-- finds the database without it.

-- One row per build: its record as JSON (secrets blanked; see SECURITY.md).
CREATE TABLE bakery_builds (
    id     text  PRIMARY KEY,
    record bytea NOT NULL
);

-- A build's log, one row per commit that carried its lines: the chunk is
-- the same JSON the embedded journal writes (lines and each task's agent
-- seq after them); first_seq, lines and bytes say what it holds without
-- reading it.
CREATE TABLE bakery_log_chunks (
    build_id  text   NOT NULL,
    first_seq bigint NOT NULL,
    lines     bigint NOT NULL,
    bytes     bigint NOT NULL,
    chunk     bytea  NOT NULL,
    PRIMARY KEY (build_id, first_seq)
);
