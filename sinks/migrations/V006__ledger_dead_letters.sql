-- Ledger records that cannot be applied (docs/OPERATIONS.md, "Dead letters"; DESIGN.md §7: no
-- single record may stop the pipeline). The ledger writer (sinks/consumer.py, sinks/ledger.py)
-- puts a record here when it cannot be parsed or Postgres rejects it as data (e.g. a NUL
-- character, which Postgres text cannot hold), in the same transaction that stores the offsets
-- past it: a record is applied or dead-lettered, exactly once, and the rest of its batch goes on.
-- Connection errors are outages (retried), never dead letters.
CREATE TABLE billing.ledger_dead_letters (
  consumer         text NOT NULL,           -- ledger_offsets.consumer
  kafka_topic      text NOT NULL,
  kafka_partition  integer NOT NULL CHECK (kafka_partition >= 0),
  kafka_offset     bigint NOT NULL CHECK (kafka_offset >= 0),
  stage            text NOT NULL CHECK (stage IN ('parse', 'apply')),
  error            text NOT NULL,           -- the exception (class: message), at most 2,000 chars
  payload          bytea,                   -- the record's value, at most its first 8 KiB
  payload_bytes    integer NOT NULL CHECK (payload_bytes >= 0),  -- the value's full size
  record_key       bytea,                   -- at most its first 1 KiB
  created_at       timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (consumer, kafka_topic, kafka_partition, kafka_offset)
);

CREATE TRIGGER ledger_dead_letters_immutable BEFORE UPDATE OR DELETE ON billing.ledger_dead_letters
  FOR EACH ROW EXECUTE FUNCTION billing.forbid_change();
CREATE TRIGGER ledger_dead_letters_no_truncate BEFORE TRUNCATE ON billing.ledger_dead_letters
  FOR EACH STATEMENT EXECUTE FUNCTION billing.forbid_change();

GRANT SELECT ON billing.ledger_dead_letters TO meterflow_analyst;
