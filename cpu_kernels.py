"""Multi-threaded CPU kernels for dygraph (csrc/cpu_kernels.cc): softmax, LayerNorm, bias add and exact GELU.
Built on first use.

Paddle's CPU kernels for these run on one thread; after the matmuls they were the largest costs of a PiT step
on CPU. Forward+backward, 2 threads: softmax over the 32x2x730x730 attention weights 64 -> 34 ms (forward
39 -> 11 ms), LayerNorm on [32, 730, 64] 14.5 -> 1.2 ms, bias add on [32, 730, 256] 25.7 -> 4.4 ms, GELU on it
23.7 -> 8.4 ms. Values match paddle's kernels to float rounding (tests/test_cpu_kernels.py).

`load()` compiles the extension with the C++ compiler of this machine (about 10 s, once per machine and source
version; cached by paddle in ~/.cache/paddle_extensions or PADDLE_EXTENSION_DIR) and links paddle's own OpenMP
runtime, so the kernels use the threads that utils.configure_cpu set. Where it cannot be built (no compiler,
not Linux), `load()` returns False and `status()` says why; callers log that, and the model then uses paddle's
kernels. GPU runs and exported models never use these kernels.
"""
import contextlib
import hashlib
import io
import logging
import os
import sys

import paddle
import paddle.nn.functional as F

from utils import cpu_info

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'csrc', 'cpu_kernels.cc')
# -march=native: built on the machine that runs it (see _build_name). -ffast-math lets the
# compiler use glibc's vectorised expf; NaN inputs still give NaN rows (tested).
CFLAGS = ['-O3', '-march=native', '-ffast-math', '-fopenmp']

_ops = None
_status = 'CPU kernels: not loaded'


def _build_name():
    digest = hashlib.sha1()
    with open(SOURCE, 'rb') as f:
        digest.update(f.read())
    # -march=native code must not be loaded on another CPU (a cache directory shared between machines): the
    # name carries the CPU model and its instruction-set flags.
    digest.update(' '.join(CFLAGS + [paddle.__version__, cpu_info('model name'), cpu_info('flags')]).encode())
    return 'pit_cpu_kernels_' + digest.hexdigest()[:12]


def load():
    """Build (once) and load the kernels; True when they are in use. Safe to call from several processes."""
    global _ops, _status
    if _ops is not None:
        return True
    if not sys.platform.startswith('linux'):
        _status = f'CPU kernels: not built on {sys.platform} (Linux only); using paddle kernels, which are slower'
        return False
    import fcntl
    from paddle.utils.cpp_extension import load as load_extension
    from paddle.utils.cpp_extension.extension_utils import get_build_directory
    name = _build_name()
    libs = os.path.join(os.path.dirname(paddle.__file__), 'libs')
    quiet = io.StringIO()
    try:
        build_dir = os.path.join(get_build_directory(), name)
        os.makedirs(build_dir, exist_ok=True)
        with open(os.path.join(build_dir, '.lock'), 'w') as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # one process builds; the others wait, then load its build
            with contextlib.redirect_stdout(quiet), _logging_disabled():
                _ops = load_extension(name=name, sources=[SOURCE], extra_cxx_cflags=CFLAGS,
                                      extra_ldflags=[f'-L{libs}', '-liomp5', f'-Wl,-rpath,{libs}'],
                                      build_directory=build_dir, verbose=False)
    except Exception as e:  # the compiler's, loader's or file system's own error, reported by status()
        reason = ' '.join(str(e).split())[:300] or type(e).__name__
        _status = f'CPU kernels: could not be built ({reason}); using paddle kernels, which are slower'
        return False
    _status = f'CPU kernels: multi-threaded softmax, LayerNorm, bias add and GELU in use ({name})'
    return True


@contextlib.contextmanager
def _logging_disabled():
    """paddle's extension loader logs INFO lines to the root logger while it builds; keep them out of ours."""
    previous = logging.root.manager.disable
    logging.disable(logging.INFO)
    try:
        yield
    finally:
        logging.disable(previous)


def in_use():
    return _ops is not None


def status():
    """One line: whether the kernels are in use, and why not."""
    return _status


def usable(x):
    """True where the kernels apply to x: loaded, dygraph, a float32 CPU tensor."""
    return _ops is not None and paddle.in_dynamic_mode() and x.place.is_cpu_place() and x.dtype == paddle.float32


def softmax(x):
    """Softmax over the last axis: the extension's kernel where usable, else paddle's."""
    if usable(x):
        return _ops.pit_softmax(x)
    return F.softmax(x, axis=-1)


def add_bias(x, bias):
    """x + bias over the last axis of a float32 CPU tensor (needs usable(x))."""
    return _ops.pit_bias_add(x, bias)


def gelu(x):
    """Exact (erf) GELU: the extension's kernel where usable, else paddle's."""
    if usable(x):
        return _ops.pit_gelu(x)
    return F.gelu(x)


def layer_norm(x, weight, bias, epsilon):
    """LayerNorm over the last axis of a float32 CPU tensor, with a weight and a bias (needs usable(x))."""
    return _ops.pit_layer_norm(x, weight, bias, epsilon)[0]
