"""Configuration: yacs defaults (the official PiT/DeiT recipe), yaml BASE chain, command-line overrides.

Every key is defined once below with a one-line comment and is read by the code it names
(tests/test_config.py enforces that). Typical use:

    config = build_config(args=args)                    # defaults, -cfg (+ its BASE chain), flags, -opts, checked
    config = build_config('configs/pit_ti.yaml', opts, world_size=4)  # ... then derived values, frozen
    config = build_config(described=weights.described, described_by=weights.path)  # a weights file's model
"""
import math
import os
import re

import yaml
from yacs.config import CfgNode as CN

from errors import UserError

_C = CN()
_C.BASE = ['']  # yaml files merged before this one, paths relative to the including file

# ---------------------------------------------------------------- data
_C.DATA = CN()
_C.DATA.BATCH_SIZE = 256  # train batch size per process (total = BATCH_SIZE * processes * ACCUM_ITER)
_C.DATA.BATCH_SIZE_EVAL = None  # eval batch size per process; None: same as BATCH_SIZE
_C.DATA.DATA_PATH = '/dataset/imagenet/'  # dataset root: {train,val}/<class>/ folders or {train,val}_list.txt
_C.DATA.LAYOUT = 'auto'  # 'auto' (detect), 'folder' (class sub-folders) or 'list' ({split}_list.txt)
_C.DATA.IMAGE_SIZE = 224  # input resolution (square)
_C.DATA.CROP_PCT = 0.875  # eval: resize short side to floor(IMAGE_SIZE / CROP_PCT), center crop (DeiT; timm: 0.9)
_C.DATA.INTERPOLATION = 'bicubic'  # resize interpolation for train crop and eval resize
_C.DATA.NUM_WORKERS = 'auto'  # DataLoader workers per training process: 'auto' (min(8, cores // local processes - 1), at least 1: datasets.num_workers) or a number (0: load in the main process)
_C.DATA.SHARED_MEMORY = 'auto'  # workers pass batches through /dev/shm: 'auto' (when it fits, gpu.py), True, False
_C.DATA.IMAGENET_MEAN = [0.485, 0.456, 0.406]  # normalisation mean (RGB, 0-1)
_C.DATA.IMAGENET_STD = [0.229, 0.224, 0.225]  # normalisation std (RGB, 0-1)
_C.DATA.SKIP_BAD_EVAL_IMAGES = False  # eval: skip undecodable images (reported) instead of failing the run
_C.DATA.REPEATED_AUG = False  # repeated-augmentation sampler (DeiT RASampler), used by the PiT-B recipe
_C.DATA.REPEATED_AUG_REPEATS = 3  # repeats of each sample per epoch with REPEATED_AUG
_C.DATA.EVAL_SET = 'imagenet'  # -eval set: 'imagenet' (val split), 'real' (val + REAL_LABELS), 'v2', 'a', 'r' (class folders under DATA_PATH)
_C.DATA.REAL_LABELS = None  # EVAL_SET real: real.json, one list of label indices per val image in sorted file name order

# ---------------------------------------------------------------- model
_C.MODEL = CN()
_C.MODEL.TYPE = 'PiT'  # model family: picks the builder (pit.MODEL_BUILDERS); PaddleViT yamls set it
_C.MODEL.NAME = 'pit_ti'  # variant name, used in logs, checkpoints and exports
_C.MODEL.RESUME = None  # checkpoint to resume training from: a path, or 'auto' (newest valid one in SAVE)
_C.MODEL.PRETRAINED = None  # weights to start from (fine-tuning/eval): pos_embed resized, new classes re-init head
_C.MODEL.EMA_WEIGHTS = False  # -pretrained / -eval: take the file's EMA weights (model_ema) when it has them
_C.MODEL.NUM_CLASSES = 1000  # classifier outputs
_C.MODEL.DISTILL = False  # distilled variant: second class token and head_dist
_C.MODEL.DROPOUT = 0.0  # dropout after pos_embed, in the MLP and after the attention projection
_C.MODEL.ATTENTION_DROPOUT = 0.0  # dropout on attention weights
_C.MODEL.DROP_PATH = 0.1  # stochastic depth: block i of N drops with DROP_PATH * i / N
_C.MODEL.TRANS = CN()
_C.MODEL.TRANS.PATCH_SIZE = 16  # patch embedding conv kernel
_C.MODEL.TRANS.STRIDE = 8  # patch embedding conv stride (overlapping patches)
_C.MODEL.TRANS.BASE_DIMS = [32, 32, 32]  # per-stage head dim; embed dim = BASE_DIMS[s] * HEADS[s]
_C.MODEL.TRANS.DEPTH = [2, 6, 4]  # transformer blocks per stage
_C.MODEL.TRANS.HEADS = [2, 4, 8]  # attention heads per stage
_C.MODEL.TRANS.MLP_RATIO = 4.0  # MLP hidden dim / embed dim

# ---------------------------------------------------------------- training
_C.TRAIN = CN()
_C.TRAIN.LAST_EPOCH = 0  # epochs already done; only for -resume of a weights-only (seed style) checkpoint
_C.TRAIN.NUM_EPOCHS = 300  # total training epochs
_C.TRAIN.WARMUP_EPOCHS = 5  # linear warmup epochs (PiT-B: 10)
_C.TRAIN.COOLDOWN_EPOCHS = 0  # epochs at END_LR after the cosine decay (inside NUM_EPOCHS)
_C.TRAIN.WEIGHT_DECAY = 0.05  # decoupled weight decay (never on 1-D params, biases, pos_embed, cls_token)
_C.TRAIN.BASE_LR = 5e-4  # learning rate for a total batch of LINEAR_SCALED_LR (scaled by finalize_config)
_C.TRAIN.WARMUP_START_LR = 1e-6  # learning rate of the first warmup epoch
_C.TRAIN.END_LR = 1e-5  # learning rate at the end of the cosine decay
_C.TRAIN.GRAD_CLIP = None  # global-norm gradient clipping threshold; None: no clipping (recipe)
_C.TRAIN.ACCUM_ITER = 1  # gradient accumulation steps per optimizer step
_C.TRAIN.LINEAR_SCALED_LR = 512  # BASE_LR is for this total batch; None: use BASE_LR as given
_C.TRAIN.SMOOTHING = 0.1  # label smoothing (folded into the mixup soft targets when mixup is on)
_C.TRAIN.DISTILLATION_TYPE = 'none'  # 'none', 'hard' (teacher argmax) or 'soft' (KL, tau^2)
_C.TRAIN.DISTILLATION_ALPHA = 0.5  # weight of the distillation loss
_C.TRAIN.DISTILLATION_TAU = 1.0  # soft distillation temperature
_C.TRAIN.TEACHER_MODEL = './regnety_160'  # teacher RegNetY-16GF weights (.pdparams, extension optional)
_C.TRAIN.MODEL_EMA = True  # keep an exponential moving average of the weights (evaluated and saved)
_C.TRAIN.MODEL_EMA_DECAY = 0.99996  # EMA decay per optimizer step

_C.TRAIN.LR_SCHEDULER = CN()
_C.TRAIN.LR_SCHEDULER.NAME = 'warmupcosine'  # 'warmupcosine' or 'multistep' (both with linear warmup)
_C.TRAIN.LR_SCHEDULER.PER_STEP = False  # update the LR every optimizer step instead of every epoch
_C.TRAIN.LR_SCHEDULER.MILESTONES = [30, 60, 90]  # multistep: epochs where the LR is multiplied by DECAY_RATE
_C.TRAIN.LR_SCHEDULER.DECAY_RATE = 0.1  # multistep: LR factor at each milestone
_C.TRAIN.LR_SCHEDULER.DEIT_LAG = True  # epoch e uses the LR of epoch e-1 (first value twice), as DeiT's loop ran

_C.TRAIN.OPTIMIZER = CN()
_C.TRAIN.OPTIMIZER.NAME = 'AdamP'  # 'AdamP' (the paper's runs), 'AdamW' (DeiT's default) or 'SGD' (momentum)
_C.TRAIN.OPTIMIZER.EPS = 1e-8  # Adam epsilon
_C.TRAIN.OPTIMIZER.BETAS = (0.9, 0.999)  # Adam betas
_C.TRAIN.OPTIMIZER.MOMENTUM = 0.9  # SGD momentum
_C.TRAIN.OPTIMIZER.NESTEROV = True  # AdamP/SGD: Nesterov momentum
_C.TRAIN.OPTIMIZER.WD_RATIO = 0.01  # AdamP: weight decay factor on the projected (scale-invariant) params
_C.TRAIN.OPTIMIZER.DELTA = 0.1  # AdamP: cosine threshold that detects scale-invariant params

# ---------------------------------------------------------------- augmentation (train only)
_C.AUG = CN()
_C.AUG.SCALE = (0.08, 1.0)  # RandomResizedCrop area range
_C.AUG.RATIO = (3.0 / 4.0, 4.0 / 3.0)  # RandomResizedCrop aspect-ratio range
_C.AUG.HFLIP = 0.5  # horizontal flip probability
_C.AUG.COLOR_JITTER = 0.4  # colour jitter strength, used only when AUTO_AUGMENT is empty
_C.AUG.AUTO_AUGMENT = 'rand-m9-mstd0.5-inc1'  # timm-style 'rand-...' or AutoAugment 'original'/'v0'; '' off
_C.AUG.RE_PROB = 0.25  # random erasing probability
_C.AUG.RE_MODE = 'pixel'  # random erasing fill: 'const', 'rand' (per channel) or 'pixel' (per pixel)
_C.AUG.RE_COUNT = 1  # maximum number of erased boxes per image
_C.AUG.MIXUP = 0.8  # mixup alpha, on if > 0
_C.AUG.CUTMIX = 1.0  # cutmix alpha, on if > 0
_C.AUG.CUTMIX_MINMAX = None  # cutmix box size range (min, max) as image fraction; overrides CUTMIX alpha
_C.AUG.MIXUP_PROB = 1.0  # probability of applying mixup or cutmix to a batch/pair/element
_C.AUG.MIXUP_SWITCH_PROB = 0.5  # probability of cutmix instead of mixup when both are on
_C.AUG.MIXUP_MODE = 'batch'  # 'batch', 'pair' or 'elem': how mixing parameters are drawn

# ---------------------------------------------------------------- run
_C.SAVE = './output'  # output folder: log.txt, checkpoints
_C.SAVE_FREQ = 10  # also keep a numbered checkpoint every SAVE_FREQ epochs
_C.KEEP_CHECKPOINTS = 3  # numbered checkpoints kept (latest and best are always kept); 0: keep all
_C.SAVE_ON_SIGTERM_AFTER = 300  # seconds: a SIGTERM mid-epoch saves the state there if it trained this long unsaved
_C.REPORT_FREQ = 50  # log (and VisualDL) every REPORT_FREQ train steps and eval batches
_C.VALIDATE_FREQ = 1  # evaluate every VALIDATE_FREQ epochs (and after the last)
_C.SEED = 0  # random seed (offset by rank in each process)
_C.EVAL = False  # evaluate only
_C.EVAL_SAVE_LOGITS = False  # -eval: also write SAVE/eval_logits.npy [N, C] and eval_labels.npy [N] in dataset order
_C.AMP = False  # automatic mixed precision on GPU (auto_cast + a GradScaler kept for the whole run)
_C.AMP_DTYPE = 'float16'  # 'float16' or 'bfloat16'
_C.DEVICE = 'auto'  # 'auto' (GPU if available), 'gpu' or 'cpu'
_C.CPU_THREADS = 0  # threads per process on CPU; 0: all cores divided by processes on this node
_C.CPU_KERNELS = True  # on CPU: build and use cpu_kernels (fused attention, multi-threaded convs, norms, AdamP...)
_C.NGPUS = -1  # processes for main_multi_gpu.py; -1: all visible GPUs (CPU: 2)
_C.VISUALDL = True  # also write VisualDL scalars to SAVE/vdl when visualdl is installed (SAVE/metrics.jsonl always)


class ConfigError(UserError):
    """A config file, key or value that cannot be used; the message names it."""


# Keys a checkpoint records so that it rebuilds its model (MODEL_KEYS) and its eval transform (PREPROCESS_KEYS)
# without a -cfg. A -cfg/-opts value of a MODEL_KEYS key that contradicts the checkpoint is an error; the
# preprocessing keys may be overridden (e.g. DATA.CROP_PCT 0.9 for timm's evaluation), as may DATA.IMAGE_SIZE
# (pos_embed is resized).
MODEL_KEYS = ('MODEL.NAME', 'MODEL.NUM_CLASSES', 'MODEL.DISTILL', 'MODEL.TRANS.PATCH_SIZE', 'MODEL.TRANS.STRIDE',
              'MODEL.TRANS.BASE_DIMS', 'MODEL.TRANS.DEPTH', 'MODEL.TRANS.HEADS', 'MODEL.TRANS.MLP_RATIO')
PREPROCESS_KEYS = ('DATA.IMAGE_SIZE', 'DATA.CROP_PCT', 'DATA.INTERPOLATION', 'DATA.IMAGENET_MEAN',
                   'DATA.IMAGENET_STD')


def _load_yaml(cfg_file):
    if not os.path.isfile(cfg_file):
        raise ConfigError(f"config file '{cfg_file}' not found")
    try:
        with open(cfg_file, 'r', encoding='utf-8') as f:
            data = yaml.safe_load(f) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config file '{cfg_file}' is not valid yaml: {' '.join(str(e).split())}")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"config file '{cfg_file}' cannot be read: {e}")
    if not isinstance(data, dict):
        raise ConfigError(f"config file '{cfg_file}' must hold a mapping of keys, got {type(data).__name__}")
    return data


def _merge_dict(config, data, source, touched=None):
    """Merge a nested dict into config; unknown keys and wrong types raise ConfigError naming them.
    touched (a set) collects the dotted keys set."""
    def walk(node, d, prefix):
        for key, value in d.items():
            full = prefix + str(key)
            if key not in node:
                raise ConfigError(f"unknown config key '{full}' in {source}")
            if isinstance(node[key], CN):
                if not isinstance(value, dict):
                    raise ConfigError(f"config key '{full}' in {source} must be a mapping, got {value!r}")
                walk(node[key], value, full + '.')
            else:
                node[key] = _coerce(node[key], value, full, source)
                if touched is not None:
                    touched.add(full)
    walk(config, data, '')


# the keys that may be None (the default of most of them): a value of the type they take otherwise
_NULLABLE = {'DATA.BATCH_SIZE_EVAL': 0, 'TRAIN.GRAD_CLIP': 0.0, 'TRAIN.LINEAR_SCALED_LR': 0,
             'MODEL.RESUME': '', 'MODEL.PRETRAINED': '', 'DATA.REAL_LABELS': '', 'AUG.CUTMIX_MINMAX': [0.0, 1.0]}
# list keys of a fixed length (the others: any length, checked against each other where they must agree)
_LIST_LENGTHS = {'DATA.IMAGENET_MEAN': 3, 'DATA.IMAGENET_STD': 3, 'TRAIN.OPTIMIZER.BETAS': 2, 'AUG.SCALE': 2,
                 'AUG.RATIO': 2, 'AUG.CUTMIX_MINMAX': 2}
_KINDS = {bool: ('True or False', 'booleans'), int: ('an integer', 'integers'), float: ('a finite number', 'numbers'),
          str: ('a string', 'strings')}
# keys that take a boolean (an integer) besides the type of their default
_ALSO_BOOL = ('DATA.SHARED_MEMORY',)
_ALSO_INT = ('DATA.NUM_WORKERS',)  # an integer or 'auto'
_INT_LIMIT = 2 ** 31  # integers reach C ints (paddle's op attributes, numpy seeds): larger ones are refused here


def _coerce(old, value, key, source):
    """value checked against the default's type, as yacs would, but strictly: an int key takes integers only
    (3.0 is 3, 2.5 is an error), a float key finite numbers, a bool key booleans, a str key strings, a list key
    a list of items of its default's item type (of _LIST_LENGTHS items where fixed); None only the _NULLABLE
    keys. ConfigError naming the key otherwise."""
    if (value is None and key in _NULLABLE) or (key in _ALSO_BOOL and isinstance(value, bool)) or \
            (key in _ALSO_INT and isinstance(value, int) and not isinstance(value, bool)):
        return value
    if old is None:
        old = _NULLABLE[key]
    if key in _ALSO_BOOL or key in _ALSO_INT:
        old = 'auto'  # else a string, whatever an earlier source (a yaml file, an earlier -opts) set
    if isinstance(old, (list, tuple)):
        return _coerce_list(old, value, key, source)
    try:
        return _coerce_item(old, value)
    except ValueError as e:
        expected = "an integer or 'auto'" if key in _ALSO_INT else e
        raise ConfigError(f"config key '{key}' in {source} expects {expected}, got {value!r}") from None


def _coerce_list(old, value, key, source):
    length = _LIST_LENGTHS.get(key)
    item_type = type(old[0]) if old else str
    try:
        if not isinstance(value, (list, tuple)) or length not in (None, len(value)):
            raise ValueError
        return type(old)(_coerce_item(old[0] if old else '', item) for item in value)
    except ValueError:
        count = f'{length} ' if length else ''
        raise ConfigError(f"config key '{key}' in {source} expects a list of {count}{_KINDS[item_type][1]}, "
                          f'got {value!r}') from None


def _coerce_item(old, value):
    """value as the type of old (bool, int, float or str), strictly; ValueError saying what was expected."""
    kind = type(old)
    if kind is float and isinstance(value, str) and re.fullmatch(r'[-+]?\d+(\.\d*)?[eE][-+]?\d+', value):
        value = float(value)  # yaml 1.1 reads exponents without a dot (1e-4) as strings
    expected = _KINDS[kind][0]
    if kind in (bool, str):
        if type(value) is not kind:
            raise ValueError(expected)
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)) or \
            (isinstance(value, float) and not math.isfinite(value)):
        raise ValueError(expected)
    if kind is float:
        if abs(value) > 1e300:  # beyond float (an int of 400 digits) or of no use
            raise ValueError(expected)
        return float(value)
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError(expected)
        value = int(value)
    if not -_INT_LIMIT < value < _INT_LIMIT:
        raise ValueError('an integer of magnitude below 2**31')
    return value


def _update_config_from_file(config, cfg_file, touched=None, chain=()):
    """Merge cfg_file into config, after the files its BASE list names (relative to cfg_file)."""
    real = os.path.realpath(cfg_file)
    if real in chain:
        raise ConfigError(f"config file '{cfg_file}' includes itself through BASE: "
                          + ' -> '.join(list(chain[chain.index(real):]) + [real]))
    data = _load_yaml(cfg_file)
    bases = data.get('BASE', ['']) or ['']
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(base, str) for base in bases):
        raise ConfigError(f"BASE in config file '{cfg_file}' must be a file name or a list of them, got {bases!r}")
    for base in bases:
        if base:
            _update_config_from_file(config, os.path.join(os.path.dirname(cfg_file), base), touched, chain + (real,))
    data = {k: v for k, v in data.items() if k != 'BASE'}
    config.defrost()
    _merge_dict(config, data, f"'{cfg_file}'", touched)


def merge_opts(config, opts, touched=None, source='-opts'):
    """Apply ['KEY', 'VALUE', ...] overrides; values are parsed as yaml ('0.1', '[1, 2]', 'None'). 'None',
    'none' and 'null' are None, except for a key with a 'none' choice, which takes that word
    (TRAIN.DISTILLATION_TYPE none); an empty value is the empty string (yaml would read None)."""
    if len(opts) % 2:
        raise ConfigError(f"-opts needs KEY VALUE pairs, got an odd number of items: {opts}")
    config.defrost()
    for key, raw in zip(opts[0::2], opts[1::2]):
        try:
            if not raw.strip():
                value = raw
            elif raw in ('None', 'none', 'null'):
                value = 'none' if 'none' in _CHOICES.get(key, ()) else None
            else:
                value = yaml.safe_load(raw)
        except yaml.YAMLError:
            raise ConfigError(f'{source}: value {raw!r} of {key} is not valid yaml') from None
        node = {}
        cursor = node
        parts = key.split('.')
        for part in parts[:-1]:
            cursor = cursor.setdefault(part, {})
        cursor[parts[-1]] = value
        _merge_dict(config, node, source, touched)
    return config


# seed flag -> config key; flags left at None do not override the yaml
_FLAG_KEYS = {
    'batch_size': 'DATA.BATCH_SIZE',
    'image_size': 'DATA.IMAGE_SIZE',
    'data_path': 'DATA.DATA_PATH',
    'save_path': 'SAVE',
    'ngpus': 'NGPUS',
    'pretrained': 'MODEL.PRETRAINED',
    'resume': 'MODEL.RESUME',
    'last_epoch': 'TRAIN.LAST_EPOCH',
    'teacher_model': 'TRAIN.TEACHER_MODEL',
    'device': 'DEVICE',
}
_FLAG_SWITCHES = {'eval': 'EVAL', 'amp': 'AMP', 'ema': 'MODEL.EMA_WEIGHTS', 'eval_save_logits': 'EVAL_SAVE_LOGITS'}


def _flag_opts(args):
    opts = []
    for flag, key in _FLAG_KEYS.items():
        value = getattr(args, flag, None)
        if value is not None:
            opts += [key, value if isinstance(value, str) else repr(value)]
    for flag, key in _FLAG_SWITCHES.items():
        if getattr(args, flag, False):
            opts += [key, 'True']
    return opts


def build_config(cfg=None, opts=(), args=None, described=None, described_by=None, world_size=None):
    """The one config path of every entry point: defaults, then what a checkpoint describes (its model and
    preprocessing), then -cfg (and its BASE chain), the command-line flags of args, then -opts; every value
    checked; derived values computed and frozen when world_size is given.

    described: {dotted key: value} of a weights file (checkpoint.describe); a -cfg/-opts/flag value of a
    MODEL_KEYS key that differs from it raises ConfigError naming the key and described_by (the file).
    """
    config, touched = _C.clone(), set()
    if described:
        merge_opts(config, _as_opts(described), source=f"checkpoint '{described_by}'")
    cfg = cfg or getattr(args, 'cfg', None)
    if cfg:
        _update_config_from_file(config, cfg, touched)
    if args is not None:
        merge_opts(config, _flag_opts(args), touched, source='the command line')
        opts = list(opts) + list(getattr(args, 'opts', None) or [])
    merge_opts(config, list(opts), touched)
    key = contradicting_key(config, described or {}, sorted(touched & set(MODEL_KEYS)))
    if key:
        raise ConfigError(f'config key {key}={get_key(config, key)!r} contradicts the checkpoint '
                          f"'{described_by}', which holds a model with {key}={described[key]!r}")
    if world_size is None:
        check_config(config)
        return config
    return finalize_config(config, world_size)


def _as_opts(flat):
    opts = []
    for key, value in flat.items():
        opts += [key, yaml.safe_dump(list(value) if isinstance(value, tuple) else value,
                                     default_flow_style=True).strip().removesuffix('...').strip()]
    return opts


def contradicting_key(config, described, keys):
    """The first of keys whose config value differs from what a checkpoint describes (lists and tuples
    compare by items), or None."""
    def plain(value):
        return list(value) if isinstance(value, (list, tuple)) else value
    return next((key for key in keys if key in described and plain(get_key(config, key)) != plain(described[key])),
                None)


def dump_config(config):
    """yaml text of the whole config (stored in checkpoints)."""
    return config.dump()


def load_run_config(text):
    """The config of a checkpoint's yaml text (None when it cannot be used by this version's keys)."""
    try:
        config = _C.clone()
        data = yaml.safe_load(text) or {}
        data.pop('BASE', None)
        _merge_dict(config, data, 'the checkpoint')
        return config
    except (ConfigError, yaml.YAMLError, AttributeError, TypeError):
        return None


def total_batch_size(config, world_size):
    """Images per optimizer step over all processes."""
    return config.DATA.BATCH_SIZE * world_size * config.TRAIN.ACCUM_ITER


def finalize_config(config, world_size=1):
    """Check values, compute derived ones once (eval batch, linearly scaled LR), then freeze."""
    config.defrost()
    check_config(config)
    if config.DATA.BATCH_SIZE_EVAL is None:
        config.DATA.BATCH_SIZE_EVAL = config.DATA.BATCH_SIZE
    if config.TRAIN.LINEAR_SCALED_LR:
        scale = total_batch_size(config, world_size) / config.TRAIN.LINEAR_SCALED_LR
        config.TRAIN.BASE_LR = config.TRAIN.BASE_LR * scale
        config.TRAIN.LINEAR_SCALED_LR = None  # already applied: a second finalize must not scale again
    config.freeze()
    return config


_CHOICES = {
    'DATA.LAYOUT': ('auto', 'folder', 'list'),
    'DATA.EVAL_SET': ('imagenet', 'real', 'v2', 'a', 'r'),
    'DATA.INTERPOLATION': ('bicubic', 'bilinear', 'nearest'),
    'MODEL.TYPE': ('PiT',),
    'TRAIN.DISTILLATION_TYPE': ('none', 'hard', 'soft'),
    'TRAIN.LR_SCHEDULER.NAME': ('warmupcosine', 'multistep'),
    'TRAIN.OPTIMIZER.NAME': ('AdamW', 'AdamP', 'SGD'),
    'AUG.RE_MODE': ('const', 'rand', 'pixel'),
    'AUG.MIXUP_MODE': ('batch', 'pair', 'elem'),
    'AMP_DTYPE': ('float16', 'bfloat16'),
    'DEVICE': ('auto', 'gpu', 'cpu'),
    'DATA.SHARED_MEMORY': ('auto', True, False),
}
_AT_LEAST_1 = ('DATA.BATCH_SIZE', 'DATA.IMAGE_SIZE', 'MODEL.NUM_CLASSES', 'TRAIN.ACCUM_ITER', 'TRAIN.NUM_EPOCHS',
               'REPORT_FREQ', 'SAVE_FREQ', 'VALIDATE_FREQ', 'MODEL.TRANS.PATCH_SIZE', 'MODEL.TRANS.STRIDE',
               'DATA.REPEATED_AUG_REPEATS', 'AUG.RE_COUNT')
_AT_LEAST_0 = ('TRAIN.LAST_EPOCH', 'TRAIN.WARMUP_EPOCHS', 'TRAIN.COOLDOWN_EPOCHS',
               'TRAIN.WEIGHT_DECAY', 'TRAIN.WARMUP_START_LR', 'TRAIN.END_LR', 'KEEP_CHECKPOINTS', 'CPU_THREADS',
               'SAVE_ON_SIGTERM_AFTER',
               'AUG.COLOR_JITTER', 'AUG.MIXUP', 'AUG.CUTMIX', 'TRAIN.OPTIMIZER.MOMENTUM', 'TRAIN.OPTIMIZER.WD_RATIO',
               'TRAIN.OPTIMIZER.DELTA', 'SEED')
_POSITIVE = ('TRAIN.BASE_LR', 'TRAIN.OPTIMIZER.EPS', 'TRAIN.DISTILLATION_TAU', 'MODEL.TRANS.MLP_RATIO')  # divisors
_UNIT_CLOSED = ('TRAIN.MODEL_EMA_DECAY', 'AUG.HFLIP', 'AUG.RE_PROB', 'AUG.MIXUP_PROB', 'AUG.MIXUP_SWITCH_PROB',
                'TRAIN.DISTILLATION_ALPHA', 'TRAIN.LR_SCHEDULER.DECAY_RATE')
_UNIT_OPEN = ('MODEL.DROP_PATH', 'MODEL.DROPOUT', 'MODEL.ATTENTION_DROPOUT', 'TRAIN.SMOOTHING')


def get_key(config, key):
    """config value of a dotted key, e.g. get_key(config, 'TRAIN.BASE_LR')."""
    node = config
    for part in key.split('.'):
        node = node[part]
    return node


def _bad(key, value, expected):
    return ConfigError(f'config key {key}={value!r} {expected}')


def check_config(config):
    """Every value in its range and consistent with the others; ConfigError naming the key otherwise.
    Runs before any model or dataset is built."""
    for key, allowed in _CHOICES.items():
        if get_key(config, key) not in allowed:
            raise _bad(key, get_key(config, key), f'is not one of {list(allowed)}')
    for key in _AT_LEAST_1:
        if get_key(config, key) < 1:
            raise _bad(key, get_key(config, key), 'must be >= 1')
    for key in _AT_LEAST_0:
        if get_key(config, key) < 0:
            raise _bad(key, get_key(config, key), 'must be >= 0')
    for key in _UNIT_CLOSED:
        if not 0.0 <= get_key(config, key) <= 1.0:
            raise _bad(key, get_key(config, key), 'must be in [0, 1]')
    for key in _UNIT_OPEN:
        if not 0.0 <= get_key(config, key) < 1.0:
            raise _bad(key, get_key(config, key), 'must be in [0, 1)')
    for key in _POSITIVE:
        if not get_key(config, key) > 0:
            raise _bad(key, get_key(config, key), 'must be > 0')
    workers = config.DATA.NUM_WORKERS
    if workers != 'auto' and not (isinstance(workers, int) and workers >= 0):
        raise _bad('DATA.NUM_WORKERS', workers, "must be >= 0 or 'auto'")
    if not 0 < config.DATA.CROP_PCT <= 1:
        raise _bad('DATA.CROP_PCT', config.DATA.CROP_PCT, 'must be in (0, 1]')
    for key in ('DATA.BATCH_SIZE_EVAL', 'TRAIN.LINEAR_SCALED_LR'):
        if get_key(config, key) is not None and get_key(config, key) < 1:
            raise _bad(key, get_key(config, key), 'must be >= 1 (or None)')
    if config.TRAIN.GRAD_CLIP is not None and config.TRAIN.GRAD_CLIP <= 0:
        raise _bad('TRAIN.GRAD_CLIP', config.TRAIN.GRAD_CLIP, 'must be > 0 (or None: no clipping)')
    if config.NGPUS != -1 and config.NGPUS < 1:
        raise _bad('NGPUS', config.NGPUS, 'must be >= 1 (or -1: every visible GPU)')
    if not all(std > 0 for std in config.DATA.IMAGENET_STD):
        raise _bad('DATA.IMAGENET_STD', list(config.DATA.IMAGENET_STD), 'must hold numbers > 0 (they divide)')
    _check_model(config)
    _check_schedule(config)
    _check_augment(config)
    _check_eval(config)
    if config.TRAIN.DISTILLATION_TYPE != 'none' and not config.MODEL.DISTILL:
        raise ConfigError(f'TRAIN.DISTILLATION_TYPE={config.TRAIN.DISTILLATION_TYPE!r} needs a distilled model '
                          '(MODEL.DISTILL: True)')


def _check_model(config):
    trans = config.MODEL.TRANS
    if not len(trans.BASE_DIMS) == len(trans.DEPTH) == len(trans.HEADS) >= 1:
        raise ConfigError(f'MODEL.TRANS.BASE_DIMS={list(trans.BASE_DIMS)}, MODEL.TRANS.DEPTH={list(trans.DEPTH)} and '
                          f'MODEL.TRANS.HEADS={list(trans.HEADS)} must be non-empty lists of the same length')
    for key in ('BASE_DIMS', 'DEPTH', 'HEADS'):
        if not all(v >= 1 for v in trans[key]):  # integers: _coerce made sure
            raise _bad(f'MODEL.TRANS.{key}', list(trans[key]), 'must hold integers >= 1')
    narrowest = min(b * h for b, h in zip(trans.BASE_DIMS, trans.HEADS))
    if int(narrowest * trans.MLP_RATIO) < 1:
        raise _bad('MODEL.TRANS.MLP_RATIO', trans.MLP_RATIO, f'leaves no MLP unit in a stage of width {narrowest}')
    if config.DATA.IMAGE_SIZE < trans.PATCH_SIZE:
        raise _bad('DATA.IMAGE_SIZE', config.DATA.IMAGE_SIZE, f'must be >= MODEL.TRANS.PATCH_SIZE={trans.PATCH_SIZE}')


def _check_schedule(config):
    epochs, cooldown, warmup = config.TRAIN.NUM_EPOCHS, config.TRAIN.COOLDOWN_EPOCHS, config.TRAIN.WARMUP_EPOCHS
    if not 0 <= cooldown < epochs:
        raise _bad('TRAIN.COOLDOWN_EPOCHS', cooldown, f'must be in [0, TRAIN.NUM_EPOCHS={epochs})')
    if not 0 <= warmup <= epochs - cooldown:
        raise _bad('TRAIN.WARMUP_EPOCHS', warmup, f'must be in [0, NUM_EPOCHS - COOLDOWN_EPOCHS = {epochs - cooldown}]')
    milestones = list(config.TRAIN.LR_SCHEDULER.MILESTONES)
    if milestones != sorted(milestones):
        raise _bad('TRAIN.LR_SCHEDULER.MILESTONES', milestones, 'must be increasing')
    betas = list(config.TRAIN.OPTIMIZER.BETAS)
    if not all(0.0 <= b < 1.0 for b in betas):
        raise _bad('TRAIN.OPTIMIZER.BETAS', betas, 'must be two numbers in [0, 1)')


def _check_eval(config):
    """The evaluation-only keys: asked with -eval (EVAL), REAL_LABELS an existing file exactly when EVAL_SET is
    'real', a and r (200-class subsets of ImageNet-1k) on a 1000-class model."""
    eval_set, real = config.DATA.EVAL_SET, config.DATA.REAL_LABELS
    if not config.EVAL:
        for key, off in (('DATA.EVAL_SET', 'imagenet'), ('EVAL_SAVE_LOGITS', False)):
            if get_key(config, key) != off:
                raise _bad(key, get_key(config, key), f'is for -eval (EVAL True); training evaluates with {off!r}')
    if eval_set == 'real' and not real:
        raise _bad('DATA.REAL_LABELS', real, "must name ReaL's real.json with DATA.EVAL_SET 'real'")
    if real and eval_set != 'real':
        raise _bad('DATA.REAL_LABELS', real, f"is read only with DATA.EVAL_SET 'real', not {eval_set!r}")
    if real and not os.path.isfile(real):
        raise _bad('DATA.REAL_LABELS', real, 'is not a file')
    if eval_set in ('a', 'r') and config.MODEL.NUM_CLASSES != 1000:
        raise _bad('MODEL.NUM_CLASSES', config.MODEL.NUM_CLASSES,
                   f"must be 1000 with DATA.EVAL_SET {eval_set!r} (a subset of the ImageNet-1k classes)")


def _check_augment(config):
    for key in ('AUG.SCALE', 'AUG.RATIO'):
        low_high = list(get_key(config, key))
        if not 0 < low_high[0] <= low_high[1]:
            raise _bad(key, low_high, 'must be [low, high] with 0 < low <= high')
    if config.AUG.CUTMIX_MINMAX is not None:
        minmax = list(config.AUG.CUTMIX_MINMAX)
        if not 0 < minmax[0] < minmax[1] <= 1:
            raise _bad('AUG.CUTMIX_MINMAX', minmax, 'must be [min, max] with 0 < min < max <= 1')
    if config.AUG.AUTO_AUGMENT:
        from augment import auto_augment_transform  # parses the string exactly as training will
        try:
            auto_augment_transform(config.AUG.AUTO_AUGMENT, {'translate_const': 100, 'img_mean': (124, 116, 104)})
        except ValueError as e:
            raise ConfigError(str(e)) from None


