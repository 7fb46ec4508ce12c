-- Each source row's index in the run's workload, so that the outbox relay knows which
-- event a row is without a map of every event id (a run of millions of events would
-- hold one). Rows written before it have none.
ALTER TABLE trade_events ADD COLUMN event_index BIGINT;
