-- The ledger writer's bookkeeping (sinks/ledger.py): consumer offsets kept in the same
-- transaction as the rows they produced (exactly-once from Kafka into Postgres), windows that
-- could not be rated (never a silent zero), and duplicate counts for reconciliation.

-- Next offset to read per (consumer, topic, partition). Mutable by design: it is a cursor.
CREATE TABLE billing.ledger_offsets (
  consumer     text NOT NULL,
  topic        text NOT NULL,
  partition    integer NOT NULL CHECK (partition >= 0),
  next_offset  bigint NOT NULL CHECK (next_offset >= 0),
  updated_at   timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (consumer, topic, partition)
);

-- A window revision whose charge could not be computed (no customer, no price book version at
-- the window start, meter not priced). The revision itself is recorded; the charge is not
-- invented. `meterflow rerate` over the scope rates it once prices exist.
CREATE TABLE billing.rating_errors (
  customer_id   text NOT NULL,
  meter         text NOT NULL,
  period_start  timestamptz NOT NULL,
  window_start  timestamptz NOT NULL,
  revision      integer NOT NULL,
  error_code    text NOT NULL,
  message       text NOT NULL,
  created_at    timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (customer_id, meter, window_start, revision)
);

-- Duplicate events seen by the stream, one row per duplicate occurrence key
-- (event_id, occurrence >= 2), so that input = accepted + duplicates + rejected can be checked.
CREATE TABLE billing.duplicate_events (
  event_id       text NOT NULL,
  occurrence     integer NOT NULL CHECK (occurrence >= 2),
  customer_id    text,
  meter          text,
  event_time     timestamptz,
  source         text NOT NULL DEFAULT 'stream' CHECK (source IN ('stream', 'late')),
  kafka_topic    text,
  kafka_partition integer,
  kafka_offset   bigint,
  detected_at    timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (event_id, occurrence)
);

DO $$
DECLARE t text;
BEGIN
  FOREACH t IN ARRAY ARRAY['rating_errors', 'duplicate_events']
  LOOP
    EXECUTE format('CREATE TRIGGER %I BEFORE UPDATE OR DELETE ON billing.%I
                    FOR EACH ROW EXECUTE FUNCTION billing.forbid_change()', t || '_immutable', t);
  END LOOP;
END;
$$;
