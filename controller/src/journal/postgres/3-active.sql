-- Version 3: the controller holding the database. One row at most,
-- rewritten by each controller that takes the database's lock: where it
-- answers (its REPLICA_URL, for standbys to forward requests to; NULL
-- without one), how many times the database has changed hands (a
-- controller that reconnects finds out whether another held it
-- meanwhile), and whether its holder let go cleanly (a standby taking
-- over from one that did not waits for it to have stopped acting).
CREATE TABLE bakery_active (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    url       text,
    epoch     bigint  NOT NULL,
    released  boolean NOT NULL,
    since_ms  bigint  NOT NULL
);
