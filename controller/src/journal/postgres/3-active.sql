-- Version 3: where the controller holding the database can be reached
-- (its REPLICA_URL), for standbys to forward requests to. One row at most,
-- written by the controller that takes the database's lock.
CREATE TABLE bakery_active (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    url       text    NOT NULL,
    since_ms  bigint  NOT NULL
);
