#!/usr/bin/env bash
# Starts the Workflow Orchestration Service on its embedded defaults (API + worker + Prefect),
# creating the virtual environment and installing requirements.txt when missing or changed.
set -euo pipefail
cd "$(dirname "$0")"
source scripts/venv.sh
ensure_venv requirements.txt
exec .venv/bin/python start_service.py "$@"
