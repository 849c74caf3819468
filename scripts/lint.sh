#!/usr/bin/env bash
# The static checks scripts/test.sh runs before pytest (so CI runs them too); also on its own:
#   scripts/lint.sh          ruff check (pyproject [tool.ruff]) and mypy (pyproject [tool.mypy]:
#                            strict on pricing/ schemas/ billing/, checked on jobs/ sinks/
#                            operators/ cli/)
# Both run even when the first has findings, so one run shows everything. Exit 0 clean, 1 findings,
# 2 the tools are missing (run scripts/setup.sh: it installs the test extra that pins them).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

for tool in ruff mypy; do
  if [[ ! -x ".venv/bin/$tool" ]]; then
    echo "lint.sh: .venv/bin/$tool is missing; run scripts/setup.sh" >&2
    exit 2
  fi
done

rc=0
echo "[lint] ruff check"
.venv/bin/ruff check . || rc=1
echo "[lint] mypy"
.venv/bin/mypy || rc=1
if (( rc != 0 )); then
  echo "lint.sh: findings above (ruff: \`.venv/bin/ruff check --fix\` fixes the [*] ones)" >&2
fi
exit "$rc"
