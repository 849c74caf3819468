#!/usr/bin/env bash
# meterflow local dev/test stack: one Kafka (KRaft, combined broker+controller) and one
# PostgreSQL, both on 127.0.0.1 only, data under $METERFLOW_STACK_DIR. Tests and
# `meterflow stack ...` use this script. See docs/STACK.md.
#
# Usage: scripts/stack.sh up|down|status
#   up      start what is not running (idempotent), wait until Kafka answers and the topics exist
#           and until Postgres answers, the roles meterflow_owner / meterflow_app /
#           meterflow_analyst and database `billing` exist
#
# Postgres authentication (docs/STACK.md): a new stack is initialized with scram-sha-256 for
# every connection (socket and TCP), never trust. The superuser `postgres` gets a random
# password, kept with any generated role password in the libpq password file
# <stack>/postgres/pgpass (mode 0600, never committed): `export PGPASSFILE=<that file>`.
# The app and owner roles take their passwords from METERFLOW__POSTGRES__PASSWORD and
# METERFLOW__POSTGRES__MIGRATION_PASSWORD when set at their creation; else random ones go to the
# same file. Existing passwords are never changed. A stack initialized before (trust auth) keeps
# its pg_hba.conf; `up` warns about it.
#   down    stop what this stack started: Kafka by its recorded pid, Postgres via pg_ctl stop -m fast
#   status  one line per server; non-zero exit if any is stopped
#
# Environment (defaults):
#   METERFLOW_STACK_DIR              <repo>/.local/stack
#   METERFLOW_KAFKA_PORT             19092   (broker, PLAINTEXT, 127.0.0.1)
#   METERFLOW_KAFKA_CONTROLLER_PORT  19093   (KRaft controller, 127.0.0.1)
#   METERFLOW_PG_PORT                15432   (127.0.0.1; unix socket in <stack>/postgres/run)
#   METERFLOW_TOPIC_PARTITIONS       4
#   METERFLOW_TOPIC_EVENTS           usage-events
#   METERFLOW_TOPIC_DLQ              usage-events-dlq
#   METERFLOW_TOPIC_LATE             usage-events-late
#   METERFLOW_STACK_TIMEOUT          90      (seconds, for `up` to see both servers answer)
#   METERFLOW_KAFKA_HEAP             512m
#   METERFLOW_KAFKA_LIBS             <repo>/.local/kafka/libs   (scripts/fetch_jars.sh fills it)
#   METERFLOW_PYTHON                 <repo>/.venv/bin/python    (kafka-python, for topics)
#   METERFLOW_PG_BIN                 directory with pg_ctl/initdb (default: newest
#                                    /usr/lib/postgresql/*/bin, else from PATH)
#
# Exit codes:
#   0  ok (status: all servers running)
#   1  usage error
#   2  a prerequisite is missing (java, Kafka jars, Postgres binaries, the venv's python)
#   3  status: at least one server is stopped
#   4  a port this stack needs is already taken by another process
#   5  a server did not come up (died or timed out); its log path and last lines are printed
#   6  down could not stop a server
#   7  up: a server of this stack dir already runs on another port than the one asked for
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STACK_DIR="${METERFLOW_STACK_DIR:-$ROOT/.local/stack}"
KAFKA_PORT="${METERFLOW_KAFKA_PORT:-19092}"
CTRL_PORT="${METERFLOW_KAFKA_CONTROLLER_PORT:-19093}"
PG_PORT="${METERFLOW_PG_PORT:-15432}"
PARTITIONS="${METERFLOW_TOPIC_PARTITIONS:-4}"
TOPIC_EVENTS="${METERFLOW_TOPIC_EVENTS:-usage-events}"
TOPIC_DLQ="${METERFLOW_TOPIC_DLQ:-usage-events-dlq}"
TOPIC_LATE="${METERFLOW_TOPIC_LATE:-usage-events-late}"
TIMEOUT="${METERFLOW_STACK_TIMEOUT:-90}"
KAFKA_HEAP="${METERFLOW_KAFKA_HEAP:-512m}"
KAFKA_LIBS="${METERFLOW_KAFKA_LIBS:-$ROOT/.local/kafka/libs}"
PYTHON="${METERFLOW_PYTHON:-$ROOT/.venv/bin/python}"

KAFKA_DIR="$STACK_DIR/kafka"
KAFKA_DATA="$KAFKA_DIR/data"
KAFKA_PID_FILE="$KAFKA_DIR/kafka.pid"
KAFKA_PROPS="$KAFKA_DIR/server.properties"
KAFKA_LOG="$KAFKA_DIR/logs/server.log"
KAFKA_OUT="$KAFKA_DIR/logs/kafka.out"
PG_DIR="$STACK_DIR/postgres"
PG_DATA="$PG_DIR/data"
PG_RUN="$PG_DIR/run"
PG_LOG="$PG_DIR/log/postgres.log"
PG_PASSFILE="$PG_DIR/pgpass"
PG_DB="billing"

log() { printf '[stack] %s\n' "$*" >&2; }
die() { local code="$1"; shift; printf 'stack: %s\n' "$*" >&2; exit "$code"; }

for v in KAFKA_PORT CTRL_PORT PG_PORT PARTITIONS TIMEOUT; do
  [[ "${!v}" =~ ^[0-9]+$ ]] || die 1 "$v must be a number, got '${!v}'"
done

show_log() {  # show_log NAME FILE...
  local name="$1" f; shift
  for f in "$@"; do
    [[ -s "$f" ]] || continue
    printf 'stack: %s log: %s (last lines below)\n' "$name" "$f" >&2
    tail -n 25 "$f" | sed 's/^/    /' >&2
  done
}

# ---------------------------------------------------------------- Postgres helpers

find_pg_bin() {
  if [[ -n "${METERFLOW_PG_BIN:-}" ]]; then echo "$METERFLOW_PG_BIN"; return; fi
  local d
  d="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1 || true)"
  if [[ -n "$d" && -x "$d/pg_ctl" ]]; then echo "$d"; return; fi
  d="$(command -v pg_ctl 2>/dev/null || true)"
  [[ -n "$d" ]] && dirname "$d"
}
PG_BIN="$(find_pg_bin || true)"

# Postgres refuses to run as root: as root, run its tools as the `postgres` system user.
as_pg() {
  if [[ "$(id -u)" == 0 ]]; then
    (cd / && runuser -u postgres -- "$@" 9>&-)
  else
    (cd / && "$@" 9>&-)
  fi
}

need_pg() {
  [[ -n "$PG_BIN" && -x "$PG_BIN/pg_ctl" && -x "$PG_BIN/initdb" ]] \
    || die 2 "PostgreSQL binaries (pg_ctl, initdb) not found; run scripts/setup.sh (apt-get install -y postgresql)"
}

pg_running() {  # pg_ctl status exits 0 when the server in PG_DATA runs
  [[ -n "$PG_BIN" && -f "$PG_DATA/postmaster.pid" ]] || return 1
  as_pg "$PG_BIN/pg_ctl" status -D "$PG_DATA" >/dev/null 2>&1
}

pg_pid() { head -n1 "$PG_DATA/postmaster.pid" 2>/dev/null || true; }
pg_recorded_port() { sed -n 4p "$PG_DATA/postmaster.pid" 2>/dev/null || true; }

# ---------------------------------------------------------------- Kafka helpers

kafka_pid() { cat "$KAFKA_PID_FILE" 2>/dev/null || true; }

kafka_running() {  # the recorded pid is alive AND is our broker (guards against pid reuse)
  local pid; pid="$(kafka_pid)"
  [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "kafka.Kafka $KAFKA_PROPS"
}

kafka_recorded_port() { sed -n 's/^meterflow.broker.port=//p' "$KAFKA_DIR/ports" 2>/dev/null || true; }

need_java() {
  command -v java >/dev/null 2>&1 \
    || die 2 "java not found on PATH; install a JDK 17 (apt-get install -y openjdk-17-jre-headless)"
  compgen -G "$KAFKA_LIBS/kafka_2.13-*.jar" >/dev/null \
    || die 2 "Kafka jars missing in $KAFKA_LIBS; run scripts/fetch_jars.sh (or scripts/setup.sh)"
}

need_python() {
  [[ -x "$PYTHON" ]] || die 2 "python with kafka-python not found at $PYTHON; run scripts/setup.sh"
}

port_free() {  # bind test the way the servers bind (SO_REUSEADDR, 127.0.0.1)
  "$PYTHON" - "$1" <<'PY'
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
try:
    s.bind(("127.0.0.1", int(sys.argv[1])))
except OSError:
    sys.exit(1)
finally:
    s.close()
PY
}

check_port() {  # check_port PORT WHAT
  port_free "$1" || die 4 "port $1 on 127.0.0.1 ($2) is already taken by another process; \
stop it or choose another port (see docs/STACK.md for the METERFLOW_*_PORT variables)"
}

write_kafka_config() {
  mkdir -p "$KAFKA_DATA" "$KAFKA_DIR/logs"
  cat >"$KAFKA_PROPS.tmp" <<EOF
# Generated by scripts/stack.sh on every start; edit the script or the env vars, not this file.
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:$CTRL_PORT
listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$CTRL_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$KAFKA_DATA
num.partitions=$PARTITIONS
default.replication.factor=1
min.insync.replicas=1
auto.create.topics.enable=true
# single node: internal topics with one replica and few partitions (fast first use)
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=4
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
# Flink's KafkaSink (exactly-once) defaults transaction.timeout.ms to 1 h; allow it.
transaction.max.timeout.ms=3600000
log.retention.hours=168
num.network.threads=2
num.io.threads=4
num.recovery.threads.per.data.dir=1
EOF
  mv "$KAFKA_PROPS.tmp" "$KAFKA_PROPS"
  cat >"$KAFKA_DIR/log4j2.properties" <<EOF
# Generated by scripts/stack.sh.
status = warn
appender.file.type = RollingFile
appender.file.name = FILE
appender.file.fileName = $KAFKA_LOG
appender.file.filePattern = $KAFKA_LOG.%i
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
appender.file.policies.type = Policies
appender.file.policies.size.type = SizeBasedTriggeringPolicy
appender.file.policies.size.size = 20MB
appender.file.strategy.type = DefaultRolloverStrategy
appender.file.strategy.max = 3
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = FILE
logger.kafka-request.name = kafka.request.logger
logger.kafka-request.level = WARN
logger.state-change.name = state.change.logger
logger.state-change.level = WARN
EOF
}

kafka_java() {  # kafka_java MAINCLASS ARGS... (foreground)
  java -Xmx"$KAFKA_HEAP" -Xms128m -XX:+UseG1GC -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$KAFKA_DIR/log4j2.properties" -Dkafka.logs.dir="$KAFKA_DIR/logs" \
    -cp "$KAFKA_LIBS/*" "$@"
}

kafka_format_once() {
  [[ -f "$KAFKA_DATA/meta.properties" ]] && return 0
  local id
  if [[ -s "$KAFKA_DIR/cluster.id" ]]; then
    id="$(cat "$KAFKA_DIR/cluster.id")"
  else  # a Kafka cluster id: 16 random bytes, url-safe base64 without padding
    id="$(head -c16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')"
    echo "$id" >"$KAFKA_DIR/cluster.id"
  fi
  log "kafka: formatting storage in $KAFKA_DATA (cluster id $id)"
  if ! kafka_java kafka.tools.StorageTool format --standalone -t "$id" -c "$KAFKA_PROPS" \
        >"$KAFKA_DIR/logs/format.out" 2>&1; then
    show_log kafka "$KAFKA_DIR/logs/format.out"
    die 5 "kafka storage format failed"
  fi
}

kafka_start() {
  # Ports may differ from the previous start (the single voter re-registers its new controller
  # endpoint by itself); they were checked in cmd_up.
  write_kafka_config
  kafka_format_once
  log "kafka: starting on 127.0.0.1:$KAFKA_PORT (controller $CTRL_PORT), log $KAFKA_LOG"
  : >"$KAFKA_OUT"
  # setsid: detach from the caller's session/terminal so the broker outlives it.
  setsid java -Xmx"$KAFKA_HEAP" -Xms128m -XX:+UseG1GC -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$KAFKA_DIR/log4j2.properties" -Dkafka.logs.dir="$KAFKA_DIR/logs" \
    -cp "$KAFKA_LIBS/*" kafka.Kafka "$KAFKA_PROPS" >>"$KAFKA_OUT" 2>&1 </dev/null 9>&- &
  echo $! >"$KAFKA_PID_FILE"
  printf 'meterflow.broker.port=%s\nmeterflow.controller.port=%s\n' "$KAFKA_PORT" "$CTRL_PORT" \
    >"$KAFKA_DIR/ports"
}

# Wait until the broker answers, create missing topics, wait until they have leaders.
kafka_wait_and_topics() {
  local deadline="$1" rc=0
  "$PYTHON" - "127.0.0.1:$KAFKA_PORT" "$(kafka_pid)" "$deadline" "$PARTITIONS" \
      "$TOPIC_EVENTS" "$TOPIC_DLQ" "$TOPIC_LATE" <<'PY' || rc=$?
import logging, os, socket, sys, time
logging.disable(logging.CRITICAL)
from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import TopicAlreadyExistsError

bootstrap, pid, deadline, partitions = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
topics = sys.argv[5:]

def alive():
    if not pid:
        return True
    try:
        os.kill(int(pid), 0)
        return True
    except OSError:
        return False

last = None
admin = None
while time.time() < deadline:
    if not alive():
        print(f"stack: kafka process {pid} exited", file=sys.stderr)
        sys.exit(5)
    try:
        if admin is None:
            # A cheap TCP probe first: the admin client blocks for a long time (and backs off)
            # when nothing listens yet.
            host, port = bootstrap.rsplit(":", 1)
            socket.create_connection((host, int(port)), timeout=1).close()
            admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="meterflow-stack",
                                     request_timeout_ms=5000, reconnect_backoff_max_ms=500)
        existing = set(admin.list_topics())
        missing = [t for t in topics if t not in existing]
        if missing:
            try:
                admin.create_topics([NewTopic(t, partitions, 1) for t in missing])
                print(f"[stack] kafka: created topics {', '.join(missing)} "
                      f"({partitions} partitions)", file=sys.stderr)
            except TopicAlreadyExistsError:
                pass
        described = admin.describe_topics(topics)
        ok = all(d.get("error_code", 0) == 0 and d.get("partitions")
                 and all(p.get("leader_id", -1) >= 0 for p in d["partitions"]) for d in described)
        if ok and len(described) == len(topics):
            sys.exit(0)
        last = f"topics not ready: {described}"
    except Exception as e:  # broker not up yet
        last = f"{type(e).__name__}: {e}"
        if admin is not None and not isinstance(e, OSError):
            try:
                admin.close()
            except Exception:
                pass
            admin = None
    time.sleep(0.3)
print(f"stack: kafka did not answer in time ({str(last)[:300]})", file=sys.stderr)
sys.exit(5)
PY
  return "$rc"
}

ensure_pg_user() {
  [[ "$(id -u)" == 0 ]] || return 0
  id postgres >/dev/null 2>&1 && return 0
  log "postgres: creating system user 'postgres'"
  useradd --system --user-group --no-create-home --home-dir /nonexistent \
    --shell /usr/sbin/nologin postgres
}

pg_start() {
  ensure_pg_user
  mkdir -p "$PG_DIR" "$PG_RUN" "$(dirname "$PG_LOG")"
  if [[ "$(id -u)" == 0 ]]; then
    chown postgres: "$PG_DIR" "$PG_RUN" "$(dirname "$PG_LOG")"
    [[ -d "$PG_DATA" ]] && chown -R postgres: "$PG_DATA"
    as_pg test -x "$PG_DIR" || die 2 "user postgres cannot reach $PG_DIR (a parent directory \
is not world-searchable); use a METERFLOW_STACK_DIR whose parents are mode 755"
  fi
  if [[ ! -f "$PG_DATA/PG_VERSION" ]]; then
    log "postgres: initdb in $PG_DATA (UTF8, scram-sha-256 auth; superuser password in $PG_PASSFILE)"
    rm -rf "$PG_DATA"
    [[ "$(id -u)" == 0 ]] && install -d -o postgres -g postgres -m 700 "$PG_DATA"
    # The superuser's password: random, handed to initdb in a file only it can read, and kept
    # in the stack's libpq password file (this stack's only copy).
    local pw pwfile="$PG_DIR/.initdb-pw"
    pw="$(head -c 24 /dev/urandom | base64 | tr -d '/+=\n')"
    rm -f "$PG_PASSFILE"
    (umask 077 && printf '*:*:*:postgres:%s\n' "$pw" >"$PG_PASSFILE")
    (umask 077 && printf '%s\n' "$pw" >"$pwfile")
    [[ "$(id -u)" == 0 ]] && chown postgres: "$pwfile"
    if ! as_pg "$PG_BIN/initdb" -D "$PG_DATA" -U postgres -E UTF8 --locale=C.UTF-8 \
          --auth-local=scram-sha-256 --auth-host=scram-sha-256 --pwfile="$pwfile" \
          >"$PG_DIR/log/initdb.out" 2>&1; then
      rm -f "$pwfile"
      show_log postgres "$PG_DIR/log/initdb.out"
      die 5 "initdb failed"
    fi
    rm -f "$pwfile"
    echo "include_if_exists = 'meterflow.conf'" | as_pg tee -a "$PG_DATA/postgresql.conf" >/dev/null
  fi
  as_pg tee "$PG_DATA/meterflow.conf" >/dev/null <<EOF
# Generated by scripts/stack.sh on every start.
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$PG_RUN'
max_connections = 100
shared_buffers = 256MB
fsync = on
logging_collector = off
log_timezone = 'UTC'
timezone = 'UTC'
EOF
  log "postgres: starting on 127.0.0.1:$PG_PORT, log $PG_LOG"
  local left=$(( deadline_s - $(date +%s) )); (( left < 1 )) && left=1
  if ! as_pg "$PG_BIN/pg_ctl" start -D "$PG_DATA" -l "$PG_LOG" -w -t "$left" >/dev/null 2>&1; then
    show_log postgres "$PG_LOG"
    die 5 "postgres did not start within ${TIMEOUT}s"
  fi
}

pg_wait_and_db() {
  local port; port="$(pg_recorded_port)"; port="${port:-$PG_PORT}"
  while ! "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$port" -U postgres -d postgres; do
    if (( $(date +%s) >= deadline_s )); then
      show_log postgres "$PG_LOG"
      die 5 "postgres on 127.0.0.1:$port did not answer within ${TIMEOUT}s"
    fi
    sleep 0.2
  done
  # Roles and database (sinks/db.py bootstrap_roles): as the superuser, with the password file
  # of a password-auth stack; a trust stack (initialized before) needs none.
  local passfile_env=()
  if [[ -f "$PG_PASSFILE" ]]; then
    passfile_env=(PGPASSFILE="$PG_PASSFILE" METERFLOW_PASSFILE="$PG_PASSFILE")
  elif grep -qE '^[^#]*\btrust\b' "$PG_DATA/pg_hba.conf" 2>/dev/null \
       || [[ ! -r "$PG_DATA/pg_hba.conf" ]]; then
    log "postgres: WARNING this stack was initialized with trust auth (any local user may connect as \
the superuser); to get password auth, recreate it: scripts/stack.sh down; rm -rf $PG_DIR"
  fi
  env "${passfile_env[@]}" PGHOST=127.0.0.1 PGPORT="$port" PGUSER=postgres PGDATABASE=postgres \
    METERFLOW_DATABASE="$PG_DB" PYTHONPATH="$ROOT" \
    "$PYTHON" -c 'import sys; from sinks.db import bootstrap_main; sys.exit(bootstrap_main())' \
    2> >(sed 's/^/[stack] /' >&2) || die 5 "could not create the roles and database $PG_DB (see above)"
}

# ---------------------------------------------------------------- commands
# Note: fd 9 holds the stack lock (see the bottom); every server we start gets it closed
# (`9>&-`), otherwise the long-lived servers would keep the lock forever.

cmd_up() {
  local t0; t0="$(date +%s%N)"
  deadline_s=$(( $(date +%s) + TIMEOUT ))
  need_python
  local start_kafka=0 start_pg=0
  if kafka_running; then log "kafka: already running (pid $(kafka_pid))"; else start_kafka=1; fi
  if pg_running; then log "postgres: already running (pid $(pg_pid))"; else start_pg=1; fi
  # A running server keeps its port: asked for another one, waiting for it would only time out.
  local rp
  rp="$(kafka_recorded_port)"
  if (( ! start_kafka )) && [[ -n "$rp" && "$rp" != "$KAFKA_PORT" ]]; then
    die 7 "the stack in $STACK_DIR already runs kafka on port $rp, not METERFLOW_KAFKA_PORT=$KAFKA_PORT; \
use it (METERFLOW_KAFKA_PORT=$rp), stop it (stack.sh down), or use another METERFLOW_STACK_DIR"
  fi
  rp="$(pg_recorded_port)"
  if (( ! start_pg )) && [[ -n "$rp" && "$rp" != "$PG_PORT" ]]; then
    die 7 "the stack in $STACK_DIR already runs postgres on port $rp, not METERFLOW_PG_PORT=$PG_PORT; \
use it (METERFLOW_PG_PORT=$rp), stop it (stack.sh down), or use another METERFLOW_STACK_DIR"
  fi
  # Check every prerequisite and port before starting anything, so a failure leaves nothing behind.
  if (( start_kafka )); then
    need_java
    check_port "$KAFKA_PORT" "Kafka broker, METERFLOW_KAFKA_PORT"
    check_port "$CTRL_PORT" "Kafka controller, METERFLOW_KAFKA_CONTROLLER_PORT"
  fi
  if (( start_pg )); then
    need_pg
    check_port "$PG_PORT" "PostgreSQL, METERFLOW_PG_PORT"
  fi
  (( start_kafka )) && kafka_start
  (( start_pg )) && pg_start
  pg_wait_and_db
  local rc=0
  kafka_wait_and_topics "$deadline_s" || rc=$?
  if (( rc != 0 )); then
    show_log kafka "$KAFKA_LOG" "$KAFKA_OUT"
    die 5 "kafka did not come up on 127.0.0.1:$KAFKA_PORT within ${TIMEOUT}s"
  fi
  local ms=$(( ($(date +%s%N) - t0) / 1000000 ))
  printf '[stack] up in %d.%ds: kafka 127.0.0.1:%s (pid %s), postgres 127.0.0.1:%s db %s (pid %s)\n' \
    "$((ms / 1000))" "$((ms % 1000 / 100))" \
    "$(kafka_recorded_port)" "$(kafka_pid)" "$(pg_recorded_port)" "$PG_DB" "$(pg_pid)" >&2
  [[ -f "$PG_PASSFILE" ]] && printf '[stack] postgres passwords: export PGPASSFILE=%s\n' "$PG_PASSFILE" >&2
  return 0
}

cmd_down() {
  local failed=0
  if kafka_running; then
    local pid; pid="$(kafka_pid)"
    log "kafka: stopping pid $pid"
    kill -TERM "$pid" 2>/dev/null || true
    local i
    for ((i = 0; i < 300; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
      log "kafka: pid $pid still alive after 30s, sending KILL"
      kill -KILL "$pid" 2>/dev/null || true
      sleep 0.5
      kill -0 "$pid" 2>/dev/null && { log "kafka: could not stop pid $pid"; failed=1; }
    fi
  else
    log "kafka: not running"
  fi
  (( failed )) || rm -f "$KAFKA_PID_FILE"
  if pg_running; then
    log "postgres: stopping (pg_ctl stop -m fast, pid $(pg_pid))"
    as_pg "$PG_BIN/pg_ctl" stop -D "$PG_DATA" -m fast -w -t 60 >/dev/null \
      || { log "postgres: pg_ctl stop failed"; failed=1; }
  else
    log "postgres: not running"
  fi
  (( failed )) && exit 6
  return 0
}

cmd_status() {
  local stopped=0 port
  port="$(kafka_recorded_port)"; port="${port:-$KAFKA_PORT}"
  if kafka_running; then
    echo "kafka: running pid=$(kafka_pid) port=$port log=$KAFKA_LOG"
  else
    echo "kafka: stopped port=$port log=$KAFKA_LOG"; stopped=1
  fi
  port="$(pg_recorded_port)"; port="${port:-$PG_PORT}"
  if pg_running; then
    echo "postgres: running pid=$(pg_pid) port=$port db=$PG_DB log=$PG_LOG"
  else
    echo "postgres: stopped port=$port log=$PG_LOG"; stopped=1
  fi
  (( stopped )) && exit 3
  return 0
}

[[ $# -eq 1 ]] || die 1 "usage: $0 up|down|status"
mkdir -p "$STACK_DIR"
case "$1" in
  up|down)
    # one up/down at a time per stack dir (tests and the CLI may race)
    exec 9>"$STACK_DIR/.lock"
    flock -w "$((TIMEOUT + 30))" 9 || die 5 "another stack.sh holds $STACK_DIR/.lock"
    "cmd_$1" ;;
  status) cmd_status ;;
  *) die 1 "usage: $0 up|down|status" ;;
esac
