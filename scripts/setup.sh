#!/usr/bin/env bash
# Everything meterflow needs on a fresh Debian 12 machine; idempotent and fast when warm.
#   1. .venv with python3.11 (created if missing)
#   2. pip install -e '.[test]'  (skipped while .venv/.meterflow-installed matches pyproject.toml's hash)
#   3. scripts/fetch_jars.sh     (Flink connector jars, the local Flink cluster's Prometheus reporter,
#                                 Kafka broker jars, from Maven Central)
#   4. PostgreSQL server binaries (apt-get install -y postgresql when pg_ctl/initdb are missing)
#   5. Java (clear error when missing; the Kafka broker and Flink need a JDK/JRE 17)
#   6. pango, a font and poppler-utils (apt) for invoice PDFs (WeasyPrint) and their tests
# Env: PYTHON (default python3.11).
# Exit codes: 0 ok; 2 a prerequisite is missing and cannot be installed here; other: the failing step.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3.11}"

log() { printf '[setup] %s\n' "$*"; }
die() { local c="$1"; shift; printf 'setup: %s\n' "$*" >&2; exit "$c"; }

as_root() {
  if [[ "$(id -u)" == 0 ]]; then "$@"
  elif command -v sudo >/dev/null 2>&1; then sudo "$@"
  else die 2 "need root to run: $*"; fi
}
APT_UPDATED=0
apt_install() {
  command -v apt-get >/dev/null 2>&1 || die 2 "apt-get not found; install manually: $*"
  if (( ! APT_UPDATED )); then
    log "apt-get update"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    APT_UPDATED=1
  fi
  log "apt-get install -y $*"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# 5 first: fail fast with a clear message.
if ! command -v java >/dev/null 2>&1; then
  die 2 "java not found on PATH. Install a Java 17 runtime, e.g. apt-get install -y openjdk-17-jdk-headless"
fi
log "java: $(java -version 2>&1 | head -n1)"
if ! command -v mvn >/dev/null 2>&1; then
  apt_install maven
fi

# 1. venv
if [[ ! -x .venv/bin/python ]]; then
  command -v "$PY" >/dev/null 2>&1 || die 2 "$PY not found (the project needs Python 3.11)"
  log "creating .venv with $PY"
  "$PY" -m venv .venv
fi

# 2. editable install, keyed by pyproject.toml's hash
stamp=.venv/.meterflow-installed
hash="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$hash" ]]; then
  log "python deps: up to date (pyproject.toml unchanged)"
else
  log "python deps: pip install -e '.[test]'"
  .venv/bin/python -m pip install -q -e '.[test]'
  echo "$hash" >"$stamp"
fi

# 3. jars
scripts/fetch_jars.sh

# 4. Postgres binaries
pg_bin="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1 || true)"
if [[ -z "$pg_bin" || ! -x "$pg_bin/pg_ctl" || ! -x "$pg_bin/initdb" ]] \
   && ! { command -v pg_ctl && command -v initdb; } >/dev/null 2>&1; then
  apt_install postgresql
  # The Debian package creates and starts a default cluster on port 5432; meterflow does not
  # use it (scripts/stack.sh runs its own cluster), so leave it as the package set it up.
  pg_bin="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1 || true)"
fi
log "postgres binaries: ${pg_bin:-$(dirname "$(command -v pg_ctl)")}"
for tool in runuser setsid flock; do
  command -v "$tool" >/dev/null 2>&1 || apt_install util-linux
done

# 6. documents: WeasyPrint lays out with pango (libpango/libpangoft2) and a font; the document
#    tests read PDFs back with poppler-utils (pdftotext, pdftoppm)
if ! { ldconfig -p | grep -q 'libpangoft2-1.0.so.0'; } || ! { ldconfig -p | grep -q 'libharfbuzz-subset.so.0'; } \
   || ! command -v pdftotext >/dev/null 2>&1 \
   || ! command -v pdftoppm >/dev/null 2>&1 || ! ls /usr/share/fonts/truetype/dejavu >/dev/null 2>&1; then
  apt_install libpango-1.0-0 libpangoft2-1.0-0 libharfbuzz-subset0 fonts-dejavu-core poppler-utils
fi
log "ready"
