#!/usr/bin/env bash
# First run on a fresh machine: set up .venv (CPU paddle), write a small real dataset in ImageNet layout
# (Fashion-MNIST from Debian's package where apt works, else scikit-learn's digits), train a small PiT through
# main_single_gpu.py, evaluate it, and classify held-out images. A few minutes on 2 CPU cores.
# GPU: PADDLE_PACKAGE=paddlepaddle-gpu==3.3.1 bash scripts/quickstart.sh
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-data/quickstart}
OUT=${OUT:-output/quickstart}
CFG=configs/quickstart.yaml

bash scripts/setup_env.sh requirements-dev.txt
PY=.venv/bin/python

if [ ! -d /usr/share/datasets/fashion-mnist ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "== installing Fashion-MNIST (Debian package dataset-fashion-mnist)"
    { apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null; } \
        || echo "   not available: using scikit-learn's digits instead"
fi
if [ ! -d "$DATA/train" ]; then
    echo "== preparing data in $DATA"
    $PY tools/prepare_data.py -dst "$DATA"
fi

echo "== training (log: $OUT/log.txt)"
$PY main_single_gpu.py -cfg $CFG -data_path "$DATA" -save_path "$OUT" -resume auto

echo "== evaluating $OUT/checkpoint-best"
$PY main_single_gpu.py -cfg $CFG -data_path "$DATA" -save_path "$OUT/eval" -eval -pretrained "$OUT/checkpoint-best" \
    2>&1 | grep -E "Eval|error"

echo "== predicting the held-out images (one per class, never seen in training; file name = true class)"
$PY predict.py -cfg $CFG -pretrained "$OUT/checkpoint-best" -img_path "$DATA/heldout" -topk 1
