"""Train or evaluate PiT in N processes with paddle.distributed: the same `main` as main_single_gpu.py.

One node, N processes (GPUs, or the CPU over GLOO when paddle has no GPU):
    python main_multi_gpu.py -cfg configs/pit_ti.yaml -data_path /dataset/imagenet -ngpus 4 -resume auto
Started by paddle's launcher instead (also multi-node; run the same command on every node):
    python -m paddle.distributed.launch --nnodes 2 --master 10.0.0.1:8090 --nproc_per_node 4 \\
        main_multi_gpu.py -cfg configs/pit_b.yaml -data_path /dataset/imagenet -resume auto
"""
import warnings
warnings.filterwarnings('ignore', message='No ccache found')  # paddle's import-time warning

import os
import re
import sys

import paddle
import paddle.distributed as dist

from main_single_gpu import get_arguments, load_config, main, run


def _worker(args):
    run(main, args)


def num_processes(config):
    """NGPUS, else every visible GPU, else 2 CPU processes."""
    if config.NGPUS > 0:
        return config.NGPUS
    if paddle.device.is_compiled_with_cuda() and paddle.device.cuda.device_count() > 0:
        return paddle.device.cuda.device_count()
    return 2


def launch(args):
    if 'PADDLE_TRAINERS_NUM' in os.environ:  # started by paddle.distributed.launch: this is one worker already
        return run(main, args)
    config = load_config(args)
    use_gpu = config.DEVICE != 'cpu' and paddle.device.is_compiled_with_cuda() \
        and paddle.device.cuda.device_count() > 0
    nprocs = num_processes(config)
    if not use_gpu:
        os.environ['PADDLE_DISTRI_BACKEND'] = 'gloo'  # a set CUDA_VISIBLE_DEVICES otherwise breaks CPU runs
    try:
        dist.spawn(_worker, args=(args,), nprocs=nprocs, backend='nccl' if use_gpu else 'gloo')
    except Exception as e:  # a failed worker (error, crash, killed DataLoader worker): fail the whole run
        codes = re.findall(r'exit code (-?\d+)', str(e))
        print('error: a training process failed (its error is above); re-run the same command with '
              '-resume auto to continue from the last checkpoint', file=sys.stderr)
        sys.exit(int(codes[0]) if codes and int(codes[0]) > 0 else 1)

if __name__ == '__main__':
    launch(get_arguments())
