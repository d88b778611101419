"""The journeys as shipped: the scripts and entry points the README names, run as users run them, with the
default recipe of configs/pit_ti.yaml (DataLoader workers, RandAugment, mixup/cutmix, random erasing, EMA,
drop path, AdamP). Only the model, the image size, the epochs and the data are shrunk; nothing is switched off.

Two processes over GLOO stand in for GPUs. Data: scikit-learn's digits written as ImageNet-style folders.
"""
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import time

import numpy as np
import pytest

from demo_data import write_dataset
from metrics import read_records
from weights import read_paddle_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = [pytest.mark.slow, pytest.mark.journey]

# model, image size and epochs: the only things shrunk (plus the data and its batch size)
SHRINK = ['DATA.IMAGE_SIZE', '32', 'MODEL.NUM_CLASSES', '10', 'MODEL.TRANS.PATCH_SIZE', '4', 'MODEL.TRANS.STRIDE', '2',
          'MODEL.TRANS.BASE_DIMS', '[8,8,8]', 'MODEL.TRANS.DEPTH', '[1,1,1]', 'MODEL.TRANS.HEADS', '[2,4,8]',
          'TRAIN.NUM_EPOCHS', '3', 'TRAIN.WARMUP_EPOCHS', '1']
BATCH = '16'


def env(**extra):
    """The user's shell: `python` is the environment's python; paddle's threads set by the repo."""
    out = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ['PATH'], **extra)
    out.pop('OMP_NUM_THREADS', None)
    return out


def shell(*cmd, extra_env=None, check=True, timeout=900):
    result = subprocess.run(list(cmd), capture_output=True, text=True, cwd=ROOT, env=env(**(extra_env or {})),
                            timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f'{cmd} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}')
    return result


@pytest.fixture(scope='module')
def digits(tmp_path_factory):
    root = str(tmp_path_factory.mktemp('digits'))
    write_dataset(root, source='digits', image_size=32, train_per_class=32, val_per_class=5)
    return root


def train_multi_cmd(data, save):
    return ['sh', 'scripts/run_train_multi.sh', '-opts', *SHRINK], {'NGPUS': '2', 'DATA_PATH': data,
                                                                   'SAVE_PATH': save, 'BATCH_SIZE': BATCH}


def weights_of(path):
    return read_paddle_file(path)


def assert_same_training_state(a, b):
    assert a['epoch'] == b['epoch'] and a['best_acc1'] == b['best_acc1'] and a['best_epoch'] == b['best_epoch']
    for part in ('model', 'model_ema'):
        for key in a[part]:
            np.testing.assert_array_equal(a[part][key], b[part][key], err_msg=f'{part} {key}')
    assert a['lr_scheduler'] == b['lr_scheduler']


@pytest.fixture(scope='module')
def straight_run(digits, tmp_path_factory):
    """sh scripts/run_train_multi.sh with NGPUS=2, uninterrupted."""
    save = str(tmp_path_factory.mktemp('straight'))
    cmd, extra = train_multi_cmd(digits, save)
    result = shell(*cmd, extra_env=extra)
    return save, result


def test_run_train_multi_trains_two_processes_with_the_default_recipe(straight_run):
    save, result = straight_run
    log = open(os.path.join(save, 'log.txt')).read()
    assert '2 process(es)' in log and 'training pit_ti for 3 epochs' in log
    assert [r['epoch'] for r in read_records(save)] == [1, 2, 3]
    assert 'Traceback' not in result.stderr and 'PicklingError' not in result.stderr
    ckpt = weights_of(os.path.join(save, 'checkpoint-latest.pdparams'))
    assert ckpt['model_ema'] is not None and 'rand-m9-mstd0.5-inc1' in ckpt['config']
    assert 'NUM_WORKERS: auto' in ckpt['config'] and 'AdamP' in ckpt['config']


def test_sigkilled_two_process_run_rerun_with_the_same_command_ends_bit_identical(digits, straight_run, tmp_path):
    save = str(tmp_path / 'killed')
    cmd, extra = train_multi_cmd(digits, save)
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env(**extra), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    latest = os.path.join(save, 'checkpoint-latest.pdparams')
    deadline = time.time() + 600
    while not os.path.exists(latest) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the task, machine or container dies: every process of the run
    proc.wait()
    assert weights_of(latest)['epoch'] < 3, 'the run ended before it could be killed'
    resumed = shell(*cmd, extra_env=extra)
    assert 'resumed from' in open(os.path.join(save, 'log.txt')).read(), resumed.stdout[-2000:]
    assert_same_training_state(weights_of(os.path.join(straight_run[0], 'checkpoint-latest.pdparams')),
                               weights_of(latest))
    assert [r['epoch'] for r in read_records(save)] == [1, 2, 3]


def evaluation(save):
    """The result -eval wrote into SAVE (eval.json)."""
    with open(os.path.join(save, 'eval.json')) as f:
        return json.load(f)


def test_run_eval_and_run_eval_multi_need_no_cfg_and_agree_with_training(digits, straight_run, tmp_path):
    save = straight_run[0]
    ckpt = os.path.join(save, 'checkpoint-latest')
    common = {'DATA_PATH': digits, 'PRETRAINED': ckpt, 'BATCH_SIZE': BATCH}
    shell('sh', 'scripts/run_eval.sh', extra_env=dict(common, SAVE_PATH=str(tmp_path / 'e1')))
    shell('sh', 'scripts/run_eval_multi.sh', extra_env=dict(common, NGPUS='2', SAVE_PATH=str(tmp_path / 'e2')))
    one, two, last = evaluation(tmp_path / 'e1'), evaluation(tmp_path / 'e2'), read_records(save)[-1]
    # the same images counted once each; the loss summed in another order across 2 processes (float32)
    assert {**one, 'loss': None} == {**two, 'loss': None} and one['loss'] == pytest.approx(two['loss'], rel=1e-6)
    assert one['images'] == 50 and not one['ema']
    assert one['acc1'] == pytest.approx(last['val_acc1']) and one['acc5'] == pytest.approx(last['val_acc5'])
    shell('sh', 'scripts/run_eval.sh', '-ema', extra_env=dict(common, SAVE_PATH=str(tmp_path / 'e3')))
    ema = evaluation(tmp_path / 'e3')
    assert ema['ema'] and ema['acc1'] == pytest.approx(last['ema_acc1'])


def test_predict_on_a_folder_names_the_checkpoints_classes_and_reports_throughput(digits, straight_run):
    result = shell(sys.executable, 'predict.py', '-pretrained', os.path.join(straight_run[0], 'checkpoint-best'),
                   '-img_path', os.path.join(digits, 'heldout'), '-topk', '1')
    lines = [line for line in result.stdout.splitlines() if 'class_id' in line]
    assert len(lines) == 10 and all(re.search(r'name: \d$', line) for line in lines)
    assert re.search(r'classified 10 image\(s\) in [\d.]+s \([\d.]+ img/s\)', result.stdout)


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def test_paddle_distributed_launch_with_two_nodes_on_loopback_trains(digits, tmp_path):
    save, port = str(tmp_path / 'save'), free_port()
    nodes = []
    for node in range(2):
        cmd = [sys.executable, '-m', 'paddle.distributed.launch', '--nnodes', '2', '--master', f'127.0.0.1:{port}',
               '--nproc_per_node', '1', '--log_dir', str(tmp_path / f'log{node}'), 'main_multi_gpu.py',
               '-cfg', 'configs/pit_ti.yaml', '-data_path', digits, '-save_path', save, '-batch_size', BATCH,
               '-resume', 'auto', '-opts', *SHRINK[:-4], 'TRAIN.NUM_EPOCHS', '2', 'TRAIN.WARMUP_EPOCHS', '1']
        nodes.append(subprocess.Popen(cmd, cwd=ROOT, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True))
    outputs = [node.communicate(timeout=900)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], '\n'.join(o[-2000:] for o in outputs)
    log = open(os.path.join(save, 'log.txt')).read()
    assert '2 process(es)' in log and [r['epoch'] for r in read_records(save)] == [1, 2]


def light_imagenet_archive(digits, dataset_dir):
    """An AI Studio dataset: data<ID>/Light_ILSVRC2012_part_0.tar holding Light_ILSVRC2012/ in the list layout."""
    staging = os.path.join(os.path.dirname(dataset_dir), 'staging', 'Light_ILSVRC2012')
    for split in ('train', 'val'):
        lines = []
        for label, name in enumerate(sorted(os.listdir(os.path.join(digits, split)))):
            for file in sorted(os.listdir(os.path.join(digits, split, name))):
                rel = f'{split}/{name}/{file}'
                os.makedirs(os.path.dirname(os.path.join(staging, rel)), exist_ok=True)
                shutil.copy(os.path.join(digits, split, name, file), os.path.join(staging, rel))
                lines.append(f'{rel} {label}\n')
        with open(os.path.join(staging, f'{split}_list.txt'), 'w') as f:
            f.writelines(lines)
    os.makedirs(os.path.join(dataset_dir, 'data101'))
    with tarfile.open(os.path.join(dataset_dir, 'data101', 'Light_ILSVRC2012_part_0.tar'), 'w') as tar:
        tar.add(staging, arcname='Light_ILSVRC2012')


def test_run_sh_as_two_ai_studio_tasks_continues_from_the_uploaded_checkpoint(digits, tmp_path):
    datasets = str(tmp_path / 'datasets')
    light_imagenet_archive(digits, datasets)
    opts = ' '.join(SHRINK)
    task1 = {'WORKSPACE': str(tmp_path / 'task1'), 'DATA_ROOT': datasets, 'BATCH_SIZE': BATCH, 'EXTRA_OPTS': opts}
    proc = subprocess.Popen(['bash', 'run.sh'], cwd=ROOT, env=env(**task1), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    output1 = os.path.join(task1['WORKSPACE'], 'output', 'pit_ti')
    latest = os.path.join(output1, 'checkpoint-latest.pdparams')
    deadline = time.time() + 600
    while not os.path.exists(latest) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the task's time limit
    first = proc.communicate()[0]
    assert 'unpacking' in first and 'Light_ILSVRC2012_part_0.tar' in first
    done = weights_of(latest)['epoch']
    assert done < 3
    os.makedirs(os.path.join(datasets, 'data202'))  # the user uploads task 1's checkpoint as a dataset
    uploaded = os.path.join(datasets, 'data202', 'checkpoint-latest.pdparams')
    shutil.copy(latest, uploaded)

    task2 = dict(task1, WORKSPACE=str(tmp_path / 'task2'), RESUME_FROM=uploaded,
                 DATA_PATH=os.path.join(task1['WORKSPACE'], 'imagenet'))  # the copy task 1 unpacked
    second = shell('bash', 'run.sh', extra_env=task2)
    assert 'dataset already unpacked' in second.stdout and 'Light_ILSVRC2012' in second.stdout
    output2 = os.path.join(task2['WORKSPACE'], 'output', 'pit_ti')
    log = open(os.path.join(output2, 'log.txt')).read()
    assert f'resumed from {uploaded}: {done} epoch(s) done' in log
    assert [r['epoch'] for r in read_records(output2)] == list(range(done + 1, 4))
    assert weights_of(os.path.join(output2, 'checkpoint-latest.pdparams'))['epoch'] == 3


def test_visualdl_records_hold_every_epoch_with_the_epoch_as_step(straight_run):
    from visualdl import LogReader
    save = straight_run[0]
    files = [f for f in os.listdir(os.path.join(save, 'vdl')) if f.startswith('vdlrecords')]
    assert len(files) == 1
    reader = LogReader(file_path=os.path.join(save, 'vdl', files[0]))
    records = read_records(save)
    for tag, key in [('train/loss', 'train_loss'), ('train/lr', 'lr'), ('val/acc1', 'val_acc1'),
                     ('val/acc5', 'val_acc5'), ('val/loss', 'val_loss'), ('val_ema/acc1', 'ema_acc1'),
                     ('val_ema/acc5', 'ema_acc5'), ('val_ema/loss', 'ema_loss')]:
        points = reader.get_data('scalar', tag)
        assert [p.id for p in points] == [1, 2, 3], tag
        np.testing.assert_allclose([p.value for p in points], [r[key] for r in records], rtol=1e-6, err_msg=tag)
    steps = [p.id for p in reader.get_data('scalar', 'train_step/loss')]  # REPORT_FREQ 50: each epoch's last step
    assert steps == [steps[0] * epoch for epoch in (1, 2, 3)]
    assert len(reader.get_data('scalar', 'train_step/lr')) == 3
