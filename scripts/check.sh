#!/usr/bin/env bash
# Static checks: ruff lint, ruff format (check only) and mypy strict on the product code
# (pyproject.toml says which files). Installs what is missing first, like test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/venv.sh
ensure_venv requirements.txt requirements-dev.txt
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
