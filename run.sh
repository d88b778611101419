#!/usr/bin/env bash
# AI Studio script task ("bash run.sh"): unpack ImageNet from the task's mounted datasets once, then train on
# every GPU of the task, continuing an earlier task's run when its checkpoint is uploaded as a dataset.
#
# The platform: datasets are mounted read-only under DATA_ROOT as data<ID>/<file>; the output folder is packed
# into a tar.gz for download when the task ends; every task starts with an empty output folder and has a time
# limit. So a run longer than one task goes: task 1 trains into SAVE_PATH; download its output and upload
# checkpoint-latest.pdparams as a dataset; task 2 mounts it and sets RESUME_FROM to it; and so on.
#
# Environment (all optional; paths may hold spaces):
#   DATA_ROOT         mounted datasets (default /root/paddlejob/workspace/train_data/datasets)
#   DATASET_ARCHIVES  archives to unpack, one per line (default: ILSVRC2012 / ImageNet .tar/.tar.gz/.zip files
#                     under DATA_ROOT)
#   DATA_PATH         where the unpacked dataset goes (default /root/paddlejob/workspace/imagenet); an inner top
#                     folder such as Light_ILSVRC2012/ is found by itself
#   SAVE_PATH         checkpoints and logs (default /root/paddlejob/workspace/output/<config name>)
#   RESUME_FROM       a checkpoint to continue from when SAVE_PATH holds none (default: the newest
#                     checkpoint-*.pdparams among the mounted datasets, if any)
#   CFG, NGPUS (default: all visible GPUs), BATCH_SIZE, EXTRA_OPTS (e.g. "TRAIN.NUM_EPOCHS 100")
set -euo pipefail
cd "$(dirname "$0")"
WORKSPACE=${WORKSPACE:-/root/paddlejob/workspace}
DATA_ROOT=${DATA_ROOT:-$WORKSPACE/train_data/datasets}
DATA_PATH=${DATA_PATH:-$WORKSPACE/imagenet}
CFG=${CFG:-configs/pit_ti.yaml}
NGPUS=${NGPUS:--1}
BATCH_SIZE=${BATCH_SIZE:-256}
SAVE_PATH=${SAVE_PATH:-$WORKSPACE/output/$(basename "$CFG" .yaml)}
PYTHON=${PYTHON:-$(command -v python || command -v python3)}

log() { echo "[run.sh] $*"; }
die() { echo "error: $*" >&2; exit 2; }

# AI Studio images ship paddlepaddle-gpu: install only the packages that are missing
missing=""
for pair in numpy:numpy yaml:pyyaml yacs:yacs PIL:pillow; do
    "$PYTHON" -c "import ${pair%%:*}" 2>/dev/null || missing="$missing ${pair#*:}"
done
if [ -n "$missing" ]; then
    log "installing:$missing"
    "$PYTHON" -m pip install -q $missing
fi
# the image's own paddle: a supported version (2.6 or 3.x), said in one line, before any unpacking
paddle_line=$("$PYTHON" compat.py) || exit 2
log "$paddle_line"

# the dataset root: DATA_PATH itself, or one folder below it (an archive's top folder)
dataset_root() {
    local found
    found=$(find "$1" -mindepth 1 -maxdepth 3 \( -name train_list.txt -o \( -name train -type d \) \) 2>/dev/null \
            | awk -F/ '{ print NF, $0 }' | sort -n | head -n 1 | cut -d' ' -f2-)
    [ -n "$found" ] && dirname "$found"
}

# the archives to unpack: DATASET_ARCHIVES (one per line), else ImageNet archives found under DATA_ROOT
find_archives() {
    if [ -n "${DATASET_ARCHIVES:-}" ]; then
        printf '%s\n' "$DATASET_ARCHIVES"
    else
        find "$DATA_ROOT" -maxdepth 2 -type f \( -iname '*ILSVRC2012*' -o -iname '*imagenet*' \) \
             \( -name '*.tar' -o -name '*.tar.gz' -o -name '*.tgz' -o -name '*.zip' \) 2>/dev/null | sort
    fi
}

root=$(dataset_root "$DATA_PATH" || true)
if [ -z "$root" ]; then
    archives=()
    while IFS= read -r archive; do
        [ -n "$archive" ] && archives+=("$archive")
    done < <(find_archives)
    [ ${#archives[@]} -gt 0 ] || die "no dataset in '$DATA_PATH' and no ImageNet archive under '$DATA_ROOT'"
    for archive in "${archives[@]}"; do
        [ -f "$archive" ] || die "archive '$archive' not found (DATASET_ARCHIVES: one path per line)"
    done
    mkdir -p "$DATA_PATH"
    for archive in "${archives[@]}"; do
        log "unpacking $archive -> $DATA_PATH"
        case "$archive" in
            *.zip) "$PYTHON" -m zipfile -e "$archive" "$DATA_PATH" ;;
            *) tar -xf "$archive" -C "$DATA_PATH" ;;
        esac
    done
    root=$(dataset_root "$DATA_PATH" || true)
    [ -n "$root" ] || die "the archives unpacked into '$DATA_PATH' hold no train/ folder or train_list.txt"
else
    log "dataset already unpacked: $root"
fi
log "dataset: $root"

resume=(-resume auto)
if ! ls "$SAVE_PATH"/checkpoint-*.pdparams >/dev/null 2>&1; then
    RESUME_FROM=${RESUME_FROM:-$(ls -t "$DATA_ROOT"/data*/checkpoint-*.pdparams 2>/dev/null | head -n 1 || true)}
    if [ -n "${RESUME_FROM:-}" ]; then
        [ -f "$RESUME_FROM" ] || die "RESUME_FROM '$RESUME_FROM' not found"
        log "SAVE_PATH $SAVE_PATH holds no checkpoint: continuing from $RESUME_FROM"
        resume=(-resume "$RESUME_FROM")
    fi
fi

# EXTRA_OPTS: KEY VALUE pairs split on blanks, never glob-expanded (a value such as [1,1,1] is a glob pattern)
opts=()
read -r -a extra <<< "${EXTRA_OPTS:-}"
[ ${#extra[@]} -eq 0 ] || opts=(-opts "${extra[@]}")

exec "$PYTHON" main_multi_gpu.py -cfg "$CFG" -batch_size "$BATCH_SIZE" -data_path "$root" -ngpus "$NGPUS" \
    -save_path "$SAVE_PATH" "${resume[@]}" -amp ${opts[@]+"${opts[@]}"}
