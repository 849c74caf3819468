-- Real-time provisional usage and spend, prepaid balances and threshold alerts (issue 16;
-- docs/ALERTS.md).

-- Optional per customer (customers file): a credit limit (how far usage may run past the
-- customer's credits) and a minimum balance. NULL = none.
ALTER TABLE billing.customers
  ADD COLUMN credit_limit    numeric(20, 6) CHECK (credit_limit >= 0),
  ADD COLUMN minimum_balance numeric(20, 6);

-- Provisional usage and spend of every (customer, meter, billing period), seconds behind the
-- stream: Rate(period) over the latest revision of each rated window and the accepted events'
-- accumulators (window_progress) of the windows not rated yet, priced by pricing.rater with the
-- customer's price book. Derived data, rewritten (upsert) in the transaction that changes the
-- period's windows; once every window is final, amount = Σ rated_charges.amount exactly.
CREATE TABLE billing.provisional_spend (
  customer_id   text NOT NULL,
  meter         text NOT NULL,
  period_start  timestamptz NOT NULL,
  currency      char(3) NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
  quantity      numeric NOT NULL,            -- Σ (sum, count) or the peak (max) of the windows
  amount        numeric NOT NULL,            -- Rate(period), unrounded
  windows       integer NOT NULL,            -- windows priced
  open_windows  integer NOT NULL,            -- of which not rated yet (accumulators only)
  as_of         timestamptz NOT NULL DEFAULT clock_timestamp(),
  PRIMARY KEY (customer_id, meter, period_start)
);
CREATE INDEX provisional_spend_customer_idx ON billing.provisional_spend (customer_id, period_start);

-- Alert rules (`meterflow alerts rules load`): the file is the whole rule set; loading replaces it.
CREATE TABLE billing.alert_rules (
  rule_id      text NOT NULL CHECK (length(rule_id) BETWEEN 1 AND 128),
  customer_id  text NOT NULL DEFAULT '',     -- '' = the default rule for every customer
  kind         text NOT NULL CHECK (kind IN ('usage', 'spend', 'balance', 'balance_percent',
                                             'credit_limit', 'minimum_balance')),
  meter        text,
  currency     char(3),
  direction    text NOT NULL CHECK (direction IN ('above', 'below')),
  levels       jsonb NOT NULL,               -- {"info": "100", "warning": "..", "critical": ".."}
  loaded_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
  PRIMARY KEY (rule_id, customer_id)
);

-- Where each (rule, customer, scope, level) stands: scope = the period start for usage and
-- spend rules, 'balance' for the balance rules. A level is "active" from its crossing until its
-- recovery; crossings counts the crossings so far (the alert ids' crossing numbers).
CREATE TABLE billing.alert_state (
  rule_id        text NOT NULL,
  customer_id    text NOT NULL,
  scope          text NOT NULL,
  level          text NOT NULL CHECK (level IN ('info', 'warning', 'critical')),
  active         boolean NOT NULL,
  crossings      integer NOT NULL CHECK (crossings >= 0),
  granted_at_fire numeric,                  -- Σ credits granted when it fired (a top-up re-arms)
  updated_at     timestamptz NOT NULL DEFAULT clock_timestamp(),
  PRIMARY KEY (rule_id, customer_id, scope, level)
);

-- Every alert, once: alert_id is deterministic (rule, customer, scope, level, crossing, status).
CREATE TABLE billing.alerts (
  alert_id     uuid PRIMARY KEY,
  rule_id      text NOT NULL,
  kind         text NOT NULL,
  customer_id  text NOT NULL,
  scope        text NOT NULL,
  period_start timestamptz,
  level        text NOT NULL,
  status       text NOT NULL CHECK (status IN ('firing', 'ok')),
  crossing     integer NOT NULL CHECK (crossing >= 1),
  direction    text NOT NULL,
  threshold    numeric NOT NULL,
  value        numeric NOT NULL,
  meter        text,
  currency     char(3),
  created_at   timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX alerts_customer_idx ON billing.alerts (customer_id, created_at);
CREATE TRIGGER alerts_immutable BEFORE UPDATE OR DELETE ON billing.alerts
  FOR EACH ROW EXECUTE FUNCTION billing.forbid_change();
CREATE TRIGGER alerts_no_truncate BEFORE TRUNCATE ON billing.alerts
  FOR EACH STATEMENT EXECUTE FUNCTION billing.forbid_change();

-- The outbox of the Kafka topic billing-alerts: written with the alert, marked published by the
-- publisher after the broker acknowledged it (at-least-once; consumers dedup by alert_id).
CREATE TABLE billing.alert_outbox (
  seq          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  alert_id     uuid NOT NULL UNIQUE REFERENCES billing.alerts,
  published_at timestamptz
);
CREATE INDEX alert_outbox_pending_idx ON billing.alert_outbox (seq) WHERE published_at IS NULL;

GRANT SELECT, INSERT, UPDATE ON billing.provisional_spend, billing.alert_state TO meterflow_app;
GRANT SELECT, INSERT, DELETE ON billing.alert_rules TO meterflow_app;
GRANT SELECT, INSERT ON billing.alerts TO meterflow_app;
GRANT SELECT, INSERT, UPDATE ON billing.alert_outbox TO meterflow_app;
GRANT SELECT ON billing.provisional_spend, billing.alerts, billing.alert_rules TO meterflow_analyst;
