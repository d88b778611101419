"""paddle.DataParallel over 2 CPU processes (GLOO) averages the gradients of every parameter, including those that
come from cpu_kernels' custom operators (LayerNorm, the Linear bias)."""
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
import paddle.nn.functional as F
sys.path.insert(0, sys.argv[1])
from config import build_config, merge_opts
from pit import build_pit
from cpu_kernels import configure_cpu

TINY = ['DATA.IMAGE_SIZE', '32', 'MODEL.NUM_CLASSES', '10', 'MODEL.TRANS.PATCH_SIZE', '4', 'MODEL.TRANS.STRIDE',
        '2', 'MODEL.TRANS.BASE_DIMS', '[8, 8, 8]', 'MODEL.TRANS.DEPTH', '[1, 1, 1]', 'MODEL.DROP_PATH', '0.0']


def batch(rank):
    rng = np.random.RandomState(100 + rank)
    return (paddle.to_tensor(rng.rand(4, 3, 32, 32).astype('float32')),
            paddle.to_tensor(rng.randint(0, 10, size=4).astype('int64')))


def grads(model, x, y):
    model.clear_gradients()
    F.cross_entropy(model(x), y).backward()
    return {n: p.grad.numpy().copy() for n, p in model.named_parameters() if p.grad is not None}


def worker(out_dir):
    configure_cpu(1)
    dist.init_parallel_env()
    rank = dist.get_rank()
    config = merge_opts(build_config(os.path.join(sys.argv[1], 'configs', 'pit_ti.yaml')), TINY)
    paddle.seed(0)
    model = build_pit(config)
    model.train()
    expected = [grads(model, *batch(r)) for r in range(2)]
    ddp = paddle.DataParallel(model)
    model.clear_gradients()
    F.cross_entropy(ddp(*batch(rank)[:1]), batch(rank)[1]).backward()
    got = {n: p.grad.numpy() for n, p in model.named_parameters() if p.grad is not None}
    np.savez(os.path.join(out_dir, f'rank{rank}.npz'), **{'got/' + n: v for n, v in got.items()},
             **{'expected/' + n: (expected[0][n] + expected[1][n]) / 2 for n in got})


if __name__ == '__main__':
    os.environ['PADDLE_DISTRI_BACKEND'] = 'gloo'
    dist.spawn(worker, args=(sys.argv[2],), nprocs=2, backend='gloo')
'''


def run_two_ranks(tmp_path, source):
    """Run a worker script (its `worker` spawned on 2 GLOO processes) and return what each rank saved, in rank
    order (rank{r}.npz in tmp_path)."""
    script = tmp_path / 'worker.py'
    script.write_text(source)
    out = subprocess.run([sys.executable, str(script), ROOT, str(tmp_path)], capture_output=True, text=True,
                         timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    return [np.load(tmp_path / f'rank{rank}.npz') for rank in range(2)]


def test_data_parallel_averages_every_gradient_across_two_cpu_processes(tmp_path):
    for rank, result in enumerate(run_two_ranks(tmp_path, WORKER)):
        names = [k[len('got/'):] for k in result.files if k.startswith('got/')]
        assert any('.fc1.' in n for n in names) and any('.qkv.' in n for n in names)
        for name in names:
            np.testing.assert_allclose(result['got/' + name], result['expected/' + name], rtol=1e-4, atol=1e-6,
                                       err_msg=f'rank {rank}: {name}')


ACCUMULATING_WORKER = r'''
import os, sys
import numpy as np
import paddle
import paddle.distributed as dist
sys.path.insert(0, sys.argv[1])
from config import build_config, finalize_config, merge_opts
from engine import TrainState, train_one_epoch


def batches(rank):
    rng = np.random.RandomState(10 + rank)
    return [(paddle.to_tensor(rng.rand(4, 3).astype('float32')), paddle.to_tensor(rng.randint(0, 2, 4)),
             paddle.zeros([4], 'int64')) for _ in range(4)]


def criterion(inputs, outputs, targets):
    return paddle.nn.functional.cross_entropy(outputs, targets)


def worker(out_dir):
    dist.init_parallel_env()
    rank = dist.get_rank()
    config = finalize_config(merge_opts(build_config(), ['TRAIN.ACCUM_ITER', '2', 'REPORT_FREQ', '10']))
    paddle.seed(0)
    model = paddle.nn.Linear(3, 2)
    optimizer = paddle.optimizer.SGD(learning_rate=0.0, parameters=model.parameters())
    grads, entered = [], []
    original_step, original_no_sync = optimizer.step, paddle.DataParallel.no_sync
    optimizer.step = lambda: (grads.append(model.weight.grad.numpy().copy()), original_step())[1]
    paddle.DataParallel.no_sync = lambda self: (entered.append(1), original_no_sync(self))[1]
    state = TrainState(model, optimizer, None, paddle.amp.GradScaler(enable=False), {'enable': False})
    train_one_epoch(state, criterion, batches(rank), 0, config)
    expected = []
    for group in (slice(0, 2), slice(2, 4)):  # one process: the mean over ranks of each group's summed halves
        total = 0
        for r in range(2):
            model.clear_gradients()
            for x, y, _ in batches(r)[group]:
                (criterion(x, model(x), y) * 0.5).backward()
            total = total + model.weight.grad.numpy() / 2
        expected.append(total)
    np.savez(os.path.join(out_dir, f'rank{rank}.npz'), got=np.stack(grads), expected=np.stack(expected),
             no_sync=len(entered))


if __name__ == '__main__':
    os.environ['PADDLE_DISTRI_BACKEND'] = 'gloo'
    dist.spawn(worker, args=(sys.argv[2],), nprocs=2, backend='gloo')
'''


def test_accumulated_micro_batches_all_reduce_once_per_optimizer_step_with_the_same_gradients(tmp_path):
    for rank, result in enumerate(run_two_ranks(tmp_path, ACCUMULATING_WORKER)):
        assert int(result['no_sync']) == 2  # the first micro-batch of each of the two groups
        np.testing.assert_allclose(result['got'], result['expected'], rtol=1e-5, atol=1e-7, err_msg=f'rank {rank}')
