"""Pictures of what the model looks at (explain.py, tools/visualize.py) and training curves (tools/plot_metrics.py):
the maps' contracts, Grad-CAM against its definition, a model trained here to find a square whose attention points
at it, and the commands' files and one-line errors."""
import contextlib
import json
import os
import subprocess
import sys

import numpy as np
import paddle
import pytest
from PIL import Image

from checkpoint import write_weights
from config import build_config
from conftest import one_line_error
from drawing import LINE_HEIGHT, MARGIN
from explain import explain, grad_cam, recording_attention, rollout
from losses import build_criterion
from metrics import RunRecords
from optim import build_optimizer
from pit import build_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ['DATA.IMAGE_SIZE', '32', 'MODEL.NUM_CLASSES', '4', 'MODEL.TRANS.PATCH_SIZE', '4', 'MODEL.TRANS.STRIDE', '2',
        'MODEL.TRANS.BASE_DIMS', '[8, 8, 8]', 'MODEL.TRANS.DEPTH', '[1, 1, 2]']
CORNERS = ('top left', 'top right', 'bottom left', 'bottom right')


def tiny_model(*opts):
    config = build_config(os.path.join(ROOT, 'configs', 'pit_ti.yaml'), TINY + list(opts))
    return build_model(config), config


def run(tool, *args):
    return subprocess.run([sys.executable, os.path.join('tools', tool), *map(str, args)], capture_output=True,
                          text=True, cwd=ROOT, timeout=300)


# ---------------------------------------------------------------- the maps

@pytest.mark.parametrize('distilled', [False, True])
def test_rollout_rows_sum_to_one_and_each_stage_map_has_that_stages_grid(distilled):
    model, _ = tiny_model('MODEL.DISTILL', str(distilled))
    model.eval()
    images = np.random.RandomState(0).randn(2, 3, 32, 40).astype('float32')  # any input size, not only square
    with paddle.no_grad():
        maps, _ = model.forward_stages(paddle.to_tensor(images))
        with recording_attention(model) as recorded:
            model(paddle.to_tensor(images))
    for stage, stage_map in zip(recorded, maps):
        rolled = rollout([block[0].numpy() for block in stage])
        tokens = (2 if distilled else 1) + stage_map.shape[2] * stage_map.shape[3]
        assert rolled.shape == (2, tokens, tokens)
        np.testing.assert_allclose(rolled.sum(axis=-1), 1.0, rtol=1e-6)
    explanation = explain(model, images)
    assert [r.shape for r in explanation.rollouts] == [(2, *m.shape[2:]) for m in maps]
    assert explanation.cam.shape == (2, *maps[-1].shape[2:]) and (explanation.cam >= 0).all()


def test_explaining_leaves_the_logits_and_the_models_attention_path_as_they_were():
    model, _ = tiny_model()
    model.eval()
    images = np.random.RandomState(1).randn(3, 3, 32, 32).astype('float32')
    with paddle.no_grad():
        before = model(paddle.to_tensor(images)).numpy()
    explanation = explain(model, images)
    np.testing.assert_allclose(explanation.logits, before, rtol=1e-4, atol=1e-5)
    assert all(block.attn.recorded is None for stage in model.transformers for block in stage.blocks)
    assert all(p.grad is None for p in model.parameters())


def corner_of_peak(heat):
    """The corner (0 top left .. 3 bottom right) of a map's largest value."""
    row, col = np.unravel_index(np.argmax(heat), heat.shape)
    return 2 * int(row >= heat.shape[0] / 2) + int(col >= heat.shape[1] / 2)


def square_images(rng, corners, size=32, side=8, margin=4):
    """Dim noise images [len(corners), 3, size, size] with a white side x side square at most margin pixels from
    the given corner (0 top left .. 3 bottom right), and in each other corner, with probability 1/2, a grey square
    of the same size: a distractor, so that neither the empty corners nor the squares alone tell the class."""
    images = rng.uniform(0, 0.3, (len(corners), 3, size, size)).astype('float32')
    for image, corner in zip(images, corners):
        for other in range(4):
            if other == corner or rng.rand() < 0.5:
                top = rng.randint(margin + 1) if other < 2 else size - side - rng.randint(margin + 1)
                left = rng.randint(margin + 1) if other % 2 == 0 else size - side - rng.randint(margin + 1)
                image[:, top:top + side, left:left + side] = 1.0 if other == corner else 0.6
    return images


def trained_to_find_the_square(seed, steps=300, batch=32):
    """A tiny PiT trained from seed by the repo's AdamW and loss to name the corner of the white square in
    square_images; and the numpy generator, which then makes images the model has not seen."""
    paddle.seed(seed)
    rng = np.random.RandomState(seed)
    model, config = tiny_model('MODEL.DROP_PATH', '0.0', 'TRAIN.OPTIMIZER.NAME', 'AdamW', 'TRAIN.WEIGHT_DECAY', '0.0',
                               'TRAIN.SMOOTHING', '0.0')
    optimizer, criterion = build_optimizer(config, model, 3e-3), build_criterion(config)
    model.train()
    for _ in range(steps):
        corners = rng.randint(0, 4, batch)
        images = paddle.to_tensor(square_images(rng, corners))
        criterion(images, model(images), paddle.to_tensor(corners.astype('int64'))).backward()
        optimizer.step()
        optimizer.clear_grad()
    model.eval()
    return model, rng


def square_found(seed):
    """For the model trained_to_find_the_square(seed), on 64 new images (16 per corner): the fraction classified
    right, and per stage, the fraction whose class-token rollout peaks in the white square's corner."""
    model, rng = trained_to_find_the_square(seed)
    corners = np.arange(64) % 4
    explanation = explain(model, square_images(rng, corners))
    found = [np.mean([corner_of_peak(heat) == corner for heat, corner in zip(maps, corners)])
             for maps in explanation.rollouts]
    return np.mean(explanation.logits.argmax(axis=-1) == corners), found


@pytest.mark.slow
def test_a_model_trained_to_find_a_square_has_a_stage_whose_attention_peaks_in_the_squares_corner():
    """The class token of a PiT trained to name the corner of a white square reads the square: the rollout of
    the stage it reads in peaks in that corner for nearly all new images (>= 90% of 64; a map that ignored the
    square would hit 25%; over seeds 0-11 on Paddle 3.3.1 and 0-2 on 2.6.2, the worst such stage did 95%, but
    not for every model that learns: seed 10 stays at 75% accuracy after 300 steps, and after 500 it is right on
    all images with no stage above 59%, so the test keeps seed 0 and 300 steps). The model is trained in a fresh
    process set up as this test module is, the condition of those figures: inside the whole suite, whose earlier
    tests change process-wide settings, seed 0 on 2.6.2 gave another model (89%).

    What is not asserted, and why (measured over seeds): the last stage alone, because the class token may
    read the square in the second stage and carry the answer through the pooling's Linear, its last stage then
    looking nowhere in particular (down to 36% of the images in the corner); Grad-CAM, whose channel
    weights average the gradients over all tokens while the class token reads a few of them through attention
    (gradients of opposite signs through the keys elsewhere): its peak was in the corner for 8-69% of the images,
    even for models whose last-stage rollout was right for all of them. The distractors are needed: with the
    white square alone, a model may read where the square is not (the empty corners' background), and the
    attention then peaks away from it."""
    code = (f'import json, sys; sys.path[:0] = [{ROOT!r}, {os.path.join(ROOT, "tests")!r}]; '
            'from test_visualize import square_found; accuracy, found = square_found(seed=0); '
            'print(json.dumps([float(accuracy), [float(f) for f in found]]))')
    result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    accuracy, found = json.loads(result.stdout.strip().splitlines()[-1])
    assert accuracy >= 0.95, f'the model did not learn the task (accuracy {accuracy:.2f}): no map to judge'
    assert max(found) >= 0.9, f'no stage of the class token looks at the square: per stage {found}'


def test_grad_cam_of_a_score_read_from_one_corner_peaks_in_that_corner_by_its_definition():
    """A score that reads the tokens of one corner of a 4x4 token grid through a direction w: its gradient is w on
    those tokens and 0 elsewhere, so Grad-CAM (features . mean gradient, ReLU) is largest where the features point
    along w: the corner whose tokens carry the object."""
    rng = np.random.RandomState(0)
    channels, grid = 8, (4, 4)
    w = rng.randn(channels)
    for corner, (rows, cols) in enumerate([(slice(0, 2), slice(0, 2)), (slice(0, 2), slice(2, 4)),
                                           (slice(2, 4), slice(0, 2)), (slice(2, 4), slice(2, 4))]):
        features = rng.randn(1, *grid, channels) * 0.1
        features[0, rows, cols] += w  # the object's tokens point along w
        region = np.zeros(grid, bool)
        region[rows, cols] = True
        gradients = np.where(region[None, :, :, None], w, 0.0)  # d(sum over the corner's tokens of f . w) / df
        cam = grad_cam(features.reshape(1, 16, channels), gradients.reshape(1, 16, channels), grid)
        expected = np.maximum(features.reshape(16, channels) @ (gradients.reshape(16, channels).mean(0)), 0)
        np.testing.assert_allclose(cam.reshape(16), expected, rtol=1e-5)
        assert corner_of_peak(cam[0]) == corner and cam[0][~region].max() < cam[0][region].min()


def test_grad_cam_of_a_single_token_last_stage_is_that_tokens_own_evidence_not_zero():
    """8-pixel images leave one token in the last stage: its Grad-CAM weights are its own gradient, and the map is
    ReLU(features . gradient), positive where the token supports the top-1 class. On the tokens entering the last
    block (before its LayerNorm, which ignores a token's scale) that product is 0 for every token of every image."""
    cams = []
    for seed in range(4):  # the sign of a token's evidence is the model's: models of 4 seeds, some token supports
        paddle.seed(seed)
        model, _ = tiny_model()
        model.eval()
        cams.append(explain(model, np.random.RandomState(seed).randn(8, 3, 8, 8).astype('float32')).cam)
    assert cams[0].shape == (8, 1, 1)
    assert max(cam.max() for cam in cams) > 0.01, [cam.ravel() for cam in cams]


# ---------------------------------------------------------------- tools/visualize.py

@pytest.fixture(scope='module')
def weights(tmp_path_factory):
    """Weights of a tiny 4-class model written by the repo's own writer, with a class list."""
    model, config = tiny_model()
    return write_weights(model, config, str(tmp_path_factory.mktemp('weights') / 'tiny'), classes=list(CORNERS))


def test_visualize_draws_one_png_per_image_of_the_expected_size_with_the_crop_as_the_model_sees_it(weights, tmp_path):
    images = tmp_path / 'images'
    images.mkdir()
    pixels = np.random.RandomState(2).randint(0, 256, (32, 32, 3)).astype(np.uint8)
    Image.fromarray(pixels).save(images / 'noise.png')
    Image.fromarray(pixels[::-1]).save(images / 'flipped.bmp')
    (images / 'notes.txt').write_text('not an image')
    out = tmp_path / 'out'
    result = run('visualize.py', '-pretrained', weights, '-img_path', images, '-save_path', out, '-topk', 2,
                 '-device', 'cpu', '-opts', 'DATA.CROP_PCT', '1.0')
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(os.listdir(out)) == ['flipped.png', 'noise.png']
    side = 224  # 32 pixels enlarged 7 times
    panels = 2 + 3  # the crop, a rollout per stage, the Grad-CAM
    top = MARGIN + LINE_HEIGHT * (1 + 2)  # the file name and the top-2 classes
    picture = np.asarray(Image.open(out / 'noise.png'))
    assert picture.shape == (top + LINE_HEIGHT + side + MARGIN, panels * (side + MARGIN) + MARGIN, 3)
    crop = picture[top + LINE_HEIGHT:top + LINE_HEIGHT + side, MARGIN:MARGIN + side]
    np.testing.assert_array_equal(crop, np.kron(pixels, np.ones((7, 7, 1), np.uint8)))


def test_visualize_refuses_missing_weights_in_one_line_naming_them(tmp_path):
    Image.new('RGB', (32, 32)).save(tmp_path / 'a.png')
    line = one_line_error(run('visualize.py', '-pretrained', tmp_path / 'nothing', '-img_path', tmp_path / 'a.png',
                              '-save_path', tmp_path / 'out'), 2)
    assert f"weights file '{tmp_path / 'nothing'}' not found" in line


def test_visualize_names_an_unreadable_image_and_draws_the_others(weights, tmp_path):
    Image.new('RGB', (32, 32), (200, 10, 10)).save(tmp_path / 'good.png')
    (tmp_path / 'broken.jpg').write_bytes(b'\xff\xd8 not a jpeg')
    result = run('visualize.py', '-pretrained', weights, '-img_path', tmp_path / 'good.png', tmp_path / 'broken.jpg',
                 '-save_path', tmp_path / 'out', '-device', 'cpu')
    line = one_line_error(result, 2)
    assert '1 of 2 image(s) could not be read' in line
    assert f"cannot read image '{tmp_path / 'broken.jpg'}'" in result.stderr
    assert os.listdir(tmp_path / 'out') == ['good.png']
    alone = run('visualize.py', '-pretrained', weights, '-img_path', tmp_path / 'broken.jpg', '-save_path',
                tmp_path / 'out2', '-device', 'cpu')
    assert f"cannot read image '{tmp_path / 'broken.jpg'}'" in one_line_error(alone, 2)


@contextlib.contextmanager
def read_only_tmpfs(path):
    os.makedirs(path)
    if subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=64k,ro', 'tmpfs', str(path)],
                      capture_output=True).returncode:
        pytest.skip('cannot mount a tmpfs here (needs root): the read-only folder case needs one')
    try:
        yield path
    finally:
        subprocess.run(['umount', str(path)], capture_output=True)


def test_visualize_refuses_a_read_only_save_path_in_one_line_before_any_work(weights, tmp_path):
    Image.new('RGB', (32, 32)).save(tmp_path / 'a.png')
    with read_only_tmpfs(tmp_path / 'ro') as folder:
        line = one_line_error(run('visualize.py', '-pretrained', weights, '-img_path', tmp_path / 'a.png',
                                  '-save_path', folder, '-device', 'cpu'), 2)
    assert f"'{folder}' is not writable" in line


def test_visualize_refuses_two_images_that_would_share_a_picture(weights, tmp_path):
    for name in ('cat.png', 'cat.jpg'):
        Image.new('RGB', (32, 32)).save(tmp_path / name)
    line = one_line_error(run('visualize.py', '-pretrained', weights, '-img_path', tmp_path / 'cat.png',
                              tmp_path / 'cat.jpg', '-save_path', tmp_path / 'out'), 2)
    assert 'cat.png' in line and 'cat.jpg' in line


# ---------------------------------------------------------------- tools/plot_metrics.py

def write_records(save):
    """metrics.jsonl of four epochs by metrics.py's own writer; epochs 2 and 4 evaluated, with an EMA."""
    config = build_config(os.path.join(ROOT, 'configs', 'pit_ti.yaml'), TINY + ['SAVE', str(save), 'VISUALDL',
                                                                                 'False'])
    records = RunRecords(config, rank=0)
    for epoch in range(1, 5):
        train = {'loss': 2.0 / epoch, 'images': 64, 'seconds': 1.0, 'skipped_steps': 0}
        val = {'acc1': 0.2 * epoch, 'acc5': 0.9, 'loss': 1.8 / epoch} if epoch % 2 == 0 else None
        records.epoch(epoch, train, 5e-4 / epoch, val=val, ema=val, best_acc1=0.2 * epoch)
    records.close()


def test_plot_metrics_draws_the_curves_of_a_runs_records_at_the_size_asked(tmp_path):
    write_records(tmp_path)
    result = run('plot_metrics.py', tmp_path, '-size', 900, 300)
    assert result.returncode == 0, result.stderr[-3000:]
    picture = Image.open(tmp_path / 'metrics.png')
    assert picture.size == (900, 300)
    colours = {tuple(c) for c in np.asarray(picture.convert('RGB')).reshape(-1, 3)}
    assert len(colours) > 10  # curves, axes and text, not a blank picture


def test_plot_metrics_names_the_malformed_line_and_writes_nothing(tmp_path):
    write_records(tmp_path)
    with open(tmp_path / 'metrics.jsonl', 'a', encoding='utf-8') as f:
        f.write('{"epoch": 5, "train_loss": \n')
    line = one_line_error(run('plot_metrics.py', tmp_path), 2)
    assert f"'{tmp_path / 'metrics.jsonl'}' line 5" in line
    assert not os.path.exists(tmp_path / 'metrics.png')


def test_plot_metrics_refuses_a_folder_without_records_in_one_line(tmp_path):
    line = one_line_error(run('plot_metrics.py', tmp_path), 2)
    assert f"'{tmp_path / 'metrics.jsonl'}' not found" in line
    (tmp_path / 'metrics.jsonl').write_text(json.dumps({'epoch': 1, 'lr': 'fast'}) + '\n')
    assert "line 1: 'lr' must be a number" in one_line_error(run('plot_metrics.py', tmp_path), 2)
