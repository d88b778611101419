#!/usr/bin/env bash
# Set up one environment per supported Paddle version (CPU wheels + test extras) and run the whole test suite in
# each: Paddle 3.3.1 in .venv, Paddle 2.6.2 in .venv-paddle2.6.2. Stops at the first version that fails.
# Usage: bash scripts/test.sh [extra pytest args]        PADDLE_VERSIONS="3.3.1" bash scripts/test.sh  (one version)
set -euo pipefail
cd "$(dirname "$0")/.."
PADDLE_VERSIONS=${PADDLE_VERSIONS:-3.3.1 2.6.2}
for version in $PADDLE_VERSIONS; do
    if [ "$version" = 3.3.1 ]; then venv=.venv; else venv=.venv-paddle$version; fi
    echo "== paddle $version ($venv)"
    VENV=$venv PADDLE_PACKAGE=paddlepaddle==$version bash scripts/setup_env.sh requirements-dev.txt
    # pytest exits 5 when nothing was collected: `set -e` makes that a failure too.
    "$venv/bin/python" -m pytest tests "$@"
done
