-- The checker's copy of what the workload emitted, written after a run: each event's id,
-- its index in the workload, its account, and whether it had to be applied (inserted into
-- the poller's table, or acknowledged by the broker). The checker joins the apply journal
-- to it here, in the database, so that checking millions of applies holds none of them in
-- the checker's memory.
CREATE TABLE check_expected (
    event_id    TEXT PRIMARY KEY,
    event_index BIGINT NOT NULL,
    account_id  TEXT NOT NULL,
    must_apply  INTEGER NOT NULL
);
