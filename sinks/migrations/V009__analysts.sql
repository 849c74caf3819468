-- Analysts get their answers from Postgres (issue 19, docs/ANALYSTS.md): the meters' aggregation,
-- billed quantities, a flat charges view, the revision that counted each event, views whose
-- filters reach the indexes, rejections and reconciliation as columns, customer-period summaries,
-- credit balances split, and credit notes that restore the credit they undo (docs/INVOICING.md).
--
-- Applying this rewrites billing.aggregated_usage and billing.rated_charges once (two stored
-- generated columns) under an exclusive lock.

-- ---------------------------------------------------------------------------------------------
-- 1. Meters, as configured: written by `meterflow db migrate` and by the ledger writer at start
--    (sinks/meters.py). A meter removed from the configuration keeps its row (its charges stay),
--    with configured = false. Mutable by design (the configuration changes).
-- ---------------------------------------------------------------------------------------------
CREATE TABLE billing.meters (
  meter        text PRIMARY KEY CHECK (length(meter) BETWEEN 1 AND 128),
  aggregation  text NOT NULL CHECK (aggregation IN ('sum', 'count', 'max')),
  unit         text,
  description  text,
  configured   boolean NOT NULL DEFAULT true,   -- in the configuration last synced
  updated_at   timestamptz NOT NULL DEFAULT now()
);
GRANT SELECT, INSERT, UPDATE ON billing.meters TO meterflow_app;

-- Immutability (V001) with stored generated columns: in a BEFORE UPDATE trigger NEW's generated
-- columns are not computed yet (NULL), so "an UPDATE that changes nothing is skipped" compares the
-- rows without them (they follow from the other columns).
CREATE OR REPLACE FUNCTION billing.forbid_change() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE gen text[];
BEGIN
  IF TG_OP = 'UPDATE' THEN
    IF to_jsonb(NEW) = to_jsonb(OLD) THEN
      RETURN NULL;  -- identical row: nothing to do
    END IF;
    gen := ARRAY(SELECT a.attname::text FROM pg_attribute a
                  WHERE a.attrelid = TG_RELID AND a.attgenerated <> '' AND NOT a.attisdropped);
    IF gen <> '{}' AND to_jsonb(NEW) - gen = to_jsonb(OLD) - gen THEN
      RETURN NULL;
    END IF;
    RAISE EXCEPTION 'billing.% is append-only: UPDATE is not allowed', TG_TABLE_NAME
      USING ERRCODE = 'restrict_violation',
            HINT = 'history is never edited: append a correcting row instead';
  ELSIF TG_OP = 'DELETE' THEN
    RAISE EXCEPTION 'billing.% is append-only: DELETE is not allowed', TG_TABLE_NAME
      USING ERRCODE = 'restrict_violation',
            HINT = 'history is never edited: append a correcting row instead';
  ELSE  -- TRUNCATE
    RAISE EXCEPTION 'billing.% is append-only: TRUNCATE is not allowed', TG_TABLE_NAME
      USING ERRCODE = 'restrict_violation';
  END IF;
END;
$$;

-- The quantity a charge bills, as a delta: for sum and count meters its quantity delta; for max
-- meters (Rate = P(peak of the period's windows), pricing/rater.py) the move of the period's peak
-- the charge made (its calculation's max.after − max.before). Σ over a period's charges = the
-- period's billed quantity (Σ, count or peak), Σ over a line's charges = what the line bills.
ALTER TABLE billing.rated_charges ADD COLUMN billed_quantity_delta numeric(38, 12)
  GENERATED ALWAYS AS (
    CASE WHEN calculation->>'aggregation' = 'max' AND calculation ? 'max'
         THEN (calculation #>> '{max,after,quantity}')::numeric
              - coalesce((calculation #>> '{max,before,quantity}')::numeric, 0)
         ELSE quantity_delta END) STORED;

-- ---------------------------------------------------------------------------------------------
-- 2. Which revision counted each accepted event (set by the ledger writer in the transaction that
--    records the revision, sinks/ledger.py `_mark_counted`), and whether it came late within the
--    allowed lateness (Flink fired its window again for it; `source` stays 'stream').
--    counted_revision NULL: counted by the window's FIRST revision once the window has one (nearly
--    every event: so the writer never writes an event twice), else not counted yet. Events
--    accepted before V009 read as counted by revision 1. billing.v_usage_events resolves it.
-- ---------------------------------------------------------------------------------------------
ALTER TABLE billing.usage_events ADD COLUMN counted_revision integer CHECK (counted_revision >= 1);
ALTER TABLE billing.usage_events ADD COLUMN late_within boolean NOT NULL DEFAULT false;
-- The only change an accepted event may see: counted_revision from NULL to a value (with
-- late_within set at the same time). Everything else still raises (billing.forbid_change); the
-- WHEN clause keeps the common path out of plpgsql.
DROP TRIGGER usage_events_immutable ON billing.usage_events;
CREATE TRIGGER usage_events_no_delete BEFORE DELETE ON billing.usage_events
  FOR EACH ROW EXECUTE FUNCTION billing.forbid_change();
CREATE TRIGGER usage_events_immutable BEFORE UPDATE ON billing.usage_events
  FOR EACH ROW
  WHEN (NOT (OLD.counted_revision IS NULL AND NEW.counted_revision IS NOT NULL
             AND NOT (OLD.late_within AND NOT NEW.late_within)
             AND (OLD.event_id, OLD.customer_id, OLD.meter, OLD.event_time, OLD.ingestion_time,
                  OLD.quantity, OLD.properties, OLD.window_start, OLD.source, OLD.kafka_topic,
                  OLD.kafka_partition, OLD.kafka_offset)
                 IS NOT DISTINCT FROM
                 (NEW.event_id, NEW.customer_id, NEW.meter, NEW.event_time, NEW.ingestion_time,
                  NEW.quantity, NEW.properties, NEW.window_start, NEW.source, NEW.kafka_topic,
                  NEW.kafka_partition, NEW.kafka_offset)))
  EXECUTE FUNCTION billing.forbid_change();
GRANT UPDATE (counted_revision, late_within) ON billing.usage_events TO meterflow_app;

-- ---------------------------------------------------------------------------------------------
-- 3. Filters that reach indexes. aggregated_usage gets its billing period (calendar month in UTC,
--    pricing/periods.py) as a stored column, and an index in the order v_current_usage reads a
--    period in; window ranges use a BRIN index (windows are written in time order).
-- ---------------------------------------------------------------------------------------------
ALTER TABLE billing.aggregated_usage ADD COLUMN period_start timestamptz
  GENERATED ALWAYS AS (date_trunc('month', window_start AT TIME ZONE 'UTC') AT TIME ZONE 'UTC') STORED;
CREATE INDEX aggregated_usage_period_idx
  ON billing.aggregated_usage (period_start, customer_id, meter, window_start, revision DESC);
CREATE INDEX aggregated_usage_window_brin ON billing.aggregated_usage USING brin (window_start)
  WITH (autosummarize = on);
CREATE INDEX usage_events_window_brin ON billing.usage_events USING brin (window_start)
  WITH (autosummarize = on);

-- The current state of every window. period_start is one of the DISTINCT ON keys (it is a function
-- of window_start, so the result is the same as V002's), so a filter on it, like one on customer,
-- meter or window, is applied before DISTINCT ON and reaches aggregated_usage_period_idx.
CREATE OR REPLACE VIEW billing.v_current_usage AS
SELECT DISTINCT ON (a.customer_id, a.meter, a.period_start, a.window_start)
       a.customer_id, a.meter, a.period_start,
       a.window_start, a.window_end, a.quantity, a.event_count,
       a.revision AS revisions, a.source AS last_source, a.created_at AS updated_at
  FROM billing.aggregated_usage a
 ORDER BY a.customer_id, a.meter, a.period_start, a.window_start, a.revision DESC;

-- The net charge of every window, with what it bills and how much came late.
CREATE OR REPLACE VIEW billing.v_window_charges AS
SELECT c.customer_id, c.meter, c.period_start, c.window_start, c.window_end, c.currency,
       sum(c.quantity_delta) AS quantity,
       sum(c.amount)         AS amount,
       count(*)              AS charge_count,
       max(c.revision)       AS last_revision,
       max(c.created_at)     AS last_charged_at,
       sum(c.billed_quantity_delta) AS billed_quantity,
       coalesce(sum(c.amount) FILTER (WHERE c.cause = 'window_fired'), 0) AS on_time_amount,
       coalesce(sum(c.amount) FILTER (WHERE c.cause <> 'window_fired'), 0) AS late_amount
  FROM billing.rated_charges c
 GROUP BY c.customer_id, c.meter, c.period_start, c.window_start, c.window_end, c.currency;

-- Drill-down from invoice lines: the line's windows are found from the line (its links, by the
-- BRIN index on line_id), so a filter on invoice_number or line_id is applied first.
CREATE OR REPLACE VIEW billing.v_invoice_line_events AS
SELECT l.line_id, i.invoice_id, i.invoice_number, l.customer_id, l.meter, w.window_start,
       e.event_id, e.event_time, e.ingestion_time, e.quantity, e.properties, e.source,
       coalesce(e.counted_revision, 1) AS counted_revision, e.late_within
  FROM billing.invoice_lines l
  JOIN billing.invoices i ON i.invoice_id = l.invoice_id
  CROSS JOIN LATERAL (SELECT DISTINCT c.window_start
                        FROM billing.invoice_line_links k
                        JOIN billing.rated_charges c ON c.charge_seq = k.charge_seq
                       WHERE k.line_id = l.line_id) w
  JOIN billing.usage_events e
    ON e.customer_id = l.customer_id AND e.meter = l.meter AND e.window_start = w.window_start;

-- ---------------------------------------------------------------------------------------------
-- 4. Flat views without JSON
-- ---------------------------------------------------------------------------------------------
-- One row per charge, with the document line that bills it (NULL while not invoiced).
-- event_ids: the events the charge's revision counted (usage_events.counted_revision); empty for
-- a charge that counted no new event (a re-rating, a price change).
CREATE VIEW billing.v_charges AS
SELECT c.charge_id, c.charge_seq, k.line_id, i.invoice_id, i.invoice_number,
       i.kind AS invoice_kind, i.status AS invoice_status,
       c.customer_id, c.meter, c.period_start, c.window_start, c.window_end, c.revision,
       c.cause, c.caused_by, c.currency, c.quantity_delta, c.billed_quantity_delta, c.amount,
       c.price_book_id, c.price_version, c.created_at,
       ARRAY(SELECT e.event_id FROM billing.usage_events e
              WHERE e.customer_id = c.customer_id AND e.meter = c.meter
                AND e.window_start = c.window_start AND coalesce(e.counted_revision, 1) = c.revision
                AND c.cause <> 'rerate'
              ORDER BY e.event_id) AS event_ids
  FROM billing.rated_charges c
  LEFT JOIN billing.invoice_line_links k ON k.charge_seq = c.charge_seq
  LEFT JOIN billing.invoices i ON i.invoice_id = k.invoice_id;

-- One row per (charge, event it counted): "which events changed this line" is
-- `WHERE line_id = …` (or invoice_number). arrival: on_time, late_within (within allowed
-- lateness: the window fired again) or late (after it, folded in by the re-rating job).
CREATE VIEW billing.v_charge_events AS
SELECT c.charge_id, c.charge_seq, k.line_id, k.invoice_id, i.invoice_number, c.customer_id, c.meter,
       c.period_start, c.window_start, c.revision, c.cause, c.amount AS charge_amount,
       e.event_id, e.event_time, e.ingestion_time, e.quantity, e.properties,
       CASE WHEN e.source = 'late' THEN 'late' WHEN e.late_within THEN 'late_within'
            ELSE 'on_time' END AS arrival
  FROM billing.rated_charges c
  LEFT JOIN billing.invoice_line_links k ON k.charge_seq = c.charge_seq
  LEFT JOIN billing.invoices i ON i.invoice_id = k.invoice_id
  JOIN billing.usage_events e
    ON e.customer_id = c.customer_id AND e.meter = c.meter AND e.window_start = c.window_start
   AND coalesce(e.counted_revision, 1) = c.revision AND c.cause <> 'rerate';

-- Accepted events with the revision that counted them (NULL: their window has not been rated
-- yet) and how they arrived.
CREATE VIEW billing.v_usage_events AS
SELECT e.event_id, e.customer_id, e.meter, e.event_time, e.ingestion_time, e.quantity, e.properties,
       (date_trunc('month', e.window_start AT TIME ZONE 'UTC') AT TIME ZONE 'UTC') AS period_start,
       e.window_start, e.source,
       CASE WHEN e.counted_revision IS NOT NULL THEN e.counted_revision
            WHEN EXISTS (SELECT 1 FROM billing.aggregated_usage a
                          WHERE a.customer_id = e.customer_id AND a.meter = e.meter
                            AND a.window_start = e.window_start) THEN 1 END AS counted_revision,
       CASE WHEN e.source = 'late' THEN 'late' WHEN e.late_within THEN 'late_within'
            ELSE 'on_time' END AS arrival,
       e.kafka_topic, e.kafka_partition, e.kafka_offset
  FROM billing.usage_events e;

-- Invoice lines, flat, with the meter's aggregation and what the line bills: for max meters the
-- move of the period's peak (a standard invoice: the peak), not Σ of window peaks.
CREATE VIEW billing.v_invoice_lines AS
SELECT l.line_id, i.invoice_id, i.invoice_number, i.kind, i.status, l.customer_id, l.meter,
       m.aggregation, m.unit, l.period_start, l.currency, l.quantity,
       (SELECT sum(c.billed_quantity_delta)
          FROM billing.invoice_line_links k
          JOIN billing.rated_charges c ON c.charge_seq = k.charge_seq
         WHERE k.line_id = l.line_id) AS billed_quantity,
       l.amount_precise, l.amount, l.rounding_mode, l.charge_count
  FROM billing.invoice_lines l
  JOIN billing.invoices i ON i.invoice_id = l.invoice_id
  LEFT JOIN billing.meters m ON m.meter = l.meter;

-- ---------------------------------------------------------------------------------------------
-- 5. Rejections and checks
-- ---------------------------------------------------------------------------------------------
-- Events the metering job rejected (its dead-letter topic, usage-events-dlq), copied by the
-- ledger writer in the transaction that stores its offsets past them (exactly once). period_start:
-- the month of the event's time when it could be read, else of the rejection.
CREATE TABLE billing.dead_letters (
  kafka_topic      text NOT NULL,
  kafka_partition  integer NOT NULL CHECK (kafka_partition >= 0),
  kafka_offset     bigint NOT NULL CHECK (kafka_offset >= 0),
  reason           text NOT NULL,              -- the job's error code (e.g. invalid_quantity)
  error            text,                       -- its message, at most 2,000 characters
  event_id         text,
  customer_id      text,
  meter            text,
  event_time       timestamptz,
  rejected_at      timestamptz NOT NULL,
  period_start     timestamptz NOT NULL,
  payload          text,                       -- the rejected input, at most its first 8 KiB
  payload_bytes    integer NOT NULL CHECK (payload_bytes >= 0),
  created_at       timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (kafka_topic, kafka_partition, kafka_offset)
);
CREATE INDEX dead_letters_period_idx ON billing.dead_letters (period_start, reason);
CREATE TRIGGER dead_letters_immutable BEFORE UPDATE OR DELETE ON billing.dead_letters
  FOR EACH ROW EXECUTE FUNCTION billing.forbid_change();
CREATE TRIGGER dead_letters_no_truncate BEFORE TRUNCATE ON billing.dead_letters
  FOR EACH STATEMENT EXECUTE FUNCTION billing.forbid_change();

CREATE VIEW billing.v_rejections AS
SELECT period_start, 'metering'::text AS stage, reason, count(*) AS rejected,
       min(rejected_at) AS first_at, max(rejected_at) AS last_at
  FROM billing.dead_letters GROUP BY period_start, reason
UNION ALL
SELECT date_trunc('month', created_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC', 'ledger', stage,
       count(*), min(created_at), max(created_at)
  FROM billing.ledger_dead_letters GROUP BY 1, stage;

-- Duplicates per event id (every source and counting epoch added up), with the accepted copy.
CREATE VIEW billing.v_duplicates AS
SELECT d.event_id, u.customer_id, u.meter, u.event_time, u.window_start,
       (date_trunc('month', u.window_start AT TIME ZONE 'UTC') AT TIME ZONE 'UTC') AS period_start,
       sum(d.duplicates) AS duplicates,
       sum(d.duplicates) FILTER (WHERE d.source = 'stream') AS stream_duplicates,
       sum(d.duplicates) FILTER (WHERE d.source = 'late') AS late_duplicates,
       sum(d.duplicates) FILTER (WHERE d.source = 'ledger') AS ledger_duplicates,
       max(d.updated_at) AS updated_at
  FROM billing.duplicate_counts d
  LEFT JOIN billing.usage_events u ON u.event_id = d.event_id
 GROUP BY d.event_id, u.customer_id, u.meter, u.event_time, u.window_start;

-- Windows that could not be rated (no customer, no price in force, meter not priced), with
-- whether a later revision of the window was rated since (resolved).
CREATE VIEW billing.v_rating_errors AS
SELECT r.customer_id, r.meter, r.period_start, r.window_start, r.revision, r.error_code,
       r.message, r.created_at,
       EXISTS (SELECT 1 FROM billing.rated_charges c
                WHERE c.customer_id = r.customer_id AND c.meter = r.meter
                  AND c.window_start = r.window_start AND c.revision >= r.revision) AS resolved
  FROM billing.rating_errors r;

-- Reconciliation, as columns: one row per run with the conservation numbers of check (a)
-- (jobs/batch/reconcile.py records them in the check's "numbers"; NULL when Kafka was not read)
-- and the status of every check; one row per check in v_reconciliation_checks.
CREATE VIEW billing.v_reconciliation_checks AS
SELECT r.run_id, r.period_start, r.finished_at, r.ok AS run_ok, r.kafka_checked,
       ch->>'name' AS check_name, ch->>'status' AS status, ch->>'detail' AS detail,
       (SELECT count(*) FROM jsonb_array_elements(r.mismatches) mm
         WHERE mm->>'check' = ch->>'name') AS mismatches
  FROM billing.reconciliation_runs r, jsonb_array_elements(r.checks) ch;

CREATE VIEW billing.v_reconciliation_runs AS
SELECT r.run_id, r.period_start, r.period_end, r.started_at, r.finished_at, r.ok,
       r.kafka_checked, r.tolerance_minor_units,
       (a.ch #>> '{numbers,input}')::bigint      AS input_events,
       (a.ch #>> '{numbers,accepted}')::bigint   AS accepted_events,
       (a.ch #>> '{numbers,duplicates}')::bigint AS duplicates,
       (a.ch #>> '{numbers,rejected}')::bigint   AS rejected,
       (a.ch #>> '{numbers,late_topic}')::bigint AS late_topic_events,
       (SELECT x.v->>'status' FROM jsonb_array_elements(r.checks) AS x(v) WHERE x.v->>'name' LIKE 'a.%' LIMIT 1) AS conservation,
       (SELECT x.v->>'status' FROM jsonb_array_elements(r.checks) AS x(v) WHERE x.v->>'name' LIKE 'b.%' LIMIT 1) AS events_to_windows,
       (SELECT x.v->>'status' FROM jsonb_array_elements(r.checks) AS x(v) WHERE x.v->>'name' LIKE 'c.%' LIMIT 1) AS windows_to_charges,
       (SELECT x.v->>'status' FROM jsonb_array_elements(r.checks) AS x(v) WHERE x.v->>'name' LIKE 'd.%' LIMIT 1) AS charges_to_lines,
       (SELECT x.v->>'status' FROM jsonb_array_elements(r.checks) AS x(v) WHERE x.v->>'name' LIKE 'e.%' LIMIT 1) AS links,
       (SELECT x.v->>'status' FROM jsonb_array_elements(r.checks) AS x(v) WHERE x.v->>'name' LIKE 'f.%' LIMIT 1) AS ledger_dead_letters,
       jsonb_array_length(r.mismatches) AS mismatches
  FROM billing.reconciliation_runs r
  LEFT JOIN LATERAL (SELECT x.v AS ch FROM jsonb_array_elements(r.checks) AS x(v)
                      WHERE x.v->>'name' LIKE 'a.%' LIMIT 1) a ON true;

-- ---------------------------------------------------------------------------------------------
-- 6. Credits and summaries
-- ---------------------------------------------------------------------------------------------
-- Credit notes restore the credit their invoice consumed (docs/INVOICING.md "Credit notes"): a
-- credit note's credits_applied is ≤ 0 (credit given back), its credit_applications negative.
-- (V002's two checks have generated names: found by what they say)
DO $$
DECLARE c text;
BEGIN
  FOR c IN SELECT conname FROM pg_constraint
            WHERE conrelid = 'billing.invoices'::regclass AND contype = 'c'
              AND pg_get_constraintdef(oid) IN ('CHECK ((credits_applied >= (0)::numeric))',
                                                'CHECK ((credits_applied <= GREATEST(subtotal, (0)::numeric)))')
  LOOP
    EXECUTE format('ALTER TABLE billing.invoices DROP CONSTRAINT %I', c);
  END LOOP;
END;
$$;
ALTER TABLE billing.invoices ADD CONSTRAINT invoices_credits_applied_range
  CHECK (credits_applied BETWEEN least(subtotal, 0) AND greatest(subtotal, 0));
ALTER TABLE billing.credit_applications DROP CONSTRAINT credit_applications_amount_check;
ALTER TABLE billing.credit_applications ADD CONSTRAINT credit_applications_amount_nonzero
  CHECK (amount <> 0);

-- Every credit: consumed by issued documents (net of what credit notes gave back), reserved by
-- drafts, remaining, and whether it can be used at all (its currency is the customer's).
DROP VIEW billing.v_credit_balances;
CREATE VIEW billing.v_credit_balances AS
SELECT cr.credit_id, cr.customer_id, cr.currency, cr.amount, cr.granted_at,
       coalesce(sum(a.amount) FILTER (WHERE i.status <> 'draft'), 0) AS applied,
       coalesce(sum(a.amount) FILTER (WHERE i.status = 'draft'), 0) AS reserved,
       cr.amount - coalesce(sum(a.amount), 0) AS remaining,
       cr.currency = cu.currency AS usable,
       CASE WHEN cr.currency = cu.currency THEN cr.amount - coalesce(sum(a.amount), 0) ELSE 0 END
         AS usable_remaining,
       cu.currency AS customer_currency,
       array_remove(array_agg(DISTINCT i.invoice_number), NULL) AS invoice_numbers
  FROM billing.credits cr
  JOIN billing.customers cu ON cu.customer_id = cr.customer_id
  LEFT JOIN billing.credit_applications a ON a.credit_id = cr.credit_id
  LEFT JOIN billing.invoices i ON i.invoice_id = a.invoice_id
 GROUP BY cr.credit_id, cr.customer_id, cu.currency;

-- One row per (customer, period, currency) that has documents: standard, corrections, credit
-- notes, net, tax, credits, and the lines' amounts split into on-time and late charges.
CREATE VIEW billing.v_customer_periods AS
SELECT i.customer_id, i.period_start, i.currency,
       coalesce(sum(i.subtotal) FILTER (WHERE i.kind = 'standard'), 0) AS standard,
       coalesce(sum(i.subtotal) FILTER (WHERE i.kind = 'correction'), 0) AS corrections,
       coalesce(sum(i.subtotal) FILTER (WHERE i.kind = 'credit_note'), 0) AS credit_notes,
       sum(i.subtotal) AS net,
       sum(i.credits_applied) AS credits_applied,
       sum(i.tax) AS tax,
       sum(i.total) AS total,
       count(*) AS documents,
       count(*) FILTER (WHERE i.status = 'draft') AS drafts,
       (SELECT coalesce(sum(c.amount) FILTER (WHERE c.cause = 'window_fired'), 0)
          FROM billing.rated_charges c
         WHERE c.customer_id = i.customer_id AND c.period_start = i.period_start
           AND c.currency = i.currency) AS on_time_charges,
       (SELECT coalesce(sum(c.amount) FILTER (WHERE c.cause <> 'window_fired'), 0)
          FROM billing.rated_charges c
         WHERE c.customer_id = i.customer_id AND c.period_start = i.period_start
           AND c.currency = i.currency) AS late_charges
  FROM billing.invoices i
 GROUP BY i.customer_id, i.period_start, i.currency;

-- ---------------------------------------------------------------------------------------------
-- The analyst role reads all of it (and still writes nothing)
-- ---------------------------------------------------------------------------------------------
GRANT SELECT ON billing.meters, billing.dead_letters, billing.v_charges, billing.v_charge_events,
  billing.v_usage_events,
  billing.v_invoice_lines, billing.v_rejections, billing.v_duplicates, billing.v_rating_errors,
  billing.v_reconciliation_checks, billing.v_reconciliation_runs, billing.v_credit_balances, billing.v_customer_periods,
  billing.duplicate_counts, billing.rating_errors
TO meterflow_analyst;

-- Applied by a superuser (a test fixture, a DBA): hand this file's objects to meterflow_owner like
-- V007 did, so that `meterflow db migrate` as the owner keeps working (and can sync the meters).
DO $$
DECLARE o record;
BEGIN
  IF NOT (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)
     OR NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'meterflow_owner') THEN
    RETURN;
  END IF;
  FOR o IN
    SELECT c.relname, c.relkind FROM pg_class c
     WHERE c.relnamespace = 'billing'::regnamespace AND c.relkind IN ('r', 'p', 'v', 'm', 'S')
       AND c.relowner <> 'meterflow_owner'::regrole
       AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass
                        AND d.objid = c.oid AND d.deptype IN ('a', 'i'))
  LOOP
    EXECUTE format('ALTER %s billing.%I OWNER TO meterflow_owner',
                   CASE o.relkind WHEN 'v' THEN 'VIEW' WHEN 'm' THEN 'MATERIALIZED VIEW'
                                  WHEN 'S' THEN 'SEQUENCE' ELSE 'TABLE' END, o.relname);
  END LOOP;
  FOR o IN
    SELECT p.oid::regprocedure AS sig, p.prokind FROM pg_proc p
     WHERE p.pronamespace = 'billing'::regnamespace AND p.proowner <> 'meterflow_owner'::regrole
  LOOP
    EXECUTE format('ALTER %s %s OWNER TO meterflow_owner',
                   CASE o.prokind WHEN 'p' THEN 'PROCEDURE' ELSE 'FUNCTION' END, o.sig);
  END LOOP;
END;
$$;
