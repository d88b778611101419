"""A distilled PiT trained without a teacher (TRAIN.DISTILLATION_TYPE none) under paddle.DataParallel: every
parameter, head_dist included, gets a gradient, so 2 GLOO processes train past the first step (DataParallel runs
with find_unused_parameters=False) and end with the parameters of 1 process on the same total batch."""
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.slow

WORKER = r'''
import os, sys
import numpy as np
import paddle
import paddle.distributed as dist
sys.path.insert(0, sys.argv[1])
from config import build_config, finalize_config, merge_opts
from cpu_kernels import configure_cpu
from engine import TrainState, train_one_epoch
from losses import build_criterion
from optim import build_lr_scheduler, build_optimizer
from pit import build_pit
from utils import get_rank, get_world_size

OPTS = ['DATA.IMAGE_SIZE', '32', 'MODEL.NUM_CLASSES', '10', 'MODEL.TRANS.PATCH_SIZE', '4', 'MODEL.TRANS.STRIDE',
        '2', 'MODEL.TRANS.BASE_DIMS', '[8, 8, 8]', 'MODEL.TRANS.DEPTH', '[1, 1, 1]', 'MODEL.DROP_PATH', '0.0',
        'MODEL.DISTILL', 'True', 'TRAIN.DISTILLATION_TYPE', 'none', 'TRAIN.OPTIMIZER.NAME', 'SGD',
        'TRAIN.BASE_LR', '0.05', 'TRAIN.WARMUP_EPOCHS', '0', 'TRAIN.SMOOTHING', '0.0', 'REPORT_FREQ', '100']
TOTAL, STEPS = 8, 3


class Loader(list):
    """Batches as train_one_epoch reads a DataLoader."""


def batches(rank, world):
    """This process's share of STEPS batches of TOTAL images (the same images whatever the process count)."""
    rng = np.random.RandomState(100)
    out = Loader()
    per = TOTAL // world
    for _ in range(STEPS):
        images = rng.rand(TOTAL, 3, 32, 32).astype('float32')
        labels = rng.randint(0, 10, size=TOTAL).astype('int64')
        mine = slice(rank * per, (rank + 1) * per)
        out.append((paddle.to_tensor(images[mine]), paddle.to_tensor(labels[mine]), paddle.zeros([per], 'int64')))
    return out


def train(out_dir):
    configure_cpu(1)
    if os.environ.get('PADDLE_TRAINERS_NUM', '1') != '1':
        dist.init_parallel_env()
    world, rank = get_world_size(), get_rank()
    config = finalize_config(merge_opts(build_config(os.path.join(sys.argv[1], 'configs', 'pit_ti.yaml')),
                                        OPTS + ['DATA.BATCH_SIZE', str(TOTAL // world)]), world)
    paddle.seed(0)
    model = build_pit(config)
    loader = batches(rank, world)
    lr_scheduler = build_lr_scheduler(config, len(loader))
    state = TrainState(model, build_optimizer(config, model, lr_scheduler), lr_scheduler,
                       paddle.amp.GradScaler(enable=False), {'enable': False})
    initial = {n: p.numpy().copy() for n, p in model.named_parameters()}
    train_one_epoch(state, build_criterion(config), loader, 0, config)
    np.savez(os.path.join(out_dir, f'world{world}_rank{rank}.npz'),
             **{'final/' + n: p.numpy() for n, p in model.named_parameters()},
             **{'initial/' + n: v for n, v in initial.items()})


if __name__ == '__main__':
    if sys.argv[3] == '1':
        train(sys.argv[2])
    else:
        os.environ['PADDLE_DISTRI_BACKEND'] = 'gloo'
        dist.spawn(train, args=(sys.argv[2],), nprocs=2, backend='gloo')
'''


def run(script, out_dir, processes):
    result = subprocess.run([sys.executable, str(script), ROOT, str(out_dir), str(processes)], capture_output=True,
                            text=True, timeout=600, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]


def test_distilled_model_without_teacher_trains_under_data_parallel_as_in_one_process(tmp_path):
    script = tmp_path / 'worker.py'
    script.write_text(WORKER)
    run(script, tmp_path, 1)
    run(script, tmp_path, 2)
    single = np.load(tmp_path / 'world1_rank0.npz')
    ranks = [np.load(tmp_path / f'world2_rank{r}.npz') for r in range(2)]
    names = [k[len('final/'):] for k in single.files if k.startswith('final/')]
    assert 'head_dist.weight' in names
    for name in names:
        np.testing.assert_array_equal(ranks[0]['final/' + name], ranks[1]['final/' + name], err_msg=name)
        np.testing.assert_allclose(ranks[0]['final/' + name], single['final/' + name], rtol=1e-4, atol=1e-6,
                                   err_msg=name)
    moved = single['final/head_dist.weight'] - single['initial/head_dist.weight']
    assert np.abs(moved).max() > 1e-4  # head_dist is trained, not only carried
