"""Write PyTorch `torch.save` zip archives without torch (tests only): what timm/naver-ai files look like inside.

An archive `<name>/data.pkl` (protocol 2) holds an OrderedDict {key: tensor}; each tensor pickles as
`torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad, backward_hooks)` and each storage
as a persistent id ('storage', torch.FloatStorage, key, 'cpu', numel) whose bytes are `<name>/data/<key>`.
"""
import collections
import contextlib
import io
import pickle
import sys
import types
import zipfile

import numpy as np

_STORAGES = {np.dtype(np.float32): 'FloatStorage', np.dtype(np.int64): 'LongStorage',
             np.dtype(np.float16): 'HalfStorage'}


@contextlib.contextmanager
def _torch_names():
    """Fake `torch` / `torch._utils` modules, so pickle writes their globals by name (nothing else uses them)."""
    saved = {name: sys.modules.get(name) for name in ('torch', 'torch._utils')}
    torch, utils = types.ModuleType('torch'), types.ModuleType('torch._utils')

    def _rebuild_tensor_v2(*args):
        raise AssertionError('never called')
    _rebuild_tensor_v2.__module__ = 'torch._utils'
    _rebuild_tensor_v2.__qualname__ = '_rebuild_tensor_v2'
    utils._rebuild_tensor_v2 = _rebuild_tensor_v2
    for dtype, name in _STORAGES.items():
        setattr(torch, name, type(name, (), {'__module__': 'torch', '__qualname__': name}))
    torch._utils = utils
    sys.modules.update({'torch': torch, 'torch._utils': utils})
    try:
        yield torch, utils
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


class _Storage:
    def __init__(self, key, array):
        self.key, self.array = key, array


class _Tensor:
    def __init__(self, storage, rebuild):
        self.storage, self.rebuild = storage, rebuild

    def __reduce__(self):
        shape = self.storage.array.shape
        strides = tuple(s // self.storage.array.itemsize for s in self.storage.array.strides)
        return self.rebuild, (self.storage, 0, shape, strides, False, collections.OrderedDict())


def save_torch_zip(state, path, name='archive'):
    """Write {key: numpy array} (wrapped dicts allowed: {'model': {...}}) as a torch.save zip archive."""
    storages = []
    with _torch_names() as (torch, utils):
        def convert(obj):
            if isinstance(obj, dict):
                return collections.OrderedDict((k, convert(v)) for k, v in obj.items())
            array = np.ascontiguousarray(obj)
            storage = _Storage(str(len(storages)), array)
            storages.append(storage)
            return _Tensor(storage, utils._rebuild_tensor_v2)

        class Pickler(pickle.Pickler):
            def persistent_id(self, obj):
                if isinstance(obj, _Storage):
                    return ('storage', getattr(torch, _STORAGES[obj.array.dtype]), obj.key, 'cpu', obj.array.size)
                return None

        buffer = io.BytesIO()
        Pickler(buffer, protocol=2).dump(convert(state))
    with zipfile.ZipFile(path, 'w') as archive:
        archive.writestr(f'{name}/data.pkl', buffer.getvalue())
        archive.writestr(f'{name}/byteorder', 'little')
        archive.writestr(f'{name}/version', '3\n')
        for storage in storages:
            archive.writestr(f'{name}/data/{storage.key}', storage.array.astype(storage.array.dtype.newbyteorder('<')).tobytes())


def to_timm_layout(paddle_state, linear_weights):
    """A PiT state dict of this repo as timm >= 0.9 saves it: pools.{s} -> transformers.{s+1}.pool, Linear
    weights [in, out] -> [out, in]."""
    out = {}
    for key, value in paddle_state.items():
        value = np.asarray(value)
        if key in linear_weights:
            value = value.T
        if key.startswith('pools.'):
            stage = int(key.split('.')[1])
            key = f'transformers.{stage + 1}.pool.' + key.split('.', 2)[2]
        out[key] = value
    return out
