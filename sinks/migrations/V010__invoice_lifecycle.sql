-- meterflow invoice lifecycle (issue 17, docs/INVOICING.md "Lifecycle"): payment terms and due
-- dates fixed at issue, the facts that happen to a document after issue (sent, payment, refund,
-- void, write-off) as appended rows, payments, dunning notices, and the views that derive each
-- document's status, its open amount and the receivables' aging. Issued documents stay
-- immutable (DESIGN.md invariant 4): nothing here updates an issued invoice.

-- ---------------------------------------------------------------------------------------------
-- 1. Payment terms and due dates
-- ---------------------------------------------------------------------------------------------
-- A customer's terms in days (net 14, net 30); NULL = the configured default
-- (billing.payment_terms_days, passed by the issuing transaction; see billing.invoice_terms()).
ALTER TABLE billing.customers
  ADD COLUMN payment_terms_days smallint CHECK (payment_terms_days BETWEEN 0 AND 3650);

-- Fixed when the document is issued: the terms then in force and issue date (UTC) + terms.
ALTER TABLE billing.invoices
  ADD COLUMN payment_terms_days smallint CHECK (payment_terms_days BETWEEN 0 AND 3650),
  ADD COLUMN due_date date;

-- Documents issued before this migration get the default terms (30 days, the shipped default of
-- billing.payment_terms_days; a session may pass another with billing.default_payment_terms_days).
-- They are issued, so the immutability trigger would refuse the UPDATE: it is switched off for
-- this one statement, inside the migration's transaction, by the schema's owner.
ALTER TABLE billing.invoices DISABLE TRIGGER invoices_guard;
ALTER TABLE billing.invoices DISABLE TRIGGER invoices_numbering;
UPDATE billing.invoices i
   SET payment_terms_days = t.days,
       due_date = (i.issued_at AT TIME ZONE 'UTC')::date + t.days
  FROM (SELECT coalesce(nullif(current_setting('billing.default_payment_terms_days', true), '')::smallint,
                        30::smallint) AS days) t
 WHERE i.status = 'issued';
ALTER TABLE billing.invoices ENABLE TRIGGER invoices_numbering;
ALTER TABLE billing.invoices ENABLE TRIGGER invoices_guard;
ALTER TABLE billing.invoices
  ADD CONSTRAINT invoices_due_at_issue
  CHECK ((status = 'issued') = (due_date IS NOT NULL AND payment_terms_days IS NOT NULL));

-- Runs after invoices_guard (triggers fire in name order), which has set issued_at at
-- draft -> issued (and returned NULL for an unchanged issued row, so this one never sees it).
-- Drafts carry no due date; at issue the customer's terms, else the transaction's
-- billing.default_payment_terms_days, else 30, fix the terms and the due date.
CREATE FUNCTION billing.invoice_terms() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  IF NEW.status = 'issued' AND (TG_OP = 'INSERT' OR OLD.status = 'issued') THEN
    RETURN NEW;  -- not a draft -> issued transition: the other guards decide
  END IF;
  NEW.payment_terms_days := coalesce(
    (SELECT c.payment_terms_days FROM billing.customers c WHERE c.customer_id = NEW.customer_id),
    nullif(current_setting('billing.default_payment_terms_days', true), '')::smallint,
    30::smallint);
  IF NEW.status = 'issued' THEN
    NEW.due_date := (NEW.issued_at AT TIME ZONE 'UTC')::date + NEW.payment_terms_days;
  ELSE
    NEW.due_date := NULL;
  END IF;
  RETURN NEW;
END;
$$;
CREATE TRIGGER invoices_terms BEFORE INSERT OR UPDATE ON billing.invoices
  FOR EACH ROW EXECUTE FUNCTION billing.invoice_terms();

-- ---------------------------------------------------------------------------------------------
-- 2. Payments and lifecycle facts (append-only)
-- ---------------------------------------------------------------------------------------------
-- Money received, one row per external reference (the bank's or the PSP's id): recording the
-- same reference again is a no-op, with other values an error (jobs/batch/payments.py).
-- `applied` went to the invoice; the rest (an overpayment) became the customer credit `credit_id`.
CREATE TABLE billing.payments (
  payment_id    bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  external_ref  text NOT NULL UNIQUE CHECK (length(external_ref) BETWEEN 1 AND 200),
  invoice_id    bigint NOT NULL REFERENCES billing.invoices,
  amount        numeric(38, 6) NOT NULL CHECK (amount > 0),
  currency      char(3) NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
  paid_on       date NOT NULL,
  method        text NOT NULL CHECK (length(method) BETWEEN 1 AND 64),
  applied       numeric(38, 6) NOT NULL CHECK (applied >= 0 AND applied <= amount),
  credit_id     text REFERENCES billing.credits,
  source        text NOT NULL DEFAULT 'cli',
  recorded_at   timestamptz NOT NULL DEFAULT now(),
  CHECK ((applied < amount) = (credit_id IS NOT NULL))
);
CREATE INDEX payments_invoice_idx ON billing.payments (invoice_id);

-- What happened to an issued document: sent, payment (the applied part of a payment), refund
-- (money paid back against a credit note), void (with the credit note it issued), write_off.
CREATE TABLE billing.invoice_events (
  event_id        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  invoice_id      bigint NOT NULL REFERENCES billing.invoices,
  kind            text NOT NULL CHECK (kind IN ('sent', 'payment', 'refund', 'void', 'write_off')),
  occurred_on     date NOT NULL,
  amount          numeric(38, 6) CHECK (amount > 0),
  payment_id      bigint REFERENCES billing.payments,
  credit_note_id  bigint REFERENCES billing.invoices,
  external_ref    text,
  note            text,
  recorded_at     timestamptz NOT NULL DEFAULT now(),
  CHECK ((kind IN ('payment', 'refund', 'write_off')) = (amount IS NOT NULL)),
  CHECK ((kind = 'payment') = (payment_id IS NOT NULL)),
  CHECK ((kind = 'void') = (credit_note_id IS NOT NULL))
);
CREATE INDEX invoice_events_invoice_idx ON billing.invoice_events (invoice_id, kind);
-- a document is voided at most once; a refund reference is used once
CREATE UNIQUE INDEX invoice_events_one_void_idx ON billing.invoice_events (invoice_id) WHERE kind = 'void';
CREATE UNIQUE INDEX invoice_events_refund_ref_idx ON billing.invoice_events (external_ref)
  WHERE kind = 'refund';

-- Facts are only ever about issued documents.
CREATE FUNCTION billing.invoice_event_guard() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM billing.invoices i
                  WHERE i.invoice_id = NEW.invoice_id AND i.status = 'issued') THEN
    RAISE EXCEPTION 'billing.%: invoice % is not issued', TG_TABLE_NAME, NEW.invoice_id
      USING ERRCODE = 'restrict_violation';
  END IF;
  RETURN NEW;
END;
$$;

-- ---------------------------------------------------------------------------------------------
-- 3. Dunning: each step of the policy once per invoice (PRIMARY KEY), with the reminder document
-- ---------------------------------------------------------------------------------------------
CREATE TABLE billing.dunning_notices (
  invoice_id    bigint NOT NULL REFERENCES billing.invoices,
  step          text NOT NULL CHECK (length(step) BETWEEN 1 AND 64),
  step_days     integer NOT NULL,             -- days after the due date
  as_of         date NOT NULL,                -- the run's date
  due_date      date NOT NULL,
  open_amount   numeric(38, 6) NOT NULL CHECK (open_amount > 0),
  currency      char(3) NOT NULL,
  document      text NOT NULL,                -- the reminder as sent (HTML)
  created_at    timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (invoice_id, step)
);

DO $$
DECLARE t text;
BEGIN
  FOREACH t IN ARRAY ARRAY['payments', 'invoice_events', 'dunning_notices']
  LOOP
    EXECUTE format('CREATE TRIGGER %I BEFORE UPDATE OR DELETE ON billing.%I
                    FOR EACH ROW EXECUTE FUNCTION billing.forbid_change()', t || '_immutable', t);
    EXECUTE format('CREATE TRIGGER %I BEFORE TRUNCATE ON billing.%I
                    FOR EACH STATEMENT EXECUTE FUNCTION billing.forbid_change()', t || '_no_truncate', t);
    EXECUTE format('CREATE TRIGGER %I BEFORE INSERT ON billing.%I
                    FOR EACH ROW EXECUTE FUNCTION billing.invoice_event_guard()', t || '_issued_only', t);
  END LOOP;
END;
$$;

-- ---------------------------------------------------------------------------------------------
-- 4. Status and open amount of every issued document, as of a date (billing/status.py holds
--    the same rules as a pure function; tests compare the two)
-- ---------------------------------------------------------------------------------------------
-- Invoices and corrections: open = total − payments − credit notes absorbed − write-offs
-- (never below 0: an overpayment became a credit). A credit note is absorbed by the open
-- balance of the invoice it corrects (credit notes in id order); what is left is owed to the
-- customer (open amount < 0) until refunded. Status: void > paid (open 0) > overdue (past the
-- due date) > partially_paid > sent > issued; written_off when a write-off closed it.
-- p_ids: only these documents (and what their figures depend on: the invoice a credit note
-- corrects and that invoice's other credit notes), for the payment commands; NULL = all.
CREATE FUNCTION billing.document_status(p_as_of date, p_ids bigint[] DEFAULT NULL)
RETURNS TABLE (invoice_id bigint, invoice_number text, customer_id text, kind text,
               corrects_invoice_id bigint, currency char(3), total numeric, issued_on date,
               due_date date, paid numeric, credited numeric, written_off numeric,
               refunded numeric, sent boolean, voided boolean, open_amount numeric,
               status text, days_overdue integer)
LANGUAGE sql STABLE AS $$
  WITH roots AS (
    SELECT CASE WHEN r.kind = 'credit_note' THEN r.corrects_invoice_id ELSE r.invoice_id END AS id
      FROM billing.invoices r WHERE r.invoice_id = ANY (p_ids)),
  docs AS (
    SELECT i.invoice_id, i.invoice_number, i.customer_id, i.kind, i.corrects_invoice_id,
           i.currency, i.total, (i.issued_at AT TIME ZONE 'UTC')::date AS issued_on, i.due_date,
           coalesce(sum(e.amount) FILTER (WHERE e.kind = 'payment'), 0) AS paid,
           coalesce(sum(e.amount) FILTER (WHERE e.kind = 'write_off'), 0) AS written_off,
           coalesce(sum(e.amount) FILTER (WHERE e.kind = 'refund'), 0) AS refunded,
           coalesce(bool_or(e.kind = 'sent'), false) AS sent,
           coalesce(bool_or(e.kind = 'void'), false) AS voided
      FROM billing.invoices i
      LEFT JOIN billing.invoice_events e
        ON e.invoice_id = i.invoice_id AND e.occurred_on <= p_as_of
     WHERE i.status = 'issued' AND (i.issued_at AT TIME ZONE 'UTC')::date <= p_as_of
       AND (p_ids IS NULL
            OR i.invoice_id IN (SELECT id FROM roots)
            OR (i.kind = 'credit_note' AND i.corrects_invoice_id IN (SELECT id FROM roots)))
     GROUP BY i.invoice_id),
  cn AS (
    SELECT c.invoice_id, c.corrects_invoice_id, -c.total AS credit,
           coalesce(sum(-c.total) OVER (PARTITION BY c.corrects_invoice_id ORDER BY c.invoice_id
                      ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0) AS before
      FROM docs c WHERE c.kind = 'credit_note'),
  absorbed AS (
    SELECT cn.invoice_id, cn.corrects_invoice_id,
           least(cn.credit, greatest(greatest(o.total - o.paid - o.written_off, 0) - cn.before, 0))
             AS absorbed
      FROM cn JOIN docs o ON o.invoice_id = cn.corrects_invoice_id),
  figures AS (
    SELECT d.*,
           CASE WHEN d.kind = 'credit_note' THEN coalesce(a.absorbed, 0)
                ELSE coalesce((SELECT sum(x.absorbed) FROM absorbed x
                                WHERE x.corrects_invoice_id = d.invoice_id), 0) END AS credited
      FROM docs d LEFT JOIN absorbed a ON a.invoice_id = d.invoice_id),
  opened AS (
    SELECT f.*,
           CASE WHEN f.kind = 'credit_note'
                THEN -greatest(-f.total - f.credited - f.refunded, 0)
                ELSE greatest(f.total - f.paid - f.credited - f.written_off, 0) END AS open_amount
      FROM figures f)
  SELECT o.invoice_id, o.invoice_number, o.customer_id, o.kind, o.corrects_invoice_id, o.currency,
         o.total, o.issued_on, o.due_date, o.paid, o.credited, o.written_off, o.refunded, o.sent,
         o.voided, o.open_amount,
         CASE WHEN o.voided THEN 'void'
              WHEN o.open_amount = 0 AND o.written_off > 0 THEN 'written_off'
              WHEN o.open_amount = 0 THEN 'paid'
              WHEN o.open_amount > 0 AND p_as_of > o.due_date THEN 'overdue'
              WHEN o.paid > 0 OR o.refunded > 0 OR o.credited > 0 THEN 'partially_paid'
              WHEN o.sent THEN 'sent'
              ELSE 'issued' END AS status,
         CASE WHEN o.open_amount > 0 THEN greatest(p_as_of - o.due_date, 0) ELSE 0 END AS days_overdue
    FROM opened o
   WHERE p_ids IS NULL OR o.invoice_id = ANY (p_ids)
$$;

CREATE VIEW billing.v_document_status AS
SELECT * FROM billing.document_status(current_date);

-- Accounts receivable aging, per customer and currency: open amounts of invoices and
-- corrections by days past their due date. Credit notes owed back are shown apart.
CREATE FUNCTION billing.ar_aging(p_as_of date)
RETURNS TABLE (customer_id text, currency char(3), current_amount numeric, days_1_30 numeric,
               days_31_60 numeric, days_61_90 numeric, days_over_90 numeric, total_open numeric,
               credit_owed numeric)
LANGUAGE sql STABLE AS $$
  SELECT s.customer_id, s.currency,
         coalesce(sum(s.open_amount) FILTER (WHERE s.open_amount > 0 AND s.days_overdue = 0), 0),
         coalesce(sum(s.open_amount) FILTER (WHERE s.days_overdue BETWEEN 1 AND 30), 0),
         coalesce(sum(s.open_amount) FILTER (WHERE s.days_overdue BETWEEN 31 AND 60), 0),
         coalesce(sum(s.open_amount) FILTER (WHERE s.days_overdue BETWEEN 61 AND 90), 0),
         coalesce(sum(s.open_amount) FILTER (WHERE s.days_overdue > 90), 0),
         coalesce(sum(s.open_amount) FILTER (WHERE s.open_amount > 0), 0),
         coalesce(-sum(s.open_amount) FILTER (WHERE s.open_amount < 0), 0)
    FROM billing.document_status(p_as_of) s
   WHERE s.open_amount <> 0
   GROUP BY s.customer_id, s.currency
$$;

CREATE VIEW billing.v_ar_aging AS
SELECT * FROM billing.ar_aging(current_date);

-- Payments with the document they paid (analysts).
CREATE VIEW billing.v_payments AS
SELECT p.payment_id, p.external_ref, i.invoice_number, i.customer_id, p.amount, p.currency,
       p.paid_on, p.method, p.applied, p.amount - p.applied AS to_credit, p.credit_id, p.source,
       p.recorded_at
  FROM billing.payments p JOIN billing.invoices i ON i.invoice_id = p.invoice_id;

-- ---------------------------------------------------------------------------------------------
-- 5. Privileges: the analyst reads the views and the new facts; the app appends them and may
--    set a customer's terms (customers are already updatable by it, V007).
-- ---------------------------------------------------------------------------------------------
GRANT SELECT ON billing.v_document_status, billing.v_ar_aging, billing.v_payments,
                billing.payments, billing.invoice_events, billing.dunning_notices
  TO meterflow_analyst;
GRANT EXECUTE ON FUNCTION billing.document_status(date, bigint[]), billing.ar_aging(date)
  TO meterflow_analyst;
GRANT SELECT, INSERT ON billing.payments, billing.invoice_events, billing.dunning_notices
  TO meterflow_app;
GRANT SELECT ON billing.v_document_status, billing.v_ar_aging, billing.v_payments TO meterflow_app;
