-- meterflow invoicing, faster at scale (docs/INVOICING.md "Performance"):
--
-- 1. Every rated charge gets a narrow surrogate key, rated_charges.charge_seq (bigint, from a
--    sequence, unique). Charges are written in time order, so the charges of a period occupy one
--    narrow, recent band of the key: links inserted for them touch a few hot B-tree pages instead
--    of random leaves of a uuid index spanning all history.
-- 2. The charge links move to billing.invoice_line_links (charge_seq, line_id, invoice_id):
--    PRIMARY KEY (charge_seq) keeps "a charge is invoiced at most once" enforced by the database;
--    the line -> charges drill-down uses a BRIN index on (line_id, invoice_id) (links are written
--    in line order), which costs next to nothing to maintain, instead of a second B-tree.
--    billing.invoice_line_charges stays, as a view with the old columns (charge_id, line_id,
--    invoice_id) plus charge_seq; writes through it are translated to the table (and refused by
--    the same guards).
-- 3. Issuing: the invoice number counter is read (and locked) once per transaction and written
--    once per statement instead of once per invoice (updating one row thousands of times in a
--    transaction is quadratic: every update walks the row's version chain). A statement-level
--    trigger checks that the numbers handed out are exactly the next block after the counter;
--    billing.issue_drafts() issues all selected drafts with one UPDATE.
--
-- Applying this rewrites billing.rated_charges once (the new column is filled for existing rows,
-- under an exclusive lock: minutes for hundreds of millions of charges) and copies the links.

-- ---------------------------------------------------------------------------------------------
-- 1. rated_charges.charge_seq
-- ---------------------------------------------------------------------------------------------
-- Filled by its default: writers keep naming their columns and never pass it. (A temporary copy
-- made with LIKE billing.rated_charges INCLUDING DEFAULTS, as the ledger's staging table is,
-- draws a number per row too; the gap that leaves in the sequence is harmless.)
CREATE SEQUENCE billing.rated_charges_charge_seq_seq AS bigint;
ALTER TABLE billing.rated_charges
  ADD COLUMN charge_seq bigint NOT NULL DEFAULT nextval('billing.rated_charges_charge_seq_seq');
ALTER SEQUENCE billing.rated_charges_charge_seq_seq OWNED BY billing.rated_charges.charge_seq;
ALTER TABLE billing.rated_charges
  ADD CONSTRAINT rated_charges_charge_seq_key UNIQUE (charge_seq);

-- ---------------------------------------------------------------------------------------------
-- 2. invoice_line_links replaces the invoice_line_charges table
-- ---------------------------------------------------------------------------------------------
CREATE TABLE billing.invoice_line_links (
  charge_seq  bigint NOT NULL,     -- rated_charges.charge_seq
  line_id     bigint NOT NULL,     -- invoice_lines.line_id
  invoice_id  bigint NOT NULL,     -- the line's invoice
  CONSTRAINT invoice_line_links_pkey PRIMARY KEY (charge_seq)   -- a charge is invoiced at most once
);
INSERT INTO billing.invoice_line_links (charge_seq, line_id, invoice_id)
SELECT c.charge_seq, lc.line_id, lc.invoice_id
  FROM billing.invoice_line_charges lc
  JOIN billing.rated_charges c ON c.charge_id = lc.charge_id
 ORDER BY lc.line_id, c.charge_seq;
DO $$
BEGIN
  IF (SELECT count(*) FROM billing.invoice_line_links)
     <> (SELECT count(*) FROM billing.invoice_line_charges) THEN
    RAISE EXCEPTION 'V004: some invoice_line_charges rows name no rated charge; not migrated';
  END IF;
END;
$$;
-- Links are written in line order (docs/INVOICING.md), so a line's links share a few heap pages.
CREATE INDEX invoice_line_links_line_brin ON billing.invoice_line_links
  USING brin (line_id, invoice_id) WITH (pages_per_range = 16, autosummarize = on);

DROP VIEW billing.v_invoice_line_events;
DROP VIEW billing.v_invoice_lines_explained;
DROP TABLE billing.invoice_line_charges;

-- Statement-level foreign keys of the links (as in V002, now set-based end to end): every new
-- link names an existing charge and a line of the named invoice; a deleted line leaves no link.
-- Each check is one join bounded by the key range of the statement's rows; without statistics on
-- the transition table the planner would otherwise probe an index once per link (~1 µs each).
CREATE OR REPLACE FUNCTION billing.invoice_link_guard() RETURNS trigger
LANGUAGE plpgsql SET enable_nestloop = off AS $$
DECLARE
  bad text;
  n   bigint;
  lo  bigint;   -- charge_seq (line_id in the DELETE branch) range of the statement's rows
  hi  bigint;
  llo bigint;   -- line_id range
  lhi bigint;
  hit bigint;
BEGIN
  IF TG_TABLE_NAME = 'invoice_line_links' THEN
    SELECT count(*), min(charge_seq), max(charge_seq), min(line_id), max(line_id)
      INTO n, lo, hi, llo, lhi FROM new_rows;
    IF n = 0 THEN
      RETURN NULL;
    END IF;
    SELECT r.line_id::text INTO bad
      FROM (SELECT DISTINCT line_id, invoice_id FROM new_rows) r
     WHERE NOT EXISTS (SELECT 1 FROM billing.invoice_lines l
                        WHERE l.line_id BETWEEN llo AND lhi
                          AND l.line_id = r.line_id AND l.invoice_id = r.invoice_id)
     LIMIT 1;
    IF bad IS NOT NULL THEN
      RAISE EXCEPTION 'billing.invoice_line_links: line % of that invoice does not exist', bad
        USING ERRCODE = 'foreign_key_violation';
    END IF;
    -- new_rows hold distinct charge_seq (primary key), and so does rated_charges: all exist iff
    -- the join finds as many.
    SELECT count(*) INTO hit FROM new_rows r
      JOIN billing.rated_charges c ON c.charge_seq = r.charge_seq
     WHERE c.charge_seq BETWEEN lo AND hi;
    IF hit <> n THEN
      SELECT r.charge_seq::text INTO bad FROM new_rows r
       WHERE NOT EXISTS (SELECT 1 FROM billing.rated_charges c WHERE c.charge_seq = r.charge_seq)
       LIMIT 1;
      RAISE EXCEPTION 'billing.invoice_line_links: charge % does not exist', bad
        USING ERRCODE = 'foreign_key_violation';
    END IF;
  ELSE  -- DELETE on invoice_lines
    SELECT min(line_id), max(line_id) INTO lo, hi FROM old_rows;
    SELECT k.line_id::text INTO bad FROM billing.invoice_line_links k
     WHERE k.line_id BETWEEN lo AND hi
       AND k.line_id IN (SELECT o.line_id FROM old_rows o)
     LIMIT 1;
    IF bad IS NOT NULL THEN
      RAISE EXCEPTION 'billing.invoice_lines: line % still has charge links', bad
        USING ERRCODE = 'foreign_key_violation';
    END IF;
  END IF;
  RETURN NULL;
END;
$$;

-- the same guards as the other children of an invoice (V002): nothing added to, deleted from or
-- updated in an issued invoice; never updated; never truncated; foreign keys per statement
CREATE TRIGGER invoice_line_links_ins_guard AFTER INSERT ON billing.invoice_line_links
  REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION billing.invoice_child_guard();
CREATE TRIGGER invoice_line_links_del_guard AFTER DELETE ON billing.invoice_line_links
  REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION billing.invoice_child_guard();
CREATE TRIGGER invoice_line_links_immutable BEFORE UPDATE ON billing.invoice_line_links
  FOR EACH ROW EXECUTE FUNCTION billing.forbid_change();
CREATE TRIGGER invoice_line_links_no_truncate BEFORE TRUNCATE ON billing.invoice_line_links
  FOR EACH STATEMENT EXECUTE FUNCTION billing.forbid_change();
CREATE TRIGGER invoice_line_links_fk AFTER INSERT ON billing.invoice_line_links
  REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION billing.invoice_link_guard();

-- Summarize the BRIN ranges the last invoice run filled (the job calls it after its build, so a
-- drill-down does not scan the new pages until autovacuum summarizes them). Owner's rights: the
-- job need not own the table.
CREATE FUNCTION billing.summarize_invoice_links() RETURNS integer
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
  SELECT brin_summarize_new_values('billing.invoice_line_links_line_brin'::regclass)
$$;
REVOKE EXECUTE ON FUNCTION billing.summarize_invoice_links() FROM PUBLIC;

-- The old table's name, as a view: same columns for readers (plus charge_seq).
CREATE VIEW billing.invoice_line_charges AS
SELECT c.charge_id, k.line_id, k.invoice_id, k.charge_seq
  FROM billing.invoice_line_links k
  JOIN billing.rated_charges c ON c.charge_seq = k.charge_seq;

-- Writes through the view go to the table, row by row (slow: the invoice job writes the table),
-- so they meet the same guards: a second link of a charge is a unique violation, a change to an
-- issued invoice's links a restrict violation, any UPDATE a restrict violation.
CREATE OR REPLACE FUNCTION billing.invoice_line_charges_write() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE seq bigint;
BEGIN
  IF TG_OP = 'DELETE' THEN
    DELETE FROM billing.invoice_line_links WHERE charge_seq = OLD.charge_seq;
    RETURN OLD;
  END IF;
  SELECT c.charge_seq INTO seq FROM billing.rated_charges c WHERE c.charge_id = NEW.charge_id;
  IF seq IS NULL THEN
    RAISE EXCEPTION 'billing.invoice_line_charges: charge % does not exist', NEW.charge_id
      USING ERRCODE = 'foreign_key_violation';
  END IF;
  IF TG_OP = 'INSERT' THEN
    INSERT INTO billing.invoice_line_links (charge_seq, line_id, invoice_id)
    VALUES (seq, NEW.line_id, NEW.invoice_id);
  ELSE
    UPDATE billing.invoice_line_links
       SET charge_seq = seq, line_id = NEW.line_id, invoice_id = NEW.invoice_id
     WHERE charge_seq = OLD.charge_seq;
  END IF;
  NEW.charge_seq := seq;
  RETURN NEW;
END;
$$;
CREATE TRIGGER invoice_line_charges_write INSTEAD OF INSERT OR UPDATE OR DELETE
  ON billing.invoice_line_charges FOR EACH ROW EXECUTE FUNCTION billing.invoice_line_charges_write();

-- The analysts' views of V002, reading the links table (same columns, same meaning).
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
          FROM billing.invoice_line_links k
          JOIN billing.rated_charges c ON c.charge_seq = k.charge_seq
         WHERE k.line_id = l.line_id) AS charges
  FROM billing.invoice_lines l
  JOIN billing.invoices i ON i.invoice_id = l.invoice_id;

CREATE VIEW billing.v_invoice_line_events AS
SELECT w.line_id, i.invoice_id, i.invoice_number, w.customer_id, w.meter, w.window_start,
       e.event_id, e.event_time, e.ingestion_time, e.quantity, e.properties, e.source
  FROM (SELECT DISTINCT k.line_id, c.customer_id, c.meter, c.window_start
          FROM billing.invoice_line_links k
          JOIN billing.rated_charges c ON c.charge_seq = k.charge_seq) w
  JOIN billing.invoice_lines l ON l.line_id = w.line_id
  JOIN billing.invoices i ON i.invoice_id = l.invoice_id
  JOIN billing.usage_events e
    ON e.customer_id = w.customer_id AND e.meter = w.meter AND e.window_start = w.window_start;

-- The children's guard of V002, looking up each invoice of the statement once (not once per row:
-- an invoice run inserts a million links for ten thousand invoices).
CREATE OR REPLACE FUNCTION billing.invoice_child_guard() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE bad text;
BEGIN
  IF TG_OP = 'INSERT' THEN
    SELECT i.invoice_number INTO bad FROM (SELECT DISTINCT invoice_id FROM new_rows) r
      JOIN billing.invoices i ON i.invoice_id = r.invoice_id
     WHERE i.status = 'issued' LIMIT 1;
  ELSE
    SELECT i.invoice_number INTO bad FROM (SELECT DISTINCT invoice_id FROM old_rows) r
      JOIN billing.invoices i ON i.invoice_id = r.invoice_id
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

GRANT SELECT ON billing.invoice_line_links, billing.invoice_line_charges,
  billing.v_invoice_lines_explained, billing.v_invoice_line_events
TO meterflow_analyst;

-- ---------------------------------------------------------------------------------------------
-- 3. Issuing: one counter read per transaction, one counter write per statement
-- ---------------------------------------------------------------------------------------------
-- draft -> issued (row level): the number is the next one of the issue year. The first invoice
-- of a transaction locks and reads the year's counter row; later ones continue from a
-- transaction-local setting (billing.last_invoice_number_<year>). The counter row itself is
-- written by invoice_numbers_check() once per statement, which also proves that the numbers
-- handed out are exactly the block right after the counter: whatever a client does to that
-- setting, it can only make the statement fail, never leave a gap or a duplicate.
CREATE OR REPLACE FUNCTION billing.invoice_guard() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
  y    integer;
  n    bigint;
  last text;
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
    last := current_setting('billing.last_invoice_number_' || y, true);
    IF coalesce(last, '') = '' THEN
      INSERT INTO billing.invoice_number_counters (year, last_number) VALUES (y, 0)
        ON CONFLICT (year) DO NOTHING;
      SELECT c.last_number INTO n FROM billing.invoice_number_counters c
       WHERE c.year = y FOR UPDATE;
    ELSE
      n := last::bigint;
    END IF;
    n := n + 1;
    PERFORM set_config('billing.last_invoice_number_' || y, n::text, true);
    NEW.invoice_number := y::text || '-' || lpad(n::text, greatest(6, length(n::text)), '0');
  ELSE
    NEW.invoice_number := NULL;
    NEW.issued_at := NULL;
  END IF;
  RETURN NEW;
END;
$$;

-- After every UPDATE statement on invoices: per year, the numbers issued by the statement must be
-- counter + 1 .. counter + n (they are distinct: invoice_number is UNIQUE); the counter moves to
-- the last one. The counter row is locked by this transaction since the first number. (Every
-- issued row of new_rows was a draft before: an UPDATE of an issued invoice either fails or,
-- when it changes nothing, is skipped and leaves no transition row.)
CREATE OR REPLACE FUNCTION billing.invoice_numbers_check() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE r record;
BEGIN
  FOR r IN
    SELECT split_part(n.invoice_number, '-', 1)::integer AS y, count(*) AS cnt,
           min(split_part(n.invoice_number, '-', 2)::bigint) AS lo,
           max(split_part(n.invoice_number, '-', 2)::bigint) AS hi
      FROM new_rows n
     WHERE n.status = 'issued'
     GROUP BY 1
  LOOP
    UPDATE billing.invoice_number_counters c SET last_number = r.hi
     WHERE c.year = r.y AND c.last_number = r.lo - 1 AND r.hi - r.lo + 1 = r.cnt;
    IF NOT FOUND THEN
      RAISE EXCEPTION 'billing.invoices: invoice numbers %-% .. % (% invoices) do not follow the counter',
        r.y, r.lo, r.hi, r.cnt
        USING ERRCODE = 'restrict_violation',
              HINT = 'numbers are assigned by the database; do not set billing.last_invoice_number_*';
    END IF;
    PERFORM set_config('billing.last_invoice_number_' || r.y, r.hi::text, true);
  END LOOP;
  RETURN NULL;
END;
$$;
CREATE TRIGGER invoices_numbering AFTER UPDATE ON billing.invoices
  REFERENCING NEW TABLE AS new_rows
  FOR EACH STATEMENT EXECUTE FUNCTION billing.invoice_numbers_check();

-- Issue drafts: lock this year's counter row first (concurrent issuers queue here), lock the
-- selected drafts, then issue them with one UPDATE that visits them in
-- (period, customer, standard first, id) order, so they are numbered in that order: a nested
-- loop over the ordered ids fetching each invoice by its primary key (the planner settings below
-- leave it no other plan, whatever the statistics say; the order is checked too, and a different
-- one would roll everything back).
CREATE OR REPLACE FUNCTION billing.issue_drafts(p_period_start timestamptz DEFAULT NULL,
                                                p_customers text[] DEFAULT NULL)
RETURNS TABLE (invoice_id bigint, invoice_number text)
LANGUAGE plpgsql
SET enable_hashjoin = off SET enable_mergejoin = off SET enable_material = off
AS $$
DECLARE
  y    integer := extract(year FROM now() AT TIME ZONE 'UTC')::integer;
  ids  bigint[];
  oids bigint[];
  nums text[];
BEGIN
  INSERT INTO billing.invoice_number_counters (year, last_number) VALUES (y, 0)
    ON CONFLICT (year) DO NOTHING;
  PERFORM 1 FROM billing.invoice_number_counters c WHERE c.year = y FOR UPDATE;
  SELECT array_agg(d.invoice_id ORDER BY d.period_start, d.customer_id, d.k, d.invoice_id)
    INTO ids
    FROM (SELECT i.invoice_id, i.period_start, i.customer_id,
                 CASE i.kind WHEN 'standard' THEN 0 ELSE 1 END AS k
            FROM billing.invoices i
           WHERE i.status = 'draft'
             AND (p_period_start IS NULL OR i.period_start = p_period_start)
             AND (p_customers IS NULL OR i.customer_id = ANY (p_customers))
           ORDER BY i.period_start, i.customer_id, k, i.invoice_id
             FOR UPDATE OF i) d;
  IF ids IS NULL THEN
    RETURN;
  END IF;
  WITH u AS (
    UPDATE billing.invoices i SET status = 'issued'
      FROM unnest(ids) WITH ORDINALITY AS d(id, ord)
     WHERE i.invoice_id = d.id      -- drafts, locked above
    RETURNING i.invoice_id, i.invoice_number, d.ord)
  SELECT array_agg(u.invoice_id ORDER BY u.ord), array_agg(u.invoice_number ORDER BY u.ord)
    INTO oids, nums
    FROM u;
  IF coalesce(array_length(oids, 1), 0) <> array_length(ids, 1) THEN
    RAISE EXCEPTION 'billing.issue_drafts: % drafts selected, % issued', array_length(ids, 1),
      coalesce(array_length(oids, 1), 0) USING ERRCODE = 'internal_error';
  END IF;
  FOR k IN 1 .. array_length(oids, 1) LOOP
    IF k > 1 AND (split_part(nums[k], '-', 1)::integer, split_part(nums[k], '-', 2)::bigint)
                 <= (split_part(nums[k - 1], '-', 1)::integer, split_part(nums[k - 1], '-', 2)::bigint) THEN
      RAISE EXCEPTION 'billing.issue_drafts: invoices were numbered out of order'
        USING ERRCODE = 'internal_error';
    END IF;
    invoice_id := oids[k];
    invoice_number := nums[k];
    RETURN NEXT;
  END LOOP;
END;
$$;
