"""CPU set-up of the process and multi-threaded CPU kernels for dygraph (csrc/cpu_kernels.cc).

`configure_cpu()` is the one call that makes a CPU process fast: threads, MKL's code path, plain transposes,
malloc, and this extension. The kernels: a fused multi-head attention with its backward (no N x N matrix kept),
softmax, LayerNorm, the Linear, fc1's bias add with exact GELU, the residual add (with the drop path's per-sample
scale), the token/map transposes, the patch embedding's conv, the pooling's depthwise conv, and the AdamP and
AdamW steps. Paddle's CPU kernels for all but the gemms run on one thread, and its attention keeps the N x N
weights; these were the largest costs of a PiT step on CPU after the matmuls (docs/performance.md has the
figures). Values match paddle's kernels to float rounding (tests/test_cpu_kernels.py, tests/test_optim.py).

`load()` compiles the extension with the C++ compiler of this machine (about 20 s, once per machine and source
version; cached by paddle in ~/.cache/paddle_extensions or PADDLE_EXTENSION_DIR) and links paddle's own OpenMP
runtime and MKL, so the kernels use the threads configure_cpu set. Where they cannot be used (not Linux, no
compiler on PATH, a build folder that cannot be written, a failed build), `load()` returns False and `status()`
says why in one line (a failed build: the compiler's first error line; its whole output is kept in the build
folder's build.log); a process tries once, and shows that line once (`take_warning`).

Which kernels a model runs is decided when it is built: `for_model()` gives the `Kernels` its layers keep (see
its docstring for the rule); `Linear`, `LayerNorm` and `Conv2D` are paddle.nn's layers running a `Kernels`, and an
optimizer asks `for_model()` for the same `Kernels` (the same rule). Each call then checks only its input tensor
(float32, on the CPU, in dygraph), so GPU runs and exported graphs use paddle's ops.
"""
import contextlib
import ctypes
import hashlib
import io
import logging
import os
import re
import shlex
import shutil
import sys
import sysconfig
import warnings

import paddle
import paddle.nn as nn
import paddle.nn.functional as F
from paddle.base.layer_helper import LayerHelper

from gpu import local_process_count

# ---------------------------------------------------------------- the extension

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'csrc', 'cpu_kernels.cc')
# -march=native: built on the machine that runs it (see _build_name). -ffast-math lets the
# compiler use glibc's vectorised expf; NaN inputs still give NaN rows (tested).
CFLAGS = ['-O3', '-march=native', '-ffast-math', '-fopenmp']

_ops = None
_status = 'CPU kernels: not loaded'
_tried = False  # load() builds at most once per process: a failure is not retried (nor reported) per model
_told = False  # the user was shown why the kernels are not in use (take_warning)
FALLBACK = 'using paddle kernels, which are slower'


class _Unavailable(Exception):
    """Why the kernels cannot be used on this machine (one line, for status())."""


def _build_name():
    digest = hashlib.sha1()
    with open(SOURCE, 'rb') as f:
        digest.update(f.read())
    # -march=native code must not be loaded on another CPU (a cache directory shared between machines): the
    # name carries the CPU model and its instruction-set flags.
    digest.update(' '.join(CFLAGS + [paddle.__version__, cpu_info('model name'), cpu_info('flags')]).encode())
    return 'pit_cpu_kernels_' + digest.hexdigest()[:12]


def load():
    """Build (once per machine) and load the kernels; True when they are in use. One attempt per process: after
    a failure status() says why and later calls return False at once. Safe to call from several processes."""
    global _ops, _status, _tried
    if _ops is None and not _tried:
        _tried = True
        try:
            _ops, name = _build_and_load()
        except _Unavailable as e:
            _status = f'CPU kernels: {e}; {FALLBACK}'
            return False
        _status = (f'CPU kernels: fused attention and multi-threaded Linear, GELU, LayerNorm, residual add, '
                   f'convolutions and AdamP/AdamW steps in use ({name})')
    return _ops is not None


def _build_and_load():
    """(the extension's ops, build name); _Unavailable naming the cause: not Linux, no compiler, a build folder
    that cannot be written, the compiler's first error line."""
    if not sys.platform.startswith('linux'):
        raise _Unavailable(f'not built on {sys.platform} (Linux only)')
    missing = [program for program in compilers() if shutil.which(program) is None]
    if missing:  # paddle's build would fail with two tracebacks of its own that never say so
        raise _Unavailable(f'no C++ compiler found ({", ".join(missing)} not on PATH; set CXX/CC to use others)')
    import fcntl
    from paddle.utils.cpp_extension import load as load_extension
    name = _build_name()
    build_dir = os.path.join(extension_dir(), name)
    try:
        os.makedirs(build_dir, exist_ok=True)
        lock = open(os.path.join(build_dir, '.lock'), 'w')
    except OSError as e:
        raise _Unavailable(f"cannot write their build folder '{build_dir}' ({e.strerror or e}: '{e.filename}'); "
                           'set PADDLE_EXTENSION_DIR to a writable folder') from None
    libs = os.path.join(os.path.dirname(paddle.__file__), 'libs')
    log = os.path.join(build_dir, 'build.log')
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one process builds; the others wait, then load its build
        try:
            with _output_to(log), _logging_disabled(), _single_threaded_children():
                ops = load_extension(name=name, sources=[SOURCE], extra_cxx_cflags=CFLAGS,
                                     extra_ldflags=[f'-L{libs}', '-lmklml_intel', '-liomp5', f'-Wl,-rpath,{libs}'],
                                     build_directory=build_dir, verbose=False)
        except Exception as e:  # the compiler's, loader's or file system's own error, reported by status()
            # the build command failed (paddle wraps its CalledProcessError): its output says why; else the error
            output = _read_text(log) if 'non-zero exit status' in str(e) else ''
            reason = first_error_line(output) or ' '.join(str(e).split()) or type(e).__name__
            raise _Unavailable(f'could not be built ({reason[:300]}; full output: {log})') from None
    return ops, name


def compilers():
    """The programs paddle's extension build runs, as distutils picks them: the C++ compiler (paddle checks
    its ABI: CXX) and the compiler that compiles and links (CC); the environment variables override python's
    build configuration."""
    programs = []
    for var in ('CXX', 'CC'):
        words = shlex.split(os.environ.get(var) or sysconfig.get_config_var(var) or '')
        if words and words[0] not in programs:
            programs.append(words[0])
    return programs


def extension_dir():
    """Where paddle keeps built extensions: PADDLE_EXTENSION_DIR, else ~/.cache/paddle_extensions."""
    return os.environ.get('PADDLE_EXTENSION_DIR') or os.path.join(os.path.expanduser('~/.cache'),
                                                                  'paddle_extensions')


def first_error_line(text):
    """The line of a failed build's output that says what failed: the compiler's or linker's first 'error:'
    line, else the last line (a python exception of the build script, a signal's name), else ''."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return next((line for line in lines if re.search(r'\berror:', line, re.IGNORECASE)), lines[-1] if lines else '')


def _read_text(path):
    """The text of path, '' when it cannot be read."""
    try:
        with open(path, encoding='utf-8', errors='replace') as f:
            return f.read()
    except OSError:
        return ''


@contextlib.contextmanager
def _output_to(path):
    """Meanwhile, the output of child processes (file descriptors 1 and 2, which they inherit) goes to path:
    the compiler's messages and the build script's tracebacks are kept there, and status() gives their first
    error line. This process's own prints (paddle's 'Compiling user custom op' banner) are dropped."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    try:
        with open(path, 'w') as f, contextlib.redirect_stdout(io.StringIO()), \
                contextlib.redirect_stderr(io.StringIO()):
            os.dup2(f.fileno(), 1)
            os.dup2(f.fileno(), 2)
            yield
    finally:
        for fd, copy in zip((1, 2), saved):
            os.dup2(copy, fd)
            os.close(copy)


@contextlib.contextmanager
def _logging_disabled():
    """paddle's extension loader logs INFO lines to the root logger while it builds; keep them out of ours."""
    previous = logging.root.manager.disable
    logging.disable(logging.INFO)
    try:
        yield
    finally:
        logging.disable(previous)


@contextlib.contextmanager
def _single_threaded_children():
    """The build runs a python that imports paddle, which prints an OMP_NUM_THREADS banner when that variable
    (set by configure_cpu for this process) is above 1: the build's processes get 1."""
    previous = os.environ.get('OMP_NUM_THREADS')
    os.environ['OMP_NUM_THREADS'] = '1'
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop('OMP_NUM_THREADS', None)
        else:
            os.environ['OMP_NUM_THREADS'] = previous


def in_use():
    return _ops is not None


def status():
    """One line: whether the kernels are in use, and why not."""
    return _status


def take_warning():
    """status() when load() was tried and failed and nobody in this process has shown that yet (marked shown
    now), else None. The caller shows it (its log, stderr), so a process says why once, however many models
    it builds."""
    global _told
    if _tried and _ops is None and not _told:
        _told = True
        return _status
    return None


class Kernels:
    """The kernels a model's layers run, fixed when the model is built (`for_model`).

    With the extension's ops, each method runs its multi-threaded kernel where it applies (a float32 CPU tensor
    in dygraph) and paddle's op elsewhere; without them (`PADDLE`), always paddle's op. `attention` has no
    paddle twin here (pit.Attention holds the other formulations): call it only where `applies(qkv)`.
    Shared, not copied, by deepcopy (the EMA model runs the same kernels).
    """

    def __init__(self, ops=None):
        self._ops = ops

    def __deepcopy__(self, memo):
        return self

    def __repr__(self):
        return f"Kernels({'cpu_kernels' if self._ops is not None else 'paddle'})"

    def _run(self, name, *args):
        """The extension's op `name` on args. paddle records a custom op for the backward even under no_grad
        (its output keeps its inputs, and so every activation before it, alive): there, the op runs on
        detached inputs (the same memory), so inference keeps nothing."""
        if not paddle.is_grad_enabled():
            args = [a.detach() if isinstance(a, paddle.Tensor) else a for a in args]
        return getattr(self._ops, name)(*args)

    def applies(self, x):
        """True where the extension's kernels run on x: they are loaded, dygraph, a float32 CPU tensor."""
        return (self._ops is not None and paddle.in_dynamic_mode() and x.place.is_cpu_place()
                and x.dtype == paddle.float32)

    def softmax(self, x):
        """Softmax over the last axis."""
        return self._run('pit_softmax', x) if self.applies(x) else F.softmax(x, axis=-1)

    def linear(self, x, weight, bias):
        """x @ weight + bias (weight [in, out], bias [out] or None); on the extension, the bias is written first
        and the gemm adds to it (no separate pass), and its gradient is summed on all threads."""
        if bias is not None and self.applies(x):
            return self._run('pit_linear', x, weight, bias)
        return F.linear(x, weight, bias)

    def linear_gelu(self, x, weight, bias):
        """gelu(x @ weight + bias), exact GELU; the bias add and the GELU in one pass on the extension."""
        if bias is not None and self.applies(x):
            return self._run('pit_bias_gelu', paddle.matmul(x, weight), bias)
        return gelu(F.linear(x, weight, bias))

    def layer_norm(self, x, weight, bias, epsilon):
        """LayerNorm over the last axis, with a weight and a bias."""
        if self.applies(x) and weight is not None and bias is not None:
            return self._run('pit_layer_norm', x, weight, bias, epsilon)[0]
        return F.layer_norm(x, x.shape[-1:], weight, bias, epsilon)

    def add(self, x, y, scale=None):
        """x + y, same shapes (the residual add); with scale ([B], one factor per sample: a drop path's
        0 or 1 / keep_prob), x + y * scale[b], in one pass."""
        if self.applies(x) and x.shape == y.shape:
            return self._run('pit_add', x, y) if scale is None else self._run('pit_add_scaled', x, y, scale)
        return x + y if scale is None else x + y * scale.reshape([-1] + [1] * (y.ndim - 1))

    def swap_last2(self, x):
        """[B, A, C] -> [B, C, A] (a stage's map <-> its tokens)."""
        return self._run('pit_swap_last2', x) if self.applies(x) and x.ndim == 3 else x.transpose([0, 2, 1])

    def conv2d(self, x, weight, bias, stride, padding, groups):
        """F.conv2d (NCHW, square kernel and stride, dilation 1, with a bias). On the extension: a depthwise
        conv (groups = in_channels), and a dense conv with padding 0 on an input that needs no gradient (the
        patch embedding of images); other convs run paddle's."""
        if bias is not None and self.applies(x) and x.ndim == 4:
            if groups == x.shape[1] and weight.shape[0] % groups == 0:
                return self._run('pit_depthwise_conv', x, weight, bias, stride, padding)
            if groups == 1 and padding == 0 and x.stop_gradient:
                return self._run('pit_patch_conv', x, weight, bias, stride)
        return F.conv2d(x, weight, bias, stride=stride, padding=padding, groups=groups)

    def adamp_step(self, param, grad, moment1, moment2, beta1_pow, beta2_pow, lr, beta1, beta2, epsilon,
                   weight_decay, delta, wd_ratio, nesterov, channel_axis):
        """One AdamP step of param in place (optim.AdamP's update; channel_axis -1: no projection), on all
        threads, where applies(param): returns True then, else False (the caller runs its own ops)."""
        return self._optimizer_step('pit_adamp', param, grad, moment1, moment2, beta1_pow, beta2_pow, float(lr),
                                    beta1, beta2, epsilon, float(weight_decay), delta, wd_ratio, bool(nesterov),
                                    int(channel_axis))

    def adamw_step(self, param, grad, moment1, moment2, beta1_pow, beta2_pow, lr, beta1, beta2, epsilon, coeff):
        """One paddle.optimizer.AdamW step of param in place (coeff: its weight decay, 0 for an undecayed one),
        on all threads, where applies(param): returns True then, else False (the caller runs paddle's op)."""
        return self._optimizer_step('pit_adamw', param, grad, moment1, moment2, beta1_pow, beta2_pow, float(lr),
                                    beta1, beta2, epsilon, float(coeff))

    def _optimizer_step(self, name, param, grad, *state_and_settings):
        """Run optimizer op `name` on param in place where applies(param) and grad is a float32 CPU tensor;
        True when it ran. detach(): the same memory (paddle refuses in-place ops on a trainable leaf)."""
        if not (self.applies(param) and grad.dtype == paddle.float32 and grad.place.is_cpu_place()):
            return False
        moments_and_powers, settings = state_and_settings[:4], state_and_settings[4:]
        self._run(name, param.detach(), *moments_and_powers, grad, *settings)
        return True

    def attention(self, qkv, num_heads, scale):
        """softmax(scale * q k^T) v per head, no dropout. qkv [B, N, 3C] laid out [B, N, 3, heads, head_dim]
        (the qkv Linear's output) -> [B, N, C] laid out [B, N, heads, head_dim]. Needs applies(qkv)."""
        return self._run('pit_attention', qkv, num_heads, scale)[0]


PADDLE = Kernels()


def gelu(x):
    """Exact GELU of x. Traced into a legacy (.pdmodel) program, the one an int8 export quantises (quantize.py),
    it appends the program's gelu op itself: Paddle 3 moved F.gelu into a C++ op that takes PIR values only
    (Paddle 2.6's F.gelu appends this same op)."""
    if paddle.framework.in_dynamic_or_pir_mode():
        return F.gelu(x)
    helper = LayerHelper('gelu')
    out = helper.create_variable_for_type_inference(x.dtype)
    helper.append_op(type='gelu', inputs={'X': x}, outputs={'Out': out}, attrs={'approximate': False})
    return out


def for_model(enabled=True):
    """The Kernels a model being built keeps. The rule: with enabled, where paddle's current device is the CPU,
    the extension is loaded now (built once per machine) and used; if it cannot be, a RuntimeWarning says why
    (unless the process showed that already: take_warning) and the model runs paddle's kernels (so a model never
    stays slow unnoticed). On a GPU device, or with
    enabled False, paddle's kernels. A model built with them keeps them: to change, build it again."""
    if not enabled or not paddle.get_device().startswith('cpu'):
        return PADDLE
    if not load():
        message = take_warning()
        if message:
            warnings.warn(message, RuntimeWarning, stacklevel=2)
        return PADDLE
    return Kernels(_ops)


# ---------------------------------------------------------------- layers on the kernels
# paddle.nn layers with the same parameters and names (a state dict loads either way) that run `kernels`.


class Linear(nn.Linear):
    """nn.Linear (same parameters and names) on `kernels` (a Kernels): on CPU, one op whose bias
    gradient runs on all threads (paddle's bias add and its backward run on one). With gelu, the layer's
    output is gelu(x @ weight + bias) (exact GELU), the bias add and the GELU in one kernel."""

    def __init__(self, in_features, out_features, kernels=PADDLE, gelu=False, **kwargs):
        super().__init__(in_features, out_features, **kwargs)
        self.kernels = kernels
        self.gelu = gelu

    def forward(self, x):
        if self.gelu:
            return self.kernels.linear_gelu(x, self.weight, self.bias)
        return self.kernels.linear(x, self.weight, self.bias)

    def extra_repr(self):
        return super().extra_repr() + (', activation=gelu' if self.gelu else '')


class LayerNorm(nn.LayerNorm):
    """nn.LayerNorm (same parameters and names) on `kernels` (a Kernels)."""

    def __init__(self, normalized_shape, epsilon=1e-5, kernels=PADDLE):
        super().__init__(normalized_shape, epsilon=epsilon)
        self.kernels = kernels

    def forward(self, x):
        return self.kernels.layer_norm(x, self.weight, self.bias, self._epsilon)


class Conv2D(nn.Conv2D):
    """nn.Conv2D (same parameters and names) on `kernels` (a Kernels): paddle's CPU conv runs its
    im2col, and its depthwise conv altogether, on one thread."""

    def __init__(self, in_channels, out_channels, kernel_size, stride, padding, groups=1, kernels=PADDLE,
                 **kwargs):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=padding, groups=groups,
                         **kwargs)
        self.kernels = kernels
        self.square = (int(stride), int(padding), int(groups))  # ints: one value for both axes

    def forward(self, x):
        return self.kernels.conv2d(x, self.weight, self.bias, *self.square)


# ---------------------------------------------------------------- process set-up

# Freed memory glibc keeps for reuse before it returns the rest to the system (keep_freed_memory).
KEEP_FREED_MB = 2047


def configure_cpu(num_threads=0, kernels=True):
    """Make paddle's CPU kernels fast; call it before the first CPU matmul. Returns the thread count used.

    None of this changes the values the model computes (beyond the float rounding of a different gemm path):
    - num_threads threads (0: the cores divided by the processes on this node); paddle sets OMP_NUM_THREADS=1 at
      import when it is unset, so CPU runs would otherwise use one core.
    - MKL_DEBUG_CPU_TYPE=5 on AMD CPUs: the MKL paddle ships otherwise takes its generic path on non-Intel CPUs
      (read at the first MKL call). Left alone when the user set it, and never set on Intel CPUs, where it
      would force AVX2 over AVX-512.
    - No stride kernels: with them, transpose and split return strided views that the next CPU kernel copies
      element by element; plain transposes are several times faster.
    - glibc keeps up to KEEP_FREED_MB of freed memory (see keep_freed_memory).
    - kernels: build/load this extension now, so that status() can be logged before the model is built.
    """
    num_threads = num_threads or max(1, (os.cpu_count() or 1) // max(local_process_count(), 1))
    os.environ['OMP_NUM_THREADS'] = str(num_threads)
    paddle.base.core.set_num_threads(num_threads)
    if cpu_vendor() == 'AuthenticAMD':
        os.environ.setdefault('MKL_DEBUG_CPU_TYPE', '5')
    paddle.set_flags({'FLAGS_use_stride_kernel': False})
    keep_freed_memory()
    if kernels:
        load()
    return num_threads


def keep_freed_memory(limit_mb=KEEP_FREED_MB):
    """Tell glibc's malloc to serve large blocks from its heap and keep up to limit_mb of freed memory.

    Paddle's CPU allocator mallocs and frees every tensor; glibc serves blocks over 32 MB with fresh mmaps and
    unmaps them on free, so each large activation is page-faulted and zeroed by the kernel again on every step.
    From the heap, freed blocks are reused; beyond limit_mb of free memory at the heap's top, glibc returns it
    to the system (its trim threshold), so an idle process does not sit at its peak. Returns False where this
    is not glibc.
    """
    if not sys.platform.startswith('linux'):
        return False
    try:
        libc = ctypes.CDLL('libc.so.6')
        m_trim_threshold, m_mmap_max = -1, -4
        return bool(libc.mallopt(m_mmap_max, 0)) and bool(libc.mallopt(m_trim_threshold, int(limit_mb) << 20))
    except (OSError, AttributeError):
        return False


def cpu_info(field, cpuinfo='/proc/cpuinfo'):
    """The value of the first CPU's `field` line in /proc/cpuinfo (e.g. 'vendor_id', 'flags'), or ''."""
    try:
        with open(cpuinfo) as f:
            for line in f:
                if line.split(':', 1)[0].strip() == field:
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return ''


def cpu_vendor(cpuinfo='/proc/cpuinfo'):
    """The vendor_id of the first CPU (e.g. 'GenuineIntel', 'AuthenticAMD'), or '' where it cannot be read."""
    return cpu_info('vendor_id', cpuinfo)
