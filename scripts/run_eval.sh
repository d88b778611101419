#!/usr/bin/env sh
# Acc@1 / Acc@5 of weights on the val set, one GPU (or the CPU).
# PRETRAINED: converted official weights (tools/convert_weights.py) or a checkpoint of this repo.
CFG=${CFG:-./configs/pit_ti.yaml}
DATA_PATH=${DATA_PATH:-/dataset/imagenet}
BATCH_SIZE=${BATCH_SIZE:-256}
PRETRAINED=${PRETRAINED:-./output/pit_ti_730}
SAVE_PATH=${SAVE_PATH:-./output/eval}
python main_single_gpu.py \
    -cfg "$CFG" \
    -dataset imagenet2012 \
    -batch_size "$BATCH_SIZE" \
    -data_path "$DATA_PATH" \
    -save_path "$SAVE_PATH" \
    -eval \
    -pretrained "$PRETRAINED" "$@"
