"""Clean stops: SIGTERM (what a platform's time limit or preemption sends first) and SIGINT (Ctrl-C).

Paddle installs glog's failure handler for SIGTERM when it is imported (it prints a C++ "FatalError: `Termination
signal`" report, then dies by the signal) and Python raises KeyboardInterrupt for SIGINT wherever the main thread
is. A training process replaces both for the whole run (`handled()`):
- outside a `deferred()` section (start-up, the last lines of a run) the first signal raises StopRequested at once;
- inside one (the epochs of a run, an evaluation) it is only recorded: the loops look at it at safe points (after
  an optimizer step, between evaluation batches), every process agrees on it there (`agreed()`, a collective), and
  the run ends at that point, after writing a mid-epoch checkpoint when that keeps enough work (main_single_gpu).
  In a multi-process run the training loop asks `agreed()` only after the first optimizer step following each
  report step, every engine.STOP_CHECK_STEPS optimizer steps and at the epoch's end (engine.stop_due), not after
  every step: it is a host sync there.
Later signals are ignored while the first is acted on: a terminal's Ctrl-C reaches every process of its group and
main_multi_gpu's launcher forwards what it receives, so a training process often gets the same signal twice.

A stopped process exits with 128 + the signal number (130 for SIGINT, 143 for SIGTERM), as a shell reports a
process killed by that signal. DataLoader workers ignore both signals (`init_dataloader_worker`): the training
process ends them when it stops, and they die with it whatever ends it.
"""
import atexit
import contextlib
import logging
import multiprocessing
import multiprocessing.util  # noqa: F401  (registers its exit handler before ours)
import os
import signal
import sys
import threading

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopRequested(BaseException):
    """The run was asked to stop by a signal; the message says where it stopped and what was kept. Like
    KeyboardInterrupt, not an Exception: code that handles errors (ours or paddle's) lets it through."""

    def __init__(self, signum, message=None):
        self.signum = signum
        super().__init__(message or f'stopped by {signal_name(signum)}')

    @property
    def exit_status(self):
        return 128 + self.signum


def signal_name(signum):
    return signal.Signals(signum).name


class _StopState:
    """The process's first stop signal (0: none yet) and whether it is deferred to the next safe point."""

    def __init__(self):
        self.signum = 0
        self.deferring = 0

    def handle(self, signum, frame):
        if self.signum:
            return
        self.signum = signum
        if not self.deferring:
            raise StopRequested(signum)


_STATE = _StopState()


@contextlib.contextmanager
def handled():
    """SIGTERM and SIGINT stop this process cleanly inside the block (the handlers before it are restored after);
    DataLoader workers still running when it ends are ended (end_daemon_children)."""
    previous = {signum: signal.signal(signum, _STATE.handle) for signum in STOP_SIGNALS}
    try:
        yield
    finally:
        end_daemon_children()
        for signum, handler in previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        _STATE.signum = 0


def end_daemon_children():
    """Kill the daemonic child processes (DataLoader workers) still running, before multiprocessing's exit
    handler would terminate them with a SIGTERM they ignore (init_dataloader_worker) and wait for ever. Paddle
    shuts its workers down only when their loader is garbage-collected, which a process that stops or fails (or
    a test session) does not wait for. Called at the end of `handled()` (a process started by multiprocessing,
    as dist.spawn's are, runs multiprocessing's exit handler but no atexit function) and at exit. Paddle's
    SIGCHLD handler is set aside first: these ends are no failure of the run."""
    children = [child for child in multiprocessing.active_children() if child.daemon]
    if not children:
        return
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    logging.getLogger().setLevel(logging.ERROR)  # paddle's loader thread warns of "workers exit unexpectedly"
    for child in children:
        child.kill()
    for child in children:
        child.join()


atexit.register(end_daemon_children)  # after multiprocessing.util's handler (imported above): runs before it


@contextlib.contextmanager
def deferred():
    """Inside the block a stop signal is recorded, not raised: the code polls `pending()` / `agreed()`."""
    _STATE.deferring += 1
    try:
        yield
    finally:
        _STATE.deferring -= 1


def pending():
    """The stop signal this process received (0: none); no communication."""
    return _STATE.signum


def agreed():
    """The stop signal of any process of the run (0: none), the same in every process: a collective, so every
    process calls it at the same points (after the same optimizer steps). In several processes it waits for the
    device (an all-reduce read on the host): callers ask it at report steps, not after every step; in one it
    reads this process's flag and costs nothing."""
    # imported here: DataLoader workers import this module for init_dataloader_worker and need none of it
    import paddle
    import paddle.distributed as dist
    from utils import get_world_size
    if get_world_size() == 1:
        return _STATE.signum
    flag = paddle.to_tensor([_STATE.signum], dtype='int64')
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)  # SIGTERM (15) wins over SIGINT (2): the mid-epoch save is kept
    return int(flag.numpy()[0])


def die_with_parent(parent_pid=None):
    """Ask Linux to SIGKILL this process when its parent dies: a killed launcher or training process (SIGKILL, the
    out-of-memory killer, a closed task) must not leave orphans that hold its output pipes or go on writing into
    SAVE. parent_pid: the parent that started this process, when known (it may already be gone)."""
    if not sys.platform.startswith('linux'):
        return
    import ctypes
    try:
        ctypes.CDLL('libc.so.6').prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() == 1 or (parent_pid is not None and os.getppid() != parent_pid):
        os._exit(1)  # the parent died before prctl took effect


def init_dataloader_worker(parent_pid, worker_id):
    """DataLoader worker_init_fn (bind parent_pid with functools.partial; picklable for spawned workers): ignore
    SIGINT and SIGTERM, which reach workers with the rest of their process group (a terminal's Ctrl-C, a platform
    stopping every process): the training process finishes its step first and then ends its workers itself.
    A worker killed here would make paddle raise an error in its training process in the middle of that step."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
    die_with_parent(parent_pid)
