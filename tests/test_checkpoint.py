"""Checkpoints: atomic writes, auto-resume picks the newest valid file, pruning, one-line errors."""
import os

import paddle
import pytest

import checkpoint
from checkpoint import CheckpointError, atomic_save, find_resume_checkpoint, load_checkpoint, save_training_state


def state(epoch):
    return {'epoch': epoch, 'model': {'w': paddle.full([2], float(epoch))}, 'best_acc1': 0.1 * epoch}


def test_atomic_save_failure_keeps_previous_file_and_leaves_no_temp(tmp_path, monkeypatch):
    path = str(tmp_path / 'checkpoint-latest.pdparams')
    atomic_save(state(1), path)

    def crash(obj, target):
        with open(target, 'wb') as f:
            f.write(b'partial')
        raise KeyboardInterrupt('killed mid-write')

    monkeypatch.setattr(paddle, 'save', crash)
    with pytest.raises(KeyboardInterrupt):
        atomic_save(state(2), path)
    assert load_checkpoint(path)['epoch'] == 1
    assert os.listdir(tmp_path) == ['checkpoint-latest.pdparams']


def test_auto_resume_skips_a_truncated_checkpoint(tmp_path):
    save_training_state(str(tmp_path), state(2), is_best=False, periodic=True, keep=0)
    save_training_state(str(tmp_path), state(3), is_best=False, periodic=False, keep=0)
    latest = tmp_path / checkpoint.LATEST
    latest.write_bytes(latest.read_bytes()[:40])  # as a kill during a non-atomic copy would leave it
    path, ckpt = find_resume_checkpoint(str(tmp_path))
    assert ckpt['epoch'] == 2 and path.endswith('checkpoint-epoch2.pdparams')


def test_auto_resume_on_empty_folder_finds_nothing(tmp_path):
    assert find_resume_checkpoint(str(tmp_path)) == (None, None)


def test_periodic_checkpoints_are_pruned_to_keep_count(tmp_path):
    for epoch in range(1, 6):
        save_training_state(str(tmp_path), state(epoch), is_best=epoch == 3, periodic=True, keep=2)
    names = sorted(os.listdir(tmp_path))
    assert names == ['checkpoint-best.pdparams', 'checkpoint-epoch4.pdparams', 'checkpoint-epoch5.pdparams',
                     'checkpoint-latest.pdparams']
    assert load_checkpoint(str(tmp_path / checkpoint.BEST))['epoch'] == 3


def test_missing_checkpoint_error_names_the_file(tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint '.*nope.pdparams' not found"):
        load_checkpoint(str(tmp_path / 'nope.pdparams'))


def test_weights_only_file_is_not_a_training_checkpoint(tmp_path):
    path = str(tmp_path / 'weights.pdparams')
    paddle.save({'head.weight': paddle.zeros([2, 2])}, path)
    with pytest.raises(CheckpointError, match='not a training checkpoint.*-pretrained'):
        load_checkpoint(path)
