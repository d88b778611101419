#!/usr/bin/env bash
# Set up the environment (a .venv beside the code, CPU paddle + test extras) and run the whole test suite.
# Usage: bash scripts/test.sh [extra pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -r requirements.txt -r requirements-dev.txt
# pytest exits 5 when nothing was collected: that is a failure here too.
exec .venv/bin/python -m pytest tests "$@"
