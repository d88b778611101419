"""predict.py and the exported model: readable top-k, same top-1 as the dynamic model, bad files reported, bad
input and faults (hostile exports, GPU requests without a GPU, closed pipes) ended in one line."""
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import paddle
import pytest
from PIL import Image

from export import export_inference_model
from inference import class_names, create_predictor, gpu_visible, read_imagenet_index, run_predictor, write_deploy_files
from conftest import one_line_error

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
    from config import build_config, merge_opts
    from pit import build_pit
    tmp = tmp_path_factory.mktemp('predict')
    config = merge_opts(build_config(os.path.join(ROOT, 'configs', 'pit_ti.yaml')), TINY)
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


# ------------------------------------------------------------------ bad input and faults: one line, nothing half-done


@pytest.fixture(scope='module')
def export_dir(tiny_model):
    """The tiny model exported with its deploy files (class map of the 1000 ImageNet names)."""
    config, model, tmp = tiny_model
    prefix = export_inference_model(model, 32, str(tmp / 'export' / 'inference'))
    write_deploy_files(config, class_names(None, 1000), prefix)
    return tmp / 'export'


def copy_export(export_dir, tmp_path):
    """A copy of the export that a test may change; returns its prefix."""
    shutil.copytree(export_dir, tmp_path / 'export')
    return tmp_path / 'export' / 'inference'


def predict_export(prefix, *args):
    """predict.py -infer_model prefix with args (no -cfg: the export describes itself)."""
    cmd = [sys.executable, os.path.join(ROOT, 'predict.py'), '-infer_model', str(prefix), *args]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)


@pytest.mark.parametrize('yml, problem', [
    ('Global: !!python/object/apply:os.system ["touch {marker}"]\n',
     "could not determine a constructor for the tag 'tag:yaml.org,2002:python/object/apply:os.system' (line 1)"),
    ('PreProcess: {transform_ops: [\n', 'line 2'),
    ('PreProcess:\n  transform_ops:\n    - CropImage: {size: big}\n',
     "CropImage.size must be int, got 'big'"),
    ('PreProcess: [1, 2]\n', "PreProcess must be a mapping, got [1, 2]"),
    ('PreProcess:\n  transform_ops:\n    - NormalizeImage: {std: [0, 1, 1]}\n',
     'NormalizeImage.std must be 3 numbers above 0, got [0, 1, 1]'),
])
def test_a_hostile_or_malformed_inference_yml_is_refused_in_one_line_naming_it(export_dir, tiny_model, tmp_path,
                                                                                yml, problem):
    prefix = copy_export(export_dir, tmp_path)
    marker = tmp_path / 'pwned'
    (tmp_path / 'export' / 'inference.yml').write_text(yml.replace('{marker}', str(marker)))
    line = one_line_error(predict_export(prefix, '-img_path', str(tiny_model[2] / 'images' / 'img0.jpg')), 2)
    assert f"'{prefix}.yml'" in line and problem in line
    assert not marker.exists()


@pytest.mark.parametrize('lines', [999, 1001])
def test_a_class_map_that_does_not_fit_the_exported_model_names_both_counts(export_dir, tiny_model, tmp_path, lines):
    prefix = copy_export(export_dir, tmp_path)
    class_map = tmp_path / 'export' / 'inference_class_id_map.txt'
    class_map.write_text(''.join(f'{i} class {i}\n' for i in range(lines)))
    line = one_line_error(predict_export(prefix, '-img_path', str(tiny_model[2] / 'images' / 'img0.jpg')), 2)
    assert line == f"error: class map '{class_map}' names {lines} classes, but the exported model '{prefix}' has 1000"


def test_a_class_map_line_without_a_name_is_named_with_its_line(export_dir, tiny_model, tmp_path):
    prefix = copy_export(export_dir, tmp_path)
    class_map = tmp_path / 'export' / 'inference_class_id_map.txt'
    class_map.write_text('0 tench\n1\n')
    line = one_line_error(predict_export(prefix, '-img_path', str(tiny_model[2] / 'images' / 'img0.jpg')), 2)
    assert line == f"error: class map '{class_map}' line 2: expected '1 <class name>', got '1'"


@pytest.mark.parametrize('damage, problem', [('truncate', 'cannot load the exported model'),
                                             ('remove', "has no parameters file")])
def test_a_damaged_export_is_refused_in_one_line(export_dir, tiny_model, tmp_path, damage, problem):
    prefix = copy_export(export_dir, tmp_path)
    params = tmp_path / 'export' / 'inference.pdiparams'
    if damage == 'truncate':
        params.write_bytes(params.read_bytes()[:1000])
    else:
        params.unlink()
    line = one_line_error(predict_export(prefix, '-img_path', str(tiny_model[2] / 'images' / 'img0.jpg')), 2)
    assert problem in line and str(prefix) in line


@pytest.mark.skipif(gpu_visible(), reason='these requests are valid where a GPU is visible')
@pytest.mark.parametrize('flags, problem', [
    (['-device', 'gpu'], '-device gpu: paddle'),
    (['-use_trt'], '-use_trt run on an NVIDIA GPU'),
    (['-precision', 'fp16'], '-precision fp16 run on an NVIDIA GPU'),
])
def test_gpu_requests_without_a_gpu_are_refused_in_one_line(export_dir, tiny_model, flags, problem):
    images = str(tiny_model[2] / 'images')
    line = one_line_error(predict_export(export_dir / 'inference', *flags, '-img_path', images), 2)
    assert problem in line and ('no GPU' in line or 'has none' in line)


@pytest.mark.parametrize('flags, problem', [
    (['-topk', '0'], '-topk 0: expected a positive number'),
    (['-batch_size', '0'], '-batch_size 0: expected a positive number'),
    (['-use_trt'], '-use_trt and -precision apply to exported models (-infer_model)'),
])
def test_flag_values_predict_cannot_use_are_refused_in_one_line(tiny_model, flags, problem):
    _, _, tmp = tiny_model
    result = run_predict('-pretrained', str(tmp / 'tiny'), '-img_path', str(tmp / 'images'), *flags)
    assert one_line_error(result, 2) == f'error: {problem}'


def test_a_folder_without_images_is_refused_and_its_files_named(tiny_model, tmp_path):
    _, _, tmp = tiny_model
    (tmp_path / 'notes.txt').write_text('no image here')
    result = run_predict('-pretrained', str(tmp / 'tiny'), '-img_path', str(tmp_path))
    assert one_line_error(result, 2) == f'error: no image files in -img_path {tmp_path}'
    assert f"skipped '{tmp_path / 'notes.txt'}': not an image file" in result.stderr


def test_an_animated_gif_is_classified_by_its_first_frame_and_every_skipped_entry_is_named(tiny_model, tmp_path):
    config, model, tmp = tiny_model
    rng = np.random.RandomState(5)
    frames = [Image.fromarray(rng.randint(0, 255, (40, 40, 3), dtype=np.uint8)) for _ in range(3)]
    frames[0].save(tmp_path / 'anim.gif', save_all=True, append_images=frames[1:], duration=100)
    (tmp_path / 'readme.txt').write_text('about these photos')
    (tmp_path / 'more').mkdir()
    result = run_predict('-pretrained', str(tmp / 'tiny'), '-img_path', str(tmp_path), '-topk', '1')
    assert result.returncode == 0, result.stderr
    assert f"note: '{tmp_path / 'anim.gif'}' has 3 frames: the first is classified" in result.stderr
    assert f"skipped '{tmp_path / 'readme.txt'}': not an image file" in result.stderr
    assert f"skipped '{tmp_path / 'more'}': a folder" in result.stderr
    from datasets import build_transforms
    first_frame = build_transforms(config, 'val')(Image.open(tmp_path / 'anim.gif').convert('RGB'))
    with paddle.no_grad():
        expected = int(model(paddle.to_tensor(first_frame[None])).numpy().argmax())
    assert top1_per_image(result.stdout) == {'anim.gif': expected}


def test_output_cut_short_by_its_reader_ends_quietly(tiny_model):
    """`predict.py ... | head -0`: the reader is gone before the first line; no BrokenPipeError traceback."""
    _, _, tmp = tiny_model
    cmd = [sys.executable, os.path.join(ROOT, 'predict.py'), '-cfg', os.path.join(ROOT, 'configs', 'pit_ti.yaml'),
           '-pretrained', str(tmp / 'tiny'), '-img_path', str(tmp / 'images'), '-opts', *TINY]
    process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    process.stdout.close()
    stderr = process.stderr.read()
    assert process.wait(timeout=300) == 141
    assert 'Traceback' not in stderr and 'BrokenPipe' not in stderr
