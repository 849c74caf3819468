-- Durable deduplication (docs/ARCHITECTURE.md §7, DESIGN.md invariant 1): an event id, once
-- accepted, is counted in exactly one window, once, for as long as usage_events holds it — across
-- bounded runs, restarts with or without Flink state, and re-sends after the dedup horizon.
--
-- The ledger writer (sinks/ledger.py) decides, in the transaction that inserts the events: a copy
-- whose event_id is already in usage_events is a duplicate; window quantities are aggregated from
-- the accepted rows of usage_events, so a duplicate that Flink counted in its window aggregate is
-- never counted in Postgres.

-- 1. Duplicate counts per counting epoch. The metering job's counter is an absolute count per
--    event id that restarts from zero when the job starts without state or the id's state expired
--    (dedup horizon); its messages carry the epoch (the first accepted copy's ingestion time, in
--    ms), so the counts of different epochs add up instead of overwriting each other (GREATEST
--    within one epoch, where the counter only grows). Sources: 'stream' (the job's counter),
--    'late' (the re-rating job), 'ledger' (copies the ledger writer found already accepted).
ALTER TABLE billing.duplicate_counts ADD COLUMN epoch_ms bigint NOT NULL DEFAULT 0;
ALTER TABLE billing.duplicate_counts DROP CONSTRAINT duplicate_counts_pkey;
ALTER TABLE billing.duplicate_counts ADD PRIMARY KEY (event_id, source, epoch_ms);
ALTER TABLE billing.duplicate_counts DROP CONSTRAINT duplicate_counts_source_check;
ALTER TABLE billing.duplicate_counts
  ADD CONSTRAINT duplicate_counts_source_check CHECK (source IN ('stream', 'late', 'ledger'));

-- 2. Same event id, different content: the first accepted copy wins; every later copy that differs
--    in customer, meter, event time or quantity is recorded here for operators (append-only).
CREATE TABLE billing.event_id_conflicts (
  conflict_id       bigserial PRIMARY KEY,
  event_id          text NOT NULL,
  customer_id       text NOT NULL,        -- of the rejected copy
  meter             text NOT NULL,
  event_time        timestamptz NOT NULL,
  quantity          numeric(38, 12) NOT NULL,
  kafka_topic       text,
  kafka_partition   integer,
  kafka_offset      bigint,
  detected_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX event_id_conflicts_event_idx ON billing.event_id_conflicts (event_id);
CREATE TRIGGER event_id_conflicts_immutable BEFORE UPDATE OR DELETE ON billing.event_id_conflicts
  FOR EACH ROW EXECUTE FUNCTION billing.forbid_change();

-- 3. Per window: how many on-time event messages the writer has read (accepted or duplicate) and
--    how many the metering job's firings of the window counted — a firing is rated once every
--    event it counted has been read (the job's outputs reach the ledger topic through several
--    transactional producers, so a firing can be read before some of its events) — and the Σ,
--    count and max of the window's accepted events (every row of usage_events in the window, kept
--    up to date in the transaction that inserts them: a revision never re-reads the events).
--    Mutable by design: counters, like ledger_offsets.
CREATE TABLE billing.window_progress (
  customer_id    text NOT NULL,
  meter          text NOT NULL,
  window_start   timestamptz NOT NULL,
  window_end     timestamptz,             -- from the firing
  events_read    bigint NOT NULL DEFAULT 0 CHECK (events_read >= 0),
  events_fired   bigint NOT NULL DEFAULT 0 CHECK (events_fired >= 0),
  qsum           numeric(38, 12) NOT NULL DEFAULT 0,
  qcount         bigint NOT NULL DEFAULT 0 CHECK (qcount >= 0),
  qmax           numeric(38, 12) NOT NULL DEFAULT 0,
  updated_at     timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (customer_id, meter, window_start)
);
-- a database metered before this migration: every window's accepted events so far
INSERT INTO billing.window_progress (customer_id, meter, window_start, window_end, events_read,
                                     events_fired, qsum, qcount, qmax)
SELECT u.customer_id, u.meter, u.window_start,
       (SELECT max(a.window_end) FROM billing.aggregated_usage a WHERE a.customer_id = u.customer_id
           AND a.meter = u.meter AND a.window_start = u.window_start),
       count(*), count(*), sum(u.quantity), count(*), max(u.quantity)
  FROM billing.usage_events u GROUP BY u.customer_id, u.meter, u.window_start;

GRANT SELECT ON billing.event_id_conflicts TO meterflow_analyst;
