#!/usr/bin/env sh
# Acc@1 / Acc@5 on NGPUS GPUs; every val image is counted exactly once, so the figure equals the 1-GPU one.
CFG=${CFG:-./configs/pit_ti.yaml}
DATA_PATH=${DATA_PATH:-/dataset/imagenet}
BATCH_SIZE=${BATCH_SIZE:-256}
NGPUS=${NGPUS:-4}
PRETRAINED=${PRETRAINED:-./output/pit_ti_730}
SAVE_PATH=${SAVE_PATH:-./output/eval}
python main_multi_gpu.py \
    -cfg "$CFG" \
    -dataset imagenet2012 \
    -batch_size "$BATCH_SIZE" \
    -data_path "$DATA_PATH" \
    -ngpus "$NGPUS" \
    -save_path "$SAVE_PATH" \
    -eval \
    -pretrained "$PRETRAINED" "$@"
