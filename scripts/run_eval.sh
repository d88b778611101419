#!/usr/bin/env sh
# Acc@1 / Acc@5 of weights on the val set, one GPU (or the CPU).
# PRETRAINED: a checkpoint of this repo or converted official weights (tools/convert_weights.py); both describe
# their model and preprocessing, so CFG is optional (given, it must agree with the weights' model).
# Extra arguments are passed on, e.g. -ema (the checkpoint's EMA weights) or -opts DATA.CROP_PCT 0.9.
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-$(command -v python || command -v python3)}
DATA_PATH=${DATA_PATH:-/dataset/imagenet}
BATCH_SIZE=${BATCH_SIZE:-256}
PRETRAINED=${PRETRAINED:-./output/pit_ti_730}
SAVE_PATH=${SAVE_PATH:-./output/eval}
exec "$PYTHON" "$ROOT/main_single_gpu.py" \
    ${CFG:+-cfg "$CFG"} \
    -batch_size "$BATCH_SIZE" \
    -data_path "$DATA_PATH" \
    -save_path "$SAVE_PATH" \
    -eval \
    -pretrained "$PRETRAINED" "$@"
