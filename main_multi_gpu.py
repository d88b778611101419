"""Train or evaluate PiT in N processes with paddle.distributed: the same `main` as main_single_gpu.py.

One node, N processes (GPUs, or the CPU over GLOO when paddle has no GPU):
    python main_multi_gpu.py -cfg configs/pit_ti.yaml -data_path /dataset/imagenet -ngpus 4 -resume auto
Started by paddle's launcher instead (also multi-node; run the same command on every node):
    python -m paddle.distributed.launch --nnodes 2 --master 10.0.0.1:8090 --nproc_per_node 4 \\
        main_multi_gpu.py -cfg configs/pit_b.yaml -data_path /dataset/imagenet -resume auto
"""
import quiet  # noqa: F401  (first: quiets paddle's import in this and every child process)

import logging
import os
import re
import signal
import sys
import warnings

import paddle
import paddle.distributed as dist

import checkpoint
from main_single_gpu import check_config, get_arguments, load_config, main, run


def _worker(args):
    """Body of one spawned process: dies with the launcher, then runs main (one-line errors, exit 2/1)."""
    die_with_parent()
    run(main, args)


def die_with_parent():
    """Ask Linux to SIGKILL this process when the launcher dies: a killed launcher (SIGKILL, a closed task)
    must not leave orphan trainers that go on writing checkpoints into SAVE."""
    if not sys.platform.startswith('linux'):
        return
    import ctypes
    try:
        ctypes.CDLL('libc.so.6').prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # the launcher died before prctl took effect
        os._exit(1)


def num_processes(config):
    """NGPUS, else every visible GPU, else 2 CPU processes."""
    if config.NGPUS > 0:
        return config.NGPUS
    if use_gpu(config):
        return paddle.device.cuda.device_count()
    return 2


def use_gpu(config):
    return config.DEVICE != 'cpu' and paddle.device.is_compiled_with_cuda() and paddle.device.cuda.device_count() > 0


_TRACEBACK = re.compile(r'Process (\d+) terminated with the following error:\n-+\n\n(.*)', re.S)
_EXIT = re.compile(r'Process (\d+) terminated with exit code (-?\d+)')
_SIGNAL = re.compile(r'Process (\d+) terminated with signal (\w+)')


def failure_summary(message, config, nprocs):
    """(text for stderr, exit status) for dist.spawn's exception message about a failed process.

    A worker's own one-line error (exit 2: bad input; 1: the run failed, e.g. a NaN loss) is already on stderr;
    a Python traceback is carried in the message and shown here with its rank. Resuming is suggested only for
    crashes that a re-run can get past (a signal, an unexpected exception) and when a checkpoint exists.
    """
    if match := _TRACEBACK.search(message):
        rank, trace = int(match.group(1)), match.group(2).rstrip()
        last = trace.splitlines()[-1] if trace else 'unknown error'
        head = ''.join(f'[rank {rank}] {line}\n' for line in trace.splitlines())
        return head + f'error: training process {rank} of {nprocs} failed: {last}' + _resume_hint(config), 1
    if match := _SIGNAL.search(message):
        rank, name = int(match.group(1)), match.group(2)
        text = f'error: training process {match.group(1)} of {nprocs} was killed by {name}'
        if name == 'SIGKILL':
            text += ' (often the out-of-memory killer: lower DATA.BATCH_SIZE or DATA.NUM_WORKERS)'
        return text + _resume_hint(config), 1
    if match := _EXIT.search(message):
        rank, code = int(match.group(1)), int(match.group(2))
        hint = _resume_hint(config) if code not in (1, 2) else ''
        return f'error: training process {rank} of {nprocs} exited with status {code} (its error is above){hint}', \
            code if code > 0 else 1
    return f'error: a training process failed: {message.strip().splitlines()[-1]}', 1


def _resume_hint(config):
    if config.EVAL or checkpoint.latest_path(config.SAVE) is None:
        return ''
    how = 'the same command' if config.MODEL.RESUME == 'auto' else 'the same command with -resume auto'
    return f'; re-run {how} to continue from the last checkpoint in {config.SAVE}'


def launch(args):
    if 'PADDLE_TRAINERS_NUM' in os.environ:  # started by paddle.distributed.launch: this is one worker already
        return run(main, args)
    config = load_config(args)
    nprocs = num_processes(config)
    check_config(config, nprocs)  # bad input fails here once, before any process starts
    gpu = use_gpu(config)
    if not gpu:
        os.environ['PADDLE_DISTRI_BACKEND'] = 'gloo'  # a set CUDA_VISIBLE_DEVICES otherwise breaks CPU runs
    warnings.filterwarnings('ignore', message='Your model will be trained under CPUONLY mode')
    logging.getLogger('root').setLevel(logging.WARNING)  # paddle's launch logger: its "find free ports" line
    try:
        dist.spawn(_worker, args=(args,), nprocs=nprocs, backend='nccl' if gpu else 'gloo')
    except Exception as e:  # a failed worker (error, crash, killed DataLoader worker): fail the whole run
        text, status = failure_summary(str(e), config, nprocs)
        print(text, file=sys.stderr)
        sys.exit(status)


if __name__ == '__main__':
    launch(get_arguments())
