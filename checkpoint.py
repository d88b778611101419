"""Training checkpoints: one self-describing file per save, written atomically, found again by `-resume auto`.

Files in SAVE (all `.pdparams`, readable by `paddle.load`, `weights.load_pretrained` and predict.py):
    checkpoint-latest.pdparams   after every epoch
    checkpoint-best.pdparams     on a new best Acc@1
    checkpoint-epoch{N}.pdparams every SAVE_FREQ epochs; the oldest pruned beyond KEEP_CHECKPOINTS
Each holds: model, model_ema (or None), optimizer, lr_scheduler, scaler, epoch (epochs completed),
best_acc1, best_epoch, rng (python/numpy/paddle states at save time), classes, config (yaml text), version.
"""
import glob
import logging
import os
import random
import re

import numpy as np
import paddle

FORMAT_VERSION = 1
LATEST = 'checkpoint-latest.pdparams'
BEST = 'checkpoint-best.pdparams'
_PERIODIC = re.compile(r'checkpoint-epoch(\d+)\.pdparams$')

logger = logging.getLogger('pit')


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable or not a training checkpoint; the message names the file."""


def rng_state():
    return {'python': random.getstate(), 'numpy': np.random.get_state(), 'paddle': paddle.get_rng_state()}


def atomic_save(obj, path):
    """paddle.save to a temp file in the same folder, fsync, then rename: a crash leaves the old file intact."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f'.{os.path.basename(path)}.tmp{os.getpid()}')
    try:
        paddle.save(obj, tmp)
        with open(tmp, 'rb') as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def load_checkpoint(path):
    """Load a training checkpoint dict; CheckpointError (one line) if missing, corrupt or of another kind."""
    if not os.path.isfile(path) and os.path.isfile(path + '.pdparams'):
        path = path + '.pdparams'
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint '{path}' not found")
    try:
        state = paddle.load(path)
    except Exception as e:  # paddle raises several types for truncated/garbled pickles
        raise CheckpointError(f"checkpoint '{path}' is unreadable ({type(e).__name__}: {e})".replace('\n', ' '))
    if not isinstance(state, dict) or 'model' not in state or 'epoch' not in state:
        raise CheckpointError(f"'{path}' is not a training checkpoint of this repo (no model/epoch entries); "
                              'use -pretrained for weights only')
    return state


def _candidates(save_dir):
    """Checkpoint files of save_dir, newest first (latest, then numbered by epoch, then best)."""
    periodic = sorted(glob.glob(os.path.join(save_dir, 'checkpoint-epoch*.pdparams')),
                      key=lambda p: int(_PERIODIC.search(p).group(1)) if _PERIODIC.search(p) else -1,
                      reverse=True)
    paths = [os.path.join(save_dir, LATEST)] + periodic + [os.path.join(save_dir, BEST)]
    return [p for p in paths if os.path.isfile(p)]


def find_resume_checkpoint(save_dir):
    """(path, state) of the valid checkpoint with the most completed epochs in save_dir, or (None, None).

    Unreadable files (a crash mid-write of an older paddle.save, a truncated copy) are skipped with a warning.
    """
    best_path, best_state = None, None
    for path in _candidates(save_dir):
        try:
            state = load_checkpoint(path)
        except CheckpointError as e:
            logger.warning(f'skipping {e}')
            continue
        if best_state is None or state['epoch'] > best_state['epoch']:
            best_path, best_state = path, state
    return best_path, best_state


def prune_periodic(save_dir, keep):
    """Remove numbered checkpoints beyond the newest `keep` (0 keeps all)."""
    if keep <= 0:
        return
    periodic = [p for p in _candidates(save_dir) if _PERIODIC.search(p)]
    for path in periodic[keep:]:
        os.remove(path)


def save_training_state(save_dir, state, is_best, periodic, keep):
    """Write latest (and best / numbered when asked) atomically, then prune old numbered ones."""
    atomic_save(state, os.path.join(save_dir, LATEST))
    if is_best:
        atomic_save(state, os.path.join(save_dir, BEST))
    if periodic:
        atomic_save(state, os.path.join(save_dir, f"checkpoint-epoch{state['epoch']}.pdparams"))
        prune_periodic(save_dir, keep)
