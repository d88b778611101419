"""Read PiT weights (PyTorch, safetensors, Paddle files) and fit them to this repo's model.

    report = load_pretrained(model, 'pit_ti_730.pth')           # official naver-ai or timm weights
    report = load_pretrained(model, 'output/checkpoint-latest')  # this repo's own checkpoints (.pdparams)

Sources understood (all give the same Paddle state dict):
- naver-ai/pit: raw state dicts, pooling layers as `pools.{s}.*`;
- timm >= 0.9: pooling before stage s+1, `transformers.{s+1}.pool.*`; timm <= 0.8: after stage s,
  `transformers.{s}.pool.*` (told apart by whether stage 0 holds a pool);
- wrapped in `model` / `state_dict` / `model_ema` / `state_dict_ema` entries (DeiT, timm, this repo), with any
  `module.` prefixes of DistributedDataParallel or EMA wrappers.
PyTorch files are read without torch: the zip archive of `torch.save` is unpickled by an allow-list that only
rebuilds tensors and plain containers, so a checkpoint cannot run code. `.pdparams` files are read with
`paddle.load`, which unpickles freely: load only Paddle files you trust.
"""
import argparse
import collections
import json
import os
import pickle
import re
import warnings
import zipfile
from dataclasses import dataclass, field

import numpy as np
import paddle
import paddle.nn as nn

from pit import resize_pos_embed


class WeightsError(ValueError):
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


class _TorchUnpickler(pickle.Unpickler):
    """Unpickles a torch zip archive's data.pkl; storages come from the archive as 1-D numpy arrays."""

    def __init__(self, file, archive, prefix, byteorder):
        super().__init__(file)
        self._archive = archive
        self._prefix = prefix
        self._byteorder = '<' if byteorder == 'little' else '>'
        self._storages = {}

    def find_class(self, module, name):
        if (module, name) not in _ALLOWED_GLOBALS:
            raise _RefusedGlobal(f'refusing to load global {module}.{name}: only tensors and plain containers '
                                 'are allowed')
        return _ALLOWED_GLOBALS[(module, name)]

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


def _read_safetensors(path):
    """8-byte little-endian header length, a JSON header {name: {dtype, shape, data_offsets}}, raw bytes."""
    with open(path, 'rb') as f:
        data = f.read()
    try:
        if len(data) < 8:
            raise ValueError(f'{len(data)} bytes is shorter than the header length field')
        header_len = int.from_bytes(data[:8], 'little')
        if 8 + header_len > len(data):
            raise ValueError(f'header of {header_len} bytes overruns the file of {len(data)} bytes')
        header = json.loads(data[8:8 + header_len])
        body = memoryview(data)[8 + header_len:]
        return {name: _safetensors_array(name, info, body) for name, info in header.items()
                if name != '__metadata__'}
    except (ValueError, KeyError, TypeError) as e:
        raise WeightsError(f"'{path}': truncated or corrupt safetensors file ({e})") from e


def _safetensors_array(name, info, body):
    if info['dtype'] not in _SAFETENSORS_DTYPES:
        raise ValueError(f"tensor '{name}' has unsupported dtype {info['dtype']}")
    dtype = _SAFETENSORS_DTYPES[info['dtype']]
    shape = tuple(int(s) for s in info['shape'])
    begin, end = (int(o) for o in info['data_offsets'])
    itemsize = 2 if dtype == _BFLOAT16 else np.dtype(dtype).itemsize
    if not 0 <= begin <= end <= len(body) or end - begin != int(np.prod(shape)) * itemsize:
        raise ValueError(f"tensor '{name}' {shape} {info['dtype']} does not fit its data offsets "
                         f'[{begin}, {end}) in {len(body)} bytes')
    if dtype == _BFLOAT16:
        array = (np.frombuffer(body[begin:end], dtype='<u2').astype(np.uint32) << 16).view(np.float32)
    else:
        array = np.frombuffer(body[begin:end], dtype=np.dtype(dtype).newbyteorder('<')).astype(dtype)
    return array.reshape(shape)


# ---------------------------------------------------------------- Paddle

def _read_pdparams(path):
    try:
        return paddle.load(path, return_numpy=True)
    except Exception as e:  # paddle.load raises ValueError, EOFError, UnpicklingError... for a bad file
        raise WeightsError(f"'{path}': truncated or corrupt .pdparams file ({type(e).__name__}: {e})") from e


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


def read_checkpoint(path, prefer_ema=False):
    """Read a weights file into {name: numpy array}, unwrapped and without `module.` prefixes.

    Format by extension: `.safetensors`, `.pdparams` (paddle.load), anything else a PyTorch zip checkpoint.
    Wrapped files give their `model` (else `state_dict`, `model_ema`, `state_dict_ema`) entry; prefer_ema
    tries the EMA entries first. bfloat16 tensors come back as float32. Raises WeightsError naming the file.
    """
    return _read(path, prefer_ema)[0]


def _read(path, prefer_ema):
    """(state, entry): read_checkpoint plus the name of the entry used (None for a raw state dict)."""
    if not os.path.isfile(path):
        raise WeightsError(f"weights file '{path}' not found")
    if path.endswith('.safetensors'):
        obj = _read_safetensors(path)
    elif path.endswith('.pdparams'):
        obj = _read_pdparams(path)
    else:
        obj = _read_torch(path)
    state, entry = _select_entry(obj, path, prefer_ema)
    return _strip_prefixes(state, path), entry


# ---------------------------------------------------------------- mapping onto the model

_TIMM_POOL = re.compile(r'^transformers\.(\d+)\.pool\.')


def pooling_layout(keys):
    """'timm>=0.9', 'timm<=0.8' or 'native' (naver-ai and this repo: `pools.{s}`) for a set of state keys."""
    stages = {int(m.group(1)) for m in map(_TIMM_POOL.match, keys) if m}
    if not stages:
        return 'native'
    return 'timm<=0.8' if 0 in stages else 'timm>=0.9'


def _rename(key, layout):
    """naver-ai/this repo name of a state key; timm pools move to `pools.{s}`."""
    shift = {'native': 0, 'timm<=0.8': 0, 'timm>=0.9': 1}[layout]
    return _TIMM_POOL.sub(lambda m: f'pools.{int(m.group(1)) - shift}.', key)


_NP_DTYPES = {paddle.float32: np.float32, paddle.float64: np.float64, paddle.float16: np.float16}


@dataclass
class Fit:
    """How a state dict fits a model: arrays ready for set_state_dict and what did not fit."""
    arrays: dict
    layout: str
    missing: list = field(default_factory=list)
    unexpected: list = field(default_factory=list)
    mismatched: list = field(default_factory=list)  # (model name, source shape, model shape)
    resized: tuple = None  # (source grid, model grid) when pos_embed was resized

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


def fit_state_dict(state, model, from_torch=True):
    """Map a read state dict onto model's structured names, shapes and dtypes; never raises on a misfit.

    from_torch: the source stores Linear weights as PyTorch does ([out, in]); they are transposed to
    Paddle's [in, out]. pos_embed [1, C, H, W] is resized (bicubic) to the model's grid when only H, W differ.
    """
    layout = pooling_layout(state)
    params = model.state_dict()
    linear_weights = {f'{name}.weight' for name, layer in model.named_sublayers() if isinstance(layer, nn.Linear)}
    fit = Fit(arrays={}, layout=layout)
    seen = set()
    for key, value in state.items():
        name = _rename(key, layout)
        if name not in params or name in seen:  # seen: a second key for the same parameter (mixed layouts)
            fit.unexpected.append(key)
            continue
        seen.add(name)
        target = params[name]
        if from_torch and name in linear_weights and value.ndim == 2:
            value = value.T
        if name == 'pos_embed' and value.ndim == 4 and value.shape[:2] == tuple(target.shape[:2]) \
                and value.shape[2:] != tuple(target.shape[2:]):
            fit.resized = (tuple(value.shape[2:]), tuple(target.shape[2:]))
            value = resize_pos_embed(paddle.to_tensor(value, dtype='float32'), target.shape[2:]).numpy()
        if tuple(value.shape) != tuple(target.shape):
            fit.mismatched.append((name, tuple(value.shape), tuple(target.shape)))
            continue
        if target.dtype not in _NP_DTYPES:
            raise WeightsError(f"parameter '{name}' has dtype {target.dtype}; expected float16/32/64")
        fit.arrays[name] = np.ascontiguousarray(value, dtype=_NP_DTYPES[target.dtype])
    mismatched = {name for name, _, _ in fit.mismatched}
    fit.missing = [name for name in params if name not in fit.arrays and name not in mismatched]
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
        if self.fit.problems():
            text += f'; kept model init / ignored: {self.fit.problems()}'
        return text


def resolve_weights_path(path):
    """path itself if it is a file, else path + '.pdparams' (this repo's checkpoints are named without it)."""
    if not os.path.isfile(path) and os.path.isfile(path + '.pdparams'):
        return path + '.pdparams'
    return path


def load_pretrained(model, path, strict=True, prefer_ema=False):
    """Load weights from path (any format read_checkpoint reads) into model; returns a LoadReport.

    strict: any missing, unexpected or mis-shaped key raises WeightsError and leaves the model unchanged.
    Not strict: the keys that fit are loaded, the rest is reported (e.g. a new classifier for fine-tuning).
    `.pdparams` files already hold Paddle layouts; all other formats are PyTorch layouts (transposed Linear).
    """
    path = resolve_weights_path(path)
    state, entry = _read(path, prefer_ema)
    fit = fit_state_dict(state, model, from_torch=not path.endswith('.pdparams'))
    if strict and fit.problems():
        raise WeightsError(_misfit_message(path, fit))
    with warnings.catch_warnings():  # Paddle warns per key left out; the report lists them once
        warnings.simplefilter('ignore', UserWarning)
        model.set_state_dict(fit.arrays)
    return LoadReport(path, entry, fit)
