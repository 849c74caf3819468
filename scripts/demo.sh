#!/usr/bin/env bash
# The meterflow demo: ONE command that does all set-up on a fresh machine and runs the whole flow.
#
#   bash scripts/demo.sh            # run the demo (re-runnable: a fresh database and fresh topics per run)
#   bash scripts/demo.sh --clean    # drop every meterflow_demo_* database and delete every demo-* topic
#
# Steps: scripts/setup.sh -> scripts/stack.sh up -> a fresh database + topics for this run ->
# meterflow db migrate -> load the price book, the demo customers and the tax rates -> produce
# 20,000 synthetic events (duplicates, invalid and days-late ones) plus a small tail of late
# events (examples/demo/late-tail.jsonl) -> meterflow run metering --bounded -> what landed
# where (conservation counts, window revisions, charges with one explanation, DLQ reasons) ->
# meterflow run rerating --bounded (when that job exists) -> meterflow invoice --issue ->
# meterflow reconcile -> the invoices -> the first invoice rendered to PDF, marked sent, half of
# it paid (meterflow payments record), and the receivables aging (meterflow invoice aging).
#
# Each run uses its own database meterflow_demo_<ts> and its own topics demo-<ts>-*, passed to
# every command as METERFLOW__SECTION__KEY overrides (schemas/config.py), so runs never see each
# other's data. The stack is left running (like scripts/test.sh); stop it with
# `bash scripts/stack.sh down`.
#
# Environment (optional): DEMO_EVENTS (20000), DEMO_CUSTOMERS (10, at most 20: the ids of
# examples/demo/customers.toml), DEMO_SEED (42), and the stack's METERFLOW_KAFKA_PORT /
# METERFLOW_PG_PORT (exported to the app's settings when set).
#
# Exit status: 0 when every step passed and reconcile tied out; the failing step's status otherwise
# (a reconcile mismatch is reported after the invoices are printed, then exits 1).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export COLUMNS="${COLUMNS:-120}"   # rich tables: readable width even without a terminal

now_us() { local t="${EPOCHREALTIME/[.,]/}"; echo "$t"; }   # bash >= 5: microseconds
secs() { local us=$(( $(now_us) - $1 )); printf '%d.%d' $(( us / 1000000 )) $(( us / 100000 % 10 )); }
T_START=$(now_us)
T_STEP=$T_START
STEP=0
step() {
  if (( STEP > 0 )); then printf '    (step took %s s)\n' "$(secs "$T_STEP")"; fi
  T_STEP=$(now_us)
  STEP=$((STEP + 1))
  printf '\n\033[1m== %d. %s\033[0m\n' "$STEP" "$*"
}

# The stack's ports, when moved, are the application's too.
if [[ -n "${METERFLOW_KAFKA_PORT:-}" && -z "${METERFLOW__KAFKA__BOOTSTRAP_SERVERS:-}" ]]; then
  export METERFLOW__KAFKA__BOOTSTRAP_SERVERS="127.0.0.1:$METERFLOW_KAFKA_PORT"
fi
if [[ -n "${METERFLOW_PG_PORT:-}" && -z "${METERFLOW__POSTGRES__PORT:-}" ]]; then
  export METERFLOW__POSTGRES__PORT="$METERFLOW_PG_PORT"
fi

if [[ "${1:-}" == "--clean" ]]; then
  bash scripts/stack.sh up
  .venv/bin/python examples/demo/report.py clean
  exit 0
elif [[ $# -gt 0 ]]; then
  echo "usage: bash scripts/demo.sh [--clean]" >&2
  exit 1
fi

EVENTS="${DEMO_EVENTS:-20000}"
CUSTOMERS="${DEMO_CUSTOMERS:-10}"
SEED="${DEMO_SEED:-42}"
FILLER=21000   # see the note on the ledger writer's batches below
START="2026-11-10T00:00:00Z"   # one day of usage; days-late events (1-3 days back) stay in November
PERIOD="2026-11"

# ------------------------------------------------------------------------------------------------
step "set-up: scripts/setup.sh (venv, Python deps, connector + Kafka jars, PostgreSQL binaries)"
bash scripts/setup.sh
MF=(.venv/bin/meterflow)
PY=.venv/bin/python

step "local stack: scripts/stack.sh up (Kafka KRaft + PostgreSQL on 127.0.0.1)"
bash scripts/stack.sh up
# the stack's passwords (docs/STACK.md); a stack from before password auth has no such file
PASSFILE="${METERFLOW_STACK_DIR:-$ROOT/.local/stack}/postgres/pgpass"
[[ -z "${PGPASSFILE:-}" && -f "$PASSFILE" ]] && export PGPASSFILE="$PASSFILE"

# ------------------------------------------------------------------------------------------------
TS="$(date -u +%Y%m%d%H%M%S)_$$"
TSD="${TS//_/-}"
export METERFLOW__POSTGRES__DATABASE="meterflow_demo_$TS"
export METERFLOW__TOPICS__EVENTS="demo-$TSD-events"
export METERFLOW__TOPICS__DLQ="demo-$TSD-dlq"
export METERFLOW__TOPICS__LATE="demo-$TSD-late"
export METERFLOW__TOPICS__LEDGER="demo-$TSD-ledger"
export METERFLOW__TOPICS__DUPLICATES="demo-$TSD-duplicates"
export METERFLOW__KAFKA__CONSUMER_GROUP="demo-$TSD"
export METERFLOW__FLINK__CHECKPOINT_DIR="$ROOT/.local/demo/$TS/checkpoints"
# One partition: the arrival order is the produced order, so which events are late (and by how
# much) is the same on every run. The watermark is emitted after every event (when the config has
# that setting), so the late tail below is classified the same way on every run.
# The ledger writer folds everything it reads in one poll (up to 20,000 ledger records, one
# Postgres transaction) into ONE new revision per window; a window's first firing and its late
# re-firing only show as two revisions when they are applied in different batches, as they would
# be in a long-running job. So $FILLER events of the next day come between the 10th's stream and
# the late tail: they stand for the time that passes between a window firing and a late event.
export METERFLOW__TOPICS__PARTITIONS=1
if "$PY" -c 'import sys; from schemas.config import TimeSettings; sys.exit("watermark_emit" not in TimeSettings.model_fields)'; then
  export METERFLOW__TIME__WATERMARK_EMIT=on-event
fi

step "a fresh database and topics for this run"
echo "database  $METERFLOW__POSTGRES__DATABASE"
echo "topics    $METERFLOW__TOPICS__EVENTS, $METERFLOW__TOPICS__DLQ, $METERFLOW__TOPICS__LATE, $METERFLOW__TOPICS__LEDGER, $METERFLOW__TOPICS__DUPLICATES"
"$PY" examples/demo/report.py createdb
"$PY" examples/demo/report.py topics

step "meterflow db migrate"
"${MF[@]}" db migrate

step "reference data: price book, customers, tax rates"
"${MF[@]}" pricebook load examples/pricebooks/standard-usd.toml
"${MF[@]}" customers load examples/demo/customers.toml
"${MF[@]}" taxes load examples/taxes.toml
"${MF[@]}" pricebook quote examples/pricebooks/standard-usd.toml --meter api_calls --quantity 1234 \
  --at 2026-11-10T00:00:00Z

step "produce $EVENTS synthetic events ($CUSTOMERS customers, 1 day from $START; 2% duplicates, 1% invalid, 0.5% days late)"
"${MF[@]}" produce --count "$EVENTS" --customers "$CUSTOMERS" --seed "$SEED" --start "$START" --span 1d \
  --duplicates 0.02 --invalid 0.01 --days-late 0.005
echo "then $FILLER on-time events of the next 50 minutes (time passes: the watermark moves past the"
echo "10th, its last windows fire, and the ledger writer applies those firings):"
"${MF[@]}" produce --count "$FILLER" --customers "$CUSTOMERS" --seed "$((SEED + 1))" \
  --start 2026-11-11T00:00:00Z --span 50m
echo "then a tail that arrives after all of that (examples/demo/late-tail.jsonl): 4 events of the"
echo "10th's last hour (late, but within allowed_lateness = 1h of their window's end: new window"
echo "revisions), 1 event of 21:30 (beyond allowed lateness: the late topic), 1 duplicate"
"${MF[@]}" produce --file examples/demo/late-tail.jsonl

step "meterflow run metering --bounded (Flink mini-cluster, then the ledger writer into PostgreSQL)"
"${MF[@]}" run metering --bounded

step "what landed where: every input event accepted, duplicate, rejected or late"
"$PY" examples/demo/report.py counts

step "windows and their revisions"
"$PY" examples/demo/report.py windows

step "charges per customer, and one charge's explanation"
"$PY" examples/demo/report.py charges

step "dead letters by reason (DLQ topic, read_committed)"
"$PY" examples/demo/report.py dlq

step "events beyond allowed lateness, and re-rating"
if "${MF[@]}" run --help 2>/dev/null | grep -w rerating >/dev/null; then  # not -q: an early exit SIGPIPEs the CLI (pipefail)
  "${MF[@]}" run rerating --bounded
  "$PY" examples/demo/report.py late
  "$PY" examples/demo/report.py counts
else
  "$PY" examples/demo/report.py late
  echo "NOTE: 'meterflow run rerating' is not available in this checkout yet: the late events above"
  echo "      stay in the late topic and are not charged in this run."
fi

step "meterflow invoice --period $PERIOD --issue"
"${MF[@]}" invoice --period "$PERIOD" --issue --quiet

step "meterflow reconcile --period $PERIOD"
rec_rc=0
"${MF[@]}" reconcile --period "$PERIOD" || rec_rc=$?

step "the invoices"
OUT_DIR="$ROOT/.local/demo/$TS"
mkdir -p "$OUT_DIR"
"$PY" examples/demo/report.py invoices "$PERIOD"
"${MF[@]}" export invoices --period "$PERIOD" --format json --out "$OUT_DIR/invoices-$PERIOD.json" --quiet
echo "exported: $OUT_DIR/invoices-$PERIOD.json ($(wc -c <"$OUT_DIR/invoices-$PERIOD.json") bytes)"

step "the first invoice as a PDF, one payment, receivables aging"
read -r INV_NO INV_TOTAL INV_CUR < <("$PY" - <<'PYEOF'
from schemas.config import load_settings
from sinks.db import connect
with connect(load_settings()) as c:
    r = c.execute("SELECT invoice_number, total, currency FROM billing.invoices "
                  "WHERE status = 'issued' AND total > 0 ORDER BY invoice_number LIMIT 1").fetchone()
print(*(r if r else ("-", "0", "-")))
PYEOF
)
if [[ "$INV_NO" != "-" ]]; then
  "${MF[@]}" invoice render "$INV_NO" --format pdf --out "$OUT_DIR/$INV_NO.pdf"
  "${MF[@]}" invoice sent "$INV_NO"
  # half of it today: the invoice becomes partially_paid; the rest shows in the aging view
  HALF="$("$PY" -c "from decimal import Decimal as D; import sys; print((D(sys.argv[1]) / 2).quantize(D('0.01')))" "$INV_TOTAL")"
  "${MF[@]}" payments record --invoice "$INV_NO" --amount "$HALF" --currency "$INV_CUR" \
    --reference "demo-$TS" --method bank_transfer
  "${MF[@]}" invoice aging
else
  echo "no issued invoice with a positive total: nothing to render or pay"
fi

step "done"
echo "database $METERFLOW__POSTGRES__DATABASE on 127.0.0.1:${METERFLOW__POSTGRES__PORT:-15432} (user postgres);"
echo "explore it:  psql -h 127.0.0.1 -p ${METERFLOW__POSTGRES__PORT:-15432} -U postgres -d $METERFLOW__POSTGRES__DATABASE -c 'SELECT * FROM billing.v_invoices'"
echo "clean up all demo runs: bash scripts/demo.sh --clean"
echo "total: $(secs "$T_START") s"
if (( rec_rc != 0 )); then
  echo "demo: meterflow reconcile reported a mismatch (exit $rec_rc), see step 'meterflow reconcile'" >&2
  exit "$rec_rc"
fi
