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

-- Duplicates per event id, so that input = accepted + duplicates + rejected can be checked.
-- source 'stream': the metering job's dedup (an absolute count, upserted: it is a counter, the
-- job re-sends the current value); source 'late': late events the re-rating job found accepted.
CREATE TABLE billing.duplicate_counts (
  event_id    text NOT NULL,
  source      text NOT NULL CHECK (source IN ('stream', 'late')),
  duplicates  integer NOT NULL CHECK (duplicates >= 0),
  updated_at  timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (event_id, source)
);

DO $$
DECLARE t text;
BEGIN
  FOREACH t IN ARRAY ARRAY['rating_errors']
  LOOP
    EXECUTE format('CREATE TRIGGER %I BEFORE UPDATE OR DELETE ON billing.%I
                    FOR EACH ROW EXECUTE FUNCTION billing.forbid_change()', t || '_immutable', t);
  END LOOP;
END;
$$;
