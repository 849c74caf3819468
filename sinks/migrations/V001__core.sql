-- meterflow core schema: price books, customers, taxes, credits, and the append-only usage
-- facts (raw events, window aggregate revisions, rated charges). See docs/DATABASE.md.
CREATE SCHEMA IF NOT EXISTS billing;

-- ---------------------------------------------------------------------------------------------
-- Immutability, enforced by the database (DESIGN.md invariant 4).
-- An UPDATE that changes nothing is skipped silently (so an idempotent upsert replay is harmless);
-- an UPDATE that changes anything, a DELETE and a TRUNCATE raise.
-- ---------------------------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION billing.forbid_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP = 'UPDATE' THEN
    IF to_jsonb(NEW) = to_jsonb(OLD) THEN
      RETURN NULL;  -- identical row: nothing to do
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

-- ---------------------------------------------------------------------------------------------
-- Price books (immutable versions), customers, tax rates, credits
-- ---------------------------------------------------------------------------------------------
CREATE TABLE billing.price_books (
  price_book_id  text PRIMARY KEY CHECK (length(price_book_id) BETWEEN 1 AND 128),
  currency       char(3) NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
  description    text,
  created_at     timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE billing.price_book_versions (
  price_book_id   text NOT NULL REFERENCES billing.price_books,
  version         text NOT NULL CHECK (length(version) BETWEEN 1 AND 128),
  effective_from  timestamptz NOT NULL,
  rounding_mode   text NOT NULL CHECK (rounding_mode IN ('ROUND_UP','ROUND_DOWN','ROUND_CEILING',
                    'ROUND_FLOOR','ROUND_HALF_UP','ROUND_HALF_DOWN','ROUND_HALF_EVEN','ROUND_05UP')),
  content         jsonb NOT NULL,          -- canonical JSON of the version (prices per meter)
  content_sha256  text NOT NULL CHECK (content_sha256 ~ '^[0-9a-f]{64}$'),
  loaded_at       timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (price_book_id, version),
  UNIQUE (price_book_id, effective_from)
);

CREATE TABLE billing.customers (
  customer_id    text PRIMARY KEY CHECK (length(customer_id) BETWEEN 1 AND 128),
  name           text,
  price_book_id  text NOT NULL REFERENCES billing.price_books,
  currency       char(3) NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
  tax_region     text,
  created_at     timestamptz NOT NULL DEFAULT now(),
  updated_at     timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE billing.tax_rates (
  region          text NOT NULL,
  effective_from  timestamptz NOT NULL,
  rate            numeric(9, 6) NOT NULL CHECK (rate >= 0 AND rate < 1),  -- 0.2 = 20 %
  description     text,
  loaded_at       timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (region, effective_from)
);

CREATE TABLE billing.credits (
  credit_id    text PRIMARY KEY,
  customer_id  text NOT NULL REFERENCES billing.customers,
  currency     char(3) NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
  amount       numeric(20, 6) NOT NULL CHECK (amount > 0),
  granted_at   timestamptz NOT NULL DEFAULT now(),
  description  text
);
CREATE INDEX credits_customer_idx ON billing.credits (customer_id, granted_at, credit_id);

-- ---------------------------------------------------------------------------------------------
-- Usage facts: append-only
-- ---------------------------------------------------------------------------------------------
-- Raw accepted events. event_id is the idempotency key: a replay inserts nothing twice.
CREATE TABLE billing.usage_events (
  event_id        text PRIMARY KEY CHECK (length(event_id) BETWEEN 1 AND 128),
  customer_id     text NOT NULL,
  meter           text NOT NULL,
  event_time      timestamptz NOT NULL,
  ingestion_time  timestamptz NOT NULL,           -- when meterflow accepted it
  quantity        numeric(38, 12) NOT NULL CHECK (quantity >= 0),
  properties      jsonb,
  window_start    timestamptz NOT NULL,           -- the window it was counted in
  source          text NOT NULL DEFAULT 'stream' CHECK (source IN ('stream', 'late')),
  kafka_topic     text,
  kafka_partition integer,
  kafka_offset    bigint
);
CREATE INDEX usage_events_window_idx ON billing.usage_events (customer_id, meter, window_start);

-- One row per window revision. The current state of a window is its highest revision.
CREATE TABLE billing.aggregated_usage (
  customer_id   text NOT NULL,
  meter         text NOT NULL,
  window_start  timestamptz NOT NULL,
  window_end    timestamptz NOT NULL CHECK (window_end > window_start),
  revision      integer NOT NULL CHECK (revision >= 1),
  quantity      numeric(38, 12) NOT NULL CHECK (quantity >= 0),  -- per the meter's aggregation
  event_count   bigint NOT NULL CHECK (event_count >= 0),
  qsum          numeric(38, 12) NOT NULL DEFAULT 0,  -- the window's sum, count and max are all
  qmax          numeric(38, 12) NOT NULL DEFAULT 0,  -- kept, whatever the meter's aggregation
  source        text NOT NULL CHECK (source IN ('window', 'late_revision', 'late', 'rerate')),
  created_at    timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (customer_id, meter, window_start, revision)
);

-- One row per charge delta (DESIGN.md section 4). Σ amount per (customer, meter, period) is
-- Rate(period) over the final windows. charge_id is deterministic (uuid5 of customer, meter,
-- period, window, cause, revision), so a replay inserts nothing twice.
CREATE TABLE billing.rated_charges (
  charge_id       uuid PRIMARY KEY,
  customer_id     text NOT NULL,
  meter           text NOT NULL,
  period_start    timestamptz NOT NULL,
  window_start    timestamptz NOT NULL,
  window_end      timestamptz NOT NULL,
  revision        integer NOT NULL,               -- the aggregate revision this charge rated
  currency        char(3) NOT NULL,
  quantity_delta  numeric(38, 12) NOT NULL,
  amount          numeric(48, 18) NOT NULL,       -- unrounded; rounding happens at invoice lines
  price_book_id   text NOT NULL,
  price_version   text NOT NULL,
  calculation     jsonb NOT NULL,                 -- the explanation
  cause           text NOT NULL CHECK (cause IN ('window_fired', 'late_revision', 'late_event', 'rerate')),
  caused_by       text,                           -- e.g. the late event id or the rerate reason
  created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX rated_charges_period_idx ON billing.rated_charges (customer_id, meter, period_start);
CREATE INDEX rated_charges_window_idx ON billing.rated_charges (customer_id, meter, window_start, revision);
CREATE INDEX rated_charges_period_only_idx ON billing.rated_charges (period_start);

-- Immutability triggers
DO $$
DECLARE t text;
BEGIN
  FOREACH t IN ARRAY ARRAY['usage_events', 'aggregated_usage', 'rated_charges',
                           'price_book_versions', 'tax_rates', 'credits']
  LOOP
    EXECUTE format('CREATE TRIGGER %I BEFORE UPDATE OR DELETE ON billing.%I
                    FOR EACH ROW EXECUTE FUNCTION billing.forbid_change()', t || '_immutable', t);
    EXECUTE format('CREATE TRIGGER %I BEFORE TRUNCATE ON billing.%I
                    FOR EACH STATEMENT EXECUTE FUNCTION billing.forbid_change()', t || '_no_truncate', t);
  END LOOP;
END;
$$;
