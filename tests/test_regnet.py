"""RegNetY teacher: timm's architecture rules and size, logits parity with timm weights, conversion, loading.

Reference data: tests/fixtures/regnet_tiny.{pth,npz}, written by tools/make_regnet_fixture.py with timm.
"""
import json
import os
import subprocess
import sys

import numpy as np
import paddle
import pytest

from regnet import REGNETY_160, build_regnet, convert_teacher, load_teacher, stage_plan, teacher_state_dict
from weights import WeightsError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, 'tests', 'fixtures')
TINY_PTH = os.path.join(FIXTURES, 'regnet_tiny.pth')
with open(os.path.join(FIXTURES, 'regnet_tiny.json')) as f:  # sizes of the model tools/make_regnet_fixture.py wrote
    TINY_SIZES = json.load(f)
TINY, NUM_CLASSES = TINY_SIZES['config'], TINY_SIZES['num_classes']


@pytest.fixture(scope='module')
def reference():
    return np.load(os.path.join(FIXTURES, 'regnet_tiny.npz'))


def logits(model, reference):
    with paddle.no_grad():
        model.eval()  # (Paddle 2.6's Layer.eval returns None: no chaining)
        return model(paddle.to_tensor(reference['input'])).numpy()


def test_stage_plan_matches_timm_for_the_tiny_config_and_regnety_160(reference):
    def plan(cfg):
        return [list(s) for s in stage_plan(cfg['w0'], cfg['wa'], cfg['wm'], cfg['depth'], cfg['group_size'])]

    assert plan(TINY) == reference['tiny_stages'].tolist()
    assert plan(REGNETY_160) == reference['regnety_160_stages'].tolist()
    assert reference['regnety_160_stages'].tolist() == [[224, 2, 112], [448, 4, 112], [1232, 11, 112],
                                                        [3024, 1, 112]]  # RegNet paper, RegNetY-16GF


def test_regnety_160_has_timms_parameter_count(reference):
    model = build_regnet()
    trained = sum(int(p.size) for p in model.parameters() if not p.stop_gradient)  # BN statistics excluded
    assert trained == int(reference['regnety_160_params'])
    assert round(trained / 1e6, 2) == 83.59


def test_timm_weights_give_timms_logits(reference):
    model = build_regnet(TINY, NUM_CLASSES)
    model.set_state_dict(teacher_state_dict(TINY_PTH, model))
    np.testing.assert_allclose(logits(model, reference), reference['logits'], rtol=0, atol=1e-4)


def test_converted_file_loads_as_teacher_without_extension_and_in_eval_mode(tmp_path, reference):
    summary = convert_teacher(TINY_PTH, str(tmp_path / 'teacher'), cfg=TINY, num_classes=NUM_CLASSES)
    assert os.listdir(tmp_path) == ['teacher.pdparams'] and 'teacher.pdparams' in summary
    teacher = load_teacher(str(tmp_path / 'teacher'), num_classes=NUM_CLASSES, cfg=TINY)
    assert not teacher.training
    np.testing.assert_allclose(logits(teacher, reference), reference['logits'], rtol=0, atol=1e-4)


def test_missing_teacher_file_raises_file_not_found_naming_it(tmp_path):
    with pytest.raises(FileNotFoundError, match='nowhere.*TRAIN.TEACHER_MODEL'):
        load_teacher(str(tmp_path / 'nowhere'))


def test_weights_of_another_size_raise_weights_error_and_the_cli_exits_2(tmp_path):
    with pytest.raises(WeightsError, match='regnet_tiny.pth'):
        teacher_state_dict(TINY_PTH, build_regnet(TINY, num_classes=1000))
    result = subprocess.run([sys.executable, os.path.join(ROOT, 'tools', 'convert_regnet.py'), '-src', TINY_PTH,
                             '-dst', str(tmp_path / 'out')], capture_output=True, text=True)
    assert result.returncode == 2 and result.stderr.strip().splitlines()[-1].startswith('error: ')
    assert 'regnet_tiny.pth' in result.stderr and not os.listdir(tmp_path)
