#!/usr/bin/env sh
# Train on NGPUS GPUs of this node (default: all visible; 4xV100 at batch 256 each = 1024 total, LR scaled to
# 1e-3). On a CPU-only paddle, NGPUS CPU processes over GLOO (default 2).
# Re-running the same command continues from the last checkpoint in SAVE_PATH (-resume auto).
# Extra arguments are passed on, e.g.: sh scripts/run_train_multi.sh -opts TRAIN.NUM_EPOCHS 100
# Multi-node: see README ("Multi-node"), python -m paddle.distributed.launch --nnodes ... main_multi_gpu.py ...
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-$(command -v python || command -v python3)}
CFG=${CFG:-$ROOT/configs/pit_ti.yaml}
DATA_PATH=${DATA_PATH:-/dataset/imagenet}
BATCH_SIZE=${BATCH_SIZE:-256}
NGPUS=${NGPUS:--1}
SAVE_PATH=${SAVE_PATH:-./output/train}
exec "$PYTHON" "$ROOT/main_multi_gpu.py" \
    -cfg "$CFG" \
    -batch_size "$BATCH_SIZE" \
    -data_path "$DATA_PATH" \
    -ngpus "$NGPUS" \
    -save_path "$SAVE_PATH" \
    -resume auto \
    -amp "$@"
