"""A checkpoint carries what it takes to use it: predict, eval and export need no -cfg, and agree with -cfg."""
import json
import os
import re
import subprocess
import sys

import pytest
import yaml

from conftest import TINY_MODEL
from demo_data import write_dataset

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.slow
TINY = TINY_MODEL + ['TRAIN.NUM_EPOCHS', '2', 'TRAIN.WARMUP_EPOCHS', '0', 'DATA.CROP_PCT', '0.9']


def run(*args, check=True):
    result = subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=ROOT, timeout=600)
    if check and result.returncode != 0:
        raise AssertionError(f'{args} failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}')
    return result


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('run')
    data = str(tmp / 'data')
    write_dataset(data, source='digits', image_size=32, train_per_class=8, val_per_class=3)
    save = str(tmp / 'save')
    run('main_single_gpu.py', '-cfg', 'configs/pit_ti.yaml', '-data_path', data, '-save_path', save,
        '-batch_size', '16', '-opts', *TINY)
    return tmp, data, save


def evaluation(save):
    """The result -eval wrote into SAVE (eval.json)."""
    with open(os.path.join(save, 'eval.json')) as f:
        return json.load(f)


def test_eval_without_cfg_equals_eval_with_cfg_including_its_crop(trained):
    tmp, data, save = trained
    ckpt = os.path.join(save, 'checkpoint-latest')
    run('main_single_gpu.py', '-eval', '-pretrained', ckpt, '-data_path', data, '-save_path', str(tmp / 'e1'))
    run('main_single_gpu.py', '-eval', '-cfg', 'configs/pit_ti.yaml', '-pretrained', ckpt, '-data_path', data,
        '-save_path', str(tmp / 'e2'), '-opts', *TINY)
    without, given = evaluation(tmp / 'e1'), evaluation(tmp / 'e2')
    assert without == given and without['images'] == 30 and not without['ema']
    assert without['weights'] == os.path.abspath(ckpt + '.pdparams')


def test_eval_resume_auto_evaluates_the_newest_checkpoint_and_ema_its_ema(trained):
    tmp, data, save = trained
    run('main_single_gpu.py', '-eval', '-resume', 'auto', '-save_path', save, '-data_path', data)
    model = evaluation(save)
    assert model['weights'] == os.path.join(os.path.abspath(save), 'checkpoint-latest.pdparams') and not model['ema']
    ema = run('main_single_gpu.py', '-eval', '-resume', 'auto', '-ema', '-save_path', save, '-data_path', data).stdout
    assert "entry 'model_ema'" in ema and evaluation(save)['ema'] and evaluation(save)['images'] == 30


def test_a_cfg_whose_model_contradicts_the_checkpoint_is_an_error_naming_the_key(trained):
    tmp, data, save = trained
    result = run('predict.py', '-cfg', 'configs/pit_ti.yaml', '-pretrained', os.path.join(save, 'checkpoint-latest'),
                 '-img_path', os.path.join(data, 'heldout'), check=False)
    assert result.returncode == 2 and 'MODEL.' in result.stderr and 'contradicts the checkpoint' in result.stderr


def top1(stdout):
    return re.findall(r'class_id: (\d+), prob: [\d.]+, name: (\S+)', stdout)


def test_export_without_cfg_writes_a_paddleclas_deploy_config_and_keeps_class_names(trained):
    tmp, data, save = trained
    prefix = str(tmp / 'export' / 'inference')
    run('tools/export_model.py', '-pretrained', os.path.join(save, 'checkpoint-best'), '-save_path', prefix)
    deploy = yaml.safe_load(open(prefix + '.yml'))
    ops = [list(op)[0] for op in deploy['PreProcess']['transform_ops']]
    assert ops == ['ResizeImage', 'CropImage', 'NormalizeImage', 'ToCHWImage']
    assert deploy['PreProcess']['transform_ops'][0]['ResizeImage']['resize_short'] == 35  # floor(32 / 0.9)
    assert deploy['PreProcess']['transform_ops'][1]['CropImage']['size'] == 32
    assert deploy['Global']['crop_pct'] == 0.9  # the config's value as it is: 32 / 35 would not give it back
    class_map = os.path.join(os.path.dirname(prefix), deploy['PostProcess']['Topk']['class_id_map_file'])
    assert open(class_map).read().splitlines()[3] == '3 3'
    images = os.path.join(data, 'heldout')
    exported = top1(run('predict.py', '-infer_model', prefix, '-img_path', images, '-topk', '1').stdout)
    dynamic = top1(run('predict.py', '-pretrained', os.path.join(save, 'checkpoint-best'), '-img_path', images,
                       '-topk', '1').stdout)
    assert exported == dynamic and len(exported) == 10
