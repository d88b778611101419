"""Augmentations checked against their definitions: crops, eval resize, RandAugment, erasing, mixup/cutmix."""
import os
import subprocess
import random

import numpy as np
import paddle
import pytest
from PIL import Image

from augment import LEVELS, RAND_INCREASING_OPS, RAND_OPS, AugmentOp, auto_augment_transform
from config import build_config, merge_opts
from mixup import Mixup, build_mixup, rand_bbox
from random_erasing import RandomErasing
from transforms import NormalizeOnDevice, RandomResizedCrop, ToNormalizedArray, build_transforms, eval_resize_size

pytestmark = pytest.mark.usefixtures('gpu_strides')  # the plain (GPU) path as a GPU runs it: strided views


@pytest.mark.parametrize('crop_pct, expected', [(0.875, 256), (0.9, 248), (1.0, 224)])
def test_eval_resize_is_floor_of_size_over_crop_pct(crop_pct, expected):
    assert eval_resize_size(224, crop_pct) == expected


def test_a_crop_pct_written_as_size_over_short_side_gives_that_short_side_back():
    for size in range(16, 400, 7):
        for short in range(size, 2 * size):
            assert eval_resize_size(size, size / short) == short, (size, short)


def test_eval_transform_resizes_short_side_then_center_crops():
    config = merge_opts(build_config(), ['DATA.CROP_PCT', '0.875'])
    gradient = np.tile(np.arange(500, dtype=np.float64) * 255 / 499, (375, 1)).astype(np.uint8)
    out = build_transforms(config, 'val')(Image.fromarray(gradient).convert('RGB'))
    assert out.shape == (3, 224, 224)
    # short side 375 -> 256, long side int(256 * 500 / 375) = 341; crop starts at round((341 - 224) / 2) = 58
    resized = np.asarray(Image.fromarray(gradient).resize((341, 256), Image.BICUBIC), dtype=np.float32)
    expected = (resized[16:240, 58:282] / 255 - 0.485) / 0.229
    np.testing.assert_allclose(out[0], expected, atol=1e-4)


def test_random_resized_crop_respects_area_and_ratio_bounds():
    crop = RandomResizedCrop(32, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3))
    random.seed(0)
    for _ in range(500):
        top, left, h, w = crop.get_params(500, 375)
        assert 0 <= top <= 375 - h and 0 <= left <= 500 - w
        # rounding of w and h allows a little slack at the bounds
        assert 0.08 * 0.9 <= h * w / (500 * 375) <= 1.0
        assert 3 / 4 * 0.9 <= w / h <= 4 / 3 * 1.1


def test_random_resized_crop_falls_back_to_a_center_crop_within_ratio():
    crop = RandomResizedCrop(32, scale=(2.0, 3.0))  # no area fits: always the fallback
    assert crop.get_params(400, 100) == (0, 133, 100, 133)  # ratio 4 > 4/3: h = 100, w = round(100 * 4 / 3)


def test_rand_augment_string_selects_increasing_ops_layers_and_noise():
    ra = auto_augment_transform('rand-m9-mstd0.5-inc1', {'img_mean': (124, 116, 104), 'interpolation': 'bicubic'})
    assert [op.name for op in ra.ops] == RAND_INCREASING_OPS and ra.num_layers == 2
    assert all(op.prob == 0.5 and op.magnitude == 9 and op.magnitude_std == 0.5 for op in ra.ops)
    plain = auto_augment_transform('rand-m7-n3-p0.3', {})
    assert [op.name for op in plain.ops] == RAND_OPS and plain.num_layers == 3 and plain.ops[0].prob == 0.3


@pytest.mark.parametrize('bad', ['rand-x9', 'rand-m', 'augmix', 'rand-w1'])
def test_bad_augment_strings_are_errors_naming_the_key(bad):
    with pytest.raises(ValueError, match='AUG.AUTO_AUGMENT'):
        auto_augment_transform(bad, {})


def test_magnitude_noise_is_gaussian_around_m_and_clipped_to_0_10():
    op = AugmentOp('Rotate', 1.0, 9, {'magnitude_std': 0.5})
    random.seed(0)
    draws = np.array([op.sample_magnitude() for _ in range(4000)])
    assert draws.max() <= 10.0 and abs(draws.mean() - 9.0) < 0.05
    assert (draws == 10.0).mean() == pytest.approx(0.023, abs=0.01)  # P(N(9, 0.5) > 10)


def test_level_functions_follow_timm_scale():
    random.seed(1)
    assert abs(LEVELS['Rotate'](9, {})) == pytest.approx(27.0)
    assert abs(LEVELS['ShearX'](10, {})) == pytest.approx(0.3)
    assert abs(LEVELS['TranslateXRel'](10, {})) == pytest.approx(0.45)
    assert LEVELS['PosterizeIncreasing'](9, {}) == 1 and LEVELS['Posterize'](9, {}) == 3
    assert LEVELS['SolarizeIncreasing'](9, {}) == 256 - 230 and LEVELS['SolarizeAdd'](9, {}) == 99
    assert LEVELS['Color'](9, {}) == pytest.approx(1.72)
    assert abs(LEVELS['ColorIncreasing'](9, {}) - 1.0) == pytest.approx(0.81)


def test_rotate_op_fills_with_the_mean_pixel():
    img = Image.new('RGB', (40, 40), (255, 255, 255))
    op = AugmentOp('Rotate', 1.0, 10, {'img_mean': (124, 116, 104), 'interpolation': 'bicubic'})
    out = np.asarray(op(img))
    assert tuple(out[0, 0]) == (124, 116, 104) and tuple(out[20, 20]) == (255, 255, 255)


def test_posterize_zero_bits_is_black_not_an_error():
    img = Image.new('RGB', (4, 4), (200, 100, 50))
    assert np.asarray(AugmentOp('Posterize', 1.0, 0)(img)).max() == 0


def test_autoaugment_policies_have_25_subpolicies_of_two_ops():
    for name in ('original', 'v0'):
        policy = auto_augment_transform(name, {}).policy
        assert len(policy) == 25 and all(len(sub) == 2 for sub in policy)


def erased_batch(mode, count=1, samples=50, size=64):
    """(boxes of `samples` images, a batch of 7.0 with them erased by RandomErasing(1.0, mode)) after seed 0."""
    random.seed(0)
    paddle.seed(0)
    erasing = RandomErasing(1.0, mode=mode, min_count=count, max_count=count)
    boxes = [erasing.boxes(size, size) for _ in range(samples)]
    return boxes, erasing.erase(paddle.full([samples, 3, size, size], 7.0), boxes).numpy()


@pytest.mark.parametrize('mode', ['const', 'rand', 'pixel'])
def test_random_erasing_fills_exactly_its_boxes_of_bounded_area_and_aspect(mode):
    boxes, images = erased_batch(mode)
    for (box,), img in zip(boxes, images):
        top, left, h, w = box
        assert 0.02 * 4096 * 0.8 <= h * w <= 4096 / 3 * 1.2 and 0.3 * 0.7 <= h / w <= 1 / 0.3 * 1.4
        erased = np.zeros((64, 64), dtype=bool)
        erased[top:top + h, left:left + w] = True
        assert ((img != 7.0).any(0) == erased).all()  # one rectangle: the box
        fill = img[:, erased]
        if mode == 'const':
            assert (fill == 0).all()
        elif mode == 'rand':
            assert all(len(np.unique(fill[c])) == 1 for c in range(3))
        else:
            assert len(np.unique(fill[0])) == h * w


def test_pixel_erasing_fills_every_box_with_standard_normal_noise():
    boxes, images = erased_batch('pixel', count=2, samples=200)
    fill = np.concatenate([img[:, t:t + h, l:l + w].ravel() for sample, img in zip(boxes, images)
                           for t, l, h, w in sample])
    assert len(fill) > 100000 and abs(fill.mean()) < 0.01 and abs(fill.std() - 1.0) < 0.01
    assert all(len(sample) == 2 for sample in boxes)


def test_random_erasing_probability_and_its_python_draws():
    random.seed(0)
    hits = sum(bool(RandomErasing(0.25).boxes(8, 8)) for _ in range(2000))
    assert hits / 2000 == pytest.approx(0.25, abs=0.03)
    random.seed(5)
    RandomErasing(0.0).boxes(8, 8)  # erasing off draws nothing: the samples of a recipe without it keep theirs
    assert random.random() == (random.seed(5), random.random())[1]


def onehot_smooth(labels, classes, smoothing):
    out = np.full((len(labels), classes), smoothing / classes)
    out[np.arange(len(labels)), labels] += 1 - smoothing
    return out


def test_mixup_mixes_images_and_smoothed_targets_with_one_lambda():
    np.random.seed(0)
    x = paddle.to_tensor(np.random.rand(4, 3, 8, 8).astype('float32'))
    y = paddle.to_tensor([0, 1, 2, 3])
    mixed, target = Mixup(mixup_alpha=0.8, cutmix_alpha=0.0, label_smoothing=0.1, num_classes=5)(x, y)
    xs, ms = x.numpy(), mixed.numpy()
    lam = (ms[0] - xs[3]).sum() / (xs[0] - xs[3]).sum()
    np.testing.assert_allclose(ms, lam * xs + (1 - lam) * xs[::-1], atol=1e-5)
    smooth = onehot_smooth([0, 1, 2, 3], 5, 0.1)
    np.testing.assert_allclose(target.numpy(), lam * smooth + (1 - lam) * smooth[::-1], atol=1e-5)


def test_cutmix_box_area_matches_the_corrected_lambda():
    np.random.seed(3)
    x = paddle.to_tensor(np.random.rand(2, 3, 32, 32).astype('float32'))
    mixer = Mixup(mixup_alpha=0.0, cutmix_alpha=1.0, label_smoothing=0.0, num_classes=2)
    for _ in range(20):
        mixed, target = mixer(x, paddle.to_tensor([0, 1]))
        pasted = (mixed.numpy()[0] != x.numpy()[0]).any(0).mean()
        assert target.numpy()[0, 0] == pytest.approx(1 - pasted, abs=1e-6)


def test_rand_bbox_sides_follow_sqrt_one_minus_lambda():
    np.random.seed(0)
    top, bottom, left, right = rand_bbox(1000, 1000, 0.75, None)
    assert bottom - top <= 500 and right - left <= 500  # sqrt(1 - 0.75) = 0.5, clipped at the borders
    top, bottom, left, right = rand_bbox(100, 100, 0.0, (0.2, 0.4))
    assert 20 <= bottom - top < 40 and 20 <= right - left < 40 and bottom <= 100 and right <= 100


@pytest.mark.parametrize('mode', ['pair', 'elem'])
def test_per_sample_modes_mix_each_sample_with_its_mirror(mode):
    np.random.seed(0)
    x = paddle.to_tensor(np.random.rand(6, 3, 4, 4).astype('float32'))
    mixed, target = Mixup(mixup_alpha=1.0, cutmix_alpha=0.0, mode=mode, label_smoothing=0.0, num_classes=6)(
        x, paddle.arange(6))
    xs, ms, t = x.numpy(), mixed.numpy(), target.numpy()
    for i in range(6):
        lam = t[i, i]
        np.testing.assert_allclose(ms[i], lam * xs[i] + (1 - lam) * xs[5 - i], atol=1e-5)
    if mode == 'pair':
        assert all(t[i, i] == pytest.approx(t[5 - i, 5 - i]) for i in range(3))


def test_odd_batch_is_a_clear_error_and_mixup_off_builds_nothing():
    with pytest.raises(ValueError, match='even batch'):
        Mixup()(paddle.zeros([3, 3, 4, 4]), paddle.to_tensor([0, 1, 2]))
    assert build_mixup(merge_opts(build_config(), ['AUG.MIXUP', '0.0', 'AUG.CUTMIX', '0.0'])) is None
    mixer = build_mixup(build_config())
    assert (mixer.mixup_alpha, mixer.cutmix_alpha, mixer.label_smoothing, mixer.switch_prob) == (0.8, 1.0, 0.1, 0.5)


def test_train_samples_are_uint8_pixels_that_normalise_on_the_device_to_the_float_transform_bit_for_bit():
    config = merge_opts(build_config(), ['DATA.IMAGE_SIZE', '64'])
    img = Image.fromarray(np.random.RandomState(0).randint(0, 255, (90, 120, 3), dtype=np.uint8))
    samples = []
    for seed in range(8):
        random.seed(seed)
        np.random.seed(seed)
        samples.append(build_transforms(config, 'train')(img))
    pixels = np.stack([p for p, _ in samples])
    assert pixels.shape == (8, 64, 64, 3) and pixels.dtype == np.uint8
    normalised = NormalizeOnDevice(config.DATA.IMAGENET_MEAN, config.DATA.IMAGENET_STD)(paddle.to_tensor(pixels))
    reference = ToNormalizedArray(config.DATA.IMAGENET_MEAN, config.DATA.IMAGENET_STD)
    np.testing.assert_array_equal(normalised.numpy(), np.stack([reference(Image.fromarray(p)) for p in pixels]))


@pytest.mark.skipif(not os.environ.get('PIT_REFERENCE_PYTHON'),
                    reason='timm not importable here: set PIT_REFERENCE_PYTHON to a python with timm to compare')
def test_every_augment_op_equals_timm_pixel_for_pixel():
    script = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'tools',
                          'compare_augment_timm.py')
    out = subprocess.run([os.environ['PIT_REFERENCE_PYTHON'], script], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert 'mismatches: []' in out.stdout, out.stdout
