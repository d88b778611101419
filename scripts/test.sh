#!/usr/bin/env bash
# Set up the environment (.venv with CPU paddle + test extras) and run the whole test suite.
# Usage: bash scripts/test.sh [extra pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh requirements-dev.txt
# pytest exits 5 when nothing was collected: `set -e` makes that a failure too.
exec .venv/bin/python -m pytest tests "$@"
