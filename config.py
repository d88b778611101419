"""Configuration: yacs defaults (the official PiT/DeiT recipe), yaml BASE chain, command-line overrides.

Every key is defined once below with a one-line comment and is read by the code it names
(tests/test_config.py enforces that). Typical use:

    config = get_config('configs/pit_ti.yaml')          # defaults + yaml (+ its BASE chain)
    config = update_config(config, args)                # seed flags and -opts KEY VALUE ...
    config = finalize_config(config, world_size=4)      # derived values (scaled LR), then frozen
"""
import os
import re

import yaml
from yacs.config import CfgNode as CN

_C = CN()
_C.BASE = ['']  # yaml files merged before this one, paths relative to the including file

# ---------------------------------------------------------------- data
_C.DATA = CN()
_C.DATA.BATCH_SIZE = 256  # train batch size per process (total = BATCH_SIZE * processes * ACCUM_ITER)
_C.DATA.BATCH_SIZE_EVAL = None  # eval batch size per process; None: same as BATCH_SIZE
_C.DATA.DATA_PATH = '/dataset/imagenet/'  # dataset root: {train,val}/<class>/ folders or {train,val}_list.txt
_C.DATA.DATASET = 'imagenet2012'  # dataset kind; 'imagenet2012' is any ImageNet-style folder/list dataset
_C.DATA.LAYOUT = 'auto'  # 'auto' (detect), 'folder' (class sub-folders) or 'list' ({split}_list.txt)
_C.DATA.IMAGE_SIZE = 224  # input resolution (square)
_C.DATA.CROP_PCT = 0.9  # eval: resize short side to floor(IMAGE_SIZE / CROP_PCT), then center crop
_C.DATA.INTERPOLATION = 'bicubic'  # resize interpolation for train crop and eval resize
_C.DATA.NUM_WORKERS = 4  # DataLoader worker processes per training process (0: load in the main process)
_C.DATA.SHARED_MEMORY = True  # pass batches from workers through shared memory
_C.DATA.IMAGENET_MEAN = [0.485, 0.456, 0.406]  # normalisation mean (RGB, 0-1)
_C.DATA.IMAGENET_STD = [0.229, 0.224, 0.225]  # normalisation std (RGB, 0-1)
_C.DATA.SKIP_BAD_EVAL_IMAGES = False  # eval: skip undecodable images (reported) instead of failing the run
_C.DATA.REPEATED_AUG = False  # repeated-augmentation sampler (DeiT RASampler), used by the PiT-B recipe
_C.DATA.REPEATED_AUG_REPEATS = 3  # repeats of each sample per epoch with REPEATED_AUG

# ---------------------------------------------------------------- model
_C.MODEL = CN()
_C.MODEL.TYPE = 'PiT'  # model family; only 'PiT' is built by this repo
_C.MODEL.NAME = 'pit_ti'  # variant name, used in logs and checkpoint metadata
_C.MODEL.RESUME = None  # checkpoint to resume training from: a path, or 'auto' (newest valid one in SAVE)
_C.MODEL.PRETRAINED = None  # weights to start from (fine-tuning/eval): model weights only, pos_embed resized
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
_C.TRAIN.LR_SCHEDULER.DEIT_LAG = False  # True: epoch e uses the LR of epoch e-1 (first value twice), as DeiT ran

_C.TRAIN.OPTIMIZER = CN()
_C.TRAIN.OPTIMIZER.NAME = 'AdamW'  # 'AdamW', 'AdamP' or 'SGD' (momentum)
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
_C.REPORT_FREQ = 50  # log every REPORT_FREQ steps
_C.VALIDATE_FREQ = 1  # evaluate every VALIDATE_FREQ epochs (and after the last)
_C.SEED = 0  # random seed (offset by rank in each process)
_C.EVAL = False  # evaluate only
_C.AMP = False  # automatic mixed precision on GPU (auto_cast + a GradScaler kept for the whole run)
_C.AMP_DTYPE = 'float16'  # 'float16' or 'bfloat16'
_C.DEVICE = 'auto'  # 'auto' (GPU if available), 'gpu' or 'cpu'
_C.CPU_THREADS = 0  # threads per process on CPU; 0: all cores divided by processes on this node
_C.CPU_KERNELS = True  # on CPU: build and use cpu_kernels (multi-threaded softmax, LayerNorm, bias add, GELU)
_C.NGPUS = -1  # processes for main_multi_gpu.py; -1: all visible GPUs (CPU: 2)
_C.VISUALDL = True  # also write VisualDL scalars to SAVE/vdl when visualdl is installed


class ConfigError(ValueError):
    """A config file, key or value that cannot be used; the message names it."""


def _load_yaml(cfg_file):
    if not os.path.isfile(cfg_file):
        raise ConfigError(f"config file '{cfg_file}' not found")
    with open(cfg_file, 'r', encoding='utf-8') as f:
        try:
            data = yaml.safe_load(f) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"config file '{cfg_file}' is not valid yaml: {e}".replace('\n', ' '))
    if not isinstance(data, dict):
        raise ConfigError(f"config file '{cfg_file}' must hold a mapping of keys, got {type(data).__name__}")
    return data


def _merge_dict(config, data, source):
    """Merge a nested dict into config; unknown keys and wrong types raise ConfigError naming them."""
    def walk(node, d, prefix):
        for key, value in d.items():
            full = prefix + key
            if key not in node:
                raise ConfigError(f"unknown config key '{full}' in {source}")
            if isinstance(node[key], CN):
                if not isinstance(value, dict):
                    raise ConfigError(f"config key '{full}' in {source} must be a mapping, got {value!r}")
                walk(node[key], value, full + '.')
            else:
                node[key] = _coerce(node[key], value, full, source)
    walk(config, data, '')


def _coerce(old, value, key, source):
    """Check value against the default's type (None defaults accept anything), as yacs would."""
    if old is None or value is None:
        return value
    if isinstance(old, float) and isinstance(value, str) and re.fullmatch(r'[-+]?\d+(\.\d*)?[eE][-+]?\d+', value):
        return float(value)  # yaml 1.1 reads exponents without a dot (1e-4) as strings
    if isinstance(old, bool) or isinstance(value, bool):
        if isinstance(old, bool) and isinstance(value, bool):
            return value
        raise ConfigError(f"config key '{key}' in {source} expects {type(old).__name__}, got {value!r}")
    if isinstance(old, (int, float)) and isinstance(value, (int, float)):
        return float(value) if isinstance(old, float) else value
    if isinstance(old, (list, tuple)) and isinstance(value, (list, tuple)):
        return type(old)(value)
    if isinstance(old, str) and isinstance(value, str):
        return value
    raise ConfigError(f"config key '{key}' in {source} expects {type(old).__name__}, got {value!r}")


def _update_config_from_file(config, cfg_file):
    """Merge cfg_file into config, after the files its BASE list names (relative to cfg_file)."""
    data = _load_yaml(cfg_file)
    for base in data.get('BASE', ['']) or ['']:
        if base:
            _update_config_from_file(config, os.path.join(os.path.dirname(cfg_file), base))
    data = {k: v for k, v in data.items() if k != 'BASE'}
    config.defrost()
    _merge_dict(config, data, f"'{cfg_file}'")


def get_config(cfg_file=None):
    """Return a copy of the defaults, updated from cfg_file (and its BASE chain) when given."""
    config = _C.clone()
    if cfg_file:
        _update_config_from_file(config, cfg_file)
    return config


def merge_opts(config, opts):
    """Apply ['KEY', 'VALUE', ...] overrides; values are parsed as yaml ('0.1', '[1, 2]', 'None')."""
    if len(opts) % 2:
        raise ConfigError(f"-opts needs KEY VALUE pairs, got an odd number of items: {opts}")
    config.defrost()
    for key, raw in zip(opts[0::2], opts[1::2]):
        value = None if raw in ('None', 'none', 'null') else yaml.safe_load(raw)
        node = {}
        cursor = node
        parts = key.split('.')
        for part in parts[:-1]:
            cursor = cursor.setdefault(part, {})
        cursor[parts[-1]] = value
        _merge_dict(config, node, '-opts')
    return config


# seed flag -> config key; flags left at None do not override the yaml
_FLAG_KEYS = {
    'dataset': 'DATA.DATASET',
    'batch_size': 'DATA.BATCH_SIZE',
    'image_size': 'DATA.IMAGE_SIZE',
    'data_path': 'DATA.DATA_PATH',
    'save_path': 'SAVE',
    'output': 'SAVE',
    'ngpus': 'NGPUS',
    'pretrained': 'MODEL.PRETRAINED',
    'resume': 'MODEL.RESUME',
    'last_epoch': 'TRAIN.LAST_EPOCH',
    'teacher_model': 'TRAIN.TEACHER_MODEL',
    'device': 'DEVICE',
}


def update_config(config, args):
    """Apply a parsed argparse namespace: -cfg, the seed flags, -eval, -amp, then -opts (applied last)."""
    if getattr(args, 'cfg', None):
        config = get_config(args.cfg)
    config.defrost()
    for flag, key in _FLAG_KEYS.items():
        value = getattr(args, flag, None)
        if value is not None:
            merge_opts(config, [key, repr(value) if not isinstance(value, str) else value])
    if getattr(args, 'eval', False):
        config.EVAL = True
    if getattr(args, 'amp', False):
        config.AMP = True
    merge_opts(config, list(getattr(args, 'opts', None) or []))
    return config


def total_batch_size(config, world_size):
    """Images per optimizer step over all processes."""
    return config.DATA.BATCH_SIZE * world_size * config.TRAIN.ACCUM_ITER


def finalize_config(config, world_size=1):
    """Check values, compute derived ones once (eval batch, linearly scaled LR), then freeze."""
    config.defrost()
    _check_values(config)
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
    'DATA.DATASET': ('imagenet2012',),
    'DATA.INTERPOLATION': ('bicubic', 'bilinear', 'nearest'),
    'MODEL.TYPE': ('PiT',),
    'TRAIN.DISTILLATION_TYPE': ('none', 'hard', 'soft'),
    'TRAIN.LR_SCHEDULER.NAME': ('warmupcosine', 'multistep'),
    'TRAIN.OPTIMIZER.NAME': ('AdamW', 'AdamP', 'SGD'),
    'AUG.RE_MODE': ('const', 'rand', 'pixel'),
    'AUG.MIXUP_MODE': ('batch', 'pair', 'elem'),
    'AMP_DTYPE': ('float16', 'bfloat16'),
    'DEVICE': ('auto', 'gpu', 'cpu'),
}


def get_key(config, key):
    """config value of a dotted key, e.g. get_key(config, 'TRAIN.BASE_LR')."""
    node = config
    for part in key.split('.'):
        node = node[part]
    return node


def _check_values(config):
    for key, allowed in _CHOICES.items():
        value = get_key(config, key)
        if value not in allowed:
            raise ConfigError(f"config key {key}={value!r} is not one of {list(allowed)}")
    trans = config.MODEL.TRANS
    if not len(trans.BASE_DIMS) == len(trans.DEPTH) == len(trans.HEADS):
        raise ConfigError('MODEL.TRANS.BASE_DIMS, DEPTH and HEADS must have the same length, got '
                          f'{trans.BASE_DIMS}, {trans.DEPTH}, {trans.HEADS}')
    for key in ('DATA.BATCH_SIZE', 'DATA.IMAGE_SIZE', 'MODEL.NUM_CLASSES', 'TRAIN.ACCUM_ITER', 'REPORT_FREQ',
                'SAVE_FREQ', 'VALIDATE_FREQ'):
        if get_key(config, key) < 1:
            raise ConfigError(f'config key {key}={get_key(config, key)!r} must be >= 1')
    if not 0 < config.DATA.CROP_PCT <= 1:
        raise ConfigError(f'config key DATA.CROP_PCT={config.DATA.CROP_PCT!r} must be in (0, 1]')
    if config.TRAIN.DISTILLATION_TYPE != 'none' and not config.MODEL.DISTILL:
        raise ConfigError(f'TRAIN.DISTILLATION_TYPE={config.TRAIN.DISTILLATION_TYPE!r} needs a distilled model '
                          '(MODEL.DISTILL: True)')
