"""Image transforms of the PiT/DeiT recipe, on PIL images and numpy arrays (no torchvision at run time).

Train: RandomResizedCrop(AUG.SCALE, AUG.RATIO, DATA.INTERPOLATION) -> horizontal flip (AUG.HFLIP) ->
auto-augment (AUG.AUTO_AUGMENT) or colour jitter (AUG.COLOR_JITTER, only without auto-augment) ->
ToTensor + Normalize -> RandomErasing (AUG.RE_*). Eval: resize the short side to floor(IMAGE_SIZE / CROP_PCT),
center crop IMAGE_SIZE. Output: float32 [3, S, S]. Random draws use python's `random`, seeded per sample by the
training data set (datasets.ImageNetDataset, with the seed datasets.SeededBatchSampler derives from SEED, epoch,
rank and position), so a sample's augmentation depends neither on the DataLoader worker that makes it nor on a resume.
"""
import math
import random

import numpy as np
from PIL import Image, ImageEnhance

from augment import auto_augment_transform
from random_erasing import RandomErasing

INTERPOLATIONS = {'bicubic': Image.BICUBIC, 'bilinear': Image.BILINEAR, 'nearest': Image.NEAREST}


class Compose:
    def __init__(self, transforms):
        self.transforms = [t for t in transforms if t is not None]

    def __call__(self, img):
        for t in self.transforms:
            img = t(img)
        return img


class RandomResizedCrop:
    """torchvision's RandomResizedCrop: up to 10 tries of a random area (scale) and log-uniform aspect (ratio)
    that fits, else a center crop clamped to the ratio range; the crop is resized to size x size."""

    def __init__(self, size, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), interpolation='bicubic'):
        self.size = size
        self.scale = scale
        self.ratio = ratio
        self.interpolation = INTERPOLATIONS[interpolation]

    def get_params(self, width, height):
        """(top, left, h, w) of the crop."""
        area = width * height
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            target_area = area * random.uniform(*self.scale)
            aspect = math.exp(random.uniform(*log_ratio))
            w = int(round(math.sqrt(target_area * aspect)))
            h = int(round(math.sqrt(target_area / aspect)))
            if 0 < w <= width and 0 < h <= height:
                return random.randint(0, height - h), random.randint(0, width - w), h, w
        in_ratio = width / height
        if in_ratio < min(self.ratio):
            w, h = width, int(round(width / min(self.ratio)))
        elif in_ratio > max(self.ratio):
            h, w = height, int(round(height * max(self.ratio)))
        else:
            w, h = width, height
        return (height - h) // 2, (width - w) // 2, h, w

    def __call__(self, img):
        top, left, h, w = self.get_params(*img.size)
        return img.resize((self.size, self.size), self.interpolation, box=(left, top, left + w, top + h))


class RandomHorizontalFlip:
    def __init__(self, p=0.5):
        self.p = p

    def __call__(self, img):
        return img.transpose(Image.FLIP_LEFT_RIGHT) if random.random() < self.p else img


class ColorJitter:
    """Brightness, contrast and saturation factors uniform in [1 - s, 1 + s], applied in random order
    (torchvision's ColorJitter(s, s, s) as timm builds it from one float; no hue)."""

    def __init__(self, strength):
        self.strength = strength

    def __call__(self, img):
        ops = [ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color]
        random.shuffle(ops)
        for op in ops:
            img = op(img).enhance(random.uniform(max(0.0, 1 - self.strength), 1 + self.strength))
        return img


class ResizeShortSide:
    """Resize so the short side is `size` (long side int(size * long / short), as torchvision)."""

    def __init__(self, size, interpolation='bicubic'):
        self.size = size
        self.interpolation = INTERPOLATIONS[interpolation]

    def __call__(self, img):
        w, h = img.size
        if w <= h:
            new = (self.size, int(self.size * h / w))
        else:
            new = (int(self.size * w / h), self.size)
        return img if new == (w, h) else img.resize(new, self.interpolation)


class CenterCrop:
    def __init__(self, size):
        self.size = size

    def __call__(self, img):
        w, h = img.size
        top, left = int(round((h - self.size) / 2.0)), int(round((w - self.size) / 2.0))
        return img.crop((left, top, left + self.size, top + self.size))


class ToNormalizedArray:
    """PIL RGB -> float32 [3, H, W] of (pixel / 255 - mean) / std, in one pass."""

    def __init__(self, mean, std):
        self.scale = (1.0 / (255.0 * np.asarray(std, dtype=np.float32))).reshape(3, 1, 1)
        self.shift = (np.asarray(mean, dtype=np.float32) / np.asarray(std, dtype=np.float32)).reshape(3, 1, 1)

    def __call__(self, img):
        pixels = np.asarray(img).transpose(2, 0, 1)  # uint8 view; the conversion happens inside the multiply
        out = np.empty(pixels.shape, dtype=np.float32)
        np.multiply(pixels, self.scale, out=out)
        out -= self.shift
        return out


def eval_resize_size(image_size, crop_pct):
    """Short side before the center crop: floor(image_size / crop_pct) (224 -> 256 at 0.875, 248 at 0.9).

    A crop_pct written as size / short side (an export's inference.yml read back) divides back to
    short side - 1e-14 or so: the tolerance keeps floor from losing a pixel to that rounding."""
    return int(math.floor(image_size / crop_pct + 1e-9))


def build_transforms(config, mode):
    """The train ('train') or evaluation ('val') transform of config: PIL RGB image -> float32 [3, S, S]."""
    size, interp = config.DATA.IMAGE_SIZE, config.DATA.INTERPOLATION
    normalize = ToNormalizedArray(config.DATA.IMAGENET_MEAN, config.DATA.IMAGENET_STD)
    if mode != 'train':
        return Compose([ResizeShortSide(eval_resize_size(size, config.DATA.CROP_PCT), interp), CenterCrop(size),
                        normalize])
    if config.AUG.AUTO_AUGMENT:
        img_mean = tuple(min(255, round(255 * m)) for m in config.DATA.IMAGENET_MEAN)
        colour = auto_augment_transform(config.AUG.AUTO_AUGMENT, {'translate_const': int(size * 0.45),
                                                           'img_mean': img_mean, 'interpolation': interp})
    else:
        colour = ColorJitter(config.AUG.COLOR_JITTER) if config.AUG.COLOR_JITTER > 0 else None
    erasing = RandomErasing(config.AUG.RE_PROB, mode=config.AUG.RE_MODE, max_count=config.AUG.RE_COUNT) if config.AUG.RE_PROB > 0 else None
    return Compose([RandomResizedCrop(size, tuple(config.AUG.SCALE), tuple(config.AUG.RATIO), interp),
                    RandomHorizontalFlip(config.AUG.HFLIP) if config.AUG.HFLIP > 0 else None, colour, normalize, erasing])
