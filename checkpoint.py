"""Training checkpoints: the one format (versioned, self-describing), saved crash-consistently, read without code.

Files in SAVE (paddle.save pickles, `.pdparams`):
    checkpoint-epoch{N}.pdparams every SAVE_FREQ epochs; the oldest pruned beyond KEEP_CHECKPOINTS
    checkpoint-best.pdparams     on a new best Acc@1
    checkpoint-latest.pdparams   after every epoch, written last: the commit point of a save
A save serialises the state once, then writes each file to a temporary name, fsyncs it, renames it into place
and fsyncs the folder: `latest` only ever refers to an epoch whose numbered and best files are already on disk.
A crash leaves at most a `.checkpoint-*.tmp<pid>` file, removed by the next run in that folder.

Each file holds (FORMAT_VERSION 2): version, epoch (epochs completed), model, model_ema (or None), optimizer,
lr_scheduler, scaler, best_acc1, best_epoch, classes, model_config and preprocess (the config keys that rebuild
the model and its eval transform, so predict/eval/export need no -cfg), config (yaml of the whole run; compared
on resume). Reading goes through weights.read_paddle_file: an allow-list unpickler, no code runs.
"""
import glob
import io
import logging
import os
import re

import paddle

from config import describe, dump_config, load_run_config
from gpu import scaler_state_to_load
from weights import WeightsError, fit_state_dict, read_paddle_file, resolve_weights_path

FORMAT_VERSION = 2
LATEST = 'checkpoint-latest.pdparams'
BEST = 'checkpoint-best.pdparams'
_PERIODIC = re.compile(r'checkpoint-epoch(\d+)\.pdparams$')
_TEMPORARY = re.compile(r'^\.checkpoint-.*\.pdparams\.tmp(\d+)$')
_REQUIRED = ('version', 'epoch', 'model', 'model_ema', 'optimizer', 'lr_scheduler', 'scaler', 'best_acc1',
             'best_epoch')

logger = logging.getLogger('pit')


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable or not a training checkpoint; the message names the file."""


class CheckpointWriteError(CheckpointError):
    """A checkpoint that cannot be written (disk full, read-only folder): the run fails, the files on disk are
    intact; the message names the file."""


# ---------------------------------------------------------------- writing

def _write_bytes(payload, path):
    """payload into path through a temporary file in the same folder (fsync, rename, fsync the folder): a crash
    leaves either the old file or the new one, never a mix."""
    folder = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(folder, f'.{os.path.basename(path)}.tmp{os.getpid()}')
    try:
        with open(tmp, 'wb') as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_folder(folder)
    except OSError as e:
        raise CheckpointWriteError(f"cannot write checkpoint '{path}': {e.strerror or e}; the files already in "
                              f"'{folder}' are intact") from e
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _fsync_folder(folder):
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def serialize(obj):
    """paddle.save bytes of obj (serialised once, written to several files)."""
    buffer = io.BytesIO()
    paddle.save(obj, buffer)
    return buffer.getvalue()


def atomic_save(obj, path):
    """paddle.save obj to path atomically (CheckpointError naming path when it cannot be written)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    _write_bytes(serialize(obj), path)


def training_state_dict(state, config, classes):
    """The checkpoint dict of a TrainState (engine.py) after state.epoch epochs."""
    return {
        'version': FORMAT_VERSION, 'epoch': state.epoch, 'model': state.model.state_dict(),
        'model_ema': state.model_ema.state_dict() if state.model_ema is not None else None,
        'optimizer': state.optimizer.state_dict(), 'lr_scheduler': state.lr_scheduler.state_dict(),
        'scaler': state.scaler.state_dict(), 'best_acc1': state.best_acc1, 'best_epoch': state.best_epoch,
        'classes': list(classes), **describe(config), 'config': dump_config(config),
    }


def save(save_dir, state, config, classes, is_best):
    """Write the numbered (every SAVE_FREQ epochs) and best (is_best) files, then latest, then prune."""
    payload = serialize(training_state_dict(state, config, classes))
    if state.epoch % config.SAVE_FREQ == 0:
        _write_bytes(payload, os.path.join(save_dir, f'checkpoint-epoch{state.epoch}.pdparams'))
    if is_best:
        _write_bytes(payload, os.path.join(save_dir, BEST))
    _write_bytes(payload, os.path.join(save_dir, LATEST))
    prune_periodic(save_dir, config.KEEP_CHECKPOINTS)


def prune_periodic(save_dir, keep):
    """Remove numbered checkpoints beyond the newest `keep` (0 keeps all)."""
    if keep <= 0:
        return
    for path in _periodic(save_dir)[keep:]:
        os.remove(path)


def remove_stale_temporaries(save_dir):
    """Delete the temporary files of saves that crashed in save_dir (their writer process is gone)."""
    removed = []
    for path in glob.glob(os.path.join(save_dir, '.checkpoint-*.tmp*')):
        match = _TEMPORARY.match(os.path.basename(path))
        if match and not _process_alive(int(match.group(1))):
            os.remove(path)
            removed.append(os.path.basename(path))
    return removed


def _process_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return pid != os.getpid()


# ---------------------------------------------------------------- reading

def load(path):
    """A training checkpoint dict of this repo (arrays as numpy); CheckpointError (one line) when it is missing,
    unreadable, refused by the allow-list, of another kind, or of a format version this code does not know."""
    path = resolve_weights_path(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint '{path}' not found")
    try:
        state = read_paddle_file(path)
    except WeightsError as e:
        raise CheckpointError(str(e)) from e
    if not isinstance(state, dict) or 'model' not in state or 'epoch' not in state:
        raise CheckpointError(f"'{path}' is not a training checkpoint of this repo (no model/epoch entries); "
                              'use -pretrained for weights only')
    version = state.get('version', 1)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(f"'{path}' has checkpoint format {version!r}, newer than this code's "
                              f'{FORMAT_VERSION}: update paddle-pit')
    missing = [key for key in _REQUIRED if key not in state and not (key == 'version' and version == 1)]
    if missing:
        raise CheckpointError(f"'{path}' lacks checkpoint entries {missing}")
    return state


def _periodic(save_dir):
    paths = [p for p in glob.glob(os.path.join(save_dir, 'checkpoint-epoch*.pdparams')) if _PERIODIC.search(p)]
    return sorted(paths, key=lambda p: int(_PERIODIC.search(p).group(1)), reverse=True)


def candidates(save_dir):
    """Checkpoint files of save_dir, newest first (latest, then numbered by epoch, then best)."""
    paths = [os.path.join(save_dir, LATEST)] + _periodic(save_dir) + [os.path.join(save_dir, BEST)]
    return [p for p in paths if os.path.isfile(p)]


def latest_path(save_dir):
    """The first checkpoint file of save_dir (None when there is none), without reading it."""
    found = candidates(save_dir)
    return found[0] if found else None


def find_resume(save_dir):
    """(path, state) of the readable checkpoint with the most completed epochs in save_dir, or (None, None)
    when the folder holds none. Unreadable files are skipped with a warning when an older readable one exists;
    when every one is unreadable, CheckpointError names them (so nothing unreadable is overwritten)."""
    best_path, best_state, errors = None, None, []
    for path in candidates(save_dir):
        try:
            state = load(path)
        except CheckpointError as e:
            errors.append(str(e))
            continue
        if best_state is None or state['epoch'] > best_state['epoch']:
            best_path, best_state = path, state
    if best_state is None and errors:
        raise CheckpointError(f"-resume auto: no checkpoint in '{save_dir}' can be read ({'; '.join(errors)}); "
                              'move them away to start from scratch')
    for error in errors:
        logger.warning(f'-resume auto: skipping {error}')
    return best_path, best_state


def restore(ckpt, state, path):
    """Load a checkpoint dict into a TrainState (model, EMA, optimizer, LR schedule, scaler, epoch, best); the
    model's keys and shapes are checked first, so a checkpoint of another variant fails before anything moves."""
    fit = fit_state_dict(ckpt['model'], state.model, from_torch=False)
    if fit.problems():
        raise CheckpointError(f"'{path}': the checkpoint's model does not fit this config: {fit.problems()}")
    state.model.set_state_dict(fit.arrays)
    if state.model_ema is not None:
        state.model_ema.set_state_dict(ckpt['model_ema'] if ckpt['model_ema'] is not None else ckpt['model'])
    state.optimizer.set_state_dict(ckpt['optimizer'])
    state.lr_scheduler.set_state_dict(ckpt['lr_scheduler'])
    scaler_state, note = scaler_state_to_load(ckpt['scaler'], state.scaler.is_enable())
    if scaler_state is not None:
        state.scaler.load_state_dict(scaler_state)
    if note:
        logger.info(f'{path}: {note}')
    state.epoch, state.best_acc1, state.best_epoch = ckpt['epoch'], ckpt['best_acc1'], ckpt['best_epoch']
    return state


def run_config_of(ckpt):
    """The config a checkpoint was trained with (None for files that do not carry one)."""
    return load_run_config(ckpt['config']) if isinstance(ckpt.get('config'), str) else None
