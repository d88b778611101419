"""Small shared helpers: processes, seeding, the rank-aware logger, metric sums synced across ranks."""
import ctypes
import logging
import os
import random
import sys

import numpy as np
import paddle
import paddle.distributed as dist


def get_world_size():
    return dist.get_world_size() if dist.is_initialized() else 1


def get_rank():
    return dist.get_rank() if dist.is_initialized() else 0


def seed_everything(seed):
    """Seed python, numpy and paddle. Called at each epoch start with (SEED, epoch, rank), so a resumed run
    draws the same augmentations, shuffles and drop-path masks as an uninterrupted one (DataLoader workers
    derive their seeds from numpy's state when an epoch's iterator starts)."""
    seed = int(seed) % (2 ** 31)
    random.seed(seed)
    np.random.seed(seed)
    paddle.seed(seed)


def epoch_seed(config, epoch, rank):
    """The seed of one process for one epoch."""
    return config.SEED + 10007 * epoch + rank


def setup_logger(save_dir, rank, name='pit'):
    """The run's logger, made once: rank 0 logs to the console and SAVE/log.txt, other ranks to log_rank{r}.txt."""
    logger = logging.getLogger(name)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    fmt = logging.Formatter(f'%(asctime)s [rank {rank}] %(levelname)s %(message)s', datefmt='%Y-%m-%d %H:%M:%S')
    os.makedirs(save_dir, exist_ok=True)
    file_name = 'log.txt' if rank == 0 else f'log_rank{rank}.txt'
    handlers = [logging.FileHandler(os.path.join(save_dir, file_name))]
    if rank == 0:
        handlers.append(logging.StreamHandler(sys.stdout))
    for handler in handlers:
        handler.setFormatter(fmt)
        logger.addHandler(handler)
    return logger


class MetricSums:
    """Sums of per-sample quantities and their counts, reduced over all ranks once with `synchronize()`.

    Averages are weighted by sample counts, so N processes with unequal shares report what one process would:
    `add('loss', loss * n, n)` then, after synchronize, `avg('loss')` = sum over all samples / all samples.
    """

    def __init__(self, *names):
        # every rank declares the same names, so the all-reduce matches even on a rank that saw no batch
        self.sums = {name: 0.0 for name in names}
        self.counts = {name: 0 for name in names}

    def add(self, name, value_sum, count):
        self.sums[name] += float(value_sum)
        self.counts[name] += int(count)

    def synchronize(self):
        """All-reduce sums and counts (a no-op in a single process, where collectives would raise)."""
        if get_world_size() == 1:
            return self
        names = sorted(self.sums)
        values = [self.sums[n] for n in names] + [float(self.counts[n]) for n in names]
        tensor = paddle.to_tensor(np.array(values, dtype=np.float64))
        dist.all_reduce(tensor)
        reduced = tensor.numpy()
        for i, name in enumerate(names):
            self.sums[name] = float(reduced[i])
            self.counts[name] = int(round(reduced[len(names) + i]))
        return self

    def total(self, name):
        return self.sums.get(name, 0.0)

    def count(self, name):
        return self.counts.get(name, 0)

    def avg(self, name):
        count = self.counts.get(name, 0)
        return self.sums[name] / count if count else float('nan')


def format_seconds(seconds):
    seconds = int(max(seconds, 0))
    return f'{seconds // 3600:d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}'


def configure_cpu(num_threads=0, kernels=True):
    """Make paddle's CPU kernels fast; call it before the first CPU matmul. Returns the thread count used.

    None of this changes the values the model computes (beyond the float rounding of a different gemm path):
    - num_threads threads (0: the cores divided by the processes on this node); paddle sets OMP_NUM_THREADS=1 at
      import when it is unset, so CPU runs would otherwise use one core.
    - MKL_DEBUG_CPU_TYPE=5 on AMD CPUs: the MKL paddle ships otherwise takes its generic path on non-Intel CPUs
      (read at the first MKL call; 2.8x on a 1024^2 matmul on an AVX-512 AMD EPYC). Left alone when the user set
      it, and never set on Intel CPUs, where it would force AVX2 over AVX-512.
    - No stride kernels: with them, transpose and split return strided views that the next CPU kernel copies
      element by element; plain transposes are several times faster (stage-1 attention forward+backward
      786 -> 419 ms).
    - glibc keeps freed memory (see keep_freed_memory).
    - kernels: build/load cpu_kernels (multi-threaded softmax, LayerNorm, bias add, GELU); cpu_kernels.status()
      says the result.
    """
    local_processes = int(os.environ.get('PADDLE_LOCAL_SIZE', os.environ.get('PADDLE_TRAINERS_NUM', '1')))
    num_threads = num_threads or max(1, (os.cpu_count() or 1) // max(local_processes, 1))
    os.environ['OMP_NUM_THREADS'] = str(num_threads)
    paddle.base.core.set_num_threads(num_threads)
    if cpu_vendor() == 'AuthenticAMD':
        os.environ.setdefault('MKL_DEBUG_CPU_TYPE', '5')
    paddle.set_flags({'FLAGS_use_stride_kernel': False})
    keep_freed_memory()
    if kernels:
        import cpu_kernels
        cpu_kernels.load()
    return num_threads


def keep_freed_memory():
    """Tell glibc's malloc to serve large blocks from its heap and keep freed memory instead of unmapping it.

    Paddle's CPU allocator mallocs and frees every tensor; glibc serves blocks over 32 MB with fresh mmaps and
    unmaps them on free, so each large activation (a 32x2x730x730 attention matrix is 136 MB) is page-faulted
    and zeroed by the kernel again on every step. Keeping the memory makes a softmax over it 2.8x faster
    (109 -> 39 ms). The process's memory then stays at its peak. Returns False where this is not glibc.
    """
    if not sys.platform.startswith('linux'):
        return False
    try:
        libc = ctypes.CDLL('libc.so.6')
        m_trim_threshold, m_mmap_max = -1, -4
        return bool(libc.mallopt(m_mmap_max, 0)) and bool(libc.mallopt(m_trim_threshold, 2 ** 31 - 1))
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


def unwrap_model(model):
    """The layer inside paddle.DataParallel (which holds it as `_layers`), or model itself."""
    return getattr(model, '_layers', model)
