"""Train or evaluate PiT in N processes with paddle.distributed: the same `main` as main_single_gpu.py.

One node, N processes (GPUs, or the CPU over GLOO when paddle has no GPU):
    python main_multi_gpu.py -cfg configs/pit_ti.yaml -data_path /dataset/imagenet -ngpus 4 -resume auto
Started by paddle's launcher instead (also multi-node; run the same command on every node):
    python -m paddle.distributed.launch --nnodes 2 --master 10.0.0.1:8090 --nproc_per_node 4 \\
        main_multi_gpu.py -cfg configs/pit_b.yaml -data_path /dataset/imagenet -resume auto
"""
import quiet  # noqa: F401  (first: quiets paddle's import in this and every child process)

import logging
import multiprocessing.connection
import os
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


def wait_for(context):
    """Wait for every process of a dist.spawn(join=False) context. When one fails, the others are killed at once
    (SIGKILL: a SIGTERM would make each print paddle's C++ termination report) and (rank, exit code, traceback
    or None) of the failed one is returned; None when all succeeded."""
    running = {process.sentinel: rank for rank, process in enumerate(context.processes)}
    while running:
        for sentinel in multiprocessing.connection.wait(list(running)):
            rank = running.pop(sentinel)
            process = context.processes[rank]
            process.join()
            if process.exitcode != 0:
                for other in context.processes:
                    if other.is_alive():
                        other.kill()
                    other.join()
                queue = context.error_queues[rank]
                return rank, process.exitcode, None if queue.empty() else queue.get()
    return None


def failure_summary(rank, code, trace, config, nprocs):
    """(text for stderr, exit status) for a failed training process.

    A worker's own one-line error (exit 2: bad input; 1: the run failed, e.g. a NaN loss) is already on stderr;
    a Python traceback is shown here with its rank. Resuming is suggested only for crashes that a re-run can get
    past (a signal, an unexpected exception) and when a checkpoint exists.
    """
    if trace:
        trace = trace.rstrip()
        head = ''.join(f'[rank {rank}] {line}\n' for line in trace.splitlines())
        return head + f'error: training process {rank} of {nprocs} failed: {trace.splitlines()[-1]}' + \
            _resume_hint(config), 1
    if code < 0:
        name = signal.Signals(-code).name
        text = f'error: training process {rank} of {nprocs} was killed by {name}'
        if name == 'SIGKILL':
            text += ' (often the out-of-memory killer: lower DATA.BATCH_SIZE or DATA.NUM_WORKERS)'
        return text + _resume_hint(config), 1
    hint = _resume_hint(config) if code not in (1, 2) else ''
    return f'error: training process {rank} of {nprocs} exited with status {code} (its error is above){hint}', code


def _resume_hint(config):
    if config.EVAL or checkpoint.latest_path(config.SAVE) is None:
        return ''
    how = 'the same command' if config.MODEL.RESUME == 'auto' else 'the same command with -resume auto'
    return f'; re-run {how} to continue from the last checkpoint in {config.SAVE}'


def spawn(target, args, nprocs, gpu):
    """dist.spawn(join=False) of nprocs processes running target(*args), over NCCL on GPUs or GLOO on the CPU,
    without paddle's notices (the CPU-only warning, the "find free ports" line)."""
    if not gpu:
        os.environ['PADDLE_DISTRI_BACKEND'] = 'gloo'  # a set CUDA_VISIBLE_DEVICES otherwise breaks CPU runs
    warnings.filterwarnings('ignore', message='Your model will be trained under CPUONLY mode')
    logging.getLogger('root').setLevel(logging.WARNING)  # paddle's launch logger: its "find free ports" line
    return dist.spawn(target, args=args, nprocs=nprocs, backend='nccl' if gpu else 'gloo', join=False)


def launch(args):
    if 'PADDLE_TRAINERS_NUM' in os.environ:  # started by paddle.distributed.launch: this is one worker already
        return run(main, args)
    config = load_config(args)
    nprocs = num_processes(config)
    check_config(config, nprocs)  # bad input fails here once, before any process starts
    context = spawn(_worker, (args,), nprocs, use_gpu(config))
    failure = wait_for(context)
    if failure is not None:  # a failed worker (error, crash, killed DataLoader worker): fail the whole run
        text, status = failure_summary(*failure, config, nprocs)
        print(text, file=sys.stderr)
        sys.exit(status)


if __name__ == '__main__':
    launch(get_arguments())
