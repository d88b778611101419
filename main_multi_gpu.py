"""Train or evaluate PiT in N processes with paddle.distributed: the same `main` as main_single_gpu.py.

One node, N processes (GPUs, or the CPU over GLOO when paddle has no GPU):
    python main_multi_gpu.py -cfg configs/pit_ti.yaml -data_path /dataset/imagenet -ngpus 4 -resume auto
Started by paddle's launcher instead (also multi-node; run the same command on every node):
    python -m paddle.distributed.launch --nnodes 2 --master 10.0.0.1:8090 --nproc_per_node 4 \\
        main_multi_gpu.py -cfg configs/pit_b.yaml -data_path /dataset/imagenet -resume auto
"""
import quiet  # noqa: F401  (first: quiets paddle's import in this and every child process)

import contextlib
import logging
import multiprocessing.connection
import os
import signal
import sys
import time
import warnings

import paddle
import paddle.distributed as dist

import checkpoint
import stops
from cli import fail, run_command
from main_single_gpu import (check_config, get_arguments, hold_save_folder, load_config, main,
                             prepare_save_dir, run)
from utils import setup_logger

STOP_GRACE = 120  # seconds the training processes get to stop after a stop signal (rank 0 may be saving)
STOP_STATUSES = {128 + signum for signum in stops.STOP_SIGNALS}


def _worker(args):
    """Body of one spawned process: dies with the launcher, then runs main (one-line errors, exit 2/1, clean
    stops)."""
    stops.die_with_parent()
    run(main, args)


def num_processes(config):
    """NGPUS, else every visible GPU, else 2 CPU processes."""
    if config.NGPUS > 0:
        return config.NGPUS
    if use_gpu(config):
        return paddle.device.cuda.device_count()
    return 2


def use_gpu(config):
    return config.DEVICE != 'cpu' and paddle.device.is_compiled_with_cuda() and paddle.device.cuda.device_count() > 0


class Stopping:
    """The launcher's part of a clean stop. The first SIGTERM/SIGINT it receives, or a training process that ends
    because it was stopped (exit 128 + signal), is passed on once to every training process: they stop together
    at their next optimizer step and rank 0 reports in one line. A second signal to the launcher kills them at
    once; so does STOP_GRACE seconds without them all ending."""

    def __init__(self):
        self.processes, self.signum, self.forced, self.deadline = [], 0, False, None

    def handle(self, signum, frame):
        if self.signum:
            self.forced = True
            self.kill_all()
        else:
            self.begin(signum)

    def attach(self, processes):
        """The training processes, once spawned (a signal that came during the spawn is passed on now)."""
        self.processes = processes
        if self.signum:
            self.forward()

    def begin(self, signum):
        if not self.signum:
            self.signum, self.deadline = signum, time.time() + STOP_GRACE
            self.forward()

    def forward(self):
        for process in self.processes:
            if process.is_alive():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, self.signum)

    def kill_all(self):
        for process in self.processes:
            if process.is_alive():
                process.kill()

    def overdue(self):
        return self.deadline is not None and time.time() > self.deadline


def wait_for(context, stopping):
    """Wait for every process of a dist.spawn(join=False) context. When one fails, the others are killed at once
    (SIGKILL: nothing of theirs is worth waiting for) and (rank, exit code, traceback or None) of the failed one is
    returned; None when all succeeded or the run was stopped (stopping.signum; then failures that follow from
    the stop are not reported, and processes still running after STOP_GRACE seconds are killed)."""
    running = {process.sentinel: rank for rank, process in enumerate(context.processes)}
    while running:
        for sentinel in multiprocessing.connection.wait(list(running), timeout=1.0):
            rank = running.pop(sentinel)
            process = context.processes[rank]
            process.join()
            if process.exitcode in STOP_STATUSES:
                stopping.begin(process.exitcode - 128)
            elif process.exitcode != 0 and not stopping.signum:
                for other in context.processes:
                    if other.is_alive():
                        other.kill()
                    other.join()
                queue = context.error_queues[rank]
                return rank, process.exitcode, None if queue.empty() else queue.get()
        if running and stopping.overdue():
            stopping.kill_all()
    return None


def stop_summary(stopping, exit_codes, config):
    """(text for stderr or None, exit status) of a stopped run: rank 0 said where it stopped (nothing to add),
    unless the processes had to be killed."""
    name = stops.signal_name(stopping.signum)
    status = exit_codes[0] if exit_codes[0] and exit_codes[0] > 0 else 128 + stopping.signum
    killed = [rank for rank, code in enumerate(exit_codes) if code == -9]
    if stopping.forced:
        return (f'error: stopped at once by a second {name}: training processes killed; the checkpoints in '
                f'{config.SAVE} are intact{_resume_hint(config)}'), 128 + stopping.signum
    if killed:
        return (f'error: training process(es) {killed} did not stop within {STOP_GRACE} s of {name} and were '
                f'killed{_resume_hint(config)}'), 128 + stopping.signum
    return None, status


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
    """Start the training processes (or, under paddle.distributed.launch, be one); SIGTERM/SIGINT stop them
    cleanly (Stopping)."""
    if 'PADDLE_TRAINERS_NUM' in os.environ:  # started by paddle.distributed.launch: this is one worker already
        return run(main, args)
    with stops.handled():
        try:
            run_command(spawn_and_wait, args)
        except stops.StopRequested as e:  # a signal before the training processes started
            fail(e, e.exit_status)


def spawn_and_wait(args):
    """Check the config once, take SAVE's run lock for the training processes (not for -eval), spawn them and
    wait; exits with the status of the run."""
    config = load_config(args)
    nprocs = num_processes(config)
    check_config(config, nprocs)  # bad input fails here once, before any process starts
    prepare_save_dir(config.SAVE)
    with hold_save_folder(config) as lock:  # held here for the processes spawned below (rank 0 finds it so)
        if lock is not None and lock.note:
            setup_logger(config.SAVE, 0).warning(lock.note)
        stopping = Stopping()
        for signum in stops.STOP_SIGNALS:
            signal.signal(signum, stopping.handle)
        context = spawn(_worker, (args,), nprocs, use_gpu(config))
        stopping.attach(context.processes)
        failure = wait_for(context, stopping)
    if failure is not None:  # a failed worker (error, crash, killed DataLoader worker): fail the whole run
        text, status = failure_summary(*failure, config, nprocs)
    elif stopping.signum:
        text, status = stop_summary(stopping, [process.exitcode for process in context.processes], config)
    else:
        return
    if text:
        print(text, file=sys.stderr)
    sys.exit(status)


if __name__ == '__main__':
    launch(get_arguments())
