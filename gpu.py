"""What the device allows: the decisions of the GPU training path as pure functions of measured facts (Paddle
version, device kind, compute capability, CUDA version, dtype, free /dev/shm), so CPU tests can call every branch.
The few functions that measure (`device_facts`, `gpu_capability`, `free_shared_memory`, `local_process_count`)
are kept apart from the decisions.

    facts = device_facts()                                          # once, after paddle.set_device
    precision, reason = amp_precision(config.AMP, config.AMP_DTYPE, facts.kind, facts.capability, facts.cuda)
    paddle.amp.auto_cast(**autocast_kwargs(precision))               # O1, softmax/exp/log_softmax/layer_norm in fp32
    attention_backend(facts.paddle, facts.kind, facts.capability, precision, head_dim, dropout)   # per call
    shared_memory_decision(shared_memory_need(...), free_shared_memory(), config.DATA.SHARED_MEMORY)

Each rule cites the Paddle code it rests on (2.6 and 3.x read side by side).
"""
import functools
import logging
import os
from typing import NamedTuple, Optional, Tuple

from compat import parse_version
from config import ConfigError

# ---------------------------------------------------------------- the device

SDPA_SINCE = (3, 3)  # paddle.nn.functional.sdpa: scaled_dot_product_attention picks flash/memory-efficient/math


class DeviceFacts(NamedTuple):
    """What the decisions read about the device this process runs on."""
    kind: str  # 'gpu' or 'cpu'
    name: str  # e.g. 'Tesla V100-SXM2-32GB', 'CPU'
    capability: Optional[Tuple[int, int]]  # CUDA compute capability (GPU only)
    cuda: Optional[int]  # major CUDA version paddle was built with (GPU only)
    paddle: Optional[Tuple[int, int, int]]  # paddle's release (None: a development build, taken as the newest)


def device_facts():
    """DeviceFacts of paddle's current device (call after paddle.set_device)."""
    import paddle
    version = parse_version(paddle.__version__)
    if not paddle.get_device().startswith('gpu'):
        return DeviceFacts('cpu', 'CPU', None, None, version)
    cuda = parse_version(paddle.version.cuda())
    return DeviceFacts('gpu', paddle.device.cuda.get_device_name(), gpu_capability(), cuda[0] if cuda else None,
                       version)


@functools.lru_cache(maxsize=None)
def gpu_capability():
    """(major, minor) compute capability of the current GPU, measured once per process."""
    import paddle
    return tuple(paddle.device.cuda.get_device_capability())


def dtype_name(dtype):
    """'float16', 'bfloat16' or 'float32' for a paddle dtype (2.6's VarType and 3.x's DataType alike)."""
    import paddle
    return {paddle.float16: 'float16', paddle.bfloat16: 'bfloat16'}.get(dtype, 'float32')


def newer_or_equal(version, release):
    """paddle `version` (a parse_version tuple; None: a development build, the newest) is release or later."""
    return version is None or tuple(version[:len(release)]) >= tuple(release)


# ---------------------------------------------------------------- precision (AMP)

# Paddle's auto_cast drops AMP with a warning only (amp_guard in python/paddle/amp/auto_cast.py, the same checks
# in 2.6 and 3.x: _is_gpu_float16_supported and _is_gpu_bfloat16_supported): float16 needs capability >= 7.0,
# bfloat16 capability >= 8.0 and CUDA >= 11. Below that the run would train in float32 unannounced.
FLOAT16_CAPABILITY = (7, 0)
BFLOAT16_CAPABILITY = (8, 0)
BFLOAT16_CUDA = 11


def amp_precision(requested, dtype, device, capability=None, cuda=None):
    """(effective precision 'float16' | 'bfloat16' | 'float32', the reason in words) of a training run.

    requested: AMP on; dtype: AMP_DTYPE; device: 'gpu' or 'cpu'; capability (major, minor) and cuda (major
    version) of the GPU. float16 below capability 7.0 runs in float32 (nothing faster exists there; the reason
    says so and is logged as a warning). bfloat16 where the GPU or CUDA lacks it raises ConfigError, advising
    float16 where the GPU has that: bf16 and fp16 train differently (fp16 needs loss scaling), so the switch
    is the user's to make, in one line at start, not a silent float32 run.
    """
    if not requested:
        return 'float32', 'AMP off'
    if device != 'gpu':
        return 'float32', f'AMP requested but running on the {device.upper()}'
    shown = f'{capability[0]}.{capability[1]}'
    if dtype == 'bfloat16' and (tuple(capability) < BFLOAT16_CAPABILITY or (cuda or 0) < BFLOAT16_CUDA):
        advice = ('set AMP_DTYPE float16 (-opts AMP_DTYPE float16)' if tuple(capability) >= FLOAT16_CAPABILITY
                  else 'train without -amp')
        raise ConfigError(f'AMP_DTYPE=bfloat16 needs a GPU of compute capability >= 8.0 and CUDA >= 11; this one '
                          f'has capability {shown}, CUDA {cuda}, where paddle would silently train in float32: '
                          f'{advice}')
    if dtype == 'float16' and tuple(capability) < FLOAT16_CAPABILITY:
        return 'float32', f'AMP float16 needs compute capability >= 7.0, this GPU has {shown}'
    return dtype, f'AMP O1 on a GPU of compute capability {shown}'


# Ops a ViT needs in float32 under O1 (torch autocast, under which DeiT and timm trained PiT, runs softmax,
# log_softmax, exp and layer_norm in float32). Paddle's default O1 black list (python/paddle/amp/amp_lists.py,
# FP16_BLACK_LIST = BF16_BLACK_LIST, 2.6 and 3.3 alike) already holds all four; naming them in custom_black_list
# keeps the recipe's numerics whatever a release's default list holds.
FLOAT32_OPS = ('softmax', 'exp', 'log_softmax', 'layer_norm')


def autocast_kwargs(precision):
    """paddle.amp.auto_cast arguments for a precision of amp_precision: O1 with FLOAT32_OPS in float32, or
    disabled for float32."""
    if precision == 'float32':
        return {'enable': False}
    return {'enable': True, 'dtype': precision, 'level': 'O1', 'custom_black_list': set(FLOAT32_OPS)}


def loss_scaling(precision):
    """Whether the run scales the loss (GradScaler enabled): float16 only; bfloat16 has float32's range."""
    return precision == 'float16'


def scaler_state_to_load(saved, scaling):
    """(the GradScaler state to load or None, a note for the log or None) for a checkpoint's scaler state and a
    run with (scaling) or without loss scaling.

    A scaler saved without loss scaling holds {} (GradScaler.state_dict of a disabled scaler), which an enabled
    GradScaler refuses ('The input state dict is empty', load_state_dict in python/paddle/amp/grad_scaler.py,
    2.6 and 3.x): such a run starts its loss scale afresh. A run without loss scaling keeps nothing of a saved
    scale (a disabled scaler ignores it).
    """
    if scaling and saved:
        return saved, None
    if scaling:
        return None, 'the checkpoint was saved without float16 loss scaling: the loss scale starts afresh'
    if saved:
        return None, "the checkpoint's float16 loss scale is not used: this run has no loss scaling"
    return None, None


# ---------------------------------------------------------------- attention

ATTENTION_KERNELS = {
    'cpu_kernels': "cpu_kernels' fused attention",
    'flash': 'flash attention',
    'memory_efficient': 'the memory-efficient attention kernel',
    'plain': 'plain attention (matmul, softmax, matmul)',
}
FLASH_CAPABILITY = (8, 0)
MEMORY_EFFICIENT_CAPABILITY = (5, 0)
SDPA_MAX_CAPABILITY = (12, 1)


def sdpa_kernel(capability, dtype, head_dim):
    """The kernel Paddle 3.3's scaled_dot_product_attention takes on a GPU for unmasked, non-causal attention
    without a scale (python/paddle/nn/functional/sdpa.py, select_sdp_for_sdpa): 'flash' (capability 8.0-12.1,
    float16/bfloat16, head_dim a multiple of 8 and <= 256), else 'memory_efficient' (capability 5.0-12.1,
    head_dim aligned to the GEMM: 8 for half types on tensor cores, 4 for float32 from 8.0), else 'plain' (its
    math backend). The same CUTLASS kernels exist in 2.6 and 3.0-3.2 (flash_attention, memory_efficient_attention;
    generate_kernels.py builds the latter for sm50-sm90, bfloat16 from sm80)."""
    capability = tuple(capability)
    half = dtype in ('float16', 'bfloat16')
    if (FLASH_CAPABILITY <= capability <= SDPA_MAX_CAPABILITY and half and head_dim % 8 == 0
            and head_dim <= 256):
        return 'flash'
    tensor_cores = capability >= (8, 0) or (capability >= (7, 0) and half)
    alignment = (8 if half else 4) if tensor_cores else 1
    supported = dtype != 'bfloat16' or capability >= (8, 0)
    if MEMORY_EFFICIENT_CAPABILITY <= capability <= SDPA_MAX_CAPABILITY and supported and head_dim % alignment == 0:
        return 'memory_efficient'
    return 'plain'


@functools.lru_cache(maxsize=256)
def attention_backend(paddle_version, device, capability, dtype, head_dim, dropout, cpu_kernels=False):
    """How Attention computes softmax(q k^T / sqrt(head_dim)) v for one call:
    'cpu_kernels' (the CPU, cpu_kernels loaded, no attention dropout: its fused kernel draws none), 'plain'
    (otherwise on the CPU), 'sdpa' (GPU, Paddle >= 3.3: its scaled_dot_product_attention picks the kernel as
    sdpa_kernel says), or on the GPU of an older Paddle the kernel sdpa_kernel names, called directly: before
    3.3, scaled_dot_product_attention (nn/functional/flash_attention.py) goes to flash attention for any GPU
    and dtype and fails on pre-Ampere GPUs and in float32, and the plain form keeps the whole [B, heads, N, N]
    softmax for the backward (attention_activation_bytes). Flash and memory-efficient attention both draw
    attention dropout themselves.

    paddle_version: parse_version tuple (None: development build); capability: (major, minor) on GPU; dtype:
    'float16' | 'bfloat16' | 'float32' of q, k, v; dropout: the attention dropout applied in this call.
    """
    if device != 'gpu':
        return 'cpu_kernels' if cpu_kernels and dropout == 0 else 'plain'
    if newer_or_equal(paddle_version, SDPA_SINCE):
        return 'sdpa'
    return sdpa_kernel(capability, dtype, head_dim)


def attention_kernel(backend, capability, dtype, head_dim):
    """The kernel that runs for a backend of attention_backend ('sdpa' resolved as Paddle 3.3 resolves it)."""
    return sdpa_kernel(capability, dtype, head_dim) if backend == 'sdpa' else backend


def attention_note(facts, dtype, head_dims, dropout):
    """One line for the log at start: the attention kernel of each head size with this Paddle on this device, and
    for a Paddle before 3.3 on a GPU, what 3.3 would do."""
    version = '.'.join(map(str, facts.paddle)) if facts.paddle else 'development build'
    parts = []
    for head_dim in sorted(set(head_dims)):
        backend = attention_backend(facts.paddle, facts.kind, facts.capability, dtype, head_dim, dropout, True)
        kernel = attention_kernel(backend, facts.capability, dtype, head_dim)
        how = ' through scaled_dot_product_attention' if backend == 'sdpa' else ''
        parts.append(f'head dim {head_dim}: {ATTENTION_KERNELS[kernel]}{how}')
    note = f'attention ({dtype}, paddle {version}, {facts.name}): ' + '; '.join(parts)
    if facts.kind == 'gpu' and not newer_or_equal(facts.paddle, SDPA_SINCE):
        note += ("; called directly, since this paddle's scaled_dot_product_attention takes flash attention "
                 'whatever the GPU; paddle >= 3.3 picks the same kernel itself')
    return note


# bytes kept for the backward per element of a block's [B, heads, N, N] attention scores (no attention dropout,
# the recipe): plain float32 keeps the softmax output (the second matmul reads it); under O1 the softmax runs in
# float32 (FLOAT32_OPS) and the second matmul (white list) keeps its own half-precision copy: 4 + 2.
PLAIN_BYTES_PER_SCORE = {'float32': 4, 'float16': 6, 'bfloat16': 6}
# flash and memory-efficient attention keep one float32 log-sum-exp per query row instead of the matrix
ROW_STATISTIC_BYTES = 4


def attention_activation_bytes(batch, heads, tokens, dtype, kernel):
    """Bytes one attention block keeps for its backward beyond q, k, v and its output, on one GPU: the score
    matrix for 'plain' (batch * heads * tokens^2 * PLAIN_BYTES_PER_SCORE[dtype]), the per-row statistic for
    'flash' and 'memory_efficient' (batch * heads * tokens * 4)."""
    if kernel == 'plain':
        return batch * heads * tokens * tokens * PLAIN_BYTES_PER_SCORE[dtype]
    if kernel in ('flash', 'memory_efficient'):
        return batch * heads * tokens * ROW_STATISTIC_BYTES
    raise ValueError(f"kernel must be 'plain', 'flash' or 'memory_efficient', got {kernel!r}")


def stage_shapes(config):
    """[(blocks, heads, tokens, head_dim)] per stage of the PiT config describes: the patch grid
    (IMAGE_SIZE - PATCH_SIZE) // STRIDE + 1, halved (rounded up) by each pooling, plus 1 or 2 class tokens."""
    trans = config.MODEL.TRANS
    grid = (config.DATA.IMAGE_SIZE - trans.PATCH_SIZE) // trans.STRIDE + 1
    class_tokens = 2 if config.MODEL.DISTILL else 1
    shapes = []
    for depth, heads, head_dim in zip(trans.DEPTH, trans.HEADS, trans.BASE_DIMS):
        shapes.append((depth, heads, grid * grid + class_tokens, head_dim))
        grid = (grid - 1) // 2 + 1  # depthwise conv: kernel 3, stride 2, padding 1
    return shapes


def model_attention_bytes(config, batch, dtype, kernel_of):
    """Attention activation bytes of a training step of the PiT of config on one GPU (batch per GPU), summed
    over its blocks; kernel_of(head_dim) names the kernel (e.g. functools.partial(sdpa_kernel, capability,
    dtype)). For a preflight check that warns before a run runs out of memory."""
    return sum(blocks * attention_activation_bytes(batch, heads, tokens, dtype, kernel_of(head_dim))
               for blocks, heads, tokens, head_dim in stage_shapes(config))


# ---------------------------------------------------------------- DataLoader shared memory

PREFETCH_FACTOR = 2  # paddle.io.DataLoader's default: prefetch_factor * num_workers batches outstanding per loader
SHM_MARGIN = 1.25  # room for what else lives in /dev/shm (paddle's own queues, other programs)


def shared_memory_need(batch_size, image_size, workers, processes, prefetch=PREFETCH_FACTOR, itemsize=1):
    """Bytes of /dev/shm the loaders of one node hold at once when batches pass through shared memory: each
    process's loader keeps prefetch * workers batches [batch, S, S, 3] of `itemsize` bytes a value outstanding
    (paddle's _DataLoaderIterMultiProcess._outstanding_capacity, 2.6 and 3.x): 1 for the uint8 training batches,
    4 for float32 evaluation batches."""
    return batch_size * 3 * image_size * image_size * itemsize * prefetch * workers * processes


def gigabytes(n):
    """n bytes for a message: '1.2 GB', or '64 MB' below a gigabyte (binary units, as df -h shows them)."""
    return f'{n / 2 ** 30:.1f} GB' if n >= 2 ** 30 else f'{n / 2 ** 20:.0f} MB'


def shared_memory_decision(need_bytes, free_bytes, requested):
    """(use shared memory, a warning line or None). requested: DATA.SHARED_MEMORY, 'auto' | True | False;
    free_bytes: free space of /dev/shm (None where there is none to measure: paddle's default, on, stands).

    'auto' uses it when need * SHM_MARGIN fits; otherwise turns it off (batches then pass through pipes: slower,
    not fatal) with a warning naming both sizes and the fixes. True keeps it on and warns when it does not fit
    (a worker that cannot write its batch dies, and paddle then blames the out-of-memory killer).
    """
    if requested is False or need_bytes == 0:
        return bool(requested), None
    if free_bytes is None or need_bytes * SHM_MARGIN <= free_bytes:
        return True, None
    sizes = (f'/dev/shm has {gigabytes(free_bytes)} free, the DataLoader workers of this node need about '
             f'{gigabytes(need_bytes * SHM_MARGIN)}')
    fix = (f'give the container more (docker run --shm-size={max(1, -(-int(need_bytes * SHM_MARGIN) // 2 ** 30))}g) '
           'or lower DATA.NUM_WORKERS / DATA.BATCH_SIZE')
    if requested == 'auto':
        return False, f'shared memory off for the DataLoader: {sizes}; to keep it on, {fix}'
    return True, f'DATA.SHARED_MEMORY True but {sizes}: workers may die; {fix}, or set DATA.SHARED_MEMORY auto'


def free_shared_memory(path='/dev/shm'):
    """Free bytes of the shared-memory file system (None where it does not exist, e.g. macOS, Windows)."""
    try:
        stat = os.statvfs(path)
    except (OSError, AttributeError):
        return None
    return stat.f_bavail * stat.f_frsize


def local_process_count(env=None):
    """Training processes on this node: PADDLE_LOCAL_SIZE (paddle.distributed.launch), else PADDLE_TRAINERS_NUM
    (dist.spawn runs every process on one node), else 1."""
    env = os.environ if env is None else env
    return int(env.get('PADDLE_LOCAL_SIZE', env.get('PADDLE_TRAINERS_NUM', '1')))


def amp_settings(config):
    """auto_cast arguments and a GradScaler kept for the whole run (pass-through without float16 loss scaling),
    from the precision this device allows (amp_precision: a bfloat16 request the GPU cannot honour is a
    ConfigError). Logs the effective precision and the attention kernel once. Evaluation runs in float32."""
    import paddle
    logger = logging.getLogger('pit')
    facts = device_facts()
    training_amp = config.AMP and not config.EVAL
    precision, reason = amp_precision(training_amp, config.AMP_DTYPE, facts.kind, facts.capability, facts.cuda)
    if config.AMP and config.EVAL:
        reason = '-amp applies to training; evaluation runs in float32'
    refused_on_gpu = training_amp and facts.kind == 'gpu' and precision == 'float32'
    log = logger.warning if refused_on_gpu else logger.info
    log(f'precision {precision} ({reason})')
    if facts.kind == 'gpu':
        logger.info(attention_note(facts, precision, config.MODEL.TRANS.BASE_DIMS,
                                   0.0 if config.EVAL else config.MODEL.ATTENTION_DROPOUT))
    scaler = paddle.amp.GradScaler(enable=loss_scaling(precision), init_loss_scaling=2.0 ** 16)
    return autocast_kwargs(precision), scaler
