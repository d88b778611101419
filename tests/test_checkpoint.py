"""Checkpoints: one format, latest written last (the commit point), nothing unreadable overwritten or trusted."""
import os
import pickle
import subprocess
import sys

import numpy as np
import paddle
import pytest

import checkpoint
from checkpoint import CheckpointError, CheckpointWriteError, atomic_save, find_resume, load, remove_stale_temporaries
from config import build_config
from engine import TrainState
from model_ema import ModelEma
from optim import build_lr_scheduler, build_optimizer
from pit import build_pit

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MICRO = os.path.join(ROOT, 'tests', 'fixtures', 'pit_micro.yaml')


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


def mark_epoch(state, epoch):
    """Give the state of each epoch its own weights (the first parameter filled with the epoch number)."""
    state.epoch = epoch
    first = next(iter(state.model.parameters()))
    first.set_value(paddle.full(first.shape, float(epoch), first.dtype))


def epoch_mark(path):
    return float(next(iter(load(str(path))['model'].values())).flat[0])


@pytest.mark.parametrize('files_written', [0, 1, 2, 3])
def test_a_kill_at_any_point_of_a_best_epochs_save_leaves_best_right_after_resume(tmp_path, monkeypatch, files_written):
    """Epoch 1 and epoch 2 are each a new best; the save of epoch 2 (numbered, latest, best, then prune) is killed
    after `files_written` of its files. Resuming then finds best holding the best epoch of the resumed state."""
    config, state = micro_state(save_freq=1)
    mark_epoch(state, 1)
    state.best_acc1, state.best_epoch = 0.3, 1
    checkpoint.save(str(tmp_path), state, config, ['c'] * 5, is_best=True)
    mark_epoch(state, 2)
    state.best_acc1, state.best_epoch = 0.4, 2
    real_write, written = checkpoint._write_bytes, []

    def killed_after_some_files(payload, path):
        if len(written) == files_written:
            raise KeyboardInterrupt('killed')
        written.append(os.path.basename(path))
        real_write(payload, path)

    monkeypatch.setattr(checkpoint, '_write_bytes', killed_after_some_files)
    monkeypatch.setattr(checkpoint, 'prune_periodic', lambda *args: killed_after_some_files(None, ''))
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save(str(tmp_path), state, config, ['c'] * 5, is_best=True)
    monkeypatch.undo()
    assert written == ['checkpoint-epoch2.pdparams', checkpoint.LATEST, checkpoint.BEST][:files_written]
    path, ckpt = find_resume(str(tmp_path))
    note = checkpoint.repair_best(str(tmp_path), path, ckpt)
    assert ckpt['epoch'] == (2 if files_written else 1)  # the numbered file alone commits epoch 2
    best = load(str(tmp_path / checkpoint.BEST))
    assert best['epoch'] == ckpt['best_epoch'] and epoch_mark(tmp_path / checkpoint.BEST) == ckpt['best_epoch']
    assert (note is not None) == (files_written in (1, 2))  # killed after the commit, before best was written
    assert not [n for n in os.listdir(tmp_path) if '.tmp' in n]


def test_best_is_rewritten_from_the_numbered_file_of_the_best_epoch_when_resuming_later(tmp_path):
    config, state = micro_state(save_freq=1)
    mark_epoch(state, 1)
    state.best_acc1, state.best_epoch = 0.3, 1
    checkpoint.save(str(tmp_path), state, config, ['c'] * 5, is_best=True)
    (tmp_path / checkpoint.BEST).write_bytes(b'damaged in transfer')
    mark_epoch(state, 2)
    checkpoint.save(str(tmp_path), state, config, ['c'] * 5, is_best=False)
    path, ckpt = find_resume(str(tmp_path))
    note = checkpoint.repair_best(str(tmp_path), path, ckpt)
    assert 'rewritten from' in note and note.endswith('checkpoint-epoch1.pdparams')
    assert epoch_mark(tmp_path / checkpoint.BEST) == 1.0


def test_a_mid_epoch_state_goes_to_latest_only_and_resumes_after_the_epoch_it_is_in(tmp_path):
    config, state = micro_state(save_freq=1)
    mark_epoch(state, 2)
    checkpoint.save(str(tmp_path), state, config, ['c'] * 5)
    state.step, state.progress = 7, {'sums': {'loss': 3.5}, 'counts': {'loss': 14}, 'seconds': 12.0}
    checkpoint.save(str(tmp_path), state, config, ['c'] * 5)
    assert sorted(os.listdir(tmp_path)) == ['checkpoint-epoch2.pdparams', checkpoint.LATEST]
    path, ckpt = find_resume(str(tmp_path))
    assert path.endswith(checkpoint.LATEST) and (ckpt['epoch'], ckpt['step']) == (2, 7)
    _, fresh = micro_state()
    checkpoint.restore(ckpt, fresh, path)
    assert (fresh.epoch, fresh.step, fresh.progress) == (2, 7, state.progress)
    assert checkpoint.repair_best(str(tmp_path), path, ckpt) is None  # no best epoch yet


def test_auto_resume_skips_a_truncated_checkpoint_when_an_older_one_reads(tmp_path):
    save_epochs(tmp_path, [2, 3])
    latest = tmp_path / checkpoint.LATEST
    latest.write_bytes(latest.read_bytes()[:40])  # as a kill during a non-atomic copy would leave it
    path, ckpt = find_resume(str(tmp_path))
    assert ckpt['epoch'] == 3 and path.endswith('checkpoint-epoch3.pdparams')


def test_auto_resume_refuses_when_no_checkpoint_can_be_read(tmp_path):
    (tmp_path / checkpoint.LATEST).write_bytes(b'\x80\x04garbage')
    with pytest.raises(CheckpointError, match=r"no checkpoint in .* can be read.*checkpoint-latest"):
        find_resume(str(tmp_path))
    assert (tmp_path / checkpoint.LATEST).read_bytes() == b'\x80\x04garbage'


def test_auto_resume_on_empty_folder_finds_nothing(tmp_path):
    assert find_resume(str(tmp_path)) == (None, None)


def test_periodic_checkpoints_are_pruned_to_keep_count(tmp_path):
    save_epochs(tmp_path, range(1, 6), best=[3], keep=2)
    names = sorted(os.listdir(tmp_path))
    assert names == ['checkpoint-best.pdparams', 'checkpoint-epoch4.pdparams', 'checkpoint-epoch5.pdparams',
                     'checkpoint-latest.pdparams']
    assert load(str(tmp_path / checkpoint.BEST))['epoch'] == 3


def test_stale_temporaries_of_dead_writers_are_removed_and_live_ones_kept(tmp_path):
    dead = subprocess.Popen([sys.executable, '-c', 'pass'])
    dead.wait()
    stale = tmp_path / f'.checkpoint-latest.pdparams.tmp{dead.pid}'
    live = tmp_path / f'.checkpoint-best.pdparams.tmp{os.getppid()}'
    stale.write_bytes(b'x')
    live.write_bytes(b'x')
    assert remove_stale_temporaries(str(tmp_path)) == [stale.name]
    assert live.exists() and not stale.exists()


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
