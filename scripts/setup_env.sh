#!/usr/bin/env bash
# Create ./.venv (if missing) and install requirements.txt plus the extra requirement files given as arguments.
# GPU: PADDLE_PACKAGE=paddlepaddle-gpu==3.3.1 bash scripts/setup_env.sh  (with the index of your CUDA version)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
reqs=(-r requirements.txt)
for extra in "$@"; do reqs+=(-r "$extra"); done
if [ -n "${PADDLE_PACKAGE:-}" ]; then
    .venv/bin/python -m pip install -q "$PADDLE_PACKAGE"
    grep -v '^paddlepaddle' requirements.txt > .venv/requirements-no-paddle.txt
    reqs=(-r .venv/requirements-no-paddle.txt "${reqs[@]:2}")
fi
.venv/bin/python -m pip install -q "${reqs[@]}"
