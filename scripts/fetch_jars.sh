#!/usr/bin/env bash
# Fetch the Java jars meterflow needs from Maven Central (with `mvn`), into git-ignored folders:
#
#   .local/jars/         flat folder: Flink Kafka connector, Flink JDBC connector (+ Postgres dialect),
#                        PostgreSQL JDBC driver          <- scripts/maven/flink-jars.pom.xml
#   .local/cluster-jars/ jars of the local Flink cluster itself (not of a job): the Prometheus
#                        metrics reporter    <- scripts/maven/flink-cluster-jars.pom.xml
#   .local/kafka/libs/   Kafka 4.x broker (KRaft) with its runtime dependencies and a log4j2
#                        backend, for scripts/stack.sh   <- scripts/maven/kafka-server.pom.xml
#
# Idempotent: each folder holds a stamp keyed by the sha256 of its pom; when the stamp is current
# and every jar it lists is present, nothing is run (well under a second).
# Coordinates, and why they differ from the wish list where they do, are in the poms and in
# docs/STACK.md.
#
# Env: METERFLOW_LOCAL_DIR (default <repo>/.local), MVN (default mvn).
# Exit codes: 0 ok; 1 mvn failed; 2 mvn or java missing.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LOCAL="${METERFLOW_LOCAL_DIR:-$ROOT/.local}"
MVN="${MVN:-mvn}"

log() { printf '[fetch_jars] %s\n' "$*"; }

# fetch POM DEST: copy the runtime dependencies of POM into the flat folder DEST.
fetch() {
  local pom="$1" dest="$2" stamp hash tmp
  stamp="$dest/.fetched"
  hash="$(sha256sum "$pom" | cut -d' ' -f1)"
  if [[ -f "$stamp" ]] && [[ "$(head -n1 "$stamp")" == "$hash" ]]; then
    local ok=1 jar
    while IFS= read -r jar; do
      [[ -f "$dest/$jar" ]] || { ok=0; break; }
    done < <(tail -n +2 "$stamp")
    if (( ok )); then
      log "$(basename "$pom"): up to date in ${dest#"$ROOT"/}"
      return 0
    fi
  fi
  command -v "$MVN" >/dev/null 2>&1 || { echo "fetch_jars: '$MVN' not found (apt-get install -y maven)" >&2; exit 2; }
  command -v java >/dev/null 2>&1 || { echo "fetch_jars: java not found (apt-get install -y openjdk-17-jdk-headless)" >&2; exit 2; }
  log "$(basename "$pom"): resolving with mvn into ${dest#"$ROOT"/} ..."
  mkdir -p "$(dirname "$dest")"
  tmp="$(mktemp -d "$(dirname "$dest")/.fetch.XXXXXX")"
  if ! "$MVN" -q -B -f "$pom" dependency:copy-dependencies \
        -DoutputDirectory="$tmp" -DincludeScope=runtime >"$tmp.log" 2>&1; then
    cat "$tmp.log" >&2
    rm -rf "$tmp" "$tmp.log"
    echo "fetch_jars: mvn failed for $pom" >&2
    exit 1
  fi
  rm -f "$tmp.log"
  { echo "$hash"; (cd "$tmp" && ls -1 -- *.jar); } > "$tmp/.fetched"
  # Replace the folder as a whole so no stale jar of an older pom survives.
  rm -rf "$dest.old"
  [[ -d "$dest" ]] && mv "$dest" "$dest.old"
  mv "$tmp" "$dest"
  rm -rf "$dest.old"
  log "$(basename "$pom"): $(($(wc -l < "$dest/.fetched") - 1)) jars in ${dest#"$ROOT"/}"
}

fetch "$ROOT/scripts/maven/flink-jars.pom.xml" "$LOCAL/jars"
fetch "$ROOT/scripts/maven/flink-cluster-jars.pom.xml" "$LOCAL/cluster-jars"
fetch "$ROOT/scripts/maven/kafka-server.pom.xml" "$LOCAL/kafka/libs"
