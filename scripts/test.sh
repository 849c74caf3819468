#!/usr/bin/env bash
# Runs the whole test suite against the real local stack:
#   scripts/setup.sh  ->  scripts/stack.sh up  ->  .venv/bin/python -m pytest tests "$@"
# Exits with pytest's exit code, except that "no tests collected" (pytest's 5) is a failure too.
# The stack (Kafka + Postgres) is left RUNNING afterwards on purpose: the next run (or the
# developer's `meterflow stack status`) reuses it and starts in well under a second.
# Stop it with `scripts/stack.sh down`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

scripts/setup.sh
scripts/stack.sh up
# The stack is up now: tests that need it must fail, not skip, when it is unreachable.
export METERFLOW_REQUIRE_STACK="${METERFLOW_REQUIRE_STACK:-1}"

rc=0
.venv/bin/python -m pytest tests "$@" || rc=$?
if (( rc == 5 )); then
  echo "test.sh: pytest collected no tests; treating that as a failure" >&2
fi
exit "$rc"
