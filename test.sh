#!/usr/bin/env bash
# Runs the whole test suite, installing what is missing first. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")"
source scripts/venv.sh
ensure_venv requirements.txt requirements-dev.txt
if [ "${CI:-}" = "true" ]; then
  scripts/services.sh postgres mariadb
fi
exec .venv/bin/python -m pytest "$@"
