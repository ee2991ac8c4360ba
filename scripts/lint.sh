#!/usr/bin/env bash
# The lint gate CI runs before the tests: ruff's lint rules and its formatter (check only) on the
# package, the built-in plugins and the scripts, then mypy on the package and the plugins (the
# public API and pyllm.types strictly), then a check that every `# noqa` and `# type: ignore`
# gives its reason on the line. Settings live in pyproject.toml ([tool.ruff], [tool.mypy]).
# Every step runs even when an earlier one fails, so one run lists all findings; the exit status
# is non-zero when any step found something.
#
#   pip install -e ".[test,lint]" && bash scripts/lint.sh
set -uo pipefail
cd "$(dirname "$0")/.."

RUFF_PATHS=(pyllm plugins scripts)
status=0

step() {
  echo "== $*"
  "$@" || status=1
}

step ruff check "${RUFF_PATHS[@]}"
step ruff format --check --output-format concise "${RUFF_PATHS[@]}"
step mypy  # files and flags from [tool.mypy]
step python scripts/check_suppressions.py "${RUFF_PATHS[@]}"  # each noqa / type: ignore says why

if [ "$status" -ne 0 ]; then
  echo "lint: findings above (ruff check --fix and ruff format fix the mechanical ones)" >&2
fi
exit "$status"
