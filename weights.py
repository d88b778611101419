"""Read weight files safely (PyTorch, safetensors, Paddle) and fit state dicts onto a model.

    report = load_pretrained(model, 'pit_ti_730.pth')                 # official naver-ai or timm weights
    report = load_pretrained(model, 'output/checkpoint-latest')        # this repo's checkpoints (.pdparams)
    report = load_pretrained(model, 'imagenet.pth', finetune=True)     # new classifier: head re-initialised

Reading never runs code from the file, whatever its format:
- PyTorch zip archives (`torch.save`) and Paddle `.pdparams`/`.pdopt` files (`paddle.save`) are pickles; both are
  unpickled by allow-lists that rebuild only arrays and plain containers. Any other global (`os.system`,
  `builtins.eval`, a class of some package) is refused with a one-line error naming the file and the global,
  before anything is called. No torch is needed.
- `.safetensors` holds no code; it is read by the `safetensors` package where installed, else by a parser that
  applies the same header checks.
Every floating-point tensor of a file read is checked for NaN and Inf (a damaged file, a run that diverged):
such a file is refused in one line naming the tensor, before anything is loaded.
Wrapped files give their `model` / `state_dict` / `model_ema` / `state_dict_ema` entry, `module.` prefixes are
removed. Which names and layouts a model accepts is the model's business: a model with a
`checkpoint_filter(state)` method (PiT: pooling-key layouts of naver-ai/timm, pos_embed resizing) maps the state
before the generic fit here checks every key, shape and dtype.
"""
import argparse
import collections
import json
import os
import pickle
import warnings
import zipfile
from dataclasses import dataclass, field

import numpy as np
import paddle
import paddle.nn as nn

from errors import UserError


class WeightsError(UserError):
    """A weights file that cannot be read or does not fit the model; the message names the file."""


# ---------------------------------------------------------------- PyTorch zip checkpoints (no torch needed)

_BFLOAT16 = 'bfloat16'  # numpy has no bfloat16: such storages are widened to float32 when read
_TORCH_STORAGES = {
    'FloatStorage': np.float32, 'DoubleStorage': np.float64, 'HalfStorage': np.float16,
    'BFloat16Storage': _BFLOAT16, 'LongStorage': np.int64, 'IntStorage': np.int32, 'ShortStorage': np.int16,
    'CharStorage': np.int8, 'ByteStorage': np.uint8, 'BoolStorage': np.bool_, 'UntypedStorage': np.uint8,
}


@dataclass(frozen=True)
class _StorageType:
    """Stand-in for `torch.FloatStorage` & co. inside the pickle: only its element type matters."""
    name: str
    dtype: object


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                       metadata=None):
    """torch._utils._rebuild_tensor_v2 as numpy: a strided view into the storage, copied out."""
    size, stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)
    if len(size) != len(stride) or min(size + stride, default=0) < 0:
        raise pickle.UnpicklingError(f'bad tensor layout: size {size}, stride {stride}')
    if 0 in size:
        return np.empty(size, dtype=storage.dtype)
    last = storage_offset + sum((n - 1) * s for n, s in zip(size, stride))
    if storage_offset < 0 or last >= storage.size:
        raise pickle.UnpicklingError(f'tensor of size {size} at offset {storage_offset} overruns its storage '
                                     f'of {storage.size} elements')
    item = storage.itemsize
    view = np.lib.stride_tricks.as_strided(storage[storage_offset:], shape=size,
                                           strides=tuple(s * item for s in stride), writeable=False)
    return np.array(view)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, state=None):
    """torch._utils._rebuild_parameter(_with_state): a Parameter is just its data here."""
    return data


_ALLOWED_GLOBALS = {
    ('torch._utils', '_rebuild_tensor_v2'): _rebuild_tensor_v2,
    ('torch._utils', '_rebuild_parameter'): _rebuild_parameter,
    ('torch._utils', '_rebuild_parameter_with_state'): _rebuild_parameter,
    ('collections', 'OrderedDict'): collections.OrderedDict,
    # DeiT checkpoints keep their command line as `args`; a Namespace only stores attributes
    ('argparse', 'Namespace'): argparse.Namespace,
}
_ALLOWED_GLOBALS.update({('torch', name): _StorageType(name, dtype) for name, dtype in _TORCH_STORAGES.items()})


class _RefusedGlobal(pickle.UnpicklingError):
    """The pickle names a global outside the allow-list (which could run code); nothing was called."""


class _AllowListUnpickler(pickle.Unpickler):
    """An Unpickler that resolves only the globals of ALLOWED, {(module, name): object}."""
    ALLOWED = {}

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise _RefusedGlobal(f'refusing to load global {module}.{name}: only arrays and plain containers '
                                 'are allowed')
        return self.ALLOWED[(module, name)]


class _TorchUnpickler(_AllowListUnpickler):
    """Unpickles a torch zip archive's data.pkl; storages come from the archive as 1-D numpy arrays."""
    ALLOWED = _ALLOWED_GLOBALS

    def __init__(self, file, archive, prefix, byteorder):
        super().__init__(file)
        self._archive = archive
        self._prefix = prefix
        self._byteorder = '<' if byteorder == 'little' else '>'
        self._storages = {}

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == 'storage'
                and isinstance(pid[1], _StorageType)):
            raise pickle.UnpicklingError(f'unsupported persistent id {pid!r}')
        _, storage_type, key, _location, numel = pid
        if key not in self._storages:
            self._storages[key] = self._read_storage(storage_type, str(key), int(numel))
        return self._storages[key]

    def _read_storage(self, storage_type, key, numel):
        raw = self._archive.read(f'{self._prefix}data/{key}')
        if storage_type.dtype == _BFLOAT16:
            bits = np.frombuffer(raw, dtype=self._byteorder + 'u2').astype(np.uint32) << 16
            array = bits.view(np.float32)
        else:
            array = np.frombuffer(raw, dtype=np.dtype(storage_type.dtype).newbyteorder(self._byteorder))
        if array.size != numel:
            raise pickle.UnpicklingError(f'storage {key} holds {array.size} elements, expected {numel}')
        return array.astype(array.dtype.newbyteorder('='), copy=False)


def _read_torch(path):
    with open(path, 'rb') as f:
        magic = f.read(4)
    if magic != b'PK\x03\x04':
        if magic[:1] == b'\x80':
            raise WeightsError(f"'{path}' is a legacy (pre-1.6, non-zip) PyTorch file: re-save it with a recent "
                               "torch, e.g. torch.save(torch.load(src), dst)")
        raise WeightsError(f"'{path}' is not a PyTorch zip checkpoint, safetensors or .pdparams file")
    try:
        with zipfile.ZipFile(path) as archive:
            pickles = [n for n in archive.namelist() if n.endswith('data.pkl') and n.count('/') == 1]
            if len(pickles) != 1:
                raise WeightsError(f"'{path}': expected one */data.pkl in the PyTorch archive, found {pickles}")
            prefix = pickles[0][:-len('data.pkl')]
            names = set(archive.namelist())
            byteorder = archive.read(prefix + 'byteorder').decode() if prefix + 'byteorder' in names else 'little'
            with archive.open(pickles[0]) as data:
                return _TorchUnpickler(data, archive, prefix, byteorder).load()
    except (zipfile.BadZipFile, pickle.UnpicklingError, EOFError, KeyError, ValueError, OSError) as e:
        if isinstance(e, WeightsError):
            raise
        if isinstance(e, _RefusedGlobal):
            raise WeightsError(f"'{path}': {e}") from e
        raise WeightsError(f"'{path}': truncated or corrupt PyTorch checkpoint ({type(e).__name__}: {e})") from e


# ---------------------------------------------------------------- safetensors

_SAFETENSORS_DTYPES = {
    'F64': np.float64, 'F32': np.float32, 'F16': np.float16, 'BF16': _BFLOAT16, 'I64': np.int64,
    'I32': np.int32, 'I16': np.int16, 'I8': np.int8, 'U8': np.uint8, 'BOOL': np.bool_,
}
_SAFETENSORS_MAX_HEADER = 100_000_000  # the safetensors package refuses larger headers


def _read_safetensors(path):
    """{name: array} of a .safetensors file: the safetensors package where installed (bf16 widened by the
    parser below, which numpy cannot hold), else the parser, whose checks are the package's."""
    with open(path, 'rb') as f:
        data = f.read()
    try:
        header, body = _safetensors_header(data)
        if not any(info['dtype'] == 'BF16' for info in header.values()):
            try:
                from safetensors.numpy import load as load_safetensors
            except ImportError:
                load_safetensors = None
            if load_safetensors is not None:
                return {name: np.array(value) for name, value in load_safetensors(data).items()}
        return {name: _safetensors_array(name, info, body) for name, info in header.items()}
    except Exception as e:  # ValueError/KeyError/TypeError of the parser, SafetensorError of the package
        raise WeightsError(f"'{path}': truncated or corrupt safetensors file ({' '.join(str(e).split())})") from e


def _safetensors_header(data):
    """(tensor entries of the JSON header, body bytes), with the checks the safetensors package makes: header
    size within the file and under 100 MB, a JSON object of entries with known dtypes, non-negative shapes,
    offsets that tile the body exactly (no gaps, no overlaps), sizes equal to shape x item size, and
    string-to-string metadata."""
    if len(data) < 8:
        raise ValueError(f'{len(data)} bytes is shorter than the header length field')
    header_len = int.from_bytes(data[:8], 'little')
    if header_len > _SAFETENSORS_MAX_HEADER or 8 + header_len > len(data):
        raise ValueError(f'header of {header_len} bytes does not fit the file of {len(data)} bytes')
    header = json.loads(data[8:8 + header_len])
    if not isinstance(header, dict):
        raise ValueError('header is not a JSON object')
    metadata = header.pop('__metadata__', {})
    if not isinstance(metadata, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                 for k, v in metadata.items()):
        raise ValueError('__metadata__ must map strings to strings')
    body = memoryview(data)[8 + header_len:]
    position = 0
    for name, info in sorted(header.items(), key=lambda item: tuple(item[1].get('data_offsets', (-1, -1)))
                             if isinstance(item[1], dict) else (-1, -1)):
        if not isinstance(info, dict) or info.get('dtype') not in _SAFETENSORS_DTYPES:
            raise ValueError(f"tensor '{name}' has no known dtype: {info!r}"[:200])
        shape, offsets = info.get('shape'), info.get('data_offsets')
        if not (isinstance(shape, list) and all(isinstance(n, int) and n >= 0 for n in shape)
                and isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
            raise ValueError(f"tensor '{name}' has a bad shape or data_offsets")
        begin, end = offsets
        itemsize = 2 if info['dtype'] == 'BF16' else np.dtype(_SAFETENSORS_DTYPES[info['dtype']]).itemsize
        if begin != position or end < begin or end - begin != int(np.prod(shape)) * itemsize:
            raise ValueError(f"tensor '{name}' {shape} {info['dtype']} does not fit its data offsets "
                             f'[{begin}, {end}) (expected to start at {position})')
        position = end
    if position != len(body):
        raise ValueError(f'the tensors cover {position} of the {len(body)} data bytes')
    return header, body


def _safetensors_array(name, info, body):
    dtype = _SAFETENSORS_DTYPES[info['dtype']]
    begin, end = info['data_offsets']
    if dtype == _BFLOAT16:
        array = (np.frombuffer(body[begin:end], dtype='<u2').astype(np.uint32) << 16).view(np.float32)
    else:
        array = np.frombuffer(body[begin:end], dtype=np.dtype(dtype).newbyteorder('<')).astype(dtype)
    return array.reshape(info['shape'])


# ---------------------------------------------------------------- Paddle (paddle.save pickles)

class _Ignored:
    """Stand-in for objects of old checkpoints that this repo no longer reads (paddle's GeneratorState):
    absorbs the state BUILD hands it, calls nothing."""

    def __setstate__(self, state):
        pass


def _numpy_global(name):
    module = getattr(np, '_core', None) or np.core
    return getattr(module.multiarray, name)


_PADDLE_GLOBALS = {
    ('collections', 'OrderedDict'): collections.OrderedDict,
    ('builtins', 'tuple'): tuple,
    ('builtins', 'list'): list,
    ('builtins', 'dict'): dict,
    ('builtins', 'set'): set,
    ('builtins', 'frozenset'): frozenset,
    ('builtins', 'complex'): complex,
    ('numpy', 'ndarray'): np.ndarray,
    ('numpy', 'dtype'): np.dtype,
    ('paddle.base.libpaddle', 'GeneratorState'): _Ignored,
    ('paddle.fluid.libpaddle', 'GeneratorState'): _Ignored,
}
_NUMPY_MODULES = ('numpy.core.multiarray', 'numpy._core.multiarray')  # numpy 1.x and 2.x pickles
for _module in _NUMPY_MODULES:
    _PADDLE_GLOBALS[(_module, '_reconstruct')] = _numpy_global('_reconstruct')
    _PADDLE_GLOBALS[(_module, 'scalar')] = _numpy_global('scalar')


class _PaddleUnpickler(_AllowListUnpickler):
    """paddle.save files: dicts/lists/tuples of numbers, strings and numpy arrays (tensors are pickled as
    (name, ndarray) tuples). Object arrays can only hold what the allow-list rebuilds."""
    ALLOWED = _PADDLE_GLOBALS


class _SkippedArray:
    """Stand-in for an array in a description read: absorbs the data BUILD hands it, builds and checks nothing."""

    def __setstate__(self, state):
        pass


def _skipped_array(*args):
    return _SkippedArray()


class _DescriptionUnpickler(_AllowListUnpickler):
    """paddle.save files read for their plain entries only: every array becomes a _SkippedArray."""
    ALLOWED = {**_PADDLE_GLOBALS, **{(module, '_reconstruct'): _skipped_array for module in _NUMPY_MODULES}}


def _tensors_to_arrays(obj):
    """paddle.save stores a Tensor as a (name, ndarray) tuple: give back the arrays, recursively."""
    if isinstance(obj, tuple) and len(obj) == 2 and isinstance(obj[0], str) and isinstance(obj[1], np.ndarray):
        return obj[1]
    if isinstance(obj, dict):
        return type(obj)((k, _tensors_to_arrays(v)) for k, v in obj.items())
    if isinstance(obj, list):
        return [_tensors_to_arrays(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_tensors_to_arrays(v) for v in obj)
    return obj


def read_paddle_file(path):
    """The object of a paddle.save file (.pdparams, .pdopt, this repo's checkpoints) with tensors as numpy
    arrays, read by the allow-list: WeightsError naming the file for a refused global, a damaged file or a
    tensor holding NaN/Inf (check_finite)."""
    return check_finite(_tensors_to_arrays(_unpickle(path, _PaddleUnpickler)), path)


def read_paddle_description(path):
    """The object of a paddle.save file with every array left out (a placeholder in its place): its plain entries
    (a checkpoint's model description and class list) without the cost of building and checking its tensors.
    WeightsError naming the file for a refused global or a damaged file."""
    return _unpickle(path, _DescriptionUnpickler)


def _unpickle(path, unpickler):
    """The object unpickler (an _AllowListUnpickler class) reads from the file at path; WeightsError naming it."""
    try:
        with open(path, 'rb') as f:
            return unpickler(f).load()
    except _RefusedGlobal as e:
        raise WeightsError(f"'{path}': {e}") from e
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
            MemoryError, OverflowError) as e:
        raise WeightsError(f"'{path}': truncated or corrupt Paddle file ({type(e).__name__}: "
                           f"{' '.join(str(e).split())[:200]})") from e
    except OSError as e:
        raise WeightsError(f"'{path}': cannot be read ({e.strerror or e})") from e


def check_finite(obj, path):
    """obj (a file's nested dicts, lists and tuples of arrays), after checking that no floating-point array holds
    NaN or Inf: WeightsError naming the file and the first such tensor otherwise. Weights like that load without
    complaint and turn every output and loss into NaN at the first step."""
    for name, array in _float_arrays(obj):
        finite = np.isfinite(array)
        if not finite.all():
            bad = array[~finite]
            kinds = ' and '.join(kind for kind, found in (('NaN', np.isnan(bad).any()), ('Inf', np.isinf(bad).any()))
                                 if found)
            raise WeightsError(f"'{path}': tensor '{name}' holds {kinds} ({bad.size} of {array.size} values): the "
                               'file is damaged or comes from a run that diverged')
    return obj


def _float_arrays(obj, prefix=''):
    """(dotted name, array) of every floating-point numpy array in obj, in order."""
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind == 'f':
            yield prefix or '<root>', obj
    elif isinstance(obj, dict):
        for key, value in obj.items():
            yield from _float_arrays(value, f'{prefix}.{key}' if prefix else str(key))
    elif isinstance(obj, (list, tuple)):
        for index, value in enumerate(obj):
            yield from _float_arrays(value, f'{prefix}[{index}]')


# ---------------------------------------------------------------- choosing the weights inside a file

_MODEL_ENTRIES = ('model', 'state_dict')
_EMA_ENTRIES = ('model_ema', 'state_dict_ema')
_PADDLE_NAME_TABLE = 'StructuredToParameterName@@'  # added by older paddle.save of a state dict


def _is_state_dict(obj):
    return isinstance(obj, dict) and bool(obj) and all(
        isinstance(v, np.ndarray) for k, v in obj.items() if k != _PADDLE_NAME_TABLE)


def _select_entry(obj, path, prefer_ema):
    """(state dict, entry name or None). A raw state dict is used as is; otherwise the first of
    model, state_dict, model_ema, state_dict_ema present (the EMA entries first when prefer_ema)."""
    if _is_state_dict(obj):
        return obj, None
    if isinstance(obj, dict):
        order = _EMA_ENTRIES + _MODEL_ENTRIES if prefer_ema else _MODEL_ENTRIES + _EMA_ENTRIES
        for entry in order:
            if _is_state_dict(obj.get(entry)):
                return obj[entry], entry
        found = sorted(str(k) for k in obj)[:10]
    else:
        found = type(obj).__name__
    raise WeightsError(f"'{path}': no weights found: expected a state dict of tensors or an entry "
                       f"{list(_MODEL_ENTRIES + _EMA_ENTRIES)}, got {found}")


def _strip_prefixes(state, path):
    out = {}
    for key, value in state.items():
        if key == _PADDLE_NAME_TABLE:
            continue
        name = key
        while name.startswith('module.'):
            name = name[len('module.'):]
        if name in out:
            raise WeightsError(f"'{path}': keys '{key}' and another one both name '{name}' after removing "
                               "'module.' prefixes")
        out[name] = value
    return out


def read_file(path):
    """The object a weights file holds, tensors as numpy arrays, read once and checked finite. Format by extension:
    `.safetensors`, `.pdparams`/`.pdopt` (paddle.save), anything else a PyTorch zip checkpoint; bfloat16 tensors
    come back as float32. Raises WeightsError naming the file (and the tensor, for one holding NaN/Inf)."""
    if not os.path.isfile(path):
        raise WeightsError(f"weights file '{path}' not found")
    if path.endswith(('.pdparams', '.pdopt')):
        return read_paddle_file(path)  # checks finiteness itself (it is also read directly)
    return check_finite(_read_safetensors(path) if path.endswith('.safetensors') else _read_torch(path), path)


def weights_in(obj, path, prefer_ema=False):
    """(state dict {name: numpy array} without `module.` prefixes, entry name or None) of obj, the object read from
    path: a raw state dict as it is, else its `model` (else `state_dict`, `model_ema`, `state_dict_ema`) entry;
    prefer_ema tries the EMA entries first. WeightsError naming path when obj holds no weights."""
    state, entry = _select_entry(obj, path, prefer_ema)
    return _strip_prefixes(state, path), entry


def read_checkpoint(path, prefer_ema=False):
    """The state dict of a weights file ({name: numpy array}, unwrapped, without `module.` prefixes; see
    read_file and weights_in)."""
    return weights_in(read_file(path), path, prefer_ema)[0]


# ---------------------------------------------------------------- fitting a state dict onto a model

_NP_DTYPES = {paddle.float32: np.float32, paddle.float64: np.float64, paddle.float16: np.float16}


@dataclass
class Fit:
    """How a state dict fits a model: arrays ready for set_state_dict and what did not fit."""
    arrays: dict
    notes: dict = field(default_factory=dict)  # what the model's checkpoint_filter did (layout, resizes)
    missing: list = field(default_factory=list)
    unexpected: list = field(default_factory=list)
    mismatched: list = field(default_factory=list)  # (model name, source shape, model shape)
    reinitialised: list = field(default_factory=list)  # classifier names left at init by finetune

    @property
    def layout(self):
        return self.notes.get('layout', 'native')

    @property
    def resized(self):
        return self.notes.get('resized')

    def problems(self, limit=3):
        """One line listing missing, unexpected and mis-shaped keys ('' when everything fits)."""
        def some(items):
            items = [str(i) for i in items]
            more = f' ... (+{len(items) - limit} more)' if len(items) > limit else ''
            return ', '.join(items[:limit]) + more
        parts = []
        if self.missing:
            parts.append(f'missing ({len(self.missing)}): {some(self.missing)}')
        if self.unexpected:
            parts.append(f'unexpected ({len(self.unexpected)}): {some(self.unexpected)}')
        if self.mismatched:
            parts.append(f'mis-shaped ({len(self.mismatched)}): '
                         + some(f'{k} {list(s)} vs model {list(m)}' for k, s, m in self.mismatched))
        return '; '.join(parts)


def fit_state_dict(state, model, from_torch=True, finetune=False):
    """Map a read state dict onto model's structured names, shapes and dtypes; never raises on a misfit.

    The model's own `checkpoint_filter(state)` (if it has one) first renames keys and adapts tensors
    (returns (state, notes)). from_torch: the source stores Linear weights as PyTorch does ([out, in]); they are
    transposed to Paddle's [in, out]. finetune: tensors of the classifier layers the model declares
    (`model.classifier_names()`) of another class count are left at the model's init and listed in
    `reinitialised` instead of `mismatched`.
    """
    notes = {}
    if hasattr(model, 'checkpoint_filter'):
        state, notes = model.checkpoint_filter(state)
    classifier = tuple(f'{name}.' for name in (model.classifier_names() if hasattr(model, 'classifier_names') else ()))
    params = model.state_dict()
    linear_weights = {f'{name}.weight' for name, layer in model.named_sublayers() if isinstance(layer, nn.Linear)}
    fit = Fit(arrays={}, notes=notes)
    for key, value in state.items():
        if key not in params:
            fit.unexpected.append(notes.get('sources', {}).get(key, key))
            continue
        target = params[key]
        if from_torch and key in linear_weights and value.ndim == 2:
            value = value.T
        if tuple(value.shape) != tuple(target.shape):
            if finetune and key.startswith(classifier):
                fit.reinitialised.append(key)
            else:
                fit.mismatched.append((key, tuple(value.shape), tuple(target.shape)))
            continue
        if target.dtype not in _NP_DTYPES:
            raise WeightsError(f"parameter '{key}' has dtype {target.dtype}; expected float16/32/64")
        fit.arrays[key] = np.ascontiguousarray(value, dtype=_NP_DTYPES[target.dtype])
    fit.unexpected += notes.get('duplicates', [])
    mismatched = {name for name, _, _ in fit.mismatched}
    fit.missing = [name for name in params
                   if name not in fit.arrays and name not in mismatched and name not in fit.reinitialised]
    return fit


def to_paddle_state_dict(state, model, from_torch=True, source='checkpoint'):
    """{structured name: array} ready for model.set_state_dict, from a naver-ai/timm/Paddle state dict.

    Every key and shape is checked against the model; a misfit raises WeightsError whose one-line
    message starts with a summary naming source, then lists missing, unexpected and mis-shaped keys.
    """
    fit = fit_state_dict(state, model, from_torch=from_torch)
    if fit.problems():
        raise WeightsError(_misfit_message(source, fit))
    return fit.arrays


def _misfit_message(source, fit):
    fitting = len(fit.arrays)
    hint = ' (weights of another variant? check the config)' if len(fit.mismatched) > fitting else ''
    return (f"'{source}': weights do not fit the model{hint}: {fitting} tensors fit, {fit.layout} layout; "
            f'{fit.problems()}')


@dataclass
class LoadReport:
    """What load_pretrained did; str() is one line for logs."""
    path: str
    entry: str  # the wrapper entry the weights came from, None for a raw state dict
    fit: Fit

    def __str__(self):
        text = f"loaded {len(self.fit.arrays)} tensors from '{self.path}'"
        text += f" (entry '{self.entry}', {self.fit.layout} layout)" if self.entry else f' ({self.fit.layout} layout)'
        if self.fit.resized:
            text += f', pos_embed resized {self.fit.resized[0]} -> {self.fit.resized[1]}'
        if self.fit.reinitialised:
            text += (f'; classifier re-initialised for the new class count (fine-tuning): '
                     f'{", ".join(self.fit.reinitialised)}')
        if self.fit.problems():
            text += f'; kept model init / ignored: {self.fit.problems()}'
        return text


def resolve_weights_path(path):
    """path itself if it is a file, else path + '.pdparams' (this repo's checkpoints are named without it)."""
    if not os.path.isfile(path) and os.path.isfile(path + '.pdparams'):
        return path + '.pdparams'
    return path


def load_pretrained(model, path, strict=True, prefer_ema=False, finetune=False):
    """Load the weights file at path (any format read_file reads) into model; returns a LoadReport (see
    load_state)."""
    path = resolve_weights_path(path)
    return load_state(model, read_file(path), path, strict=strict, prefer_ema=prefer_ema, finetune=finetune)


def load_state(model, obj, path, strict=True, prefer_ema=False, finetune=False):
    """Load the weights of obj, the object read from the weights file at path (read_file), into model; returns a
    LoadReport.

    strict: any missing, unexpected or mis-shaped key raises WeightsError and leaves the model unchanged.
    finetune: a classifier (the model's classifier_names()) of another class count is re-initialised, not an
    error; every other tensor must still fit when strict. Not strict: the keys that fit are loaded, the rest is
    reported.
    `.pdparams` files already hold Paddle layouts; all other formats are PyTorch layouts (transposed Linear).
    """
    state, entry = weights_in(obj, path, prefer_ema)
    fit = fit_state_dict(state, model, from_torch=not path.endswith('.pdparams'), finetune=finetune)
    if strict and fit.problems():
        raise WeightsError(_misfit_message(path, fit))
    with warnings.catch_warnings():  # Paddle warns per key left out; the report lists them once
        warnings.simplefilter('ignore', UserWarning)
        model.set_state_dict(fit.arrays)
    return LoadReport(path, entry, fit)
