"""End to end through the real entry points on real images (scikit-learn digits in ImageNet layout), on CPU.

Covers: training to well above chance, eval output, exact resume after SIGKILL (one process; the two-process
scripts are walked in test_journeys.py), bad images in train and val, a checkpoint of another variant.
"""
import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import paddle
import pytest

from demo_data import write_dataset
from metrics import read_records

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.slow

TINY = ['DATA.IMAGE_SIZE', '32', 'DATA.CROP_PCT', '1.0', 'DATA.BATCH_SIZE', '32',
        'MODEL.NUM_CLASSES', '10', 'MODEL.TRANS.PATCH_SIZE', '4', 'MODEL.TRANS.STRIDE', '2',
        'MODEL.TRANS.BASE_DIMS', '[16, 16, 16]', 'MODEL.TRANS.DEPTH', '[1, 1, 1]', 'MODEL.TRANS.HEADS', '[2, 4, 8]',
        'MODEL.DROP_PATH', '0.0', 'TRAIN.WARMUP_EPOCHS', '0', 'TRAIN.BASE_LR', '0.002', 'TRAIN.LINEAR_SCALED_LR',
        'None', 'TRAIN.MODEL_EMA_DECAY', '0.9', 'AUG.AUTO_AUGMENT', "''", 'AUG.MIXUP', '0.0', 'AUG.CUTMIX', '0.0',
        'AUG.RE_PROB', '0.0', 'AUG.SCALE', '[0.35, 1.0]', 'AUG.HFLIP', '0.0', 'REPORT_FREQ', '10']


@pytest.fixture(scope='module')
def digits(tmp_path_factory):
    """Folder-layout digits: 1000 train, 149 val images (odd, so 2 processes get unequal shares)."""
    root = str(tmp_path_factory.mktemp('digits'))
    write_dataset(root, source='digits', image_size=32, train_per_class=100, val_per_class=15)
    os.remove(sorted(os.path.join(root, 'val', '3', f) for f in os.listdir(os.path.join(root, 'val', '3')))[0])
    return root


def run(script, data, save, *flags, opts=(), check=True, timeout=600):
    cmd = [sys.executable, os.path.join(ROOT, script), '-cfg', os.path.join(ROOT, 'configs', 'pit_ti.yaml'),
           '-data_path', data, '-save_path', save, *flags, '-opts', *TINY, *opts]
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f'{script} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}')
    return result


def eval_line(output, name='model'):
    """(Acc@1, Acc@5, images) of the last 'Eval <name>' log line."""
    found = re.findall(rf'Eval {name}: Acc@1 ([\d.]+) Acc@5 ([\d.]+) loss [\d.]+ on (\d+) images', output)
    assert found, output[-2000:]
    acc1, acc5, images = found[-1]
    return float(acc1), float(acc5), int(images)


def test_single_process_training_learns_digits_well_above_chance(digits, tmp_path):
    result = run('main_single_gpu.py', digits, str(tmp_path), opts=['TRAIN.NUM_EPOCHS', '6'])
    acc1, acc5, images = eval_line(result.stdout)
    assert images == 149
    assert acc1 > 0.6, result.stdout[-2000:]  # chance is 0.1
    assert acc5 >= acc1
    eval_line(result.stdout, 'EMA')
    assert os.path.isfile(tmp_path / 'checkpoint-best.pdparams')
    run('main_single_gpu.py', digits, str(tmp_path / 'eval'), '-eval', '-pretrained', str(tmp_path / 'checkpoint-best'))
    with open(tmp_path / 'eval' / 'eval.json') as f:
        evaluated = json.load(f)
    assert evaluated['images'] == 149
    assert evaluated['acc1'] == pytest.approx(max(record['val_acc1'] for record in read_records(str(tmp_path))))


def final_state(save):
    state = paddle.load(os.path.join(save, 'checkpoint-latest.pdparams'))
    return state


def test_resume_after_sigkill_reproduces_the_uninterrupted_run(digits, tmp_path):
    # the recipe's stochastic parts stay on (mixup, RandAugment, erasing, drop path, EMA) to prove they resume too
    epochs = ['TRAIN.NUM_EPOCHS', '3', 'CPU_THREADS', '1', 'AUG.MIXUP', '0.8', 'AUG.CUTMIX', '1.0',
              'AUG.AUTO_AUGMENT', 'rand-m9-mstd0.5-inc1', 'AUG.RE_PROB', '0.25', 'MODEL.DROP_PATH', '0.1']
    straight = tmp_path / 'straight'
    run('main_single_gpu.py', digits, str(straight), opts=epochs)

    killed = tmp_path / 'killed'
    cmd = [sys.executable, os.path.join(ROOT, 'main_single_gpu.py'), '-cfg', os.path.join(ROOT, 'configs', 'pit_ti.yaml'),
           '-data_path', digits, '-save_path', str(killed), '-resume', 'auto', '-opts', *TINY, *epochs]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    latest = killed / 'checkpoint-latest.pdparams'
    deadline = time.time() + 300
    while not latest.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, 'the run ended before it could be killed'
    assert paddle.load(str(latest))['epoch'] < 3
    resumed = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert 'resumed from' in open(killed / 'log.txt').read()

    a, b = final_state(str(straight)), final_state(str(killed))
    assert a['epoch'] == b['epoch'] == 3
    assert a['best_acc1'] == b['best_acc1'] and a['best_epoch'] == b['best_epoch']
    assert a['lr_scheduler']['last_lr'] == b['lr_scheduler']['last_lr']
    for key in a['model']:
        np.testing.assert_array_equal(a['model'][key].numpy(), b['model'][key].numpy(), err_msg=key)
    for key in a['model_ema']:
        np.testing.assert_array_equal(a['model_ema'][key].numpy(), b['model_ema'][key].numpy(), err_msg=key)


def test_undecodable_images_are_counted_in_train_and_fail_eval_unless_skipped(digits, tmp_path):
    data = tmp_path / 'data'
    subprocess.run(['cp', '-r', digits, str(data)], check=True)
    (data / 'train' / '0' / 'broken.png').write_bytes(b'not an image')
    (data / 'val' / '1' / 'broken.png').write_bytes(b'\x89PNG\r\n\x1a\n truncated')
    workers = ['TRAIN.NUM_EPOCHS', '1', 'DATA.NUM_WORKERS', '2']
    failed = run('main_single_gpu.py', str(data), str(tmp_path / 'a'), opts=workers, check=False)
    assert failed.returncode != 0
    assert '1 val image(s) could not be decoded' in failed.stderr + failed.stdout
    log = open(tmp_path / 'a' / 'log.txt').read()
    assert 'undecodable train images replaced: 1' in log and 'broken.png' in log
    skipped = run('main_single_gpu.py', str(data), str(tmp_path / 'b'), opts=workers + ['DATA.SKIP_BAD_EVAL_IMAGES', 'True'])
    assert eval_line(skipped.stdout)[2] == 149


def test_resume_with_checkpoint_of_another_variant_fails_in_one_line(digits, tmp_path):
    run('main_single_gpu.py', digits, str(tmp_path), opts=['TRAIN.NUM_EPOCHS', '1'])
    other = run('main_single_gpu.py', digits, str(tmp_path / 'other'), '-resume', str(tmp_path / 'checkpoint-latest'),
                opts=['TRAIN.NUM_EPOCHS', '2', 'MODEL.TRANS.BASE_DIMS', '[8, 8, 8]'], check=False)
    assert other.returncode == 2
    assert other.stderr.strip().splitlines()[-1].startswith('error:')
    assert 'Traceback' not in other.stderr
    assert 'MODEL.TRANS.BASE_DIMS=[16, 16, 16]' in other.stderr


def test_resume_with_ema_and_teacher_reproduces_the_uninterrupted_run(tmp_path):
    """Distilled student + RegNetY-16GF teacher + EMA: the optimizer state must load whatever was built first."""
    from regnet import build_regnet
    digits = str(tmp_path / 'data')
    write_dataset(digits, source='digits', image_size=32, train_per_class=7, val_per_class=2)  # 2 steps an epoch
    paddle.seed(0)
    teacher = build_regnet(num_classes=10)
    paddle.save(teacher.state_dict(), str(tmp_path / 'teacher.pdparams'))
    del teacher
    opts = ['MODEL.DISTILL', 'True', 'TRAIN.DISTILLATION_TYPE', 'hard', 'TRAIN.TEACHER_MODEL',
            str(tmp_path / 'teacher'), 'CPU_THREADS', '1', 'SAVE_FREQ', '1']
    run('main_single_gpu.py', digits, str(tmp_path / 'straight'), opts=opts + ['TRAIN.NUM_EPOCHS', '2'])
    run('main_single_gpu.py', digits, str(tmp_path / 'resumed'), opts=opts + ['TRAIN.NUM_EPOCHS', '1'])
    run('main_single_gpu.py', digits, str(tmp_path / 'resumed'), '-resume', 'auto', opts=opts + ['TRAIN.NUM_EPOCHS', '2'])
    a, b = final_state(str(tmp_path / 'straight')), final_state(str(tmp_path / 'resumed'))
    assert a['epoch'] == b['epoch'] == 2
    for part in ('model', 'model_ema'):
        for key in a[part]:
            np.testing.assert_array_equal(a[part][key].numpy(), b[part][key].numpy(), err_msg=f'{part} {key}')
