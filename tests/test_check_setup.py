"""The preflight command (tools/check_setup.py): every section and a verdict on this CPU machine, advice where the
machine falls short (a tiny /dev/shm, a data path without data), and the estimates it rests on."""
import os
import re
import shutil
import subprocess
import sys

import paddle
import pytest

import checkpoint
from config import build_config
from checkpoint import checkpoint_files
from datasets import advised_workers, num_workers, worker_budget
from conftest import TINY_MODEL
from demo_data import write_dataset
from engine import build_train_state
from pit import build_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SECTIONS = ['== paddle', '== devices', '== precision', '== shared memory', '== disk', 'training process(es)',
            '== data loader', '== verdict']


@pytest.fixture(scope='module')
def digits(tmp_path_factory):
    root = str(tmp_path_factory.mktemp('digits'))
    write_dataset(root, source='digits', image_size=32, train_per_class=16, val_per_class=2)
    return root


def preflight(*args, prefix=(), opts=(), **kwargs):
    cmd = [*prefix, sys.executable, os.path.join(ROOT, 'tools', 'check_setup.py'), '-cfg',
           os.path.join(ROOT, 'configs', 'pit_ti.yaml'), '-batch_size', '16', '-amp', *args, '-opts', *TINY_MODEL,
           *opts]
    env = dict(os.environ)
    env.pop('OMP_NUM_THREADS', None)
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=900, **kwargs)


@pytest.mark.slow
def test_preflight_on_two_cpu_processes_prints_every_section_and_a_verdict(digits, tmp_path):
    # more timed steps than warm-up steps (3): the timed pass is an epoch of its own
    result = preflight('-data_path', digits, '-save_path', str(tmp_path / 'save'), '-ngpus', '2', '-steps', '5',
                       '-batches', '3')
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    positions = [out.find(section) for section in SECTIONS]
    assert -1 not in positions and positions == sorted(positions), out
    assert 'all-reduce over 2 processes (GLOO)' in out
    assert 'finite; model speed' in out and 'img/s per process' in out
    speed = re.search(r'model speed ([\d,.]+) img/s over 2 process', out)
    assert speed and float(speed.group(1).replace(',', '')) > 0, out  # the timed steps ran
    assert f'{num_workers("auto", processes=2)} workers (DATA.NUM_WORKERS auto)' in out  # as each of 2 would start
    assert 'float32 (AMP requested but running on the CPU)' in out
    assert 'READY' in out and 'NOT READY' not in out
    assert not os.path.exists(tmp_path / 'save'), 'the preflight writes nothing into SAVE'


@pytest.mark.slow
@pytest.mark.skipif(not shutil.which('unshare'), reason='needs unshare to give a process its own /dev/shm')
def test_preflight_on_a_machine_with_a_tiny_dev_shm_advises_more_shared_memory(digits, tmp_path):
    probe = subprocess.run(['unshare', '-m', 'sh', '-c', 'mount -t tmpfs -o size=1m tmpfs /dev/shm'],
                           capture_output=True)
    if probe.returncode != 0:
        pytest.skip('cannot mount a private /dev/shm here (needs root and mount namespaces)')
    result = preflight('-data_path', digits, '-ngpus', '1', '-steps', '2', '-batches', '2',
                       prefix=['unshare', '-m', 'sh', '-c', 'mount -t tmpfs -o size=1m tmpfs /dev/shm && exec "$@"',
                               'sh'],
                       opts=['DATA.IMAGE_SIZE', '64', 'DATA.NUM_WORKERS', '4'])  # 16 x 64 x 64 x 3 x 2 x 4: 1.5 MB
    assert result.returncode == 0, result.stdout + result.stderr
    shm_line = next(line for line in result.stdout.splitlines() if '/dev/shm has' in line)
    assert shm_line.strip().startswith('[warning]') and 'has 1 MB free' in shm_line
    verdict = result.stdout.split('== verdict')[1]
    assert '--shm-size=' in verdict and 'DATA.NUM_WORKERS' in verdict


@pytest.mark.slow
def test_preflight_without_training_data_fails_and_names_the_data_path(tmp_path):
    empty = tmp_path / 'nothing'
    empty.mkdir()
    result = preflight('-data_path', str(empty), '-ngpus', '1', '-steps', '1')
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"[FAIL] the training data under '{empty}' cannot be loaded" in result.stdout
    assert 'NOT READY' in result.stdout and 'fix DATA.DATA_PATH' in result.stdout


def test_a_checkpoint_is_as_large_as_the_estimate(tmp_path):
    """The disk check's checkpoint size (model, EMA, two Adam moments in float32) against a real save."""
    config = build_config(os.path.join(ROOT, 'configs', 'pit_ti.yaml'), TINY_MODEL + ['SAVE', str(tmp_path)],
                          world_size=1)
    model = build_model(config)
    state = build_train_state(config, model, 1)
    x = paddle.randn([2, 3, 32, 32])
    paddle.nn.functional.cross_entropy(model(x), paddle.to_tensor([1, 2])).backward()
    state.optimizer.step()  # creates the moments
    checkpoint.save(str(tmp_path), state, config, [str(i) for i in range(10)], is_best=False)
    written = os.path.getsize(tmp_path / checkpoint.LATEST)
    assert 0.9 * written <= checkpoint.checkpoint_bytes(model, config) <= 1.1 * written


@pytest.mark.parametrize('keep, save_freq', [(2, 1), (0, 2), (3, 2)])
def test_the_disk_estimate_counts_the_distinct_files_a_run_leaves(tmp_path, keep, save_freq):
    """Four epochs saved, the best the first, then a stop inside the fifth and last: as many distinct files in
    SAVE as the disk check counts (numbered files kept, best, latest)."""
    config = build_config(os.path.join(ROOT, 'configs', 'pit_ti.yaml'), TINY_MODEL + [
        'SAVE', str(tmp_path), 'TRAIN.NUM_EPOCHS', '5', 'KEEP_CHECKPOINTS', str(keep), 'SAVE_FREQ', str(save_freq)],
        world_size=1)
    model = build_model(config)
    state = build_train_state(config, model, 1)
    classes = [str(i) for i in range(10)]
    for epoch in range(1, 5):
        state.epoch = epoch
        checkpoint.save(str(tmp_path), state, config, classes, is_best=epoch == 1)
    state.step = 3
    checkpoint.save(str(tmp_path), state, config, classes)
    files = {os.stat(path).st_ino for path in checkpoint.candidates(str(tmp_path))}
    assert len(files) == checkpoint_files(config)


def test_advised_workers_scale_with_the_shortfall_and_stay_within_the_cores_per_process():
    assert advised_workers(4, loader_speed=1100, model_speed=3000, budget=worker_budget(64, 1)) == 11
    assert advised_workers(4, loader_speed=1100, model_speed=3000, budget=worker_budget(8, 1)) == 7
    assert advised_workers(4, loader_speed=1100, model_speed=3000, budget=worker_budget(64, 8)) == 7
    assert advised_workers(4, loader_speed=5000, model_speed=3000, budget=worker_budget(64, 1)) == 3


@pytest.mark.parametrize('cores, processes, expected', [(2, 1, 1), (8, 1, 7), (64, 1, 8), (48, 8, 5), (8, 8, 1)])
def test_auto_workers_are_the_cores_per_process_less_one_at_most_8(cores, processes, expected):
    assert num_workers('auto', cores, processes) == expected
    assert num_workers(3, cores, processes) == 3
