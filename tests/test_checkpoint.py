"""Checkpoints: one format, latest written last (the commit point), nothing unreadable overwritten or trusted."""
import errno
import itertools
import json
import logging
import os
import pickle
import re
import shutil
import subprocess
import sys
import tracemalloc

import numpy as np
import paddle
import pytest

import checkpoint
from checkpoint import (CheckpointError, CheckpointWriteError, atomic_save, find_resume, load, progress_of,
                        remove_stale_temporaries)
from config import build_config
from engine import TrainState
from model_ema import ModelEma
from optim import build_lr_scheduler, build_optimizer
from pit import build_pit

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MICRO = os.path.join(ROOT, 'tests', 'fixtures', 'pit_micro.yaml')


@pytest.fixture(autouse=True)
def new_process_per_test():
    new_process()


def new_process():
    """Forget what this process learnt of checkpoint files (the files it wrote or read), as a new process would."""
    checkpoint._known.clear()


def micro_state(epoch=0, save_freq=1, keep=0):
    config = build_config(MICRO, ['SAVE_FREQ', str(save_freq), 'KEEP_CHECKPOINTS', str(keep), 'TRAIN.NUM_EPOCHS',
                                  '10', 'TRAIN.WARMUP_EPOCHS', '1'], world_size=1)
    with paddle.utils.unique_name.guard():
        model = build_pit(config)
    scheduler = build_lr_scheduler(config, steps_per_epoch=1)
    state = TrainState(model, build_optimizer(config, model, scheduler), scheduler,
                       paddle.amp.GradScaler(enable=False), {'enable': False}, ModelEma(model, 0.5))
    state.epoch = epoch
    return config, state


def save_epochs(folder, epochs, best=(), **kwargs):
    config, state = micro_state(**kwargs)
    for epoch in epochs:
        state.epoch = epoch
        if epoch in best:
            state.best_acc1, state.best_epoch = epoch / 10, epoch
        checkpoint.save(str(folder), state, config, ['a', 'b', 'c', 'd', 'e'], is_best=epoch in best)
    return config, state


def test_a_checkpoint_describes_its_model_and_preprocessing(tmp_path):
    config, _ = save_epochs(tmp_path, [1])
    ckpt = load(str(tmp_path / checkpoint.LATEST))
    assert ckpt['version'] == checkpoint.FORMAT_VERSION and ckpt['classes'] == ['a', 'b', 'c', 'd', 'e']
    assert ckpt['model_config']['MODEL.TRANS.BASE_DIMS'] == list(config.MODEL.TRANS.BASE_DIMS)
    assert ckpt['preprocess']['DATA.CROP_PCT'] == config.DATA.CROP_PCT
    assert checkpoint.run_config_of(ckpt).MODEL.NAME == config.MODEL.NAME


def test_restore_brings_back_every_part_of_the_training_state(tmp_path):
    config, state = save_epochs(tmp_path, [3], best=[3])
    state.best_acc1, state.best_epoch = 0.5, 3
    checkpoint.save(str(tmp_path), state, config, ['x'] * 5, is_best=True)
    _, fresh = micro_state()
    checkpoint.restore(load(str(tmp_path / checkpoint.LATEST)), fresh, 'latest')
    assert (fresh.epoch, fresh.best_acc1, fresh.best_epoch) == (3, 0.5, 3)
    for (name, a), b in zip(state.model.state_dict().items(), fresh.model.state_dict().values()):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=name)
    assert fresh.lr_scheduler.state_dict() == state.lr_scheduler.state_dict()


def test_a_failed_write_keeps_the_previous_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    save_epochs(tmp_path, [1])
    config, state = micro_state(epoch=2)

    def disk_full(*args):
        raise OSError(28, 'No space left on device')

    monkeypatch.setattr(os, 'fsync', disk_full)
    with pytest.raises(CheckpointWriteError, match='No space left on device.*intact'):
        checkpoint.save(str(tmp_path), state, config, ['c'] * 5, is_best=False)
    assert load(str(tmp_path / checkpoint.LATEST))['epoch'] == 1
    assert not [n for n in os.listdir(tmp_path) if '.tmp' in n]


def replace_file(path, data):
    """Put a new file holding data at path (a copy of another file renamed into place, as a transfer does)."""
    new = str(path) + '.new'
    with open(new, 'wb') as f:
        f.write(data)
    os.replace(new, path)


def index_of(folder):
    with open(os.path.join(folder, checkpoint.INDEX)) as f:
        return json.load(f)['files']


def distinct_files(folder):
    return {os.stat(path).st_ino for path in checkpoint.candidates(str(folder))}


def mark_epoch(state, epoch):
    """Give the state of each epoch its own weights (the first parameter filled with the epoch number)."""
    state.epoch = epoch
    first = next(iter(state.model.parameters()))
    first.set_value(paddle.full(first.shape, float(epoch), first.dtype))


def epoch_mark(path):
    return float(next(iter(load(str(path))['model'].values())).flat[0])


class Killed(BaseException):
    """The process dies here (a BaseException: no handler of the code under test takes it)."""


# the points of a save where a kill is tried: the start of writing the state, and each file-system step after it
KILL_POINTS = ((checkpoint, '_stream'), (os, 'fsync'), (os, 'replace'), (os, 'link'), (os, 'remove'),
               (shutil, 'copyfile'))
HARD_LINK = os.link  # for snapshots, also where a test takes hard links away from the code under test


def save_killed_at(point, save, snapshot, *args, **kwargs):
    """checkpoint.save(save, *args, **kwargs) killed before its step number `point` (KILL_POINTS): snapshot then
    holds hard links to what save held at that instant, as a SIGKILL there leaves it (the dying process's cleanup
    does not reach it). True when the save was killed, False when it had fewer steps."""
    real = {name: getattr(module, name) for module, name in KILL_POINTS}
    steps = []

    def step(name):
        def run(*a, **k):
            steps.append(name)
            if len(steps) == point + 1:
                os.makedirs(snapshot)
                for entry in os.listdir(save):
                    HARD_LINK(os.path.join(save, entry), os.path.join(snapshot, entry))
                raise Killed(f'before {name}{a}')
            return real[name](*a, **k)  # also the dying process's cleanup, after the snapshot
        return run

    with pytest.MonkeyPatch.context() as patch:
        for module, name in KILL_POINTS:
            patch.setattr(module, name, step(name))
        try:
            checkpoint.save(save, *args, **kwargs)
        except Killed:
            return True
    return False


def no_hard_links(*args):
    raise OSError(errno.EPERM, 'Operation not permitted')


@pytest.mark.parametrize('links', [True, False], ids=['hard links', 'copies'])
def test_a_kill_at_any_point_of_a_best_epochs_save_leaves_a_resumable_folder_and_best_right(tmp_path, monkeypatch,
                                                                                          links):
    """Epoch 1 and epoch 2 are each a new best; the save of epoch 2 (numbered file, latest and best linked or
    copied, prune, index) is killed before each of its file-system steps in turn. Every name then holds a whole
    file, -resume auto finds the state with the most training on disk, and best holds the best epoch of the
    resumed state after repair_best."""
    if not links:
        monkeypatch.setattr(os, 'link', no_hard_links)
    config, state = micro_state(save_freq=1)
    for point in itertools.count():
        save, snapshot = str(tmp_path / f'save{point}'), str(tmp_path / f'killed{point}')
        os.makedirs(save)
        mark_epoch(state, 1)
        state.best_acc1, state.best_epoch = 0.3, 1
        checkpoint.save(save, state, config, ['c'] * 5, is_best=True)
        mark_epoch(state, 2)
        state.best_acc1, state.best_epoch = 0.4, 2
        if not save_killed_at(point, save, snapshot, state, config, ['c'] * 5, is_best=True):
            break
        new_process()
        remove_stale_temporaries(snapshot)
        on_disk = {path: progress_of(load(path)) for path in checkpoint.candidates(snapshot)}  # all whole files
        new_process()
        path, ckpt = find_resume(snapshot)
        assert progress_of(ckpt) == max(on_disk.values()), point
        checkpoint.repair_best(snapshot, path, ckpt)
        assert epoch_mark(os.path.join(snapshot, checkpoint.BEST)) == ckpt['best_epoch'], point
        assert not [n for n in os.listdir(snapshot) if '.tmp' in n]
    assert point > 10  # the save's steps were all reached: write, 2 links, prune, index


def test_best_is_rewritten_from_the_numbered_file_of_the_best_epoch_when_resuming_later(tmp_path):
    config, state = micro_state(save_freq=1)
    mark_epoch(state, 1)
    state.best_acc1, state.best_epoch = 0.3, 1
    checkpoint.save(str(tmp_path), state, config, ['c'] * 5, is_best=True)
    replace_file(tmp_path / checkpoint.BEST, b'damaged in transfer')
    mark_epoch(state, 2)
    checkpoint.save(str(tmp_path), state, config, ['c'] * 5, is_best=False)
    new_process()
    path, ckpt = find_resume(str(tmp_path))
    note = checkpoint.repair_best(str(tmp_path), path, ckpt)
    assert 'rewritten from' in note and note.endswith('checkpoint-epoch1.pdparams')
    assert epoch_mark(tmp_path / checkpoint.BEST) == 1.0
    assert os.path.samefile(tmp_path / checkpoint.BEST, tmp_path / 'checkpoint-epoch1.pdparams')
    assert index_of(tmp_path)[checkpoint.BEST]['epoch'] == 1  # the repair is indexed: the next resume reads one file


def test_a_mid_epoch_state_goes_to_latest_only_and_resumes_after_the_epoch_it_is_in(tmp_path):
    config, state = micro_state(save_freq=1)
    mark_epoch(state, 2)
    checkpoint.save(str(tmp_path), state, config, ['c'] * 5)
    state.step, state.progress = 7, {'sums': {'loss': 3.5}, 'counts': {'loss': 14}, 'seconds': 12.0}
    checkpoint.save(str(tmp_path), state, config, ['c'] * 5)
    assert sorted(os.listdir(tmp_path)) == ['checkpoint-epoch2.pdparams', checkpoint.LATEST, checkpoint.INDEX]
    assert not os.path.samefile(tmp_path / checkpoint.LATEST, tmp_path / 'checkpoint-epoch2.pdparams')
    assert {name: (e['epoch'], e['step']) for name, e in index_of(tmp_path).items()} == {
        'checkpoint-epoch2.pdparams': (2, 0), checkpoint.LATEST: (2, 7)}
    new_process()
    path, ckpt = find_resume(str(tmp_path))
    assert path.endswith(checkpoint.LATEST) and (ckpt['epoch'], ckpt['step']) == (2, 7)
    _, fresh = micro_state()
    checkpoint.restore(ckpt, fresh, path)
    assert (fresh.epoch, fresh.step, fresh.progress) == (2, 7, state.progress)
    assert checkpoint.repair_best(str(tmp_path), path, ckpt) is None  # no best epoch yet


def test_auto_resume_skips_a_truncated_checkpoint_when_an_older_one_reads(tmp_path):
    save_epochs(tmp_path, [2, 3])
    latest = tmp_path / checkpoint.LATEST
    replace_file(latest, latest.read_bytes()[:40])  # as a kill during a non-atomic copy would leave it
    new_process()
    path, ckpt = find_resume(str(tmp_path))
    assert ckpt['epoch'] == 3 and path.endswith('checkpoint-epoch3.pdparams')


def counted_reads(monkeypatch):
    """The names of the checkpoint files read whole from now on, in order."""
    reads, read = [], checkpoint.read_paddle_file

    def counted(path):
        reads.append(os.path.basename(path))
        return read(path)

    monkeypatch.setattr(checkpoint, 'read_paddle_file', counted)
    return reads


def five_candidates(folder):
    """Epochs 1-5 saved, best at 1, three numbered files kept: latest, epochs 5, 4, 3 and best, written by
    another process."""
    save_epochs(folder, range(1, 6), best=[1], keep=3)
    new_process()


def test_a_save_serialises_once_and_links_its_other_names(tmp_path, monkeypatch):
    streamed, stream = [], checkpoint._stream
    monkeypatch.setattr(checkpoint, '_stream', lambda obj, f: streamed.append(f.name) or stream(obj, f))
    save_epochs(tmp_path, [1], best=[1])
    names = ['checkpoint-epoch1.pdparams', checkpoint.LATEST, checkpoint.BEST]
    assert len(streamed) == 1 and os.stat(tmp_path / names[0]).st_nlink == 3
    assert all(os.path.samefile(tmp_path / names[0], tmp_path / name) for name in names)
    size = os.path.getsize(tmp_path / names[0])
    assert index_of(tmp_path)[checkpoint.BEST] == {
        'epoch': 1, 'step': 0, 'best_acc1': 0.1, 'best_epoch': 1, 'is_best': True, 'size': size,
        'mtime_ns': os.stat(tmp_path / names[0]).st_mtime_ns, 'inode': os.stat(tmp_path / names[0]).st_ino}


def test_without_hard_links_each_name_is_a_whole_copy_and_the_folder_is_named_once(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(os, 'link', no_hard_links)
    five_candidates(tmp_path)
    paths = checkpoint.candidates(str(tmp_path))
    assert len(distinct_files(tmp_path)) == len(paths) == 5
    assert (tmp_path / checkpoint.LATEST).read_bytes() == (tmp_path / 'checkpoint-epoch5.pdparams').read_bytes()
    assert [r.message for r in caplog.records if 'takes no hard links' in r.message] == [
        f"'{tmp_path}' takes no hard links (Operation not permitted): checkpoint files of one state are copies"]
    reads = counted_reads(monkeypatch)
    assert find_resume(str(tmp_path))[1]['epoch'] == 5 and reads == [checkpoint.LATEST]


def test_a_save_keeps_at_most_one_tensor_in_memory_as_it_writes(tmp_path):
    """16 tensors of 1 MiB: the arrays and bytes a save makes of them (numpy's and Python's allocations) peak at
    a few MiB, not at the 32 MiB of pickling them with a memo (paddle.save) nor the 48 MiB of building the file
    in memory."""
    obj = {'model': {f'w{i}': paddle.full([2 ** 18], float(i)) for i in range(16)}}
    tracemalloc.start()
    try:
        atomic_save(obj, str(tmp_path / 'big.pdparams'))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 * 2 ** 20
    assert os.path.getsize(tmp_path / 'big.pdparams') > 16 * 2 ** 20


def test_a_checkpoint_is_a_paddle_save_file(tmp_path):
    config, state = save_epochs(tmp_path, [1])
    loaded = paddle.load(str(tmp_path / checkpoint.LATEST))
    assert loaded['epoch'] == 1 and list(loaded['model']) == list(state.model.state_dict())
    np.testing.assert_array_equal(loaded['model']['cls_token'].numpy(), state.model.cls_token.numpy())


def test_resume_reads_only_the_file_it_resumes_from(tmp_path, monkeypatch):
    five_candidates(tmp_path)
    reads = counted_reads(monkeypatch)
    path, ckpt = find_resume(str(tmp_path))
    assert checkpoint.repair_best(str(tmp_path), path, ckpt) is None  # best's epoch from the index
    assert path.endswith(checkpoint.LATEST) and ckpt['epoch'] == 5 and reads == [checkpoint.LATEST]


def test_without_an_index_every_file_is_read_once(tmp_path, monkeypatch, caplog):
    """A folder of a run from before the index: each file is read (epoch 5's numbered file is latest's file)."""
    five_candidates(tmp_path)
    os.remove(tmp_path / checkpoint.INDEX)
    caplog.set_level(logging.INFO, logger='pit')
    reads = counted_reads(monkeypatch)
    path, ckpt = find_resume(str(tmp_path))
    assert path.endswith(checkpoint.LATEST) and ckpt['epoch'] == 5
    assert reads == [checkpoint.LATEST, 'checkpoint-epoch4.pdparams', 'checkpoint-epoch3.pdparams', checkpoint.BEST]
    assert 'not described by checkpoints.json as on disk: reading them' in caplog.text


def test_a_file_copied_in_is_read_and_the_index_spares_the_older_ones(tmp_path, monkeypatch):
    five_candidates(tmp_path)
    (tmp_path / 'elsewhere').mkdir()
    save_epochs(tmp_path / 'elsewhere', [6])
    shutil.copy(tmp_path / 'elsewhere' / checkpoint.LATEST, tmp_path / 'checkpoint-epoch6.pdparams')
    new_process()
    reads = counted_reads(monkeypatch)
    path, ckpt = find_resume(str(tmp_path))
    assert path.endswith('checkpoint-epoch6.pdparams') and reads == ['checkpoint-epoch6.pdparams']


def test_a_file_replaced_since_the_index_was_written_is_read_not_trusted(tmp_path, monkeypatch):
    """checkpoint-epoch3 replaced by a copy of a file holding epoch 6: the index's epoch 3 for that name no longer
    holds, so it is read (and the files the index describes as older than it are not)."""
    five_candidates(tmp_path)
    (tmp_path / 'elsewhere').mkdir()
    save_epochs(tmp_path / 'elsewhere', [6])
    replace_file(tmp_path / 'checkpoint-epoch3.pdparams', (tmp_path / 'elsewhere' / checkpoint.LATEST).read_bytes())
    new_process()
    reads = counted_reads(monkeypatch)
    path, ckpt = find_resume(str(tmp_path))
    assert path.endswith('checkpoint-epoch3.pdparams') and ckpt['epoch'] == 6
    assert reads == ['checkpoint-epoch3.pdparams']


def test_an_indexed_file_that_cannot_be_read_falls_back_to_the_next(tmp_path, monkeypatch, caplog):
    """Epoch 5's file (latest and checkpoint-epoch5) damaged where it lies, its size and mtime unchanged."""
    five_candidates(tmp_path)
    damaged = tmp_path / 'checkpoint-epoch5.pdparams'
    stat = os.stat(damaged)
    with open(damaged, 'r+b') as f:
        f.write(bytes(64))
    os.utime(damaged, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    reads = counted_reads(monkeypatch)
    path, ckpt = find_resume(str(tmp_path))
    assert path.endswith('checkpoint-epoch4.pdparams') and ckpt['epoch'] == 4
    assert reads == [checkpoint.LATEST, 'checkpoint-epoch5.pdparams', 'checkpoint-epoch4.pdparams']
    assert "-resume auto: skipping '" + str(damaged) in caplog.text


def test_a_damaged_index_is_named_and_the_checkpoints_are_read(tmp_path, monkeypatch, caplog):
    five_candidates(tmp_path)
    (tmp_path / checkpoint.INDEX).write_text('{"version": 1, "files": {"checkpoint-latest.pdparams": {"epoch": "')
    path, ckpt = find_resume(str(tmp_path))
    assert path.endswith(checkpoint.LATEST) and ckpt['epoch'] == 5
    assert f"'{tmp_path / checkpoint.INDEX}' cannot be read (JSONDecodeError" in caplog.text


@pytest.mark.slow
def test_the_measurement_tool_finds_one_file_written_per_save_and_one_read_per_resume(tmp_path):
    tiny = ['DATA.IMAGE_SIZE', '32', 'MODEL.NUM_CLASSES', '10', 'MODEL.TRANS.PATCH_SIZE', '4', 'MODEL.TRANS.STRIDE',
            '2', 'MODEL.TRANS.BASE_DIMS', '[8,8,8]', 'MODEL.TRANS.DEPTH', '[1,1,1]', 'MODEL.TRANS.HEADS', '[2,4,8]']
    runs = tmp_path / 'runs.json'
    done = subprocess.run([sys.executable, 'tools/measure_checkpoints.py', '-cfg', 'configs/pit_ti.yaml', '-folder',
                           str(tmp_path / 'measure'), '-repeats', '1', '-json', str(runs), '-opts', *tiny], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert re.search(r'^save: seconds [\d.]+ s \([\d.]+-[\d.]+\), peak_rss', done.stdout, re.M), done.stdout
    (save,), (resume,) = json.loads(runs.read_text()).values()
    assert save['written'] == save['disk'] > 10000  # one file, whatever its names
    assert save['disk'] < resume['read'] < save['disk'] + 4096  # that file, and the index
    assert not (tmp_path / 'measure').exists()


def test_auto_resume_refuses_when_no_checkpoint_can_be_read(tmp_path):
    (tmp_path / checkpoint.LATEST).write_bytes(b'\x80\x04garbage')
    with pytest.raises(CheckpointError, match=r"no checkpoint in .* can be read.*checkpoint-latest"):
        find_resume(str(tmp_path))
    assert (tmp_path / checkpoint.LATEST).read_bytes() == b'\x80\x04garbage'


def test_auto_resume_on_empty_folder_finds_nothing(tmp_path):
    assert find_resume(str(tmp_path)) == (None, None)


@pytest.mark.parametrize('links', [True, False], ids=['hard links', 'copies'])
def test_pruning_removes_names_and_a_file_lives_while_another_name_holds_it(tmp_path, monkeypatch, links):
    """Epochs 1-5 with the best at 3, two numbered files kept: SAVE holds 3 files with hard links (epoch 4,
    epoch 5 = latest, best = the pruned epoch 3's file), 4 as copies; the index describes every name."""
    if not links:
        monkeypatch.setattr(os, 'link', no_hard_links)
    epoch3 = []
    real_remove = os.remove

    def remove(path):
        if path.endswith('checkpoint-epoch3.pdparams'):
            epoch3.append(os.stat(path).st_ino)
        real_remove(path)

    monkeypatch.setattr(os, 'remove', remove)
    save_epochs(tmp_path, range(1, 6), best=[3], keep=2)
    names = sorted(os.listdir(tmp_path))
    assert names == ['checkpoint-best.pdparams', 'checkpoint-epoch4.pdparams', 'checkpoint-epoch5.pdparams',
                     'checkpoint-latest.pdparams', checkpoint.INDEX]
    assert load(str(tmp_path / checkpoint.BEST))['epoch'] == 3
    assert (os.stat(tmp_path / checkpoint.BEST).st_ino == epoch3[0]) == links
    assert len(distinct_files(tmp_path)) == (3 if links else 4)
    index = index_of(tmp_path)
    assert {name: index[name]['epoch'] for name in index} == {checkpoint.BEST: 3, 'checkpoint-epoch4.pdparams': 4,
                                                             'checkpoint-epoch5.pdparams': 5, checkpoint.LATEST: 5}
    assert [name for name in index if index[name]['is_best']] == [checkpoint.BEST]


def test_stale_temporaries_of_dead_writers_are_removed_and_live_ones_kept(tmp_path):
    dead = subprocess.Popen([sys.executable, '-c', 'pass'])
    dead.wait()
    stale = [tmp_path / f'.checkpoint-latest.pdparams.tmp{dead.pid}', tmp_path / f'.checkpoints.json.tmp{dead.pid}']
    live = tmp_path / f'.checkpoint-best.pdparams.tmp{os.getppid()}'
    for path in stale + [live]:
        path.write_bytes(b'x')
    assert sorted(remove_stale_temporaries(str(tmp_path))) == sorted(path.name for path in stale)
    assert live.exists() and not any(path.exists() for path in stale)


def test_missing_checkpoint_error_names_the_file(tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint '.*nope.pdparams' not found"):
        load(str(tmp_path / 'nope.pdparams'))


def test_weights_only_file_is_not_a_training_checkpoint(tmp_path):
    path = str(tmp_path / 'weights.pdparams')
    paddle.save({'head.weight': paddle.zeros([2, 2])}, path)
    with pytest.raises(CheckpointError, match='not a training checkpoint.*-pretrained'):
        load(path)


def test_a_checkpoint_of_a_newer_format_is_refused_by_name(tmp_path):
    path = str(tmp_path / 'future.pdparams')
    atomic_save({'version': 99, 'epoch': 1, 'model': {}}, path)
    with pytest.raises(CheckpointError, match='format 99, newer'):
        load(path)


def test_a_checkpoint_with_a_malformed_epoch_is_refused_by_name(tmp_path):
    path = str(tmp_path / checkpoint.LATEST)
    atomic_save({'version': 3, 'epoch': 'two', 'model': {}, 'model_ema': None, 'optimizer': {}, 'lr_scheduler': {},
                 'scaler': {}, 'best_acc1': 0.0, 'best_epoch': -1}, path)
    with pytest.raises(CheckpointError, match=r"'.*checkpoint-latest.pdparams' has a malformed epoch, step or best"):
        load(path)


class Payload:
    def __reduce__(self):
        return (os.system, (f'touch {self.marker}',))


def test_a_hostile_checkpoint_is_refused_without_running_its_code(tmp_path):
    payload = Payload()
    payload.marker = tmp_path / 'pwned'
    path = tmp_path / checkpoint.LATEST
    path.write_bytes(pickle.dumps({'epoch': 1, 'model': payload}, protocol=4))
    with pytest.raises(CheckpointError, match=r"refusing to load global (posix|os)\.system"):
        load(str(path))
    assert not payload.marker.exists()
