#!/usr/bin/env bash
# Runs the benchmark suite (bench/README.md): creates/updates .venv like ./test.sh, then
# `python -m bench.run` with the given options (e.g. --quick, --modes inline, --profile DIR).
set -euo pipefail
cd "$(dirname "$0")"
source scripts/venv.sh
ensure_venv requirements.txt requirements-dev.txt
exec .venv/bin/python -m bench.run "$@"
