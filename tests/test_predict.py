"""predict.py and the exported model: readable top-k, same top-1 as the dynamic model, bad files reported."""
import os
import re
import subprocess
import sys

import numpy as np
import paddle
import pytest
from PIL import Image

from predict import class_names, read_imagenet_index
from tools.export_model import create_predictor, export_inference_model, run_predictor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ['DATA.IMAGE_SIZE', '32', 'MODEL.NUM_CLASSES', '1000', 'MODEL.TRANS.PATCH_SIZE', '4', 'MODEL.TRANS.STRIDE', '2',
        'MODEL.TRANS.BASE_DIMS', '[8, 8]', 'MODEL.TRANS.DEPTH', '[1, 1]', 'MODEL.TRANS.HEADS', '[2, 4]']


def test_class_index_has_1000_imagenet_classes_with_244_tibetan_mastiff():
    index = read_imagenet_index()
    assert len(index) == 1000 and len({wnid for wnid, _ in index}) == 1000
    assert index[244] == ('n02108551', 'Tibetan mastiff')
    assert [wnid for wnid, _ in index] == sorted(wnid for wnid, _ in index)


def test_checkpoint_classes_take_precedence_and_wnids_become_readable():
    assert class_names(['n02108551', 'cat'], 2) == ['Tibetan mastiff (n02108551)', 'cat']
    assert class_names(None, 1000)[244] == 'Tibetan mastiff (n02108551)'
    assert class_names(None, 3) == ['0', '1', '2']
    assert class_names([str(i) for i in range(1000)], 1000)[244] == 'Tibetan mastiff (n02108551)'


@pytest.fixture(scope='module')
def tiny_model(tmp_path_factory):
    """A 1000-class tiny PiT saved as weights, plus three photos and one broken file."""
    from config import get_config, merge_opts
    from pit import build_pit
    tmp = tmp_path_factory.mktemp('predict')
    config = merge_opts(get_config(os.path.join(ROOT, 'configs', 'pit_ti.yaml')), TINY)
    paddle.seed(1)
    model = build_pit(config)
    model.eval()
    paddle.save(model.state_dict(), str(tmp / 'tiny.pdparams'))
    images = tmp / 'images'
    images.mkdir()
    rng = np.random.RandomState(0)
    for i in range(3):
        Image.fromarray(rng.randint(0, 255, (40 + 7 * i, 50, 3), dtype=np.uint8)).save(images / f'img{i}.jpg')
    (images / 'notes.jpg').write_text('not an image')
    return config, model, tmp


def run_predict(*args):
    cmd = [sys.executable, os.path.join(ROOT, 'predict.py'), '-cfg', os.path.join(ROOT, 'configs', 'pit_ti.yaml'),
           *args, '-opts', *TINY]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)


def top1_per_image(stdout):
    result, current = {}, None
    for line in stdout.splitlines():
        if not line.startswith(' '):
            current = os.path.basename(line.strip())
        elif current not in result:
            result[current] = int(re.search(r'class_id: (\d+), prob: ([\d.]+), name: ', line).group(1))
    return result


def dynamic_top1(config, model, folder):
    from datasets import build_transforms
    transform = build_transforms(config, 'val')
    out = {}
    for name in sorted(os.listdir(folder)):
        if name.startswith('img'):
            x = transform(Image.open(folder / name).convert('RGB'))
            out[name] = int(model(paddle.to_tensor(x[None])).numpy().argmax())
    return out


def test_predict_prints_topk_for_a_folder_and_reports_the_broken_file(tiny_model):
    config, model, tmp = tiny_model
    result = run_predict('-pretrained', str(tmp / 'tiny'), '-img_path', str(tmp / 'images'), '-topk', '3')
    assert result.returncode == 1
    assert "cannot read image '" in result.stderr and 'notes.jpg' in result.stderr
    assert top1_per_image(result.stdout) == dynamic_top1(config, model, tmp / 'images')
    probs = [float(p) for p in re.findall(r'prob: ([\d.]+)', result.stdout)]
    assert len(probs) == 9 and all(0 <= p <= 1 for p in probs)


def test_exported_model_matches_dynamic_logits_and_predict_top1(tiny_model):
    config, model, tmp = tiny_model
    before = {k: v.numpy().copy() for k, v in model.state_dict().items()}
    prefix = export_inference_model(model, 32, str(tmp / 'inference'))
    # the traced copy has the attention scale folded into its qkv weights; the model itself is left as it was
    assert all(np.array_equal(v.numpy(), before[k]) for k, v in model.state_dict().items())
    x = np.random.RandomState(1).rand(4, 3, 32, 32).astype('float32')
    logits = run_predictor(create_predictor(prefix), x)
    np.testing.assert_allclose(logits, model(paddle.to_tensor(x)).numpy(), atol=1e-4)
    images = [str(tmp / 'images' / f'img{i}.jpg') for i in range(3)]
    result = run_predict('-infer_model', prefix, '-img_path', *images)
    assert result.returncode == 0, result.stderr
    assert top1_per_image(result.stdout) == dynamic_top1(config, model, tmp / 'images')


def test_export_tool_refuses_weights_of_another_variant_in_one_line(tiny_model, tmp_path):
    _, _, tmp = tiny_model
    cmd = [sys.executable, os.path.join(ROOT, 'tools', 'export_model.py'), '-cfg',
           os.path.join(ROOT, 'configs', 'pit_ti.yaml'), '-pretrained', str(tmp / 'tiny'), '-save_path',
           str(tmp_path / 'inf')]
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result.returncode == 2 and result.stderr.strip().splitlines()[-1].startswith('error:')
    assert not os.listdir(tmp_path)

