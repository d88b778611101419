"""User and environment faults through the real command lines: one line naming the thing, a non-zero exit, no
traceback, nothing readable lost, no code run from a file."""
import os
import pickle
import subprocess
import sys
import zlib

import numpy as np
import pytest
from PIL import Image

from conftest import TINY_ONE_EPOCH, one_line_error, tmpfs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def train(data, save, *flags, opts=()):
    cmd = [sys.executable, 'main_single_gpu.py', '-cfg', 'configs/pit_ti.yaml', '-data_path', data,
           '-save_path', str(save), '-batch_size', '8', *flags, '-opts', *TINY_ONE_EPOCH, *opts]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600)


@pytest.mark.parametrize('opts, expected', [
    (['TRAIN.NUM_EPOCHS', '2.5'], "'TRAIN.NUM_EPOCHS' in -opts expects an integer, got 2.5"),
    (['DATA.IMAGE_SIZE', '32.5'], "'DATA.IMAGE_SIZE' in -opts expects an integer, got 32.5"),
    (['TRAIN.BASE_LR', '-0.1'], 'TRAIN.BASE_LR=-0.1 must be > 0'),
    (['MODEL.DROP_PATH', '1.0'], 'MODEL.DROP_PATH=1.0 must be in [0, 1)'),
    (['TRAIN.MODEL_EMA_DECAY', '1.5'], 'TRAIN.MODEL_EMA_DECAY=1.5 must be in [0, 1]'),
    (['DATA.NUM_WORKERS', '-1'], 'DATA.NUM_WORKERS=-1 must be >= 0'),
    (['AUG.AUTO_AUGMENT', 'rand-m9-q3'], "AUG.AUTO_AUGMENT='rand-m9-q3': unknown option 'q'"),
])
def test_bad_values_fail_in_one_line_before_any_model_or_dataset_is_built(tmp_path, opts, expected):
    result = train(str(tmp_path / 'no_data_here'), tmp_path / 'save', opts=opts)
    assert expected in one_line_error(result, 2)  # the data path is wrong too: the config was checked first
    assert not (tmp_path / 'save').exists()


def test_a_yaml_base_cycle_is_named(tmp_path):
    (tmp_path / 'a.yaml').write_text("BASE: ['b.yaml']\n")
    (tmp_path / 'b.yaml').write_text("BASE: ['a.yaml']\n")
    result = subprocess.run([sys.executable, 'main_single_gpu.py', '-cfg', str(tmp_path / 'a.yaml')],
                            capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert 'includes itself through BASE' in one_line_error(result, 2)


def test_a_save_path_that_is_a_file_is_refused(digits, tmp_path):
    (tmp_path / 'file').write_text('mine')
    assert "is a file, not a folder" in one_line_error(train(digits, tmp_path / 'file'), 2)
    assert (tmp_path / 'file').read_text() == 'mine'


def test_a_read_only_save_folder_is_refused(digits, tmp_path):
    with tmpfs(tmp_path / 'ro', readonly=True) as folder:
        assert 'not writable: Read-only file system' in one_line_error(train(digits, folder), 2)


def test_a_full_disk_stops_the_run_in_one_line_and_keeps_the_last_checkpoint(digits, tmp_path):
    with tmpfs(tmp_path / 'full', size='48k') as folder:
        result = train(digits, folder)
        line = one_line_error(result, 1)
        assert 'No space left on device' in line and 'intact' in line
        assert not [name for name in os.listdir(folder) if '.tmp' in name]


def test_a_val_split_with_other_class_folders_than_train_is_refused_before_training(digits, tmp_path):
    """The label of an image is its class's position among its split's folders: a val folder renamed (here '3'
    to 'three', still 10 classes) would shift labels 3..9 and score the model against wrong classes."""
    data = tmp_path / 'data'
    for split in ('train', 'val'):
        os.makedirs(data / split)
        for name in os.listdir(os.path.join(digits, split)):
            os.symlink(os.path.join(digits, split, name), data / split / (name if split == 'train' or name != '3'
                                                                             else 'three'))
    line = one_line_error(train(str(data), tmp_path / 'save'), 2)
    assert "class '3' is in train but not in val (1 only in train, 1 only in val)" in line
    assert not os.path.exists(tmp_path / 'save' / 'checkpoint-latest.pdparams')


def test_training_into_a_folder_of_another_run_needs_resume(digits, tmp_path):
    assert train(digits, tmp_path).returncode == 0
    before = (tmp_path / 'checkpoint-latest.pdparams').read_bytes()
    assert 'add -resume auto' in one_line_error(train(digits, tmp_path), 2)
    assert (tmp_path / 'checkpoint-latest.pdparams').read_bytes() == before


def test_an_unreadable_latest_checkpoint_is_named_and_never_overwritten(digits, tmp_path):
    (tmp_path / 'checkpoint-latest.pdparams').write_bytes(b'\x80\x04 damaged in transfer')
    line = one_line_error(train(digits, tmp_path, '-resume', 'auto'), 2)
    assert 'checkpoint-latest.pdparams' in line and 'can be read' in line
    assert (tmp_path / 'checkpoint-latest.pdparams').read_bytes() == b'\x80\x04 damaged in transfer'


class Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f'touch {self.marker}',))


@pytest.mark.parametrize('entry', ['predict', 'pretrained', 'resume', 'convert'])
def test_a_hostile_pdparams_is_refused_by_every_entry_point_without_running_code(digits, tmp_path, entry):
    marker = tmp_path / 'pwned'
    hostile = tmp_path / 'weights.pdparams'
    hostile.write_bytes(pickle.dumps({'model': {'w': Payload(marker)}, 'epoch': 1}, protocol=2))
    if entry == 'predict':
        result = subprocess.run([sys.executable, 'predict.py', '-pretrained', str(hostile), '-img_path',
                                 os.path.join(digits, 'heldout')], capture_output=True, text=True, cwd=ROOT)
    elif entry == 'convert':
        result = subprocess.run([sys.executable, 'tools/convert_weights.py', '-cfg', 'configs/pit_ti.yaml', '-src',
                                 str(hostile), '-dst', str(tmp_path / 'out')], capture_output=True, text=True, cwd=ROOT)
    else:
        result = train(digits, tmp_path / 'save', f'-{entry}', str(hostile))
    assert result.returncode == 2 and 'refusing to load global' in result.stderr and 'system' in result.stderr
    assert 'Traceback' not in result.stderr
    assert not marker.exists()


def png_claiming(path, width, height):
    """A PNG whose header claims width x height (PIL refuses decompression bombs at open)."""
    def chunk(kind, data):
        return len(data).to_bytes(4, 'big') + kind + data + zlib.crc32(kind + data).to_bytes(4, 'big')
    ihdr = width.to_bytes(4, 'big') + height.to_bytes(4, 'big') + bytes([8, 2, 0, 0, 0])
    path.write_bytes(b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', ihdr) + chunk(b'IDAT', zlib.compress(b'\x00' * 16))
                     + chunk(b'IEND', b''))


def test_predict_reports_a_decompression_bomb_and_classifies_the_other_images(digits, tmp_path):
    subprocess.run(['cp', '-r', os.path.join(digits, 'heldout'), str(tmp_path / 'images')], check=True)
    png_claiming(tmp_path / 'images' / 'bomb.png', 40000, 40000)
    assert train(digits, tmp_path / 'run').returncode == 0
    result = subprocess.run([sys.executable, 'predict.py', '-pretrained', str(tmp_path / 'run' / 'checkpoint-latest'),
                             '-img_path', str(tmp_path / 'images')], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 1 and "cannot read image" in result.stderr and 'bomb.png' in result.stderr
    assert result.stdout.count('class_id') == 10 * 5
    assert 'Traceback' not in result.stderr


def test_a_16_bit_png_is_scaled_to_8_bit_not_clipped(tmp_path):
    from datasets import load_rgb
    ramp = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000)
    Image.fromarray(ramp).save(tmp_path / 'grey16.png')
    rgb = np.asarray(load_rgb(str(tmp_path / 'grey16.png')))
    np.testing.assert_array_equal(rgb[..., 0], np.rint(ramp * 255.0 / 65535).astype(np.uint8))
    assert rgb.max() < 255  # 63000 / 65535 of white, where a clip would give 255 from pixel 1 on


def test_list_files_with_a_bom_load_and_one_whose_paths_are_all_missing_is_named(digits, tmp_path):
    from config import build_config
    from datasets import DatasetError, find_samples
    (tmp_path / 'img.png').write_bytes(open(os.path.join(digits, 'heldout', os.listdir(
        os.path.join(digits, 'heldout'))[0]), 'rb').read())
    (tmp_path / 'train_list.txt').write_text('\ufeffimg.png 3\n', encoding='utf-8')
    config = build_config(opts=['DATA.DATA_PATH', str(tmp_path), 'MODEL.NUM_CLASSES', '10'])
    samples, _ = find_samples(config, 'train')
    assert samples == [(os.path.join(str(tmp_path), 'img.png'), 3)]
    (tmp_path / 'train_list.txt').write_text('gone/a.png 1\ngone/b.png 2\n')
    with pytest.raises(DatasetError, match=r"train_list.txt:1: image .*gone/a.png' not found.* 1 more bad line"):
        find_samples(config, 'train')


def test_an_empty_class_folder_is_reported_and_a_symlink_loop_ends(tmp_path, monkeypatch):
    import datasets
    from config import build_config
    from datasets import find_samples
    warnings = []
    monkeypatch.setattr(datasets.logger, 'warning', warnings.append)
    for name in ('a', 'b'):
        (tmp_path / 'train' / name).mkdir(parents=True)
    Image.new('RGB', (8, 8)).save(tmp_path / 'train' / 'a' / 'x.png')
    os.symlink(tmp_path / 'train' / 'a', tmp_path / 'train' / 'a' / 'loop')
    config = build_config(opts=['DATA.DATA_PATH', str(tmp_path), 'MODEL.NUM_CLASSES', '2'])
    samples, classes = find_samples(config, 'train')
    assert classes == ['a', 'b'] and [os.path.basename(p) for p, _ in samples] == ['x.png']
    assert len(warnings) == 1 and os.path.join(str(tmp_path), 'train', 'b') in warnings[0]
    assert 'holds no images' in warnings[0]


@pytest.mark.parametrize('paddle_error', [
    '(Fatal) Blocking queue is killed because the data reader raises an exception.',  # seen by the loader thread
    '(Fatal) DataLoader process (pid 4242) exited is killed by signal: Killed.',  # raised by paddle's SIGCHLD handler
])
def test_a_dead_dataloader_worker_ends_the_run_in_one_line(capsys, paddle_error):
    import argparse

    import cli

    def worker_killed(config, weights):
        raise SystemError(paddle_error)
    args = argparse.Namespace(cfg=None, opts=['TRAIN.NUM_EPOCHS', '1', 'TRAIN.WARMUP_EPOCHS', '0'])
    with pytest.raises(SystemExit) as exit_info:
        cli.run_training(worker_killed, args)
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 1 and len(err) == 1
    assert err[0].startswith('error: a DataLoader worker process died') and 'DATA.NUM_WORKERS' in err[0]


def launcher_config(tmp_path, resume='auto'):
    from config import build_config
    return build_config(opts=['SAVE', str(tmp_path)] + (['MODEL.RESUME', resume] if resume else []))


def test_a_failed_process_shows_its_traceback_with_its_rank_then_one_summary_line(tmp_path):
    from cli import failure_summary
    trace = 'Traceback (most recent call last):\n  File "engine.py", line 1\nKeyError: 3\n'
    text, status = failure_summary(1, 1, trace, launcher_config(tmp_path), 4)
    lines = text.splitlines()
    assert lines[:3] == ['[rank 1] Traceback (most recent call last):', '[rank 1]   File "engine.py", line 1',
                         '[rank 1] KeyError: 3']
    assert lines[-1] == 'error: training process 1 of 4 failed: KeyError: 3' and status == 1


def test_resuming_is_suggested_only_when_a_checkpoint_exists_and_the_failure_was_not_bad_input(tmp_path):
    from cli import failure_summary
    config = launcher_config(tmp_path)
    assert 're-run' not in failure_summary(0, -9, None, config, 2)[0]  # nothing to resume from yet
    (tmp_path / 'checkpoint-latest.pdparams').write_bytes(b'x')
    killed, status = failure_summary(0, -9, None, config, 2)
    assert 'killed by SIGKILL' in killed and 're-run the same command to continue' in killed and status == 1
    bad_input, status = failure_summary(1, 2, None, config, 2)
    assert 're-run' not in bad_input and 'its error is above' in bad_input and status == 2
    other = failure_summary(0, -9, None, launcher_config(tmp_path, resume=None), 2)[0]
    assert 'with -resume auto' in other


def test_two_process_bad_input_fails_once_before_any_process_starts(tmp_path):
    result = subprocess.run([sys.executable, 'main_multi_gpu.py', '-ngpus', '2', '-save_path', str(tmp_path),
                             '-opts', 'TRAIN.NUM_EPOCHS', '2', 'TRAIN.WARMUP_EPOCHS', '5'],
                            capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result.returncode == 2 and result.stderr.count('error:') == 1
    assert 'TRAIN.WARMUP_EPOCHS=5 must be in [0, NUM_EPOCHS' in result.stderr
