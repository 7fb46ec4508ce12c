-- The tradeflow schema on SQLite. Keep it in step with migrations/postgres.

-- Cash per account. apply_count numbers the events applied to the account, under the
-- row's write lock, so the apply log can say in which order an account saw its events.
CREATE TABLE balances (
    account_id  TEXT PRIMARY KEY,
    cash        INTEGER NOT NULL,
    apply_count INTEGER NOT NULL
);

CREATE TABLE positions (
    account_id TEXT NOT NULL,
    symbol     TEXT NOT NULL,
    shares     INTEGER NOT NULL,
    PRIMARY KEY (account_id, symbol)
);

-- The table the system of record writes and the poller reads (the poller baseline).
CREATE TABLE trade_events (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id        TEXT NOT NULL UNIQUE,
    account_id      TEXT NOT NULL,
    account_seq     INTEGER NOT NULL,
    shard_key       INTEGER NOT NULL,
    payload         TEXT NOT NULL,
    intended_at_ns  INTEGER NOT NULL,
    inserted_at_ns  INTEGER NOT NULL,
    processed_at_ns INTEGER,
    error           TEXT
);
CREATE INDEX trade_events_unprocessed ON trade_events (id) WHERE processed_at_ns IS NULL;

-- One row per applied event: what makes applying idempotent, and the apply order.
CREATE TABLE apply_log (
    apply_id            INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id            TEXT NOT NULL UNIQUE,
    account_id          TEXT NOT NULL,
    account_seq         INTEGER NOT NULL,
    account_apply_index INTEGER NOT NULL,
    intended_at_ns      INTEGER NOT NULL,
    applied_at_ns       INTEGER NOT NULL,
    applier             TEXT NOT NULL
);
