"""RandAugment and AutoAugment on PIL images, with timm's op set, magnitude scale and config-string grammar.

`auto_augment_transform('rand-m9-mstd0.5-inc1', hparams)`: RandAugment with n ops (default 2) drawn with
replacement per image, each applied with probability p (default 0.5) at magnitude m (0-10 scale) plus Gaussian
noise of std mstd, clipped to [0, mmax or 10]; `inc1` uses the variants whose strength increases with magnitude;
`w{idx}` selects op weights. `original` / `v0` are the AutoAugment ImageNet policies (Cubuk et al.; v0 as
TPU EfficientNet). hparams: translate_const (pixels), img_mean (fill colour), interpolation (geometric ops).
"""
import random
import re

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

LEVEL_DENOM = 10.0  # magnitudes are on a 0..10 scale
_INTERP = {'bicubic': Image.BICUBIC, 'bilinear': Image.BILINEAR, 'nearest': Image.NEAREST}


# ---------------------------------------------------------------- ops: (img, arg, fill, resample) -> img

def _affine(img, matrix, fill, resample):
    return img.transform(img.size, Image.AFFINE, matrix, resample=resample, fillcolor=fill)


def _posterize(img, bits):
    """Keep the top `bits` bits of each channel; 0 bits gives black (Pillow >= 10 refuses bits=0)."""
    if bits >= 8:
        return img
    if bits <= 0:
        return img.point([0] * 256 * len(img.getbands()))
    return ImageOps.posterize(img, bits)


def _auto_contrast(img, arg, fill, resample):
    return ImageOps.autocontrast(img)


def _equalize(img, arg, fill, resample):
    return ImageOps.equalize(img)


def _invert(img, arg, fill, resample):
    return ImageOps.invert(img)


def _rotate(img, degrees, fill, resample):
    return img.rotate(degrees, resample=resample, fillcolor=fill)


def _posterize_op(img, bits, fill, resample):
    return _posterize(img, bits)


def _solarize(img, threshold, fill, resample):
    return ImageOps.solarize(img, threshold)


def _solarize_add(img, add, fill, resample):
    return img.point([min(255, i + add) if i < 128 else i for i in range(256)] * len(img.getbands()))


def _color(img, factor, fill, resample):
    return ImageEnhance.Color(img).enhance(factor)


def _contrast(img, factor, fill, resample):
    return ImageEnhance.Contrast(img).enhance(factor)


def _brightness(img, factor, fill, resample):
    return ImageEnhance.Brightness(img).enhance(factor)


def _sharpness(img, factor, fill, resample):
    return ImageEnhance.Sharpness(img).enhance(factor)


def _shear_x(img, factor, fill, resample):
    return _affine(img, (1, factor, 0, 0, 1, 0), fill, resample)


def _shear_y(img, factor, fill, resample):
    return _affine(img, (1, 0, 0, factor, 1, 0), fill, resample)


def _translate_x(img, pixels, fill, resample):
    return _affine(img, (1, 0, pixels, 0, 1, 0), fill, resample)


def _translate_y(img, pixels, fill, resample):
    return _affine(img, (1, 0, 0, 0, 1, pixels), fill, resample)


def _translate_x_rel(img, fraction, fill, resample):
    return _affine(img, (1, 0, fraction * img.size[0], 0, 1, 0), fill, resample)


def _translate_y_rel(img, fraction, fill, resample):
    return _affine(img, (1, 0, 0, 0, 1, fraction * img.size[1]), fill, resample)


# Module-level functions only (no lambdas): DataLoader workers started by *spawn* (dist.spawn's children)
# receive the dataset, and with it these tables, by pickling.
OPS = {
    'AutoContrast': _auto_contrast, 'Equalize': _equalize, 'Invert': _invert, 'Rotate': _rotate,
    'Posterize': _posterize_op, 'Solarize': _solarize, 'SolarizeAdd': _solarize_add, 'Color': _color,
    'Contrast': _contrast, 'Brightness': _brightness, 'Sharpness': _sharpness, 'ShearX': _shear_x,
    'ShearY': _shear_y, 'TranslateX': _translate_x, 'TranslateY': _translate_y,
    'TranslateXRel': _translate_x_rel, 'TranslateYRel': _translate_y_rel,
}
OPS.update({'PosterizeIncreasing': OPS['Posterize'], 'PosterizeOriginal': OPS['Posterize'],
            'SolarizeIncreasing': OPS['Solarize'], 'ColorIncreasing': OPS['Color'],
            'ContrastIncreasing': OPS['Contrast'], 'BrightnessIncreasing': OPS['Brightness'],
            'SharpnessIncreasing': OPS['Sharpness']})


# ---------------------------------------------------------------- magnitude (0..10) -> op argument

def _signed(value):
    """Negate with probability 0.5 (directional ops)."""
    return -value if random.random() > 0.5 else value


def _rotate_level(m, hp):
    return _signed(m / LEVEL_DENOM * 30.0)


def _shear_level(m, hp):
    return _signed(m / LEVEL_DENOM * 0.3)


def _translate_abs_level(m, hp):
    return _signed(m / LEVEL_DENOM * float(hp['translate_const']))


def _translate_rel_level(m, hp):
    return _signed(m / LEVEL_DENOM * hp.get('translate_pct', 0.45))


def _posterize_level(m, hp):
    return int(m / LEVEL_DENOM * 4)


def _posterize_increasing_level(m, hp):
    return 4 - int(m / LEVEL_DENOM * 4)


def _posterize_original_level(m, hp):
    return int(m / LEVEL_DENOM * 4) + 4


def _solarize_level(m, hp):
    return min(256, int(m / LEVEL_DENOM * 256))


def _solarize_increasing_level(m, hp):
    return 256 - _solarize_level(m, hp)


def _solarize_add_level(m, hp):
    return min(128, int(m / LEVEL_DENOM * 110))


def _enhance_level(m, hp):
    return m / LEVEL_DENOM * 1.8 + 0.1


def _enhance_increasing_level(m, hp):
    return 1.0 + _signed(m / LEVEL_DENOM * 0.9)


LEVELS = {
    'Rotate': _rotate_level, 'ShearX': _shear_level, 'ShearY': _shear_level,
    'TranslateX': _translate_abs_level, 'TranslateY': _translate_abs_level,
    'TranslateXRel': _translate_rel_level, 'TranslateYRel': _translate_rel_level,
    'Posterize': _posterize_level, 'PosterizeIncreasing': _posterize_increasing_level,
    'PosterizeOriginal': _posterize_original_level, 'Solarize': _solarize_level,
    'SolarizeIncreasing': _solarize_increasing_level, 'SolarizeAdd': _solarize_add_level,
}
for _name in ('Color', 'Contrast', 'Brightness', 'Sharpness'):
    LEVELS[_name] = _enhance_level
    LEVELS[_name + 'Increasing'] = _enhance_increasing_level


class AugmentOp:
    """One op with its probability and magnitude (noisy when magnitude_std > 0; uniform in [0, m] when inf)."""

    def __init__(self, name, prob=0.5, magnitude=10, hparams=None):
        hparams = hparams or {}
        self.name = name
        self.op = OPS[name]
        self.level = LEVELS.get(name)
        self.prob = prob
        self.magnitude = magnitude
        self.hparams = hparams
        self.magnitude_std = hparams.get('magnitude_std', 0.0)
        self.magnitude_max = hparams.get('magnitude_max', None)
        self.fill = tuple(hparams.get('img_mean', (128, 128, 128)))
        self.resample = _INTERP[hparams.get('interpolation', 'bilinear')]

    def sample_magnitude(self):
        magnitude = self.magnitude
        if self.magnitude_std == float('inf'):
            magnitude = random.uniform(0, magnitude)
        elif self.magnitude_std > 0:
            magnitude = random.gauss(magnitude, self.magnitude_std)
        return max(0.0, min(magnitude, self.magnitude_max or LEVEL_DENOM))

    def __call__(self, img):
        if self.prob < 1.0 and random.random() > self.prob:
            return img
        arg = self.level(self.sample_magnitude(), self.hparams) if self.level else None
        return self.op(img, arg, self.fill, self.resample)


RAND_OPS = ['AutoContrast', 'Equalize', 'Invert', 'Rotate', 'Posterize', 'Solarize', 'SolarizeAdd', 'Color',
            'Contrast', 'Brightness', 'Sharpness', 'ShearX', 'ShearY', 'TranslateXRel', 'TranslateYRel']
RAND_INCREASING_OPS = ['AutoContrast', 'Equalize', 'Invert', 'Rotate', 'PosterizeIncreasing',
                       'SolarizeIncreasing', 'SolarizeAdd', 'ColorIncreasing', 'ContrastIncreasing',
                       'BrightnessIncreasing', 'SharpnessIncreasing', 'ShearX', 'ShearY', 'TranslateXRel',
                       'TranslateYRel']
# op weights of 'w0' (timm <= 0.5 `_RAND_CHOICE_WEIGHTS_0`, over RAND_OPS): geometric ops favoured, Invert off
RAND_WEIGHTS_0 = {'Rotate': 0.3, 'ShearX': 0.2, 'ShearY': 0.2, 'TranslateXRel': 0.1, 'TranslateYRel': 0.1,
                  'Color': .025, 'Sharpness': 0.025, 'AutoContrast': 0.025, 'Solarize': .005, 'SolarizeAdd': .005,
                  'Contrast': .005, 'Brightness': .005, 'Equalize': .005, 'Posterize': 0, 'Invert': 0}


class RandAugment:
    def __init__(self, ops, num_layers=2, choice_weights=None):
        self.ops = ops
        self.num_layers = num_layers
        self.choice_weights = choice_weights

    def __call__(self, img):
        chosen = np.random.choice(self.ops, self.num_layers, replace=self.choice_weights is None,
                                  p=self.choice_weights)
        for op in chosen:
            img = op(img)
        return img


def rand_augment_transform(config_str, hparams):
    """'rand-m9-n2-mstd0.5-mmax10-inc1-w0-p0.5' -> RandAugment (all but 'rand' optional)."""
    magnitude, num_layers, prob, weight_idx, increasing = LEVEL_DENOM, 2, 0.5, None, False
    hparams = dict(hparams)
    parts = config_str.split('-')
    if parts[0] != 'rand':
        raise ValueError(f"AUG.AUTO_AUGMENT={config_str!r}: a RandAugment string starts with 'rand'")
    for part in parts[1:]:
        match = re.fullmatch(r'([a-z]+)([\d.]+|inf)', part)
        if not match:
            raise ValueError(f"AUG.AUTO_AUGMENT={config_str!r}: cannot parse {part!r} (expected e.g. m9, n2, mstd0.5)")
        key, value = match.groups()
        if key == 'mstd':  # above 100 means uniform in [0, m], as timm
            hparams['magnitude_std'] = float('inf') if float(value) > 100 else float(value)
        elif key == 'mmax':
            hparams['magnitude_max'] = float(value)
        elif key == 'inc':
            increasing = bool(int(value))
        elif key == 'm':
            magnitude = float(value)
        elif key == 'n':
            num_layers = int(value)
        elif key == 'w':
            weight_idx = int(value)
        elif key == 'p':
            prob = float(value)
        else:
            raise ValueError(f"AUG.AUTO_AUGMENT={config_str!r}: unknown option {key!r} (m, n, mstd, mmax, inc, w, p)")
    names = RAND_INCREASING_OPS if increasing else RAND_OPS
    ops = [AugmentOp(name, prob=prob, magnitude=magnitude, hparams=hparams) for name in names]
    weights = None
    if weight_idx is not None:
        if weight_idx != 0:
            raise ValueError(f"AUG.AUTO_AUGMENT={config_str!r}: only weight set w0 exists")
        weights = np.array([RAND_WEIGHTS_0[n] for n in RAND_OPS], dtype=np.float64)
        weights /= weights.sum()
    return RandAugment(ops, num_layers, weights)


# ---------------------------------------------------------------- AutoAugment ImageNet policies
# each sub-policy: two (op, probability, magnitude on the 0..10 scale) applied in order

POLICY_V0 = [
    [('Equalize', 0.8, 1), ('ShearY', 0.8, 4)], [('Color', 0.4, 9), ('Equalize', 0.6, 3)],
    [('Color', 0.4, 1), ('Rotate', 0.6, 8)], [('Solarize', 0.8, 3), ('Equalize', 0.4, 7)],
    [('Solarize', 0.4, 2), ('Solarize', 0.6, 2)], [('Color', 0.2, 0), ('Equalize', 0.8, 8)],
    [('Equalize', 0.4, 8), ('SolarizeAdd', 0.8, 3)], [('ShearX', 0.2, 9), ('Rotate', 0.6, 8)],
    [('Color', 0.6, 1), ('Equalize', 1.0, 2)], [('Invert', 0.4, 9), ('Rotate', 0.6, 0)],
    [('Equalize', 1.0, 9), ('ShearY', 0.6, 3)], [('Color', 0.4, 7), ('Equalize', 0.6, 0)],
    [('Posterize', 0.4, 6), ('AutoContrast', 0.4, 7)], [('Solarize', 0.6, 8), ('Color', 0.6, 9)],
    [('Solarize', 0.2, 4), ('Rotate', 0.8, 9)], [('Rotate', 1.0, 7), ('TranslateYRel', 0.8, 9)],
    [('ShearX', 0.0, 0), ('Solarize', 0.8, 4)], [('ShearY', 0.8, 0), ('Color', 0.6, 4)],
    [('Color', 1.0, 0), ('Rotate', 0.6, 2)], [('Equalize', 0.8, 4), ('Equalize', 0.0, 8)],
    [('Equalize', 1.0, 4), ('AutoContrast', 0.6, 2)], [('ShearY', 0.4, 7), ('SolarizeAdd', 0.6, 7)],
    [('Posterize', 0.8, 2), ('Solarize', 0.6, 10)], [('Solarize', 0.6, 8), ('Equalize', 0.6, 1)],
    [('Color', 0.8, 6), ('Rotate', 0.4, 5)],
]
POLICY_ORIGINAL = [
    [('PosterizeOriginal', 0.4, 8), ('Rotate', 0.6, 9)], [('Solarize', 0.6, 5), ('AutoContrast', 0.6, 5)],
    [('Equalize', 0.8, 8), ('Equalize', 0.6, 3)], [('PosterizeOriginal', 0.6, 7), ('PosterizeOriginal', 0.6, 6)],
    [('Equalize', 0.4, 7), ('Solarize', 0.2, 4)], [('Equalize', 0.4, 4), ('Rotate', 0.8, 8)],
    [('Solarize', 0.6, 3), ('Equalize', 0.6, 7)], [('PosterizeOriginal', 0.8, 5), ('Equalize', 1.0, 2)],
    [('Rotate', 0.2, 3), ('Solarize', 0.6, 8)], [('Equalize', 0.6, 8), ('PosterizeOriginal', 0.4, 6)],
    [('Rotate', 0.8, 8), ('Color', 0.4, 0)], [('Rotate', 0.4, 9), ('Equalize', 0.6, 2)],
    [('Equalize', 0.0, 7), ('Equalize', 0.8, 8)], [('Invert', 0.6, 4), ('Equalize', 1.0, 8)],
    [('Color', 0.6, 4), ('Contrast', 1.0, 8)], [('Rotate', 0.8, 8), ('Color', 1.0, 2)],
    [('Color', 0.8, 8), ('Solarize', 0.8, 7)], [('Sharpness', 0.4, 7), ('Invert', 0.6, 8)],
    [('ShearX', 0.6, 5), ('Equalize', 1.0, 9)], [('Color', 0.4, 0), ('Equalize', 0.6, 3)],
    [('Equalize', 0.4, 7), ('Solarize', 0.2, 4)], [('Solarize', 0.6, 5), ('AutoContrast', 0.6, 5)],
    [('Invert', 0.6, 4), ('Equalize', 1.0, 8)], [('Color', 0.6, 4), ('Contrast', 1.0, 8)],
    [('Equalize', 0.8, 8), ('Equalize', 0.6, 3)],
]


class AutoAugment:
    """Apply one uniformly chosen sub-policy per image."""

    def __init__(self, policy, hparams):
        self.policy = [[AugmentOp(name, prob, magnitude, hparams) for name, prob, magnitude in sub]
                       for sub in policy]

    def __call__(self, img):
        for op in random.choice(self.policy):
            img = op(img)
        return img


def auto_augment_transform(config_str, hparams):
    """AUG.AUTO_AUGMENT string -> transform: 'rand-...' (RandAugment), 'original' or 'v0' (AutoAugment)."""
    if config_str.startswith('rand'):
        return rand_augment_transform(config_str, hparams)
    policies = {'original': POLICY_ORIGINAL, 'v0': POLICY_V0}
    if config_str not in policies:
        raise ValueError(f"AUG.AUTO_AUGMENT={config_str!r} is not 'rand-...', 'original' or 'v0'")
    return AutoAugment(policies[config_str], hparams)


