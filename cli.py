"""What the commands of this repo share: their flags and config, the set-up of a process, the start of N
processes, and how a command ends.

- Flags: FLAGS defines every shared flag once (the seed's single-dash flags, -opts KEY VALUE for any config key,
  -device, -ema); `argument_parser` gives a command the ones it takes plus its own.
- Config: `command_config` builds a training or evaluation command's config; for -eval the weights file it
  evaluates is read here, once, and describes the model (no -cfg needed for files of this repo).
- A process: `setup_process` (device, process group, CPU threads and kernels, the config finalized for the number
  of processes, SAVE proven writable), `hold_save_folder` (SAVE's run lock), `start_logging` (the one rank-aware
  logger, 'pit', that every module logs to).
- N processes: `launch` spawns them (`spawn`, `num_processes`, `use_gpu`), passes stop signals on (`Stopping`),
  waits (`wait_for`) and reports a failed one (`failure_summary`).
- The end: every error a user or the environment causes is a UserError (bad input: exit status 2) or a RunFailed
  (the run failed: exit status 1), or an OSError of the environment (a missing file: 2; a full disk, a read-only
  folder: 1). EXIT_STATUSES is the one table from those classes to exit statuses; `run_command` ends a command
  through it with one line `error: ...` on stderr and no traceback; `run_training` adds clean stops
  (stops.py). Anything else is a programming error and keeps its traceback.
"""
import quiet  # noqa: F401  (first: quiets paddle's import in this and every child process)

import argparse
import contextlib
import io
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
import cpu_kernels
import runlock
import stops
from compat import check_paddle
from config import ConfigError, build_config, finalize_config
from datasets import shared_memory_note
from errors import RunFailed, UserError
from utils import get_rank, get_world_size, setup_logger

# ---------------------------------------------------------------- flags

# Each flag a command of this repo may take, defined once: its argparse keyword arguments. Flags left at None do
# not override the config (config._FLAG_KEYS names the key of each).
FLAGS = {
    '-cfg': dict(type=str, default=None, help='yaml config, e.g. configs/pit_ti.yaml'),
    '-dataset': dict(type=str, default=None, choices=['imagenet2012'],
                     help='accepted for PaddleViT command lines; the layout is detected under -data_path'),
    '-batch_size': dict(type=int, default=None, help='DATA.BATCH_SIZE (per process)'),
    '-image_size': dict(type=int, default=None, help='DATA.IMAGE_SIZE'),
    '-data_path': dict(type=str, default=None, help='DATA.DATA_PATH'),
    '-save_path': dict(type=str, default=None, help='SAVE'),
    '-ngpus': dict(type=int, default=None, help='NGPUS: processes for main_multi_gpu.py'),
    '-pretrained': dict(type=str, default=None,
                        help='MODEL.PRETRAINED: weights to start from (fine-tuning) or to evaluate'),
    '-resume': dict(type=str, default=None, help="MODEL.RESUME: checkpoint path or 'auto'"),
    '-last_epoch': dict(type=int, default=None, help='TRAIN.LAST_EPOCH (weights-only resume)'),
    '-teacher_model': dict(type=str, default=None, help='TRAIN.TEACHER_MODEL'),
    '-device': dict(type=str, default=None, help="DEVICE: 'auto', 'gpu' or 'cpu'"),
    '-eval': dict(action='store_true', help='evaluate only'),
    '-ema': dict(action='store_true', help="MODEL.EMA_WEIGHTS: use the file's EMA weights"),
    '-eval_save_logits': dict(action='store_true',
                              help='EVAL_SAVE_LOGITS: -eval also writes SAVE/eval_logits.npy and eval_labels.npy'),
    '-amp': dict(action='store_true', help='mixed precision training (GPU)'),
    '-opts': dict(nargs='+', default=None, metavar='KEY VALUE', help='override config keys'),
}
ALIASES = {'-save_path': ('-output',)}  # PaddleViT's names of the same flags


def argument_parser(description, flags=tuple(FLAGS), extra=None):
    """The argparse parser of a command: description shown by -h as written, the shared flags named in flags
    (FLAGS), then extra: {flag: argparse keyword arguments} of the command's own flags, or of a shared flag it
    takes otherwise (another default, help or requirement)."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    extra = dict(extra or {})
    for flag in flags:
        parser.add_argument(flag, *ALIASES.get(flag, ()), **{**FLAGS[flag], **extra.pop(flag, {})})
    for flag, options in extra.items():
        parser.add_argument(flag, **options)
    return parser


def command_config(args, tensors=True):
    """(config, weights) of a training or evaluation command line: its config (defaults, -cfg, flags, -opts;
    checked, not yet finalized) and, for -eval, the weights file it evaluates (checkpoint.eval_weights), read once,
    whose description of the model and preprocessing is the base of the config: -eval needs no -cfg for a file of
    this repo (a given -cfg/-opts still applies; one that contradicts the file's model is a ConfigError). weights
    is None for training. tensors False: the file is read for its description only (the launcher's check)."""
    check_paddle()
    config = build_config(args=args)
    if not config.EVAL:
        return config, None
    weights = checkpoint.eval_weights(config, tensors)
    if weights.described:
        config = build_config(args=args, described=weights.described, described_by=weights.path)
    return config, weights


# ---------------------------------------------------------------- how a command ends

# The most specific class of an error that is listed here decides its exit status, whatever order code catches
# errors in: a FileNotFoundError is bad input although every OSError else is the environment's.
EXIT_STATUSES = {UserError: 2, RunFailed: 1, FileNotFoundError: 2, OSError: 1}
BROKEN_PIPE_STATUS = 128 + 13  # what a shell reports for a tool that SIGPIPE ended, as in `yes | head -1`


def rank_prefix():
    """'[rank r] ' in a process of a multi-process run, else ''."""
    world = int(os.environ.get('PADDLE_TRAINERS_NUM', '1'))
    return f"[rank {os.environ.get('PADDLE_TRAINER_ID', '0')}] " if world > 1 else ''


def fail(error, status=2):
    """One line on stderr (with the rank when there are several processes), exit status 2 (bad input) or 1
    (the run failed), no traceback."""
    print(f'error: {rank_prefix()}{" ".join(str(error).split())}', file=sys.stderr)
    sys.exit(status)


def exit_status(error):
    """The exit status of error by EXIT_STATUSES; None for an error of no listed class (a programming error)."""
    return next((EXIT_STATUSES[kind] for kind in type(error).__mro__ if kind in EXIT_STATUSES), None)


def error_text(error):
    """The one-line message of an error of the table: an OSError of the system as its reason and file name."""
    if isinstance(error, OSError) and error.strerror:
        return error.strerror + (f" ('{error.filename}')" if error.filename else '')
    return str(error)


def run_command(command, *args):
    """command(*args); an error of EXIT_STATUSES ends the process with its one line and status. Output cut short
    by its reader (`... | head -1`) ends the process quietly, as Unix tools do."""
    try:
        result = command(*args)
        sys.stdout.flush()  # a broken pipe surfaces here when the last lines were still buffered
        return result
    except BrokenPipeError:
        # Python flushes stdout again at exit and would report the pipe once more: point it at devnull
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(BROKEN_PIPE_STATUS)
    except Exception as error:
        error = known_error(error)
        status = exit_status(error)
        if status is None:
            raise
        fail(error_text(error), status)


def known_error(error):
    """error, or the error of the table it stands for: paddle raises SystemError when a DataLoader worker dies."""
    if isinstance(error, SystemError) and any(text in str(error) for text in ('Blocking queue is killed',
                                                                              'DataLoader process')):
        return RunFailed('a DataLoader worker process died while loading data (killed, often by the out-of-memory '
                         f'killer{shared_memory_note()}); lower DATA.NUM_WORKERS or DATA.BATCH_SIZE and re-run with '
                         '-resume auto')
    return error


def run_training(main, args):
    """main(config, weights) of the command line args (command_config), in a process of a training or evaluation
    run: one-line errors (run_command), clean stops on SIGTERM/SIGINT (exit 128 + the signal, one line from the
    first process)."""
    with stops.handled():
        try:
            run_command(lambda: main(*command_config(args)))
        except stops.StopRequested as e:
            report_stop(e)


def report_stop(stop):
    """Exit 128 + signal for a stopped run; the first process (rank 0) says where it stopped and what it kept:
    every process of a run stops at the same point, one line is enough."""
    if os.environ.get('PADDLE_TRAINER_ID', '0') == '0':
        fail(stop, stop.exit_status)
    sys.exit(stop.exit_status)


# ---------------------------------------------------------------- the set-up of a process

def setup_process(config):
    """Set up the device and process group (setup_device) and check SAVE. Returns whether this process runs on a
    GPU."""
    use_gpu = setup_device(config)
    prepare_save_dir(config.SAVE)
    return use_gpu


def setup_device(config):
    """Pick the device, join the process group when there are several processes, set up the CPU (threads,
    kernels), finalize config for the number of processes. True when the device is a GPU."""
    use_gpu = config.DEVICE == 'gpu' or (config.DEVICE == 'auto' and paddle.device.is_compiled_with_cuda()
                                         and paddle.device.cuda.device_count() > 0)
    if config.DEVICE == 'gpu' and not paddle.device.is_compiled_with_cuda():
        raise ConfigError("DEVICE='gpu' but this paddle build has no CUDA; install paddlepaddle-gpu or use -device cpu")
    local_rank = int(os.environ.get('PADDLE_LOCAL_RANK', os.environ.get('FLAGS_selected_gpus', '0')).split(',')[0])
    paddle.set_device(f'gpu:{local_rank}' if use_gpu else 'cpu')
    if int(os.environ.get('PADDLE_TRAINERS_NUM', '1')) > 1:
        init_process_group()
    if not use_gpu:
        cpu_kernels.configure_cpu(config.CPU_THREADS, kernels=config.CPU_KERNELS)
    finalize_config(config, get_world_size())
    return use_gpu


def hold_save_folder(config):
    """The run lock of SAVE (runlock.py) for a training run, taken by the process that starts it: a single
    process, rank 0 under paddle.distributed.launch, main_multi_gpu's launcher (its rank 0 then finds the lock held
    by its parent). Nothing for -eval, which writes no checkpoint, or for the other ranks."""
    if config.EVAL or get_rank() != 0:
        return contextlib.nullcontext()
    return runlock.RunLock(config.SAVE)


def start_logging(config, use_gpu, lock):
    """Make the run's logger, 'pit' (utils.setup_logger: SAVE/log.txt, rank-aware), and log the device line and
    the lock taken over from a dead run if any."""
    logger = setup_logger(config.SAVE, get_rank())
    logger.info(f'device {paddle.get_device()}, {get_world_size()} process(es), paddle {paddle.__version__}')
    if not use_gpu and config.CPU_KERNELS:
        warning = cpu_kernels.take_warning()  # once per process: the model's build then says nothing more
        if warning:
            logger.warning(warning)
        else:
            logger.info(cpu_kernels.status())
    if lock is not None and lock.note:
        logger.warning(lock.note)


def init_process_group():
    """dist.init_parallel_env without its banner of modified FLAGS (paddle's own flags; printed by every
    process of every run); anything else it writes to stderr is passed on."""
    captured = io.StringIO()
    with contextlib.redirect_stderr(captured):
        dist.init_parallel_env()
    text, kept, banner = captured.getvalue(), [], False
    for line in text.splitlines(keepends=True):
        if 'Modified FLAGS detected' in line:
            banner = True
        elif banner and line.startswith('====='):
            banner = False
        elif not banner:
            kept.append(line)
    sys.stderr.write(''.join(kept))


def prepare_save_dir(save_dir):
    """Create SAVE and prove it writable now, so a bad -save_path fails in one line before any work."""
    if os.path.exists(save_dir) and not os.path.isdir(save_dir):
        raise ConfigError(f"save path '{save_dir}' is a file, not a folder (SAVE / -save_path)")
    probe = os.path.join(save_dir, f'.write_test{os.getpid()}')
    try:
        os.makedirs(save_dir, exist_ok=True)
        with open(probe, 'w') as f:
            f.write('ok')
        os.remove(probe)
    except OSError as e:
        raise ConfigError(f"save folder '{save_dir}' is not writable: {e.strerror or e} (SAVE / -save_path)") from e


# ---------------------------------------------------------------- N processes

STOP_GRACE = 120  # seconds the training processes get to stop after a stop signal (rank 0 may be saving)
STOP_STATUSES = {128 + signum for signum in stops.STOP_SIGNALS}


def _worker(main, args):
    """Body of one spawned process: dies with the launcher, then runs main (run_training)."""
    stops.die_with_parent()
    run_training(main, args)


def num_processes(config):
    """NGPUS, else every visible GPU, else 2 CPU processes."""
    if config.NGPUS > 0:
        return config.NGPUS
    if use_gpu(config):
        return paddle.device.cuda.device_count()
    return 2


def use_gpu(config):
    """Whether the processes of config run on GPUs: DEVICE allows it and paddle is a CUDA build that sees one."""
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


def launch(main, args):
    """Start the processes that run main(config, weights) for the command line args (or, under
    paddle.distributed.launch, be one); SIGTERM/SIGINT stop them cleanly (Stopping)."""
    if 'PADDLE_TRAINERS_NUM' in os.environ:  # started by paddle.distributed.launch: this is one worker already
        return run_training(main, args)
    with stops.handled():
        try:
            run_command(spawn_and_wait, main, args)
        except stops.StopRequested as e:  # a signal before the training processes started
            fail(e, e.exit_status)


def spawn_and_wait(main, args):
    """Check the config once, take SAVE's run lock for the training processes (not for -eval), spawn them and
    wait; exits with the status of the run."""
    config, _ = command_config(args, tensors=False)  # each process reads the weights itself: they are not passed
    nprocs = num_processes(config)
    finalize_config(config.clone(), nprocs)  # bad input fails here once, before any process starts
    prepare_save_dir(config.SAVE)
    with hold_save_folder(config) as lock:  # held here for the processes spawned below (rank 0 finds it so)
        if lock is not None and lock.note:
            setup_logger(config.SAVE, 0).warning(lock.note)
        stopping = Stopping()
        for signum in stops.STOP_SIGNALS:
            signal.signal(signum, stopping.handle)
        context = spawn(_worker, (main, args), nprocs, use_gpu(config))
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
