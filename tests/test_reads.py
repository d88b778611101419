"""Every command reads its weights file once, counted by the opens of every process it starts
(tests/fixtures/open_counter): predict, the export tool, -eval and fine-tuning from -pretrained; a two-process
-eval reads it once per training process, and its launcher once more, for the description only."""
import collections
import os
import shutil
import subprocess
import sys

import pytest

from conftest import TINY_ONE_EPOCH

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COUNTER = os.path.join(ROOT, 'tests', 'fixtures', 'open_counter')


@pytest.fixture(scope='module')
def trained(digits, tmp_path_factory):
    """(digits data, a copy of a tiny trained checkpoint named weights.pdparams)."""
    tmp = tmp_path_factory.mktemp('reads')
    run(sys.executable, 'main_single_gpu.py', '-cfg', 'configs/pit_ti.yaml', '-data_path', digits, '-save_path',
        str(tmp / 'run'), '-batch_size', '8', '-opts', *TINY_ONE_EPOCH)
    shutil.copy(tmp / 'run' / 'checkpoint-latest.pdparams', tmp / 'weights.pdparams')
    return digits, str(tmp / 'weights.pdparams')


def run(*cmd, env=None):
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def opens(weights, *cmd):
    """{pid: times the process opened weights} over cmd and every process it started."""
    log = weights + '.opens'
    if os.path.exists(log):
        os.remove(log)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([COUNTER, os.environ.get('PYTHONPATH', '')]),
               PIT_COUNT_OPENS=weights, PIT_COUNT_OPENS_LOG=log)
    run(sys.executable, *cmd, env=env)
    with open(log) as f:
        return collections.Counter(line.split()[0] for line in f)


def test_predict_reads_its_weights_once(trained):
    data, weights = trained
    assert list(opens(weights, 'predict.py', '-pretrained', weights, '-img_path',
                      os.path.join(data, 'heldout')).values()) == [1]


def test_the_export_tool_reads_its_weights_once(trained, tmp_path):
    assert list(opens(trained[1], 'tools/export_model.py', '-pretrained', trained[1], '-save_path',
                      str(tmp_path / 'inference')).values()) == [1]


def test_eval_reads_its_weights_once(trained, tmp_path):
    data, weights = trained
    assert list(opens(weights, 'main_single_gpu.py', '-eval', '-pretrained', weights, '-data_path', data,
                      '-save_path', str(tmp_path)).values()) == [1]


def test_fine_tuning_reads_the_pretrained_weights_once(trained, tmp_path):
    data, weights = trained
    assert list(opens(weights, 'main_single_gpu.py', '-cfg', 'configs/pit_ti.yaml', '-pretrained', weights,
                      '-data_path', data, '-save_path', str(tmp_path), '-batch_size', '8', '-opts',
                      *TINY_ONE_EPOCH).values()) == [1]


@pytest.mark.slow
def test_a_two_process_eval_reads_the_weights_once_per_process(trained, tmp_path):
    data, weights = trained
    counts = opens(weights, 'main_multi_gpu.py', '-ngpus', '2', '-eval', '-pretrained', weights, '-data_path', data,
                   '-save_path', str(tmp_path))
    assert sorted(counts.values()) == [1, 1, 1]  # the launcher (its description only) and each training process
