-- meterflow invoicing: invoices, lines, charge links, credit applications, gapless invoice
-- numbers, reconciliation runs, analysts' views and the read-only analyst role.
-- See docs/INVOICING.md and docs/ANALYSTS.md.

-- ---------------------------------------------------------------------------------------------
-- Rounding to a currency's minor unit, with an explicit mode (Python decimal's eight modes).
-- The invoice job passes the minor-unit exponent (from ISO 4217, pricing.money.minor_units) and
-- the price book version's rounding mode; nothing here depends on a session setting.
-- ---------------------------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION billing.round_money(amount numeric, scale integer, mode text)
RETURNS numeric LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $$
DECLARE
  t   numeric := trunc(amount, scale);          -- toward zero
  rem numeric := amount - t;                    -- same sign as amount
  ulp numeric := power(10::numeric, -scale);
  away numeric;
  half numeric := ulp / 2;
BEGIN
  IF rem = 0 THEN
    RETURN round(t, scale);
  END IF;
  away := t + sign(amount) * ulp;               -- one unit away from zero
  CASE mode
    WHEN 'ROUND_DOWN'      THEN RETURN round(t, scale);
    WHEN 'ROUND_UP'        THEN RETURN round(away, scale);
    WHEN 'ROUND_CEILING'   THEN RETURN round(CASE WHEN amount > 0 THEN away ELSE t END, scale);
    WHEN 'ROUND_FLOOR'     THEN RETURN round(CASE WHEN amount < 0 THEN away ELSE t END, scale);
    WHEN 'ROUND_HALF_UP'   THEN RETURN round(CASE WHEN abs(rem) >= half THEN away ELSE t END, scale);
    WHEN 'ROUND_HALF_DOWN' THEN RETURN round(CASE WHEN abs(rem) > half THEN away ELSE t END, scale);
    WHEN 'ROUND_HALF_EVEN' THEN
      IF abs(rem) > half THEN RETURN round(away, scale); END IF;
      IF abs(rem) < half THEN RETURN round(t, scale); END IF;
      -- exactly half: to the even last digit
      IF mod(abs(trunc(t * power(10::numeric, scale))), 2) = 0 THEN
        RETURN round(t, scale);
      END IF;
      RETURN round(away, scale);
    WHEN 'ROUND_05UP' THEN
      -- away from zero if the last kept digit is 0 or 5, else toward zero
      IF mod(abs(trunc(t * power(10::numeric, scale))), 5) = 0 THEN
        RETURN round(away, scale);
      END IF;
      RETURN round(t, scale);
    ELSE
      RAISE EXCEPTION 'unknown rounding mode %', mode USING ERRCODE = 'invalid_parameter_value';
  END CASE;
END;
$$;

-- ---------------------------------------------------------------------------------------------
-- Invoices
-- ---------------------------------------------------------------------------------------------
CREATE TABLE billing.invoices (
  invoice_id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  invoice_number      text UNIQUE CHECK (invoice_number ~ '^[0-9]{4}-[0-9]{6,}$'),
  customer_id         text NOT NULL REFERENCES billing.customers,
  period_start        timestamptz NOT NULL,
  period_end          timestamptz NOT NULL CHECK (period_end > period_start),
  currency            char(3) NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
  minor_units         smallint NOT NULL CHECK (minor_units BETWEEN 0 AND 6),
  kind                text NOT NULL CHECK (kind IN ('standard', 'correction', 'credit_note')),
  corrects_invoice_id bigint REFERENCES billing.invoices,
  status              text NOT NULL DEFAULT 'draft' CHECK (status IN ('draft', 'issued')),
  subtotal            numeric(38, 6) NOT NULL,     -- Σ line amounts (rounded)
  credits_applied     numeric(38, 6) NOT NULL DEFAULT 0 CHECK (credits_applied >= 0),
  tax_region          text,
  tax_rate            numeric(9, 6) NOT NULL DEFAULT 0,
  tax                 numeric(38, 6) NOT NULL DEFAULT 0,
  total               numeric(38, 6) NOT NULL,
  issued_at           timestamptz,
  created_at          timestamptz NOT NULL DEFAULT now(),
  CHECK ((kind = 'standard') = (corrects_invoice_id IS NULL)),
  CHECK ((status = 'issued') = (invoice_number IS NOT NULL AND issued_at IS NOT NULL)),
  CHECK (total = subtotal - credits_applied + tax),
  CHECK (credits_applied <= greatest(subtotal, 0))
);
-- At most one standard invoice per customer and period (corrections and credit notes follow it).
CREATE UNIQUE INDEX invoices_one_standard_idx ON billing.invoices (customer_id, period_start)
  WHERE kind = 'standard';
CREATE INDEX invoices_period_idx ON billing.invoices (period_start, customer_id);
CREATE INDEX invoices_corrects_idx ON billing.invoices (corrects_invoice_id);

-- One line per meter per document.
CREATE TABLE billing.invoice_lines (
  line_id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  invoice_id       bigint NOT NULL REFERENCES billing.invoices,
  customer_id      text NOT NULL,
  period_start     timestamptz NOT NULL,
  meter            text NOT NULL,
  currency         char(3) NOT NULL,
  quantity         numeric(38, 12) NOT NULL,   -- Σ quantity_delta of the linked charges
  amount_precise   numeric(48, 18) NOT NULL,   -- Σ amount of the linked charges (unrounded)
  amount           numeric(38, 6) NOT NULL,    -- rounded to the currency's minor unit (see docs)
  rounding_mode    text NOT NULL,
  charge_count     bigint NOT NULL CHECK (charge_count >= 1),
  created_at       timestamptz NOT NULL DEFAULT now(),
  UNIQUE (invoice_id, meter)
);
CREATE INDEX invoice_lines_key_idx ON billing.invoice_lines (customer_id, meter, period_start);

-- Which charges a line sums. UNIQUE (charge_id): no charge is ever invoiced twice.
-- Referential integrity is checked per statement by billing.invoice_link_guard() below instead of
-- per-row foreign keys (a row-level FK check costs ~30 µs per link; an invoice run links millions).
CREATE TABLE billing.invoice_line_charges (
  charge_id   uuid NOT NULL UNIQUE,
  line_id     bigint NOT NULL,
  invoice_id  bigint NOT NULL
);
CREATE INDEX invoice_line_charges_line_idx ON billing.invoice_line_charges (line_id);

-- Credits consumed by a document. A credit's balance is its amount minus its applications.
CREATE TABLE billing.credit_applications (
  credit_id   text NOT NULL REFERENCES billing.credits,
  invoice_id  bigint NOT NULL REFERENCES billing.invoices,
  amount      numeric(38, 6) NOT NULL CHECK (amount > 0),
  applied_at  timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (credit_id, invoice_id)
);
CREATE INDEX credit_applications_invoice_idx ON billing.credit_applications (invoice_id);

-- Gapless invoice numbers: one counter row per year, updated (hence locked) by the issuing
-- transaction. A rollback rolls the counter back too; concurrent issuers queue on the row.
CREATE TABLE billing.invoice_number_counters (
  year         integer PRIMARY KEY,
  last_number  bigint NOT NULL DEFAULT 0 CHECK (last_number >= 0)
);

CREATE TABLE billing.reconciliation_runs (
  run_id        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  period_start  timestamptz NOT NULL,
  period_end    timestamptz NOT NULL,
  started_at    timestamptz NOT NULL,
  finished_at   timestamptz NOT NULL DEFAULT now(),
  ok            boolean NOT NULL,
  tolerance_minor_units integer NOT NULL,
  checks        jsonb NOT NULL,     -- one object per check: name, status, detail
  mismatches    jsonb NOT NULL,     -- [{check, customer_id, meter, expected, actual}]
  kafka_checked boolean NOT NULL
);

-- ---------------------------------------------------------------------------------------------
-- Immutability of issued documents (DESIGN.md invariant 4). Drafts are derived data and can be
-- rebuilt; an issued invoice, its lines, charge links and credit applications cannot change.
-- ---------------------------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION billing.invoice_guard() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
  y integer;
  n bigint;
BEGIN
  IF TG_OP = 'DELETE' THEN
    IF OLD.status = 'issued' THEN
      RAISE EXCEPTION 'billing.invoices: invoice % is issued and cannot be deleted', OLD.invoice_number
        USING ERRCODE = 'restrict_violation',
              HINT = 'issue a correction invoice or a credit note instead';
    END IF;
    RETURN OLD;
  END IF;
  -- UPDATE
  IF OLD.status = 'issued' THEN
    IF to_jsonb(NEW) = to_jsonb(OLD) THEN
      RETURN NULL;
    END IF;
    RAISE EXCEPTION 'billing.invoices: invoice % is issued and cannot be updated', OLD.invoice_number
      USING ERRCODE = 'restrict_violation',
            HINT = 'issue a correction invoice or a credit note instead';
  END IF;
  IF NEW.status = 'issued' THEN
    -- draft -> issued: the database assigns the number, whatever the client sent.
    NEW.issued_at := coalesce(NEW.issued_at, now());
    y := extract(year FROM NEW.issued_at AT TIME ZONE 'UTC')::integer;
    INSERT INTO billing.invoice_number_counters (year, last_number) VALUES (y, 0)
      ON CONFLICT (year) DO NOTHING;
    UPDATE billing.invoice_number_counters SET last_number = last_number + 1
      WHERE year = y RETURNING last_number INTO n;
    NEW.invoice_number := y::text || '-' || lpad(n::text, greatest(6, length(n::text)), '0');
  ELSE
    NEW.invoice_number := NULL;
    NEW.issued_at := NULL;
  END IF;
  RETURN NEW;
END;
$$;

CREATE TRIGGER invoices_guard BEFORE UPDATE OR DELETE ON billing.invoices
  FOR EACH ROW EXECUTE FUNCTION billing.invoice_guard();
CREATE TRIGGER invoices_no_truncate BEFORE TRUNCATE ON billing.invoices
  FOR EACH STATEMENT EXECUTE FUNCTION billing.forbid_change();

-- Insert-time guard: a draft is born a draft (numbers only come from issuing).
CREATE OR REPLACE FUNCTION billing.invoice_insert_guard() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  IF NEW.status <> 'draft' OR NEW.invoice_number IS NOT NULL OR NEW.issued_at IS NOT NULL THEN
    RAISE EXCEPTION 'billing.invoices: new invoices are drafts; numbers are assigned at issue'
      USING ERRCODE = 'restrict_violation';
  END IF;
  RETURN NEW;
END;
$$;
CREATE TRIGGER invoices_insert_guard BEFORE INSERT ON billing.invoices
  FOR EACH ROW EXECUTE FUNCTION billing.invoice_insert_guard();

-- Children (lines, links, credit applications): rows are never updated; they are inserted into
-- and deleted from drafts only. Statement-level checks with transition tables keep bulk inserts fast.
CREATE OR REPLACE FUNCTION billing.invoice_child_guard() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE bad text;
BEGIN
  IF TG_OP = 'INSERT' THEN
    SELECT i.invoice_number INTO bad FROM new_rows r JOIN billing.invoices i USING (invoice_id)
     WHERE i.status = 'issued' LIMIT 1;
  ELSE
    SELECT i.invoice_number INTO bad FROM old_rows r JOIN billing.invoices i USING (invoice_id)
     WHERE i.status = 'issued' LIMIT 1;
  END IF;
  IF bad IS NOT NULL THEN
    RAISE EXCEPTION 'billing.%: invoice % is issued; its % cannot be changed', TG_TABLE_NAME, bad, TG_TABLE_NAME
      USING ERRCODE = 'restrict_violation',
            HINT = 'issue a correction invoice or a credit note instead';
  END IF;
  RETURN NULL;
END;
$$;

DO $$
DECLARE t text;
BEGIN
  FOREACH t IN ARRAY ARRAY['invoice_lines', 'invoice_line_charges', 'credit_applications']
  LOOP
    EXECUTE format('CREATE TRIGGER %I AFTER INSERT ON billing.%I REFERENCING NEW TABLE AS new_rows
                    FOR EACH STATEMENT EXECUTE FUNCTION billing.invoice_child_guard()', t || '_ins_guard', t);
    EXECUTE format('CREATE TRIGGER %I AFTER DELETE ON billing.%I REFERENCING OLD TABLE AS old_rows
                    FOR EACH STATEMENT EXECUTE FUNCTION billing.invoice_child_guard()', t || '_del_guard', t);
    -- rows are never updated (an identical UPDATE is skipped, like the other append-only tables)
    EXECUTE format('CREATE TRIGGER %I BEFORE UPDATE ON billing.%I
                    FOR EACH ROW EXECUTE FUNCTION billing.forbid_change()', t || '_immutable', t);
    EXECUTE format('CREATE TRIGGER %I BEFORE TRUNCATE ON billing.%I
                    FOR EACH STATEMENT EXECUTE FUNCTION billing.forbid_change()', t || '_no_truncate', t);
  END LOOP;
END;
$$;

-- Foreign keys of the links, per statement: every new link names an existing charge and a line of
-- the named invoice; a deleted line or invoice leaves no link behind.
CREATE OR REPLACE FUNCTION billing.invoice_link_guard() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE bad text;
BEGIN
  IF TG_TABLE_NAME = 'invoice_line_charges' THEN
    SELECT r.charge_id::text INTO bad FROM new_rows r
     WHERE NOT EXISTS (SELECT 1 FROM billing.rated_charges c WHERE c.charge_id = r.charge_id)
     LIMIT 1;
    IF bad IS NOT NULL THEN
      RAISE EXCEPTION 'billing.invoice_line_charges: charge % does not exist', bad
        USING ERRCODE = 'foreign_key_violation';
    END IF;
    SELECT r.line_id::text INTO bad FROM new_rows r
     WHERE NOT EXISTS (SELECT 1 FROM billing.invoice_lines l
                        WHERE l.line_id = r.line_id AND l.invoice_id = r.invoice_id)
     LIMIT 1;
    IF bad IS NOT NULL THEN
      RAISE EXCEPTION 'billing.invoice_line_charges: line % of that invoice does not exist', bad
        USING ERRCODE = 'foreign_key_violation';
    END IF;
  ELSE  -- DELETE on invoice_lines
    SELECT o.line_id::text INTO bad FROM old_rows o
     WHERE EXISTS (SELECT 1 FROM billing.invoice_line_charges lc WHERE lc.line_id = o.line_id)
     LIMIT 1;
    IF bad IS NOT NULL THEN
      RAISE EXCEPTION 'billing.invoice_lines: line % still has charge links', bad
        USING ERRCODE = 'foreign_key_violation';
    END IF;
  END IF;
  RETURN NULL;
END;
$$;
CREATE TRIGGER invoice_line_charges_fk AFTER INSERT ON billing.invoice_line_charges
  REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION billing.invoice_link_guard();
CREATE TRIGGER invoice_lines_fk AFTER DELETE ON billing.invoice_lines
  REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION billing.invoice_link_guard();

-- A line's own DELETE is checked row by row before the foreign keys speak, so deleting a line of
-- an issued invoice fails with the immutability error (lines are few; links stay statement-level).
CREATE OR REPLACE FUNCTION billing.invoice_line_delete_guard() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE num text;
BEGIN
  SELECT i.invoice_number INTO num FROM billing.invoices i
   WHERE i.invoice_id = OLD.invoice_id AND i.status = 'issued';
  IF FOUND THEN
    RAISE EXCEPTION 'billing.invoice_lines: invoice % is issued; its lines cannot be changed', num
      USING ERRCODE = 'restrict_violation',
            HINT = 'issue a correction invoice or a credit note instead';
  END IF;
  RETURN OLD;
END;
$$;
CREATE TRIGGER invoice_lines_row_del_guard BEFORE DELETE ON billing.invoice_lines
  FOR EACH ROW EXECUTE FUNCTION billing.invoice_line_delete_guard();

-- reconciliation runs are an audit log: append-only
CREATE TRIGGER reconciliation_runs_immutable BEFORE UPDATE OR DELETE ON billing.reconciliation_runs
  FOR EACH ROW EXECUTE FUNCTION billing.forbid_change();
CREATE TRIGGER reconciliation_runs_no_truncate BEFORE TRUNCATE ON billing.reconciliation_runs
  FOR EACH STATEMENT EXECUTE FUNCTION billing.forbid_change();

-- Issue drafts: lock this year's counter row first (concurrent issuers queue here), then move
-- the selected drafts to 'issued' one by one in a deterministic order; the guard trigger numbers
-- them. Returns the issued invoices.
CREATE OR REPLACE FUNCTION billing.issue_drafts(p_period_start timestamptz DEFAULT NULL,
                                                p_customers text[] DEFAULT NULL)
RETURNS TABLE (invoice_id bigint, invoice_number text)
LANGUAGE plpgsql AS $$
DECLARE
  y integer := extract(year FROM now() AT TIME ZONE 'UTC')::integer;
  r record;
BEGIN
  INSERT INTO billing.invoice_number_counters (year, last_number) VALUES (y, 0)
    ON CONFLICT (year) DO NOTHING;
  PERFORM 1 FROM billing.invoice_number_counters c WHERE c.year = y FOR UPDATE;
  FOR r IN
    SELECT i.invoice_id FROM billing.invoices i
     WHERE i.status = 'draft'
       AND (p_period_start IS NULL OR i.period_start = p_period_start)
       AND (p_customers IS NULL OR i.customer_id = ANY (p_customers))
     ORDER BY i.period_start, i.customer_id,
              CASE i.kind WHEN 'standard' THEN 0 ELSE 1 END, i.invoice_id
     FOR UPDATE
  LOOP
    UPDATE billing.invoices i SET status = 'issued'
     WHERE i.invoice_id = r.invoice_id AND i.status = 'draft'
    RETURNING i.invoice_id, i.invoice_number INTO invoice_id, invoice_number;
    IF FOUND THEN
      RETURN NEXT;
    END IF;
  END LOOP;
END;
$$;

-- ---------------------------------------------------------------------------------------------
-- Analysts' views: no knowledge of revisions or deltas needed.
-- ---------------------------------------------------------------------------------------------
-- The current state of every window (its latest revision).
CREATE VIEW billing.v_current_usage AS
SELECT DISTINCT ON (a.customer_id, a.meter, a.window_start)
       a.customer_id, a.meter,
       (date_trunc('month', a.window_start AT TIME ZONE 'UTC') AT TIME ZONE 'UTC') AS period_start,
       a.window_start, a.window_end, a.quantity, a.event_count,
       a.revision AS revisions, a.source AS last_source, a.created_at AS updated_at
  FROM billing.aggregated_usage a
 ORDER BY a.customer_id, a.meter, a.window_start, a.revision DESC;

-- The net charge of every window (Σ of its charge deltas).
CREATE VIEW billing.v_window_charges AS
SELECT c.customer_id, c.meter, c.period_start, c.window_start, c.window_end, c.currency,
       sum(c.quantity_delta) AS quantity,
       sum(c.amount)         AS amount,
       count(*)              AS charge_count,
       max(c.revision)       AS last_revision,
       max(c.created_at)     AS last_charged_at
  FROM billing.rated_charges c
 GROUP BY c.customer_id, c.meter, c.period_start, c.window_start, c.window_end, c.currency;

-- Invoices with their totals and what they correct.
CREATE VIEW billing.v_invoices AS
SELECT i.invoice_id, i.invoice_number, i.customer_id, i.period_start, i.period_end, i.currency,
       i.kind, i.status, o.invoice_number AS corrects_invoice_number, i.corrects_invoice_id,
       i.subtotal, i.credits_applied, i.tax_region, i.tax_rate, i.tax, i.total, i.issued_at,
       i.created_at
  FROM billing.invoices i
  LEFT JOIN billing.invoices o ON o.invoice_id = i.corrects_invoice_id;

-- Every invoice line with the explanation of each charge it sums.
CREATE VIEW billing.v_invoice_lines_explained AS
SELECT l.line_id, i.invoice_id, i.invoice_number, i.kind, i.status, l.customer_id, l.meter,
       l.period_start, l.currency, l.quantity, l.amount_precise, l.amount, l.rounding_mode,
       l.charge_count,
       (SELECT jsonb_agg(jsonb_build_object(
                 'charge_id', c.charge_id, 'window_start', c.window_start,
                 'window_end', c.window_end, 'revision', c.revision,
                 'quantity_delta', c.quantity_delta, 'amount', c.amount,
                 'price_book_id', c.price_book_id, 'price_version', c.price_version,
                 'cause', c.cause, 'caused_by', c.caused_by, 'calculation', c.calculation)
                 ORDER BY c.window_start, c.revision, c.created_at, c.charge_id)
          FROM billing.invoice_line_charges lc
          JOIN billing.rated_charges c ON c.charge_id = lc.charge_id
         WHERE lc.line_id = l.line_id) AS charges
  FROM billing.invoice_lines l
  JOIN billing.invoices i ON i.invoice_id = l.invoice_id;

-- Drill-down: invoice line -> its charges -> the windows they rated -> the raw events of those
-- windows (each event once per line, even when several charges rated its window).
CREATE VIEW billing.v_invoice_line_events AS
SELECT w.line_id, i.invoice_id, i.invoice_number, w.customer_id, w.meter, w.window_start,
       e.event_id, e.event_time, e.ingestion_time, e.quantity, e.properties, e.source
  FROM (SELECT DISTINCT lc.line_id, c.customer_id, c.meter, c.window_start
          FROM billing.invoice_line_charges lc
          JOIN billing.rated_charges c ON c.charge_id = lc.charge_id) w
  JOIN billing.invoice_lines l ON l.line_id = w.line_id
  JOIN billing.invoices i ON i.invoice_id = l.invoice_id
  JOIN billing.usage_events e
    ON e.customer_id = w.customer_id AND e.meter = w.meter AND e.window_start = w.window_start;

-- Remaining balance of every credit.
CREATE VIEW billing.v_credit_balances AS
SELECT cr.credit_id, cr.customer_id, cr.currency, cr.amount, cr.granted_at,
       coalesce(sum(a.amount), 0) AS applied,
       cr.amount - coalesce(sum(a.amount), 0) AS remaining
  FROM billing.credits cr
  LEFT JOIN billing.credit_applications a ON a.credit_id = cr.credit_id
 GROUP BY cr.credit_id;

-- ---------------------------------------------------------------------------------------------
-- The analyst role: read the views and the data tables, write nothing. Roles are cluster-wide,
-- so creating it must tolerate its existence (another database of the cluster, a concurrent run).
-- ---------------------------------------------------------------------------------------------
DO $$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'meterflow_analyst') THEN
    CREATE ROLE meterflow_analyst NOLOGIN;
  END IF;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
  NULL;  -- created concurrently by a migration of another database
END;
$$;

GRANT USAGE ON SCHEMA billing TO meterflow_analyst;
REVOKE ALL ON ALL TABLES IN SCHEMA billing FROM meterflow_analyst;
GRANT SELECT ON
  billing.v_current_usage, billing.v_window_charges, billing.v_invoices,
  billing.v_invoice_lines_explained, billing.v_invoice_line_events, billing.v_credit_balances,
  billing.usage_events, billing.aggregated_usage, billing.rated_charges,
  billing.price_books, billing.price_book_versions, billing.customers, billing.tax_rates,
  billing.credits, billing.invoices, billing.invoice_lines, billing.invoice_line_charges,
  billing.credit_applications, billing.reconciliation_runs
TO meterflow_analyst;
REVOKE EXECUTE ON FUNCTION billing.issue_drafts(timestamptz, text[]) FROM PUBLIC;
