"""Small shared helpers: processes, seeding, the rank-aware logger, metric sums synced across ranks."""
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
    """Seed python, numpy and paddle. Training seeds them before every step with step_seed, so a run resumed at
    any step (after a stop inside an epoch, or at an epoch boundary) draws the same drop-path masks and mixup
    parameters as an uninterrupted one; augmentations are seeded per sample (datasets.SeededBatchSampler)."""
    seed = int(seed) % (2 ** 31)
    random.seed(seed)
    np.random.seed(seed)
    paddle.seed(seed)


def step_seed(config, epoch, rank, step):
    """The seed of one process for one training step (epoch and step 0-based)."""
    return int(np.random.SeedSequence([config.SEED % 2 ** 63, epoch, rank, step]).generate_state(1)[0])


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


def gather_strided(rows, total):
    """All `total` rows, in order, on every rank, of a set that ranks share as datasets.ExactlyOnceSampler does:
    rows (numpy, first axis) are items rank, rank + N, rank + 2N, ... of this rank. Shares differ by at most one,
    so each is padded to ceil(total / N) rows for one all_gather (a collective: every rank calls it); the pads
    land at positions >= total, which are cut."""
    world = get_world_size()
    if world == 1:
        return rows
    share = -(-total // world)
    padded = np.zeros((share,) + rows.shape[1:], dtype=rows.dtype)
    padded[:len(rows)] = rows
    gathered = []
    dist.all_gather(gathered, paddle.to_tensor(padded))
    stacked = np.stack([tensor.numpy() for tensor in gathered], axis=1)  # [share, world, ...]: position j*N + r
    return stacked.reshape((share * world,) + rows.shape[1:])[:total]


def format_seconds(seconds):
    seconds = int(max(seconds, 0))
    return f'{seconds // 3600:d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}'


def unwrap_model(model):
    """The layer inside paddle.DataParallel (which holds it as `_layers`), or model itself."""
    return getattr(model, '_layers', model)
