#!/usr/bin/env sh
# Acc@1 / Acc@5 on NGPUS GPUs (default: all visible; CPU: 2 processes); every val image is counted exactly
# once, so the figure equals the 1-GPU one. PRETRAINED and CFG as in run_eval.sh.
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-$(command -v python || command -v python3)}
DATA_PATH=${DATA_PATH:-/dataset/imagenet}
BATCH_SIZE=${BATCH_SIZE:-256}
NGPUS=${NGPUS:--1}
PRETRAINED=${PRETRAINED:-./output/pit_ti_730}
SAVE_PATH=${SAVE_PATH:-./output/eval}
exec "$PYTHON" "$ROOT/main_multi_gpu.py" \
    ${CFG:+-cfg "$CFG"} \
    -batch_size "$BATCH_SIZE" \
    -data_path "$DATA_PATH" \
    -ngpus "$NGPUS" \
    -save_path "$SAVE_PATH" \
    -eval \
    -pretrained "$PRETRAINED" "$@"
