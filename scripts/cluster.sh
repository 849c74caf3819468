#!/usr/bin/env bash
# A local standalone Flink cluster (one JobManager + one TaskManager) from the Flink distribution
# inside the apache-flink wheel (.venv/lib/python3.11/site-packages/pyflink/{bin,conf,lib,opt}).
# `meterflow cluster up|down|status|flink` calls this script. See docs/OPERATIONS.md.
#
# Usage: scripts/cluster.sh up|down|status|flink ARGS...
#   up      write the cluster's conf and lib under $METERFLOW_CLUSTER_DIR, start what is not running
#           (idempotent), wait until the REST API shows the TaskManager with its slots
#   down    stop the JobManager and TaskManager by their recorded pids (Flink's own daemon scripts)
#   status  one line per process and the REST address; exit 3 when something is stopped
#   flink   run the distribution's `flink` CLI against this cluster (its conf dir), e.g.
#           scripts/cluster.sh flink run -py jobs/flink/metering.py -pyfs jobs,operators,pricing,schemas,sinks
#
# Nothing is written into the venv or /tmp: conf, lib, plugins, logs, pid files, temp dirs,
# checkpoints and savepoints all live under $METERFLOW_CLUSTER_DIR.
#
# Why a private lib/: the wheel's lib/ lacks flink-python (it sits in opt/). With flink-python only
# on the job's pipeline.jars, the first PyFlink job on a TaskManager runs, and every later one
# crash-loops with `NoSuchFieldException: loadedLibraryNames at pemja.utils.CommonUtils.loadLibrary`
# (pemja's native library is loaded once per JVM, by the first job's class loader). In the
# cluster's lib/ it is loaded once, by the parent class loader, for every job.
#
# Environment (defaults):
#   METERFLOW_CLUSTER_DIR            <repo>/.local/cluster
#   METERFLOW_CLUSTER_REST_PORT      18081  (web UI / REST API, 127.0.0.1)
#   METERFLOW_CLUSTER_RPC_PORT       16123  (JobManager RPC)
#   METERFLOW_CLUSTER_BLOB_PORT      16124
#   METERFLOW_CLUSTER_TM_RPC_PORT    16125
#   METERFLOW_CLUSTER_TM_DATA_PORT   16126
#   METERFLOW_CLUSTER_PROM_PORTS     19249-19250  (Prometheus reporter: one port each, JM and TM)
#   METERFLOW_CLUSTER_SLOTS          2
#   METERFLOW_CLUSTER_STATE_BACKEND  rocksdb  (state.backend.type, cluster level)
#   METERFLOW_CLUSTER_TIMEOUT        90     (seconds, for `up` to see the TaskManager registered)
#   METERFLOW_CLUSTER_JARS           <repo>/.local/cluster-jars  (scripts/fetch_jars.sh fills it)
#   METERFLOW_PYTHON                 <repo>/.venv/bin/python     (python.executable of the cluster)
# `up` rewrites the conf from these on every start (a running cluster keeps what it started with).
#
# Exit codes: 0 ok; 1 usage error; 2 a prerequisite is missing; 3 status: something is stopped;
# 4 a port is taken by another process; 5 the cluster did not come up (log tail printed);
# 6 down could not stop a process.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CLUSTER_DIR="${METERFLOW_CLUSTER_DIR:-$ROOT/.local/cluster}"
REST_PORT="${METERFLOW_CLUSTER_REST_PORT:-18081}"
RPC_PORT="${METERFLOW_CLUSTER_RPC_PORT:-16123}"
BLOB_PORT="${METERFLOW_CLUSTER_BLOB_PORT:-16124}"
TM_RPC_PORT="${METERFLOW_CLUSTER_TM_RPC_PORT:-16125}"
TM_DATA_PORT="${METERFLOW_CLUSTER_TM_DATA_PORT:-16126}"
PROM_PORTS="${METERFLOW_CLUSTER_PROM_PORTS:-19249-19250}"
SLOTS="${METERFLOW_CLUSTER_SLOTS:-2}"
STATE_BACKEND="${METERFLOW_CLUSTER_STATE_BACKEND:-rocksdb}"
TIMEOUT="${METERFLOW_CLUSTER_TIMEOUT:-90}"
CLUSTER_JARS="${METERFLOW_CLUSTER_JARS:-$ROOT/.local/cluster-jars}"
PYTHON="${METERFLOW_PYTHON:-$ROOT/.venv/bin/python}"

log() { printf '[cluster] %s\n' "$*" >&2; }
die() { local code="$1"; shift; printf 'cluster: %s\n' "$*" >&2; exit "$code"; }

for v in REST_PORT RPC_PORT BLOB_PORT TM_RPC_PORT TM_DATA_PORT SLOTS TIMEOUT; do
  [[ "${!v}" =~ ^[0-9]+$ ]] || die 1 "METERFLOW_CLUSTER_$v must be a number, got '${!v}'"
done
[[ "$PROM_PORTS" =~ ^[0-9]+(-[0-9]+)?$ ]] || die 1 "METERFLOW_CLUSTER_PROM_PORTS must be N or N-M, got '$PROM_PORTS'"
[[ "$STATE_BACKEND" =~ ^(hashmap|rocksdb|forst)$ ]] \
  || die 1 "METERFLOW_CLUSTER_STATE_BACKEND must be hashmap, rocksdb or forst, got '$STATE_BACKEND'"

CONF="$CLUSTER_DIR/conf"
LIB="$CLUSTER_DIR/lib"
PLUGINS="$CLUSTER_DIR/plugins"
LOGS="$CLUSTER_DIR/log"
PIDS="$CLUSTER_DIR/pid"
TMP="$CLUSTER_DIR/tmp"

pyflink_home() {
  [[ -x "$PYTHON" ]] || die 2 "python not found at $PYTHON (run scripts/setup.sh)"
  local home
  home="$("$PYTHON" -c 'import os, pyflink; print(os.path.dirname(pyflink.__file__))' 2>/dev/null)" \
    || die 2 "apache-flink is not installed in $PYTHON's environment (run scripts/setup.sh)"
  [[ -x "$home/bin/flink" && -d "$home/lib" && -d "$home/opt" ]] || die 2 "no Flink distribution in $home"
  printf '%s' "$home"
}

# The distribution's scripts find FLINK_HOME with `python` (bin/find_flink_home.py) and honour
# FLINK_CONF_DIR / FLINK_LIB_DIR / FLINK_PLUGINS_DIR / FLINK_LOG_DIR / FLINK_PID_DIR.
flink_env() {
  FLINK_HOME="$(pyflink_home)"
  export FLINK_HOME
  export PATH="$(dirname "$PYTHON"):$PATH"
  export FLINK_CONF_DIR="$CONF" FLINK_LIB_DIR="$LIB" FLINK_PLUGINS_DIR="$PLUGINS"
  export FLINK_LOG_DIR="$LOGS" FLINK_PID_DIR="$PIDS" FLINK_OPT_DIR="$FLINK_HOME/opt"
  # Thread mode runs Python inside the TaskManager's JVM: it must find the venv's packages.
  local site
  site="$("$PYTHON" -c 'import site; print(":".join(site.getsitepackages()))')"
  export PYTHONPATH="$site:$ROOT${PYTHONPATH:+:$PYTHONPATH}"
}

rest_get() {  # rest_get PATH -> body on stdout, non-zero when the REST API does not answer
  "$PYTHON" - "$REST_PORT" "$1" <<'PY'
import sys, urllib.request
try:
    with urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}{sys.argv[2]}", timeout=3) as r:
        sys.stdout.write(r.read().decode())
except Exception:
    sys.exit(1)
PY
}

pid_alive() {  # pid_alive ROLE: the recorded pid of the Flink daemon ROLE runs
  local f pid
  for f in "$PIDS"/flink-*-"$1".pid; do
    [[ -f "$f" ]] || continue
    while read -r pid; do
      [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null && return 0
    done < "$f"
  done
  return 1
}

port_taken() {
  "$PYTHON" - "$1" <<'PY'
import socket, sys
s = socket.socket()
try:
    s.bind(("127.0.0.1", int(sys.argv[1])))
except OSError:
    sys.exit(0)
finally:
    s.close()
sys.exit(1)
PY
}

write_conf() {
  local home="$1" jar
  mkdir -p "$CONF" "$LIB" "$PLUGINS" "$LOGS" "$PIDS" "$TMP" "$CLUSTER_DIR/checkpoints" "$CLUSTER_DIR/savepoints"
  cp "$home"/conf/log4j*.properties "$CONF"/
  echo "localhost:$REST_PORT" > "$CONF/masters"
  echo "localhost" > "$CONF/workers"
  # lib/: the distribution's jars plus flink-python (see the header for why), as symlinks.
  find "$LIB" -maxdepth 1 -name '*.jar' -delete
  for jar in "$home"/lib/*.jar "$home"/opt/flink-python-*.jar; do
    ln -s "$jar" "$LIB/$(basename "$jar")"
  done
  # plugins/: the Prometheus reporter (fetched from Maven Central, same Flink version).
  rm -rf "$PLUGINS/metrics-prometheus"
  mkdir -p "$PLUGINS/metrics-prometheus"
  jar="$(ls "$CLUSTER_JARS"/flink-metrics-prometheus-*.jar 2>/dev/null | head -n1 || true)"
  [[ -n "$jar" ]] || die 2 "flink-metrics-prometheus jar missing in $CLUSTER_JARS (run scripts/fetch_jars.sh)"
  cp "$jar" "$PLUGINS/metrics-prometheus/"
  local java_opts
  java_opts="$(grep -E '^\s+all: ' "$home/conf/config.yaml" | head -n1 | sed -E 's/^\s+all: //')"
  # Flat keys: Flink 2's config.yaml parser accepts them as well as nested ones.
  cat > "$CONF/config.yaml" <<EOF
# Written by scripts/cluster.sh up; rewritten on every start. Edit the script, not this file.
env.java.opts.all: $java_opts
env.pid.dir: $PIDS
env.log.dir: $LOGS
jobmanager.rpc.address: localhost
jobmanager.rpc.port: $RPC_PORT
jobmanager.bind-host: localhost
jobmanager.memory.process.size: 1024m
taskmanager.bind-host: localhost
taskmanager.host: localhost
taskmanager.rpc.port: $TM_RPC_PORT
taskmanager.data.port: $TM_DATA_PORT
taskmanager.numberOfTaskSlots: $SLOTS
taskmanager.memory.process.size: 2048m
blob.server.port: $BLOB_PORT
rest.address: localhost
rest.bind-address: localhost
rest.port: $REST_PORT
io.tmp.dirs: $TMP
web.tmpdir: $TMP
blob.storage.directory: $TMP
parallelism.default: 1
state.backend.type: $STATE_BACKEND
execution.checkpointing.dir: file://$CLUSTER_DIR/checkpoints
execution.checkpointing.savepoint-dir: file://$CLUSTER_DIR/savepoints
execution.checkpointing.externalized-checkpoint-retention: RETAIN_ON_CANCELLATION
metrics.reporter.prom.factory.class: org.apache.flink.metrics.prometheus.PrometheusReporterFactory
metrics.reporter.prom.port: $PROM_PORTS
python.executable: $PYTHON
python.client.executable: $PYTHON
EOF
}

cmd_up() {
  local home
  home="$(pyflink_home)"
  command -v java >/dev/null 2>&1 || die 2 "java not found (apt-get install -y openjdk-17-jdk-headless)"
  if pid_alive standalonesession && pid_alive taskexecutor; then
    log "already running (REST http://127.0.0.1:$REST_PORT)"
    return 0
  fi
  if ! pid_alive standalonesession; then
    local p
    for p in "$REST_PORT" "$RPC_PORT" "$BLOB_PORT" "$TM_RPC_PORT" "$TM_DATA_PORT"; do
      port_taken "$p" && die 4 "port $p is taken by another process (set METERFLOW_CLUSTER_*_PORT)"
    done
    write_conf "$home"
  fi
  flink_env
  pid_alive standalonesession || "$FLINK_HOME/bin/jobmanager.sh" start >/dev/null
  pid_alive taskexecutor || "$FLINK_HOME/bin/taskmanager.sh" start >/dev/null
  local deadline=$((SECONDS + TIMEOUT)) body
  while (( SECONDS < deadline )); do
    if body="$(rest_get /overview)" && [[ "$body" =~ \"slots-total\":([0-9]+) ]] \
        && (( BASH_REMATCH[1] >= SLOTS )); then
      log "up: REST http://127.0.0.1:$REST_PORT, $SLOTS slots, state backend $STATE_BACKEND, logs in ${LOGS#"$ROOT"/}"
      return 0
    fi
    if ! pid_alive standalonesession || ! pid_alive taskexecutor; then break; fi
    sleep 1
  done
  local f
  for f in "$LOGS"/*.log "$LOGS"/*.out; do
    [[ -s "$f" ]] || continue
    printf 'cluster: log %s (last lines):\n' "$f" >&2
    tail -n 20 "$f" | sed 's/^/    /' >&2
  done
  die 5 "the cluster did not come up within ${TIMEOUT}s"
}

cmd_down() {
  [[ -d "$PIDS" ]] || { log "not running"; return 0; }
  flink_env
  pid_alive taskexecutor && "$FLINK_HOME/bin/taskmanager.sh" stop >/dev/null || true
  pid_alive standalonesession && "$FLINK_HOME/bin/jobmanager.sh" stop >/dev/null || true
  local deadline=$((SECONDS + 30))
  while (( SECONDS < deadline )); do
    if ! pid_alive taskexecutor && ! pid_alive standalonesession; then
      log "down"
      return 0
    fi
    sleep 1
  done
  die 6 "a Flink process is still running (pid files in $PIDS)"
}

cmd_status() {
  local rc=0 role name
  for role in standalonesession taskexecutor; do
    name=$([[ $role == standalonesession ]] && echo jobmanager || echo taskmanager)
    if pid_alive "$role"; then echo "$name: running"; else echo "$name: stopped"; rc=3; fi
  done
  if rest_get /overview >/dev/null; then
    echo "rest: http://127.0.0.1:$REST_PORT"
  else
    echo "rest: not answering on 127.0.0.1:$REST_PORT"; rc=3
  fi
  return $rc
}

cmd_flink() {
  [[ -f "$CONF/config.yaml" ]] || die 2 "no cluster conf in $CONF: run \`meterflow cluster up\` first"
  flink_env
  exec "$FLINK_HOME/bin/flink" "$@"
}

case "${1:-}" in
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  flink) shift; cmd_flink "$@" ;;
  *) die 1 "usage: $0 up|down|status|flink ARGS..." ;;
esac
