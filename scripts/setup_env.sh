#!/usr/bin/env bash
# Create a virtual environment (VENV, default ./.venv; if missing) and install requirements.txt plus the extra
# requirement files given as arguments, then check that its Paddle is a supported version (compat.py).
# GPU: PADDLE_PACKAGE=paddlepaddle-gpu==3.3.1 bash scripts/setup_env.sh  (with the index of your CUDA version)
# Paddle 2.6: VENV=.venv-paddle2.6.2 PADDLE_PACKAGE=paddlepaddle==2.6.2 bash scripts/setup_env.sh requirements-dev.txt
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip
reqs=(-r requirements.txt)
for extra in "$@"; do reqs+=(-r "$extra"); done
if [ -n "${PADDLE_PACKAGE:-}" ]; then
    "$VENV/bin/python" -m pip install -q "$PADDLE_PACKAGE"
    grep -v '^paddlepaddle' requirements.txt > "$VENV/requirements-no-paddle.txt"
    reqs=(-r "$VENV/requirements-no-paddle.txt" "${reqs[@]:2}")
    case "$PADDLE_PACKAGE" in
        *==2.*) reqs+=(-c requirements-paddle2.txt) ;;  # releases of the other packages that work beside Paddle 2.x
    esac
fi
"$VENV/bin/python" -m pip install -q "${reqs[@]}"
"$VENV/bin/python" compat.py
