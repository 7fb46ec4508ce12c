-- One row per apply, a second apply of the same event included: no unique key, so the
-- checker counts double applies without trusting the dedup it checks (the apply log's
-- unique event_id). account_apply_index numbers each account's applies, as in apply_log.
CREATE TABLE apply_journal (
    journal_id          BIGSERIAL PRIMARY KEY,
    event_id            TEXT NOT NULL,
    account_id          TEXT NOT NULL,
    account_apply_index BIGINT NOT NULL,
    applier             TEXT NOT NULL
);
