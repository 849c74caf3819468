-- Duplicates per customer without a scan of every duplicate (issue 19): duplicate_counts is keyed
-- by event id, and the metering job's counters carry nothing else, so "duplicates of customer C in
-- period P" had to join every counted id with the customer's events (189 ms at 110k counted ids).
-- Each row now carries its accepted copy's customer, meter, event time, window and billing period
-- (calendar month in UTC, pricing/periods.py), filled when the row is inserted if the accepted copy
-- is in usage_events already, and otherwise by the ledger writer in the transaction that inserts
-- that copy (sinks/ledger.py, _resolve_duplicates): the job's counters and the events travel on
-- different topics, so a counter can be read a batch before the event it counts. A row whose
-- accepted copy is not in usage_events (yet) has NULLs there, as v_duplicates always showed.

ALTER TABLE billing.duplicate_counts
  ADD COLUMN customer_id  text,
  ADD COLUMN meter        text,
  ADD COLUMN event_time   timestamptz,
  ADD COLUMN window_start timestamptz,
  ADD COLUMN period_start timestamptz;

UPDATE billing.duplicate_counts d
   SET customer_id = u.customer_id, meter = u.meter, event_time = u.event_time,
       window_start = u.window_start,
       period_start = date_trunc('month', u.window_start AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'
  FROM billing.usage_events u
 WHERE u.event_id = d.event_id;

CREATE INDEX duplicate_counts_customer_idx ON billing.duplicate_counts (customer_id, period_start);
CREATE INDEX duplicate_counts_period_idx ON billing.duplicate_counts (period_start);
-- the rows still waiting for their accepted copy: the writer's per-batch fill reads only these
CREATE INDEX duplicate_counts_unresolved_idx ON billing.duplicate_counts (event_id) WHERE customer_id IS NULL;

CREATE FUNCTION billing.duplicate_counts_resolve() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF NEW.customer_id IS NULL THEN
    SELECT u.customer_id, u.meter, u.event_time, u.window_start,
           date_trunc('month', u.window_start AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'
      INTO NEW.customer_id, NEW.meter, NEW.event_time, NEW.window_start, NEW.period_start
      FROM billing.usage_events u WHERE u.event_id = NEW.event_id;
  END IF;
  RETURN NEW;
END;
$$;
CREATE TRIGGER duplicate_counts_resolve BEFORE INSERT ON billing.duplicate_counts
  FOR EACH ROW EXECUTE FUNCTION billing.duplicate_counts_resolve();

-- Same columns as before (V009), read from the row itself: a customer / period filter reaches
-- duplicate_counts_customer_idx instead of joining every counted id.
CREATE OR REPLACE VIEW billing.v_duplicates AS
SELECT d.event_id, d.customer_id, d.meter, d.event_time, d.window_start, d.period_start,
       sum(d.duplicates) AS duplicates,
       sum(d.duplicates) FILTER (WHERE d.source = 'stream') AS stream_duplicates,
       sum(d.duplicates) FILTER (WHERE d.source = 'late') AS late_duplicates,
       sum(d.duplicates) FILTER (WHERE d.source = 'ledger') AS ledger_duplicates,
       max(d.updated_at) AS updated_at
  FROM billing.duplicate_counts d
 GROUP BY d.event_id, d.customer_id, d.meter, d.event_time, d.window_start, d.period_start;

-- Applied by a superuser (a test fixture, a DBA): hand the new function to meterflow_owner like
-- V009 did, so that `meterflow db migrate` as the owner keeps working.
DO $$
BEGIN
  IF (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)
     AND EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'meterflow_owner') THEN
    ALTER FUNCTION billing.duplicate_counts_resolve() OWNER TO meterflow_owner;
  END IF;
END;
$$;
