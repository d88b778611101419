"""Fine-tuning on one's own dataset: ImageNet-style (1000-class, PyTorch-layout) weights into a 10-class model."""
import os
import re
import subprocess
import sys

import numpy as np
import paddle
import paddle.nn as nn
import pytest

from config import build_config
from demo_data import write_dataset
from metrics import read_records
from pit import build_pit
from torch_zip import save_torch_zip, to_timm_layout
from weights import WeightsError, load_pretrained

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = ['DATA.IMAGE_SIZE', '32', 'MODEL.TRANS.PATCH_SIZE', '4', 'MODEL.TRANS.STRIDE', '2',
         'MODEL.TRANS.BASE_DIMS', '[16, 16, 16]', 'MODEL.TRANS.DEPTH', '[1, 1, 1]', 'MODEL.TRANS.HEADS', '[2, 4, 8]']


# the README's fine-tuning advice for a very small dataset: short schedule, no mixup/cutmix
README_SMALL_DATASET = ['TRAIN.NUM_EPOCHS', '4', 'TRAIN.WARMUP_EPOCHS', '0', 'TRAIN.BASE_LR', '0.001',
                        'TRAIN.LINEAR_SCALED_LR', 'None', 'TRAIN.MODEL_EMA_DECAY', '0.99', 'AUG.MIXUP', '0.0',
                        'AUG.CUTMIX', '0.0']


def imagenet_like_pth(path, *opts):
    """A 1000-class PiT saved as timm saves it (timm >= 0.9 pooling keys, [out, in] Linear weights, .pth)."""
    config = build_config(os.path.join(ROOT, 'configs', 'pit_ti.yaml'), SMALL + list(opts))
    paddle.seed(3)
    model = build_pit(config)
    linear = {f'{n}.weight' for n, layer in model.named_sublayers() if isinstance(layer, nn.Linear)}
    save_torch_zip(to_timm_layout({k: v.numpy() for k, v in model.state_dict().items()}, linear), str(path))
    return model


def test_a_classifier_of_another_class_count_is_reinitialised_and_everything_else_loaded(tmp_path):
    source = imagenet_like_pth(tmp_path / 'in1k.pth')
    config = build_config(os.path.join(ROOT, 'configs', 'pit_ti.yaml'), SMALL + ['MODEL.NUM_CLASSES', '10'])
    paddle.seed(4)
    model = build_pit(config)
    head_init = model.head.weight.numpy().copy()
    report = load_pretrained(model, str(tmp_path / 'in1k.pth'), finetune=True)
    assert report.fit.reinitialised == ['head.weight', 'head.bias']
    assert 'classifier re-initialised' in str(report) and '\n' not in str(report)
    np.testing.assert_array_equal(model.head.weight.numpy(), head_init)
    for name, value in source.state_dict().items():
        if not name.startswith('head.'):
            np.testing.assert_array_equal(model.state_dict()[name].numpy(), value.numpy(), err_msg=name)


def test_any_other_misfit_stays_an_error_naming_the_keys(tmp_path):
    imagenet_like_pth(tmp_path / 'in1k.pth', 'MODEL.TRANS.DEPTH', '[1, 2, 1]')
    config = build_config(os.path.join(ROOT, 'configs', 'pit_ti.yaml'), SMALL + ['MODEL.NUM_CLASSES', '10'])
    with pytest.raises(WeightsError, match=r'unexpected \(\d+\): transformers\.1\.blocks\.1\.'):
        load_pretrained(build_pit(config), str(tmp_path / 'in1k.pth'), finetune=True)


def pretrain_imagenet_like(tmp_path):
    """A 1000-class model that has learned something, saved as timm saves it: trained through
    main_single_gpu.py on digits in the list layout (labels 0-9 of 1000 classes), then rewritten as a .pth."""
    data = str(tmp_path / 'pretrain_data')
    write_dataset(data, source='digits', layout='list', image_size=32, train_per_class=100, val_per_class=5, seed=1)
    save = str(tmp_path / 'pretrain')
    cmd = [sys.executable, 'main_single_gpu.py', '-cfg', 'configs/pit_ti.yaml', '-data_path', data, '-save_path', save,
           '-batch_size', '32', '-opts', *SMALL, 'MODEL.NUM_CLASSES', '1000', 'TRAIN.NUM_EPOCHS', '6',
           'TRAIN.WARMUP_EPOCHS', '0', 'TRAIN.BASE_LR', '0.002', 'TRAIN.LINEAR_SCALED_LR', 'None',
           'TRAIN.LR_SCHEDULER.DEIT_LAG', 'False', 'AUG.MIXUP', '0.0', 'AUG.CUTMIX', '0.0', 'MODEL.DROP_PATH', '0.0',
           'AUG.AUTO_AUGMENT', "''", 'AUG.RE_PROB', '0.0', 'AUG.HFLIP', '0.0', 'AUG.SCALE', '[0.35, 1.0]']
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    config = build_config(os.path.join(ROOT, 'configs', 'pit_ti.yaml'), SMALL)
    model = build_pit(config)
    load_pretrained(model, os.path.join(save, 'checkpoint-latest'))
    linear = {f'{n}.weight' for n, layer in model.named_sublayers() if isinstance(layer, nn.Linear)}
    path = str(tmp_path / 'in1k.pth')
    save_torch_zip({'model': to_timm_layout({k: v.numpy() for k, v in model.state_dict().items()}, linear)}, path)
    return path


@pytest.mark.slow
def test_fine_tuning_a_1000_class_pytorch_checkpoint_on_10_classes_learns(tmp_path):
    pretrained = pretrain_imagenet_like(tmp_path)
    data = str(tmp_path / 'data')
    write_dataset(data, source='digits', image_size=32, train_per_class=40, val_per_class=10, seed=2)
    save = str(tmp_path / 'finetune')
    cmd = [sys.executable, 'main_single_gpu.py', '-cfg', 'configs/pit_ti.yaml', '-data_path', data, '-save_path', save,
           '-pretrained', pretrained, '-batch_size', '32', '-opts', *SMALL, 'MODEL.NUM_CLASSES', '10',
           *README_SMALL_DATASET]
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    log = open(os.path.join(save, 'log.txt')).read()
    loaded = re.findall(r"loaded \d+ tensors from .*in1k.pth.*classifier re-initialised for the new class count "
                        r"\(fine-tuning\): head.weight, head.bias", log)
    assert len(loaded) == 1, log[:3000]
    records = read_records(save)
    assert len(records) == 4 and records[-1]['train_loss'] < records[0]['train_loss']
    assert max(r['val_acc1'] for r in records) > 0.5, records  # chance is 0.1
