#!/usr/bin/env bash
# Runs the static checks (ruff, mypy strict: scripts/check.sh) and the whole test suite,
# installing what is missing first, in WOS_TEST_WORKERS (default 2) pytest-xdist workers, each
# test file whole in one worker. Extra arguments go to pytest (`-n 0`: one process).
set -euo pipefail
cd "$(dirname "$0")"
source scripts/venv.sh
ensure_venv requirements.txt requirements-dev.txt
scripts/check.sh
scripts/browser.sh  # Debian's chromium for the dashboard's browser test
if [ "${CI:-}" = "true" ]; then
  scripts/services.sh postgres mariadb
fi
exec .venv/bin/python -m pytest -n "${WOS_TEST_WORKERS:-2}" --dist loadfile "$@"
