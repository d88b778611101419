#!/usr/bin/env bash
# AI Studio script task: prepare ImageNet from the mounted dataset, then train on all GPUs of the task.
# A re-submitted task continues from the newest checkpoint in SAVE_PATH (-resume auto), so keep SAVE_PATH on
# persistent storage (AI Studio keeps /home/aistudio/work between runs; script tasks: use the output folder).
#
# Env overrides:
#   DATASET_ARCHIVES  archives to unpack (default: every ILSVRC2012/ImageNet tar under /home/aistudio/data)
#   DATA_PATH         where the unpacked dataset lives (class folders or *_list.txt; both work)
#   CFG, NGPUS, BATCH_SIZE, SAVE_PATH, EXTRA_OPTS (e.g. "TRAIN.NUM_EPOCHS 100")
set -euo pipefail
cd "$(dirname "$0")"
DATA_ROOT=${DATA_ROOT:-/home/aistudio/data}
DATA_PATH=${DATA_PATH:-/home/aistudio/imagenet}
CFG=${CFG:-configs/pit_ti.yaml}
NGPUS=${NGPUS:-4}
BATCH_SIZE=${BATCH_SIZE:-256}
SAVE_PATH=${SAVE_PATH:-/home/aistudio/work/output/$(basename "$CFG" .yaml)}
DATASET_ARCHIVES=${DATASET_ARCHIVES:-$(ls "$DATA_ROOT"/data*/*ILSVRC2012*.tar* "$DATA_ROOT"/data*/*[Ii]mage[Nn]et*.tar* 2>/dev/null || true)}

# AI Studio images ship paddlepaddle-gpu: add only what is missing
python -m pip install -q numpy pyyaml yacs pillow

if [ ! -e "$DATA_PATH/train" ] && [ ! -e "$DATA_PATH/train_list.txt" ]; then
    [ -n "$DATASET_ARCHIVES" ] || { echo "error: no dataset in $DATA_PATH and no archive under $DATA_ROOT" >&2; exit 2; }
    mkdir -p "$DATA_PATH"
    for archive in $DATASET_ARCHIVES; do
        echo "unpacking $archive -> $DATA_PATH"
        tar -xf "$archive" -C "$DATA_PATH"
    done
    # archives that hold one top folder (e.g. Light_ILSVRC2012/): use it as the dataset root
    inner=$(find "$DATA_PATH" -mindepth 1 -maxdepth 2 \( -name train_list.txt -o -name train -type d \) | head -n 1)
    [ -n "$inner" ] && [ "$(dirname "$inner")" != "$DATA_PATH" ] && DATA_PATH=$(dirname "$inner")
fi
echo "dataset: $DATA_PATH"

python main_multi_gpu.py -cfg "$CFG" -dataset imagenet2012 -batch_size "$BATCH_SIZE" -data_path "$DATA_PATH" \
    -ngpus "$NGPUS" -save_path "$SAVE_PATH" -resume auto -amp ${EXTRA_OPTS:+-opts $EXTRA_OPTS}
