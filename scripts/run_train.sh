#!/usr/bin/env sh
# Train on one GPU (or the CPU). Re-running the same command continues from the last checkpoint.
# Override with env vars, e.g.: CFG=configs/pit_s.yaml DATA_PATH=/data/imagenet sh scripts/run_train.sh
CFG=${CFG:-./configs/pit_ti.yaml}
DATA_PATH=${DATA_PATH:-/dataset/imagenet}
BATCH_SIZE=${BATCH_SIZE:-256}
SAVE_PATH=${SAVE_PATH:-./output/train}
python main_single_gpu.py \
    -cfg "$CFG" \
    -dataset imagenet2012 \
    -batch_size "$BATCH_SIZE" \
    -data_path "$DATA_PATH" \
    -save_path "$SAVE_PATH" \
    -resume auto \
    -amp "$@"
