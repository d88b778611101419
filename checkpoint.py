"""Training checkpoints: the one format (versioned, self-describing), saved crash-consistently, read without code.

Files in SAVE (paddle.save pickles, `.pdparams`):
    checkpoint-latest.pdparams   after every epoch, and when a run is stopped inside an epoch (a mid-epoch state)
    checkpoint-epoch{N}.pdparams every SAVE_FREQ epochs; the oldest pruned beyond KEEP_CHECKPOINTS
    checkpoint-best.pdparams     the state after the best epoch (highest Acc@1) of the run
Each file is written to a temporary name, fsynced, renamed into place and the folder fsynced, so a crash leaves
either the old file or the new one (at most a `.checkpoint-*.tmp<pid>` file, removed by the next run in that
folder). A save writes the numbered file, then latest (either one commits the epoch: -resume auto takes the
newest readable file), then best: best only ever copies a committed state. A kill before best is written leaves
the best epoch's state in the file the run resumes from, and `repair_best` rewrites best from it on resume; so
after a resume, best holds the epoch recorded as best_epoch in the resumed state.

Each file holds (FORMAT_VERSION 3): version, epoch (epochs completed), step and train_progress (batches of the next
epoch already trained and their metric sums: 0 and None at an epoch boundary), model, model_ema (or None),
optimizer, lr_scheduler, scaler, best_acc1, best_epoch, processes and total_batch (of the run that wrote it),
classes, model_config and preprocess (the config keys that rebuild the model and its eval transform, so
predict/eval/export need no -cfg), config (yaml of the whole run; compared on resume). Version 2 files are read
as epoch-boundary states. Reading goes through weights.read_paddle_file: an allow-list unpickler, no code runs.
"""
import glob
import io
import logging
import os
import re
from dataclasses import dataclass

import paddle
import paddle.distributed as dist

from config import (MODEL_KEYS, PREPROCESS_KEYS, ConfigError, contradicting_key, dump_config, get_key, load_run_config,
                    total_batch_size)
from errors import RunFailed, UserError
from gpu import scaler_state_to_load
from inference import read_imagenet_index
from pit import build_model
from utils import get_rank, get_world_size
from weights import (WeightsError, fit_state_dict, load_state, read_file, read_paddle_description, read_paddle_file,
                     resolve_weights_path)

FORMAT_VERSION = 3
LATEST = 'checkpoint-latest.pdparams'
BEST = 'checkpoint-best.pdparams'
_PERIODIC = re.compile(r'checkpoint-epoch(\d+)\.pdparams$')
_TEMPORARY = re.compile(r'^\.checkpoint-.*\.pdparams\.tmp(\d+)$')
_REQUIRED = ('version', 'epoch', 'model', 'model_ema', 'optimizer', 'lr_scheduler', 'scaler', 'best_acc1',
             'best_epoch')

logger = logging.getLogger('pit')


class CheckpointError(UserError):
    """A checkpoint that is missing, unreadable or not a training checkpoint; the message names the file."""


class CheckpointWriteError(RunFailed):
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
    """The checkpoint dict of a TrainState (engine.py) after state.epoch epochs and state.step batches."""
    return {
        'version': FORMAT_VERSION, 'epoch': state.epoch, 'step': state.step,
        'train_progress': state.progress if state.step else None, 'model': state.model.state_dict(),
        'model_ema': state.model_ema.state_dict() if state.model_ema is not None else None,
        'optimizer': state.optimizer.state_dict(), 'lr_scheduler': state.lr_scheduler.state_dict(),
        'scaler': state.scaler.state_dict(), 'best_acc1': state.best_acc1, 'best_epoch': state.best_epoch,
        'processes': get_world_size(), 'total_batch': total_batch_size(config, get_world_size()),
        'classes': list(classes), **describe(config), 'config': dump_config(config),
    }


def save(save_dir, state, config, classes, is_best=False):
    """Write the numbered file (at an epoch boundary every SAVE_FREQ epochs), latest, then best (is_best), then
    prune; returns the path of latest. A mid-epoch state (state.step > 0) goes to latest only."""
    payload = serialize(training_state_dict(state, config, classes))
    if state.step == 0 and state.epoch % config.SAVE_FREQ == 0:
        _write_bytes(payload, _numbered(save_dir, state.epoch))
    latest = os.path.join(save_dir, LATEST)
    _write_bytes(payload, latest)
    if is_best:
        _write_bytes(payload, os.path.join(save_dir, BEST))
    prune_periodic(save_dir, config.KEEP_CHECKPOINTS)
    return latest


def _numbered(save_dir, epoch):
    return os.path.join(save_dir, f'checkpoint-epoch{epoch}.pdparams')


def repair_best(save_dir, path, ckpt):
    """Make checkpoint-best hold the best epoch recorded in ckpt (read from path, the file a run resumes from)
    after a save was cut short, rewriting it from the file that holds that epoch's end state: path itself or the
    numbered file of that epoch. Returns the log line of what was done, or None when best was right."""
    best_epoch, best_path = ckpt['best_epoch'], os.path.join(save_dir, BEST)
    held = _end_state_epoch(best_path)
    if best_epoch < 1 or held == best_epoch:
        return None
    held = f'epoch {held}' if held is not None else 'no readable epoch'
    numbered = _numbered(save_dir, best_epoch)
    if progress_of(ckpt) == (best_epoch, 0):
        source = path
    elif _end_state_epoch(numbered) == best_epoch:
        source = numbered
    else:
        return (f'{best_path} holds {held}, not the best epoch {best_epoch} of this run, and no checkpoint in '
                f'{save_dir} holds that epoch any more')
    with open(source, 'rb') as f:
        _write_bytes(f.read(), best_path)
    return f'{best_path} held {held}, not the best epoch {best_epoch} of this run (its save was cut short): ' \
           f'rewritten from {source}'


def _end_state_epoch(path):
    """The epoch of the epoch-boundary state in path; None when the file is missing, unreadable or mid-epoch."""
    try:
        ckpt = load(path)
    except CheckpointError:
        return None
    return ckpt['epoch'] if not ckpt.get('step') else None


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
    return checked_checkpoint(state, path)


def checked_checkpoint(state, path):
    """state, the object read from path, when it is a training checkpoint of this repo; CheckpointError (one line)
    when it is of another kind or of a format version this code does not know."""
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
    """(path, state) of the readable checkpoint with the most training done (epochs, then batches of a stopped
    epoch) in save_dir, or (None, None)
    when the folder holds none. Unreadable files are skipped with a warning when an older readable one exists;
    when every one is unreadable, CheckpointError names them (so nothing unreadable is overwritten)."""
    best_path, best_state, errors = None, None, []
    for path in candidates(save_dir):
        try:
            state = load(path)
        except CheckpointError as e:
            errors.append(str(e))
            continue
        if best_state is None or progress_of(state) > progress_of(best_state):
            best_path, best_state = path, state
    if best_state is None and errors:
        raise CheckpointError(f"-resume auto: no checkpoint in '{save_dir}' can be read ({'; '.join(errors)}); "
                              'move them away to start from scratch')
    for error in errors:
        logger.warning(f'-resume auto: skipping {error}')
    return best_path, best_state


def progress_of(ckpt):
    """(epochs completed, batches of the next epoch done) of a checkpoint dict."""
    return ckpt['epoch'], ckpt.get('step', 0)


def restore(ckpt, state, path):
    """Load a checkpoint dict into a TrainState (model, EMA, optimizer, LR schedule, scaler, epoch and step, best); the
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
    state.step, state.progress = progress_of(ckpt)[1], ckpt.get('train_progress')
    return state


def run_config_of(ckpt):
    """The config a checkpoint was trained with (None for files that do not carry one)."""
    return load_run_config(ckpt['config']) if isinstance(ckpt.get('config'), str) else None


# ---------------------------------------------------------------- weights files of every kind: what they describe

@dataclass(frozen=True)
class WeightsFile:
    """A weights file as a command reads it, once: its path (with .pdparams added where the name lacked it) and
    what it holds (tensors as numpy arrays): a training checkpoint, converted weights (convert_weights) or any
    state dict weights.read_file reads (naver-ai/timm .pth, .safetensors). tensors False: read for what it
    describes only (read_description), its arrays left out."""
    path: str
    content: object
    tensors: bool = True

    @property
    def described(self):
        """{dotted config key: value} of the model and preprocessing the file describes ({} when it does not)."""
        return described_keys(self.content)

    @property
    def classes(self):
        """The file's class list, or None."""
        return self.content.get('classes') if isinstance(self.content, dict) else None

    def load_into(self, model, strict=True, prefer_ema=False, finetune=False):
        """Load the file's weights into model (weights.load_state); returns the LoadReport."""
        if not self.tensors:
            raise ValueError(f"'{self.path}' was read for its description only: it has no tensors to load")
        return load_state(model, self.content, self.path, strict=strict, prefer_ema=prefer_ema, finetune=finetune)


def write_weights(model, config, path, classes=None):
    """Write model's weights as converted weights to path (.pdparams added when missing), atomically: {'version',
    'model': the state dict, 'classes', 'model_config' and 'preprocess' (describe(config))}, so predict, -eval and
    export need no -cfg for them, and plain paddle users load them with
    `model.set_state_dict(paddle.load(f)['model'])`. Returns the path written."""
    path = path if path.endswith('.pdparams') else path + '.pdparams'
    atomic_save({'version': FORMAT_VERSION, 'model': model.state_dict(), 'classes': classes, **describe(config)}, path)
    return path


def convert_weights(config, src, dst, prefer_ema=False):
    """Convert the weights file src (naver-ai/timm .pth, .safetensors, a .pdparams) into converted weights at dst
    for the model of config, every key and shape checked (WeightsError naming src otherwise); 1000-class weights
    get the ImageNet-1k wnids as their class list. prefer_ema: the file's EMA weights where it holds both. Returns
    a one-line summary."""
    model = build_model(config)
    report = read_weights(src).load_into(model, prefer_ema=prefer_ema)
    classes = [wnid for wnid, _ in read_imagenet_index()] if config.MODEL.NUM_CLASSES == 1000 else None
    path = write_weights(model, config, dst, classes)
    params = sum(int(p.size) for p in model.parameters())
    return f"{report} -> '{path}' ({config.MODEL.NAME}, {params / 1e6:.2f}M params)"


def checkpoint_bytes(model, config):
    """Bytes of one checkpoint: float32 model, EMA and two optimizer moments (Adam) or one (SGD)."""
    params = sum(int(p.size) for p in model.parameters())
    moments = 1 if config.TRAIN.OPTIMIZER.NAME == 'SGD' else 2
    return params * 4 * (2 + moments if config.TRAIN.MODEL_EMA else 1 + moments)


def read_weights(path):
    """The WeightsFile at path (.pdparams optional), read once; WeightsError naming the file when it is missing,
    unreadable or refused (weights.read_file)."""
    path = resolve_weights_path(path)
    return WeightsFile(path, read_file(path))


def read_description(path):
    """The WeightsFile at path read for what it describes only (weights.read_paddle_description: its arrays are
    neither built nor checked), for a process that checks a config but loads nothing; other formats than
    .pdparams describe nothing and are not read. WeightsError naming the file when it is missing or refused."""
    path = resolve_weights_path(path)
    if not os.path.isfile(path):
        raise WeightsError(f"weights file '{path}' not found")
    return WeightsFile(path, read_paddle_description(path) if path.endswith('.pdparams') else {}, tensors=False)


def describe(config):
    """{'model_config': {...}, 'preprocess': {...}}: the dotted keys a checkpoint stores to rebuild its model
    and its eval transform (build_config(described=...) reads them back)."""
    def pick(keys):
        return {k: list(v) if isinstance(v, (list, tuple)) else v for k in keys for v in [get_key(config, k)]}
    return {'model_config': pick(MODEL_KEYS), 'preprocess': pick(PREPROCESS_KEYS)}


def described_keys(ckpt):
    """The flat {dotted key: value} that a checkpoint dict describes, or {} (files of other tools)."""
    if not isinstance(ckpt, dict):
        return {}
    out = {}
    for part in ('model_config', 'preprocess'):
        entries = ckpt.get(part)
        if isinstance(entries, dict):
            out.update({k: v for k, v in entries.items() if k in MODEL_KEYS + PREPROCESS_KEYS})
    return out


# ---------------------------------------------------------------- resuming a run, and what -eval evaluates

def eval_weights(config, tensors=True):
    """The WeightsFile -eval evaluates, read once: -pretrained, else -resume PATH, else (-resume auto) the newest
    checkpoint of SAVE (find_resume's read). tensors False: a file named by path is read for its description only
    (read_description). ConfigError when config names none."""
    read = read_weights if tensors else read_description
    if config.MODEL.PRETRAINED:
        return read(config.MODEL.PRETRAINED)
    if config.MODEL.RESUME is None:
        raise ConfigError('-eval evaluates a weights file: give -pretrained PATH, -resume PATH or -resume auto')
    if config.MODEL.RESUME != 'auto':
        return read(config.MODEL.RESUME)
    path, ckpt = find_resume(config.SAVE)
    if path is None:
        raise CheckpointError(f"-eval -resume auto: no checkpoint in '{config.SAVE}' (SAVE)")
    return WeightsFile(path, ckpt)


def guard_existing_run(config):
    """Never overwrite the checkpoints of another run: training into a SAVE that holds some needs -resume."""
    found = latest_path(config.SAVE)
    if found and not config.MODEL.RESUME:
        raise ConfigError(f"save folder '{config.SAVE}' already holds checkpoints ({os.path.basename(found)}); "
                          'add -resume auto to continue that run, or choose another -save_path')
    if get_rank() == 0:
        remove_stale_temporaries(config.SAVE)


def resume(config, state):
    """Restore everything the checkpoint of MODEL.RESUME holds into state (a path, read once, or 'auto': the one
    of SAVE with the most training done; -resume auto with an empty SAVE starts from scratch). A file that is no
    training checkpoint is resumed weights-only with TRAIN.LAST_EPOCH (resume_weights_only), else a
    CheckpointError. Logs what was resumed, the recipe keys changed since, a changed total batch, and (rank 0) a
    checkpoint-best of SAVE repaired after a save that was cut short."""
    if config.MODEL.RESUME == 'auto':
        path, ckpt = find_resume(config.SAVE)
        if ckpt is None:
            logger.info(f'-resume auto: no checkpoint in {config.SAVE} yet, starting from scratch')
            return state
    else:
        weights = read_weights(config.MODEL.RESUME)
        path = weights.path
        try:
            ckpt = checked_checkpoint(weights.content, path)
        except CheckpointError:
            if config.TRAIN.LAST_EPOCH <= 0:
                raise
            return resume_weights_only(config, state, weights)
    check_same_model(config, ckpt, path)
    restore(ckpt, state, path)
    inside = f' and {state.step} batch(es) of epoch {state.epoch + 1}' if state.step else ''
    logger.info(f'resumed from {path}: {ckpt["epoch"]} epoch(s){inside} done, best Acc@1 {ckpt["best_acc1"]:.4f}'
                + changed_keys_note(config, ckpt))
    # a checkpoint from elsewhere says nothing about SAVE's best file
    same_folder = os.path.dirname(os.path.abspath(path)) == os.path.abspath(config.SAVE)
    repaired = repair_best(config.SAVE, path, ckpt) if same_folder and get_rank() == 0 else None
    for note in (batch_change_note(config, ckpt), repaired):
        if note:
            logger.warning(note)
    return state


def batch_change_note(config, ckpt):
    """The line that says the total batch (and with it the linearly scaled LR) differs from the checkpoint's
    run, e.g. when it resumes with another number of processes; None when it does not (or the file predates
    the record)."""
    old_batch, new_batch = ckpt.get('total_batch'), total_batch_size(config, get_world_size())
    old = run_config_of(ckpt)
    if old_batch is None or old is None or old_batch == new_batch:
        return None
    old_lr, new_lr = old.TRAIN.BASE_LR, config.TRAIN.BASE_LR
    lr = f'the LR changes from {old_lr:.3e} to {new_lr:.3e}' if old_lr != new_lr else f'the LR stays {new_lr:.3e}'
    return (f'total batch {old_batch} ({ckpt.get("processes")} process(es)) in the checkpoint, {new_batch} '
            f'({get_world_size()} process(es)) now: {lr} (TRAIN.BASE_LR scaled by total batch / '
            f'TRAIN.LINEAR_SCALED_LR)')


def check_same_model(config, ckpt, path):
    """A checkpoint of another model is an error naming the first differing key (before any tensor moves)."""
    described = described_keys(ckpt)
    key = contradicting_key(config, described, [k for k in MODEL_KEYS if k != 'MODEL.NAME'])
    if key:
        raise CheckpointError(f"'{path}' holds a model with {key}={described[key]!r}, but this run "
                              f'has {key}={get_key(config, key)!r}')


def changed_keys_note(config, ckpt):
    """'; keys changed since the checkpoint: ...' for recipe keys that differ from the checkpoint's config."""
    old = run_config_of(ckpt)
    if old is None:
        return ''
    changes = []
    for key in ('TRAIN.NUM_EPOCHS', 'TRAIN.BASE_LR', 'DATA.BATCH_SIZE', 'TRAIN.ACCUM_ITER', 'TRAIN.OPTIMIZER.NAME',
                'TRAIN.WEIGHT_DECAY', 'TRAIN.WARMUP_EPOCHS', 'AUG.AUTO_AUGMENT', 'AUG.MIXUP', 'AUG.CUTMIX',
                'MODEL.DROP_PATH', 'TRAIN.MODEL_EMA_DECAY', 'SEED'):
        if get_key(old, key) != get_key(config, key):
            changes.append(f'{key} {get_key(old, key)!r} -> {get_key(config, key)!r}')
    return f'; keys changed since the checkpoint: {", ".join(changes)}' if changes else ''


def resume_weights_only(config, state, weights):
    """Seed-style resume from weights (a WeightsFile that is no training checkpoint): its weights (+ optimizer
    from PATH.pdopt if present), epoch count from -last_epoch."""
    logger.info(str(weights.load_into(state.model)))
    opt_path = os.path.splitext(weights.path)[0] + '.pdopt'
    if os.path.isfile(opt_path):
        state.optimizer.set_state_dict(read_paddle_file(opt_path))
    if state.model_ema is not None:
        state.model_ema.set_state_dict(state.model.state_dict())
    logger.info(f'resumed weights from {config.MODEL.RESUME} at epoch {config.TRAIN.LAST_EPOCH} (-last_epoch); '
                'LR schedule restarts from that epoch, best Acc@1 from 0')
    state.epoch = config.TRAIN.LAST_EPOCH
    return state


def check_ranks_agree(state, config):
    """Every process must continue from the same epoch and step (each reads SAVE itself): a multi-node run whose
    SAVE is not one shared folder would otherwise hang or train different models."""
    if get_world_size() == 1:
        return
    low = paddle.to_tensor([state.epoch, state.step], dtype='int64')
    high = paddle.to_tensor([state.epoch, state.step], dtype='int64')
    dist.all_reduce(low, op=dist.ReduceOp.MIN)
    dist.all_reduce(high, op=dist.ReduceOp.MAX)
    low, high = tuple(low.numpy().tolist()), tuple(high.numpy().tolist())
    if low != high:
        raise CheckpointError(f'the processes would continue from different points (epoch, step) {low} and {high}: '
                              f'SAVE={config.SAVE} must be one folder that every node sees (shared storage)')
