#!/usr/bin/env bash
# Runs the static checks, then the whole test suite against the real local stack:
#   scripts/setup.sh  ->  scripts/lint.sh  ->  scripts/stack.sh up  ->  .venv/bin/python -m pytest tests "$@"
# Any ruff or mypy finding fails the run before the stack starts (lint.sh's exit code). Then exits
# with pytest's exit code, except that "no tests collected" (pytest's 5) is a failure too
# (5 is non-zero, and a message says why).
#
# Locally the stack (Kafka + Postgres) is left RUNNING afterwards on purpose: the next run (or
# `meterflow stack status`) reuses it and `up` takes well under a second. Stop it with
# `scripts/stack.sh down`.
#
# With CI=true (the CI runner, in a fresh clone): unless the METERFLOW_*_PORT variables are set,
# the stack gets free ports picked now (a developer's stack from another checkout may still hold
# the default ones), the same ports are exported to the application's settings
# (METERFLOW__KAFKA__BOOTSTRAP_SERVERS, METERFLOW__POSTGRES__PORT), and the stack is stopped
# when the tests end.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

scripts/setup.sh
scripts/lint.sh

if [[ "${CI:-}" == "true" ]]; then
  free_port() { .venv/bin/python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
  export METERFLOW_KAFKA_PORT="${METERFLOW_KAFKA_PORT:-$(free_port)}"
  export METERFLOW_KAFKA_CONTROLLER_PORT="${METERFLOW_KAFKA_CONTROLLER_PORT:-$(free_port)}"
  export METERFLOW_PG_PORT="${METERFLOW_PG_PORT:-$(free_port)}"
  export METERFLOW__KAFKA__BOOTSTRAP_SERVERS="127.0.0.1:$METERFLOW_KAFKA_PORT"
  export METERFLOW__POSTGRES__PORT="$METERFLOW_PG_PORT"
  echo "[test] CI: stack on kafka 127.0.0.1:$METERFLOW_KAFKA_PORT, postgres 127.0.0.1:$METERFLOW_PG_PORT"
  trap 'scripts/stack.sh down || true' EXIT
fi

scripts/stack.sh up
# The stack is up now: tests that need it must fail, not skip, when it is unreachable.
export METERFLOW_REQUIRE_STACK="${METERFLOW_REQUIRE_STACK:-1}"

rc=0
.venv/bin/python -m pytest tests "$@" || rc=$?
if (( rc == 5 )); then
  echo "test.sh: pytest collected no tests; treating that as a failure" >&2
fi
exit "$rc"
