#!/usr/bin/env sh
# Train on one GPU (or the CPU). Re-running the same command continues from the last checkpoint.
# Override with env vars, e.g.: CFG=configs/pit_s.yaml DATA_PATH=/data/imagenet sh scripts/run_train.sh
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-$(command -v python || command -v python3)}
CFG=${CFG:-$ROOT/configs/pit_ti.yaml}
DATA_PATH=${DATA_PATH:-/dataset/imagenet}
BATCH_SIZE=${BATCH_SIZE:-256}
SAVE_PATH=${SAVE_PATH:-./output/train}
exec "$PYTHON" "$ROOT/main_single_gpu.py" \
    -cfg "$CFG" \
    -batch_size "$BATCH_SIZE" \
    -data_path "$DATA_PATH" \
    -save_path "$SAVE_PATH" \
    -resume auto \
    -amp "$@"
