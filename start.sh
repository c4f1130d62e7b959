#!/usr/bin/env bash
# Starts the Workflow Orchestration Service on its embedded defaults (API + worker + Prefect),
# or one part with --role api|worker|prefect (README, Deploying), creating the virtual
# environment and installing requirements.txt when missing or changed.
set -euo pipefail
cd "$(dirname "$0")"
source scripts/venv.sh
ensure_venv requirements.txt
exec .venv/bin/python start_service.py "$@"
