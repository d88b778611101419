"""Checkpoints: one format, latest written last (the commit point), nothing unreadable overwritten or trusted."""
import os
import pickle
import subprocess
import sys

import numpy as np
import paddle
import pytest

import checkpoint
from checkpoint import CheckpointError, atomic_save, find_resume, load, remove_stale_temporaries
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
    with pytest.raises(CheckpointError, match='No space left on device.*intact'):
        checkpoint.save(str(tmp_path), state, config, ['c'] * 5, is_best=False)
    assert load(str(tmp_path / checkpoint.LATEST))['epoch'] == 1
    assert not [n for n in os.listdir(tmp_path) if '.tmp' in n]


def test_latest_is_written_last_so_a_crash_in_best_leaves_the_previous_epoch_committed(tmp_path, monkeypatch):
    save_epochs(tmp_path, [1], best=[1])
    config, state = micro_state(epoch=2)
    real_write = checkpoint._write_bytes

    def killed_while_writing_best(payload, path):
        if path.endswith(checkpoint.BEST):
            raise KeyboardInterrupt('killed')
        real_write(payload, path)

    monkeypatch.setattr(checkpoint, '_write_bytes', killed_while_writing_best)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save(str(tmp_path), state, config, ['c'] * 5, is_best=True)
    # the numbered file of epoch 2 is on disk, but latest still says 1: resuming redoes epoch 2 and its best file
    assert load(str(tmp_path / checkpoint.LATEST))['epoch'] == 1
    assert find_resume(str(tmp_path))[1]['epoch'] == 2  # the numbered file is complete and the newest
    assert load(str(tmp_path / checkpoint.BEST))['epoch'] == 1


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
