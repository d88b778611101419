"""Training checkpoints: the one format (versioned, self-describing), saved crash-consistently, read without code.

Files in SAVE (paddle.save pickles, `.pdparams`, and one index):
    checkpoint-latest.pdparams   after every epoch, and when a run is stopped inside an epoch (a mid-epoch state)
    checkpoint-epoch{N}.pdparams every SAVE_FREQ epochs; the oldest pruned beyond KEEP_CHECKPOINTS
    checkpoint-best.pdparams     the state after the best epoch (highest Acc@1) of the run
    checkpoints.json             the index: what each of those files holds (epoch, step, best), so that -resume auto
                                 reads the one file it resumes from
A save streams the state once into a temporary file (each tensor becomes bytes only while it is written), fsyncs
it and renames it to its first name (the numbered file, else latest). Its other names (latest, best) are hard
links to that file (copies where the file system has no hard links), each made under a temporary name and renamed
into place; the folder is fsynced after each rename. Then numbered names beyond KEEP_CHECKPOINTS are removed (a
file lives on while another name holds it) and the index is rewritten the same way. So a state takes the space of
one file whatever its names, and a crash at any point leaves every name holding a whole file, old or new (at most
a `.checkpoint*.tmp<pid>` file, removed by the next run in that folder). Names share a file: replace a checkpoint
file (write a new one, then mv), never write into it.

The numbered file and latest each commit the epoch (-resume auto takes the newest readable file); best only ever
names a committed state. A kill before best is linked leaves the best epoch's state in the file the run resumes
from, and `repair_best` links best to it on resume; so after a resume, best holds the epoch recorded as best_epoch
in the resumed state.

The index describes each file by name, inode, size and mtime as the index was written. A file it does not
describe as it is on disk (a save cut short before the index was written, a file copied in, a run from before the
index) is read to learn what it holds; with no index, -resume auto reads every file as it always did.

Each file holds (FORMAT_VERSION 3): version, epoch (epochs completed), step and train_progress (batches of the next
epoch already trained and their metric sums: 0 and None at an epoch boundary), model, model_ema (or None),
optimizer, lr_scheduler, scaler, best_acc1, best_epoch, processes and total_batch (of the run that wrote it),
classes, model_config and preprocess (the config keys that rebuild the model and its eval transform, so
predict/eval/export need no -cfg), config (yaml of the whole run; compared on resume). Version 2 files are read
as epoch-boundary states. Reading goes through weights.read_paddle_file: an allow-list unpickler, no code runs.
"""
import errno
import functools
import glob
import io
import json
import logging
import os
import pickle
import re
import shutil
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
INDEX = 'checkpoints.json'
INDEX_VERSION = 1
_PERIODIC = re.compile(r'checkpoint-epoch(\d+)\.pdparams$')
_TEMPORARY = re.compile(r'^\.checkpoint.*\.tmp(\d+)$')
_REQUIRED = ('version', 'epoch', 'model', 'model_ema', 'optimizer', 'lr_scheduler', 'scaler', 'best_acc1',
             'best_epoch')
# os.link's errors where the file system (some network and FUSE mounts) has no hard links: copy instead
_NO_HARD_LINKS = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK}

logger = logging.getLogger('pit')

# What this process knows of checkpoint files, by identity (_identity: inode, size, mtime): the header (_header)
# of each file it wrote or read, and those the indexes it read record.
_known = {}


class CheckpointError(UserError):
    """A checkpoint that is missing, unreadable or not a training checkpoint; the message names the file."""


class CheckpointWriteError(RunFailed):
    """A checkpoint that cannot be written (disk full, read-only folder): the run fails, the files on disk are
    intact; the message names the file."""


# ---------------------------------------------------------------- writing

class _StreamingPickler(pickle.Pickler):
    """paddle.save's format (a Tensor pickled as a (name, ndarray) tuple) written as it goes: each tensor becomes a
    numpy array only while it is written. paddle.save's own pickler memoizes every array and its bytes until the
    end, two copies of the state in memory."""

    def reducer_override(self, obj):
        if isinstance(obj, paddle.Tensor):
            return tuple, ((obj.name, obj.numpy()),)
        return NotImplemented


def _stream(obj, f):
    """Pickle obj into the binary file f as paddle.save does (protocol 4), keeping nothing written in memory."""
    pickler = _StreamingPickler(f, protocol=4)
    pickler.fast = True  # no memo, which would keep every array alive; a checkpoint holds no cycles
    pickler.dump(obj)


def serialize(obj):
    """The bytes of a paddle.save file of obj, built in memory (for small objects: saves stream to the file)."""
    buffer = io.BytesIO()
    _stream(obj, buffer)
    return buffer.getvalue()


def _place(path, fill):
    """Give path the file that fill(temporary) makes complete and fsynced at a temporary name in path's folder:
    rename it over path, fsync the folder. A crash leaves path's old file or the new one, never a mix;
    CheckpointWriteError naming path when the disk refuses (full, read-only), the files there intact."""
    folder = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(folder, f'.{os.path.basename(path)}.tmp{os.getpid()}')
    try:
        fill(tmp)
        os.replace(tmp, path)
        _fsync(folder)
    except OSError as e:
        raise CheckpointWriteError(f"cannot write checkpoint '{path}': {e.strerror or e}; the files already in "
                                   f"'{folder}' are intact") from e
    finally:
        if os.path.lexists(tmp):
            os.remove(tmp)


def _write(path, write):
    """Write path atomically (_place): write(f) fills a new binary file, which is then fsynced."""
    def fill(tmp):
        with open(tmp, 'wb') as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
    _place(path, fill)


def _duplicate(source, path):
    """Make path name source's file, atomically (_place): a hard link (nothing written), or a copy where the file
    system has no hard links."""
    def fill(tmp):
        try:
            os.link(source, tmp)
        except OSError as e:
            if e.errno not in _NO_HARD_LINKS:
                raise
            _note_copies(os.path.dirname(os.path.abspath(path)), e.strerror)
            shutil.copyfile(source, tmp)
            _fsync(tmp)
    _place(path, fill)
    _learn(path, _header_of(source))


@functools.lru_cache(maxsize=None)
def _note_copies(folder, reason):
    """Warn once per folder that its checkpoint names are copies (the disk holds a file per name)."""
    logger.warning(f"'{folder}' takes no hard links ({reason}): checkpoint files of one state are copies")


def _fsync(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_save(obj, path):
    """paddle.save obj to path atomically (CheckpointError naming path when it cannot be written)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    _write(path, functools.partial(_stream, obj))


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
    """Save the state under its names, in this order: the numbered file (at an epoch boundary every SAVE_FREQ
    epochs), latest, best (is_best); a mid-epoch state (state.step > 0) goes to latest only. The first name gets
    the one written file, the others link to it; then numbered names are pruned and the index rewritten.
    Returns the path of latest."""
    names = [os.path.join(save_dir, LATEST)] + ([os.path.join(save_dir, BEST)] if is_best else [])
    if state.step == 0 and state.epoch % config.SAVE_FREQ == 0:
        names.insert(0, _numbered(save_dir, state.epoch))
    ckpt = training_state_dict(state, config, classes)
    _write(names[0], functools.partial(_stream, ckpt))
    _learn(names[0], _header(ckpt))
    for path in names[1:]:
        _duplicate(names[0], path)
    prune_periodic(save_dir, config.KEEP_CHECKPOINTS)
    _write_index(save_dir)
    return os.path.join(save_dir, LATEST)


def _numbered(save_dir, epoch):
    return os.path.join(save_dir, f'checkpoint-epoch{epoch}.pdparams')


def repair_best(save_dir, path, ckpt):
    """Make checkpoint-best hold the best epoch recorded in ckpt (read from path, the file a run resumes from)
    after a save was cut short, linking it to the file that holds that epoch's end state: path itself or the
    numbered file of that epoch. Returns the log line of what was done, or None when best was right."""
    best_epoch, best_path = ckpt['best_epoch'], os.path.join(save_dir, BEST)
    _read_index(save_dir)
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
    _duplicate(source, best_path)
    _write_index(save_dir)
    return f'{best_path} held {held}, not the best epoch {best_epoch} of this run (its save was cut short): ' \
           f'rewritten from {source}'


def _end_state_epoch(path):
    """The epoch of the epoch-boundary state in path, from the index when it describes the file, else read;
    None when the file is missing, unreadable or mid-epoch."""
    header = _header_of(path, read=True)
    return header['epoch'] if header is not None and not header['step'] else None


def prune_periodic(save_dir, keep):
    """Remove the names of numbered checkpoints beyond the newest `keep` (0 keeps all); a file another name
    holds (best) stays."""
    if keep <= 0:
        return
    for path in _periodic(save_dir)[keep:]:
        os.remove(path)


def remove_stale_temporaries(save_dir):
    """Delete the temporary files of saves that crashed in save_dir (their writer process is gone)."""
    removed = []
    for path in glob.glob(os.path.join(save_dir, '.checkpoint*.tmp*')):
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


# ---------------------------------------------------------------- the index

def _identity(path):
    """(inode, size, mtime in ns) of path, None when it is missing: hard links share it; a new file, a copy or a
    file written into gets another one."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


def _header(ckpt):
    """What the index records of a checkpoint dict: epoch, step (batches of the next epoch), best Acc@1 and
    its epoch."""
    return {'epoch': int(ckpt['epoch']), 'step': int(ckpt.get('step', 0)), 'best_acc1': float(ckpt['best_acc1']),
            'best_epoch': int(ckpt['best_epoch'])}


def _learn(path, header):
    """Remember header as what the file now at path holds (nothing when header is None)."""
    identity = _identity(path)
    if header is not None and identity is not None:
        _known[identity] = header


def _header_of(path, read=False):
    """The header of the file at path when this process knows it (wrote it, read it, or found it in an index
    read by _read_index); else, with read, from reading the file (None when it cannot be read); else None."""
    header = _known.get(_identity(path))
    if header is None and read:
        try:
            header = _header(load(path))
        except CheckpointError:
            return None
    return header


def _write_index(save_dir):
    """Rewrite save_dir's index (INDEX) with an entry for each checkpoint file whose header this process knows;
    a file it does not know is left out (-resume auto reads it)."""
    files = {}
    for path in candidates(save_dir):
        identity = _identity(path)
        header = _known.get(identity)
        if header is not None:
            inode, size, mtime_ns = identity
            is_best = header['step'] == 0 and header['epoch'] == header['best_epoch']
            files[os.path.basename(path)] = dict(header, is_best=is_best, size=size, mtime_ns=mtime_ns, inode=inode)
    payload = json.dumps({'version': INDEX_VERSION, 'files': files}, indent=1).encode()
    _write(os.path.join(save_dir, INDEX), lambda f: f.write(payload))


def _read_index(save_dir):
    """Learn the headers save_dir's index records, each for the file identity it records: a file that is no longer
    as the index describes it has another identity and stays unknown. An index that is missing or of another
    version teaches nothing; a damaged one, with a warning."""
    path = os.path.join(save_dir, INDEX)
    try:
        with open(path, 'rb') as f:
            index = json.load(f)
        if index.get('version') != INDEX_VERSION:
            return
        entries = {(entry['inode'], entry['size'], entry['mtime_ns']): _header(entry)
                   for entry in index['files'].values()}
    except FileNotFoundError:
        return
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        logger.warning(f"'{path}' cannot be read ({type(e).__name__}: {e}); the checkpoints it would describe are "
                       'read instead')
        return
    _known.update(entries)


# ---------------------------------------------------------------- reading

def load(path):
    """A training checkpoint dict of this repo (arrays as numpy); CheckpointError (one line) when it is missing,
    unreadable, refused by the allow-list, of another kind, or of a format version this code does not know."""
    path = resolve_weights_path(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint '{path}' not found")
    identity = _identity(path)
    try:
        state = read_paddle_file(path)
    except WeightsError as e:
        raise CheckpointError(str(e)) from e
    return checked_checkpoint(state, path, identity)


def checked_checkpoint(state, path, identity=None):
    """state, the object read from path, when it is a training checkpoint of this repo; CheckpointError (one line)
    when it is of another kind or of a format version this code does not know. With the file's identity as it was
    before the read, its header is remembered (when the file was not replaced meanwhile)."""
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
    try:
        header = _header(state)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"'{path}' has a malformed epoch, step or best entry ({e})") from e
    if identity is not None and _identity(path) == identity:  # the file was not replaced while it was read
        _learn(path, header)
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
    epoch) in save_dir, or (None, None) when the folder holds none. The files the index describes are read newest
    first until one can be read; files it does not describe are read first, each (with no index: every file).
    Unreadable files are skipped with a warning when another readable one exists; when every one is unreadable,
    CheckpointError names them (so nothing unreadable is overwritten)."""
    _read_index(save_dir)
    paths = candidates(save_dir)
    unknown = [path for path in paths if _header_of(path) is None]
    if unknown:
        logger.info(f'-resume auto: {", ".join(os.path.basename(p) for p in unknown)} in {save_dir} not described '
                    f'by {INDEX} as on disk: reading them')
    described = sorted((p for p in paths if p not in unknown), key=lambda p: progress_of(_header_of(p)),
                       reverse=True)
    best_path, best_state, errors = None, None, []
    for path in unknown + described:
        header = _header_of(path)
        if header is not None and best_state is not None and progress_of(header) <= progress_of(best_state):
            continue  # holds no more training than the state in hand (another name of its file, or older)
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


def checkpoint_files(config):
    """The most distinct checkpoint files SAVE holds between saves (the names of one state share a file): the
    numbered files kept, best unless every epoch keeps its numbered file, and latest, a file of its own after a
    stop inside an epoch (and after epochs without a numbered file)."""
    numbered = config.TRAIN.NUM_EPOCHS // config.SAVE_FREQ
    kept = min(config.KEEP_CHECKPOINTS, numbered) if config.KEEP_CHECKPOINTS else numbered
    every_epoch_kept = kept == config.TRAIN.NUM_EPOCHS
    return kept + (0 if every_epoch_kept else 1) + 1


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
