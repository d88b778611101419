#!/usr/bin/env sh
# Train on NGPUS GPUs of this node (4xV100: batch 256 per GPU = 1024 total, LR scaled to 1e-3).
# Re-running the same command continues from the last checkpoint (-resume auto).
# Multi-node: see README ("Multi-node"), python -m paddle.distributed.launch --nnodes ... main_multi_gpu.py ...
CFG=${CFG:-./configs/pit_ti.yaml}
DATA_PATH=${DATA_PATH:-/dataset/imagenet}
BATCH_SIZE=${BATCH_SIZE:-256}
NGPUS=${NGPUS:-4}
SAVE_PATH=${SAVE_PATH:-./output/train}
python main_multi_gpu.py \
    -cfg "$CFG" \
    -dataset imagenet2012 \
    -batch_size "$BATCH_SIZE" \
    -data_path "$DATA_PATH" \
    -ngpus "$NGPUS" \
    -save_path "$SAVE_PATH" \
    -resume auto \
    -amp "$@"
