"""Stops, kills and one run per folder, through the real entry points with the default recipe (DataLoader workers,
RandAugment, mixup/cutmix, EMA, AdamP; only the model, the image size, the epochs and the data are shrunk):

- SIGTERM and SIGINT end a run within seconds with one line, exit 128 + signal, no traceback, no paddle C++ report
  and no process left behind, for one process, the launcher of two and one trainer of two; SIGTERM inside an epoch
  saves it there and the resumed run ends bit-identical to an uninterrupted one;
- a SIGKILLed DataLoader worker ends the run in bounded time with its one line;
- a kill while a best epoch is saved leaves checkpoint-best holding that epoch after the resume;
- SAVE/run.lock: a second run into a busy folder is refused naming the holder, a dead run's lock is taken over;
- resuming with another process count says how the total batch and the LR change; two processes evaluate a
  one-image val set exactly.
"""
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from checkpoint import find_resume
from demo_data import write_dataset
from metrics import read_records
from weights import read_paddle_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.slow

SHRINK = ['DATA.IMAGE_SIZE', '32', 'MODEL.NUM_CLASSES', '10', 'MODEL.TRANS.PATCH_SIZE', '4', 'MODEL.TRANS.STRIDE', '2',
          'MODEL.TRANS.BASE_DIMS', '[8,8,8]', 'MODEL.TRANS.DEPTH', '[1,1,1]', 'MODEL.TRANS.HEADS', '[2,4,8]',
          'TRAIN.NUM_EPOCHS', '2', 'TRAIN.WARMUP_EPOCHS', '1', 'REPORT_FREQ', '2', 'SAVE_ON_SIGTERM_AFTER', '0',
          'DATA.BATCH_SIZE_EVAL', '1']
BATCH = '16'  # 320 train images: 20 steps per epoch in one process, 10 in each of two; 50 val batches


@pytest.fixture(scope='module')
def digits(tmp_path_factory):
    root = str(tmp_path_factory.mktemp('digits'))
    write_dataset(root, source='digits', image_size=32, train_per_class=32, val_per_class=5)
    return root


def command(data, save, processes=1, opts=(), *flags):
    script = ['main_single_gpu.py'] if processes == 1 else ['main_multi_gpu.py', '-ngpus', str(processes)]
    return [sys.executable, *script, '-cfg', 'configs/pit_ti.yaml', '-data_path', data, '-save_path', str(save),
            '-batch_size', BATCH, '-resume', 'auto', *flags, '-opts', *SHRINK, *opts]


def env(**extra):
    """The user's environment: paddle's threads set by the repo (conftest's OMP_NUM_THREADS makes paddle warn in
    every process of a multi-process run)."""
    out = dict(os.environ, **extra)
    out.pop('OMP_NUM_THREADS', None)
    return out


class Run:
    """A run started in its own process group, its output in files (so nothing it leaves behind can hold a pipe)."""

    def __init__(self, cmd, out_dir, extra_env=None):
        os.makedirs(out_dir, exist_ok=True)
        self.out, self.err = os.path.join(out_dir, 'stdout'), os.path.join(out_dir, 'stderr')
        with open(self.out, 'w') as out, open(self.err, 'w') as err:
            self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=err, start_new_session=True,
                                         env=env(**(extra_env or {})))

    def wait_for_log(self, save, pattern, timeout=600):
        """Wait until SAVE/log.txt matches pattern (the run is then past its start-up)."""
        deadline = time.time() + timeout
        log = os.path.join(save, 'log.txt')
        while time.time() < deadline and self.proc.poll() is None:
            if os.path.exists(log) and re.search(pattern, open(log).read()):
                return
            time.sleep(0.05)
        raise AssertionError(f'{pattern!r} never logged; stderr: {self.stderr()[-3000:]}')

    def finish(self, timeout=60):
        """(exit status, seconds it took) of the run, which must end within timeout and leave no process of its
        group behind."""
        start = time.time()
        try:
            status = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            raise AssertionError(f'no exit within {timeout} s; stderr: {self.stderr()[-3000:]}')
        seconds = time.time() - start
        assert_group_gone(self.proc.pid)
        return status, seconds

    def stderr(self):
        return open(self.err).read()

    def children(self, pid=None):
        return children_of(self.proc.pid if pid is None else pid)


def children_of(pid):
    """Child pids of pid (multiprocessing's resource tracker excluded), oldest first."""
    found = []
    for entry in os.listdir('/proc'):
        if entry.isdigit():
            try:
                stat = open(f'/proc/{entry}/stat').read().rsplit(')', 1)[1].split()
                cmdline = open(f'/proc/{entry}/cmdline').read()
            except OSError:
                continue
            if int(stat[1]) == pid and 'resource_tracker import' not in cmdline:
                found.append(int(entry))
    return sorted(found)


def assert_group_gone(pgid, timeout=10):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    left = subprocess.run(['ps', '-o', 'pid,stat,cmd', '-g', str(pgid)], capture_output=True, text=True).stdout
    os.killpg(pgid, signal.SIGKILL)
    raise AssertionError(f'processes left behind:\n{left}')


def one_line(stderr):
    """The run's only line on stderr, which starts with 'error: '; no traceback, no paddle C++ report."""
    assert 'Traceback' not in stderr and 'FatalError' not in stderr and 'C++' not in stderr, stderr[-3000:]
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith('error: '), stderr[-3000:]
    return lines[0]


def latest(save):
    return read_paddle_file(os.path.join(save, 'checkpoint-latest.pdparams'))


def assert_same_training_state(a, b):
    assert (a['epoch'], a['step'], a['best_acc1'], a['best_epoch']) == (b['epoch'], b['step'], b['best_acc1'],
                                                                       b['best_epoch'])
    for part in ('model', 'model_ema'):
        for key in a[part]:
            np.testing.assert_array_equal(a[part][key], b[part][key], err_msg=f'{part} {key}')
    assert a['lr_scheduler'] == b['lr_scheduler']


def evaluation(save):
    """The result -eval wrote into SAVE (eval.json)."""
    with open(os.path.join(save, 'eval.json')) as f:
        return json.load(f)


def run_to_end(cmd, out_dir, extra_env=None):
    run = Run(cmd, out_dir, extra_env)
    status, _ = run.finish(timeout=900)
    assert status == 0, run.stderr()[-3000:]
    return run


@pytest.fixture(scope='module')
def straight_runs(digits, tmp_path_factory):
    """Uninterrupted 2-epoch runs: {processes: SAVE}."""
    saves = {}
    for processes in (1, 2):
        save = str(tmp_path_factory.mktemp(f'straight{processes}'))
        run_to_end(command(digits, save, processes), save + '.out')
        saves[processes] = save
    return saves


# ---------------------------------------------------------------- SIGTERM / SIGINT

def stop_inside_first_epoch(cmd, save, signum, target=lambda run: run.proc.pid, at=r'Epoch\[001/002\] Step\[0004'):
    """Start cmd, send signum to target(run) once the log matches `at` (step 4 of epoch 1); returns (status,
    seconds, the stderr line)."""
    run = Run(cmd, save + '.out')
    run.wait_for_log(save, at)
    os.kill(target(run), signum)
    status, seconds = run.finish()
    return status, seconds, one_line(run.stderr())


@pytest.mark.parametrize('processes', [1, 2])
def test_sigterm_inside_an_epoch_saves_it_there_and_the_resumed_run_ends_bit_identical(digits, straight_runs,
                                                                                    tmp_path, processes):
    save = str(tmp_path / 'stopped')
    cmd = command(digits, save, processes)
    status, seconds, line = stop_inside_first_epoch(cmd, save, signal.SIGTERM)
    steps = 20 // processes
    assert status == 128 + signal.SIGTERM and seconds < 30
    assert re.match(rf'error: (\[rank 0\] )?stopped by SIGTERM at epoch 1, step \d+/{steps}: saved', line), line
    stopped = latest(save)
    assert stopped['epoch'] == 0 and 0 < stopped['step'] < steps and not os.path.exists(os.path.join(save, 'run.lock'))
    run_to_end(cmd, save + '.resumed')
    log = open(os.path.join(save, 'log.txt')).read()
    assert f'0 epoch(s) and {stopped["step"]} batch(es) of epoch 1 done' in log
    assert_same_training_state(latest(straight_runs[processes]), latest(save))
    assert [r['epoch'] for r in read_records(save)] == [1, 2]


def test_sigterm_in_the_evaluation_after_an_epoch_saves_the_trained_epoch_and_the_resumed_run_evaluates_it(
        digits, straight_runs, tmp_path):
    save = str(tmp_path / 'stopped')
    cmd = command(digits, save)
    status, _, line = stop_inside_first_epoch(cmd, save, signal.SIGTERM, at=r'Eval model: batch 4/50')
    assert status == 128 + signal.SIGTERM
    assert line.startswith('error: stopped by SIGTERM in the evaluation after epoch 1: saved in '), line
    assert (latest(save)['epoch'], latest(save)['step']) == (0, 20)
    run_to_end(cmd, save + '.resumed')
    assert 'training pit_ti for 2 epochs from epoch 1, at its evaluation' in open(os.path.join(save, 'log.txt')).read()
    assert_same_training_state(latest(straight_runs[1]), latest(save))
    assert read_records(save) == [dict(r, seconds=s['seconds'], train_img_s=s['train_img_s'])
                                  for r, s in zip(read_records(straight_runs[1]), read_records(save))]


def test_sigint_stops_one_process_in_one_line_without_saving(digits, tmp_path):
    save = str(tmp_path / 'stopped')
    status, seconds, line = stop_inside_first_epoch(command(digits, save), save, signal.SIGINT)
    assert status == 128 + signal.SIGINT and seconds < 30
    assert line.startswith('error: stopped by SIGINT at epoch 1, step ') and 'not saved' in line
    assert not os.path.exists(os.path.join(save, 'checkpoint-latest.pdparams'))


@pytest.mark.parametrize('signum', [signal.SIGINT, signal.SIGTERM])
def test_a_signal_to_one_trainer_of_two_stops_both_in_one_line(digits, tmp_path, signum):
    save = str(tmp_path / 'stopped')
    status, seconds, line = stop_inside_first_epoch(command(digits, save, 2), save, signum,
                                                    target=lambda run: run.children()[-1])
    assert status == 128 + signum and seconds < 30
    assert line.startswith(f'error: [rank 0] stopped by {signal.Signals(signum).name} at epoch 1, step '), line


def test_ctrl_c_in_a_terminal_stops_a_two_process_run_in_one_line(digits, tmp_path):
    """A terminal sends SIGINT to its whole foreground group: launcher, trainers and DataLoader workers."""
    save = str(tmp_path / 'stopped')
    run = Run(command(digits, save, 2), save + '.out')
    run.wait_for_log(save, r'Epoch\[001/002\] Step\[0004')
    os.killpg(run.proc.pid, signal.SIGINT)
    status, seconds = run.finish()
    assert status == 128 + signal.SIGINT and seconds < 30
    assert 'stopped by SIGINT' in one_line(run.stderr())


# ---------------------------------------------------------------- a killed DataLoader worker

@pytest.mark.parametrize('processes', [1, 2])
def test_a_sigkilled_dataloader_worker_ends_the_run_within_60_s_with_its_line(digits, tmp_path, processes):
    save = str(tmp_path / 'run')
    run = Run(command(digits, save, processes), save + '.out')
    run.wait_for_log(save, r'Epoch\[001/002\] Step\[0004')
    trainer = run.proc.pid if processes == 1 else run.children()[0]
    os.kill(run.children(trainer)[0], signal.SIGKILL)
    status, seconds = run.finish()
    stderr = run.stderr()
    assert status == 1 and seconds < 60 and 'Traceback' not in stderr
    assert re.search(r'^error: (\[rank 0\] )?a DataLoader worker process died', stderr, re.M), stderr[-3000:]


# ---------------------------------------------------------------- checkpoint-best after a kill

KILL_AT = """
import os, runpy, signal, sys
import checkpoint
save, place = checkpoint.save, checkpoint._place

def place_or_die(path, fill):
    if os.path.basename(path) == os.environ['KILL_AT']:
        os.kill(os.getpid(), signal.SIGKILL)  # the machine dies before this file gets its name
    place(path, fill)

def save_or_die(save_dir, state, config, classes, is_best=False):
    if is_best and os.path.exists(os.path.join(save_dir, checkpoint.BEST)):  # a new best after an older one
        checkpoint._place = place_or_die
    return save(save_dir, state, config, classes, is_best)

checkpoint.save = save_or_die
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name='__main__')
"""


@pytest.mark.parametrize('point', ['checkpoint-latest.pdparams', 'checkpoint-best.pdparams'])
def test_a_kill_while_a_new_best_epoch_is_saved_leaves_best_holding_it_after_resume(digits, tmp_path, point):
    """The process is SIGKILLed in the save of an epoch that beats an earlier best, before the name `point` is
    given (its numbered file is on disk: SAVE_FREQ 1); checkpoint-best still holds the earlier epoch. After the
    resume it holds the best epoch of the resumed state, the killed epoch's own weights."""
    save = str(tmp_path / 'run')
    opts = ['SAVE_FREQ', '1', 'TRAIN.NUM_EPOCHS', '3', 'TRAIN.WARMUP_EPOCHS', '0', 'TRAIN.BASE_LR', '0.002',
            'TRAIN.LINEAR_SCALED_LR', 'None', 'AUG.MIXUP', '0.0', 'AUG.CUTMIX', '0.0', 'DATA.NUM_WORKERS', '0']
    cmd = command(digits, save, 1, opts)
    killed = subprocess.run([sys.executable, '-c', KILL_AT, *cmd[1:]], cwd=ROOT, capture_output=True, text=True,
                            env=env(KILL_AT=point), timeout=600)
    assert killed.returncode == -signal.SIGKILL, 'no epoch beat an earlier best: the case needs one'
    epoch = len(read_records(save))  # the killed epoch, recorded before its save
    stale = read_paddle_file(os.path.join(save, 'checkpoint-best.pdparams'))
    assert stale['epoch'] < epoch
    run_to_end(cmd, save + '.resumed')
    assert f'held epoch {stale["epoch"]}, not the best epoch {epoch} of this run' in open(
        os.path.join(save, 'log.txt')).read()
    best = read_paddle_file(os.path.join(save, 'checkpoint-best.pdparams'))
    numbered = read_paddle_file(os.path.join(save, f'checkpoint-epoch{best["epoch"]}.pdparams'))
    assert best['epoch'] == best['best_epoch'] == find_resume(save)[1]['best_epoch']
    for key in numbered['model']:
        np.testing.assert_array_equal(best['model'][key], numbered['model'][key])


# ---------------------------------------------------------------- one run per folder

def lock_of(pid):
    from runlock import identity
    return identity(pid)


@pytest.mark.parametrize('processes', [1, 2])
def test_a_run_into_a_folder_another_run_holds_is_refused_naming_it(digits, tmp_path, processes):
    holder = subprocess.Popen(['sleep', '600'])
    try:
        save = tmp_path / 'busy'
        save.mkdir()
        record = lock_of(holder.pid)
        (save / 'run.lock').write_text(json.dumps(record))
        run = Run(command(digits, str(save), processes), str(tmp_path / 'out'))
        status, _ = run.finish(timeout=300)
        line = one_line(run.stderr())
        assert status == 2 and 'is in use by another training run' in line
        assert f"pid {holder.pid} on host {socket.gethostname()} since {record['since']}" in line
        assert json.loads((save / 'run.lock').read_text()) == record
        assert not (save / 'log.txt').exists()  # refused before its first log line
    finally:
        holder.kill()
        holder.wait()


def test_the_lock_of_a_killed_run_is_taken_over_and_eval_needs_none(digits, tmp_path):
    dead = subprocess.Popen(['true'])
    dead.wait()
    save = tmp_path / 'run'
    save.mkdir()
    (save / 'run.lock').write_text(json.dumps(lock_of(dead.pid)))
    run_to_end(command(digits, str(save), 1, ['TRAIN.NUM_EPOCHS', '1']), str(tmp_path / 'out'))
    log = (save / 'log.txt').read_text()
    assert log.count('is gone (killed, or the machine restarted)') == 1 and f'pid {dead.pid}' in log
    assert not (save / 'run.lock').exists()  # released at the end
    holder = subprocess.Popen(['sleep', '600'])
    try:
        (save / 'run.lock').write_text(json.dumps(lock_of(holder.pid)))
        run_to_end(command(digits, str(save), 1, (), '-eval'), str(tmp_path / 'eval'))
        assert evaluation(save)['images'] == 50
    finally:
        holder.kill()
        holder.wait()


# ---------------------------------------------------------------- class 5: process counts

def test_resuming_with_another_process_count_says_how_the_total_batch_and_lr_change(digits, tmp_path):
    save = str(tmp_path / 'run')
    run_to_end(command(digits, save, 1, ['TRAIN.NUM_EPOCHS', '1']), save + '.one')
    run_to_end(command(digits, save, 2), save + '.two')
    log = open(os.path.join(save, 'log.txt')).read()
    one_lr, two_lr = re.findall(r'lr ([\d.e+-]+), 320 train images', log)
    assert float(two_lr) == pytest.approx(2 * float(one_lr), rel=1e-3)
    lines = [line for line in log.splitlines() if 'in the checkpoint' in line]
    assert len(lines) == 1 and ('total batch 16 (1 process(es)) in the checkpoint, 32 (2 process(es)) now: the LR '
                                f'changes from {one_lr} to {two_lr}') in lines[0]


def test_two_processes_evaluate_a_one_image_val_set_exactly(digits, tmp_path):
    data = str(tmp_path / 'data')
    shutil.copytree(digits, data)
    for name in sorted(os.listdir(os.path.join(data, 'val'))):
        folder = os.path.join(data, 'val', name)
        for image in sorted(os.listdir(folder))[int(name == '3'):]:
            os.remove(os.path.join(folder, image))
    save = str(tmp_path / 'run')
    trained = run_to_end(command(data, save, 2, ['TRAIN.NUM_EPOCHS', '1']), save + '.train')
    during = re.findall(r'Eval model: Acc@1 ([\d.]+) .* on (\d+) images', open(trained.out).read())
    assert len(during) == 1 and during[0][1] == '1' and during[0][0] in ('0.0000', '1.0000')
    for processes in (1, 2):
        run_to_end(command(data, save, processes, (), '-eval'), f'{save}.eval{processes}')
        result = evaluation(save)
        assert (result['images'], f"{result['acc1']:.4f}") == (1, during[0][0])
