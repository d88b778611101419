"""Image transforms of the PiT/DeiT recipe, on PIL images and numpy arrays (no torchvision at run time).

Train: RandomResizedCrop(AUG.SCALE, AUG.RATIO, DATA.INTERPOLATION) -> horizontal flip (AUG.HFLIP) ->
auto-augment (AUG.AUTO_AUGMENT) or colour jitter (AUG.COLOR_JITTER, only without auto-augment) -> uint8 pixels
[S, S, 3] and the boxes RandomErasing (AUG.RE_*) draws for them; the trainer normalises the batch and erases the
boxes on its device (`NormalizeOnDevice`, `RandomErasing.erase`), as NVIDIA's ImageNet example and timm's
prefetcher do: a sample crosses from its DataLoader worker as S * S * 3 bytes, not 4 bytes a value. Eval:
resize the short side to floor(IMAGE_SIZE / CROP_PCT), center crop IMAGE_SIZE, ToTensor + Normalize: float32
[3, S, S]. Random draws use python's `random` and numpy's global generator, seeded per sample
by the training data set (with the seed datasets.SeededBatchSampler derives from SEED, epoch, rank and position),
so a sample's augmentation depends neither on the DataLoader worker that makes it nor on a resume.
"""
import math
import random

import numpy as np
import paddle
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


def normalization(mean, std):
    """(scale, shift), float32 [3, 1, 1] each: (pixel / 255 - mean) / std = pixel * scale - shift."""
    std = np.asarray(std, dtype=np.float32)
    scale = (1.0 / (255.0 * std)).reshape(3, 1, 1)
    shift = (np.asarray(mean, dtype=np.float32) / std).reshape(3, 1, 1)
    return scale, shift


class ToNormalizedArray:
    """PIL RGB -> float32 [3, H, W] of (pixel / 255 - mean) / std, in one pass."""

    def __init__(self, mean, std):
        self.scale, self.shift = normalization(mean, std)

    def __call__(self, img):
        pixels = np.asarray(img).transpose(2, 0, 1)  # uint8 view; the conversion happens inside the multiply
        out = np.empty(pixels.shape, dtype=np.float32)
        np.multiply(pixels, self.scale, out=out)
        out -= self.shift
        return out


def to_array(img):
    """PIL RGB -> its uint8 [H, W, 3] pixels (what a training sample carries)."""
    return np.asarray(img)


class NormalizeOnDevice:
    """A batch of uint8 pixels [B, H, W, 3] on its device -> float32 [B, 3, H, W] of (pixel / 255 - mean) / std:
    the values ToNormalizedArray gives, bit for bit (the same float32 multiply, then subtract). The per-channel
    factors are applied to [B * 3, H * W] rows against [B * 3, 1] columns: Paddle's CPU kernels broadcast that
    shape 20x faster than [B, 3, H, W] against [1, 3, 1, 1]."""

    def __init__(self, mean, std):
        self.scale, self.shift = normalization(mean, std)
        self._columns = {}  # (place, batch) -> (scale, shift) columns [B * 3, 1], copied to the device once

    def __call__(self, pixels):
        batch, height, width, channels = pixels.shape
        key = (str(pixels.place), batch)
        if key not in self._columns:
            self._columns[key] = tuple(paddle.to_tensor(np.tile(a.reshape(channels, 1), (batch, 1)),
                                                        place=pixels.place) for a in (self.scale, self.shift))
        scale, shift = self._columns[key]
        rows = pixels.transpose([0, 3, 1, 2]).astype('float32').reshape([batch * channels, height * width])
        return (rows * scale - shift).reshape([batch, channels, height, width])


def eval_resize_size(image_size, crop_pct):
    """Short side before the center crop: floor(image_size / crop_pct) (224 -> 256 at 0.875, 248 at 0.9).

    A crop_pct written as size / short side (an export's inference.yml read back) divides back to
    short side - 1e-14 or so: the tolerance keeps floor from losing a pixel to that rounding."""
    return int(math.floor(image_size / crop_pct + 1e-9))


def build_erasing(config):
    """RandomErasing of config.AUG (AUG.RE_PROB 0 draws no box)."""
    return RandomErasing(config.AUG.RE_PROB, mode=config.AUG.RE_MODE, max_count=config.AUG.RE_COUNT)


def build_transforms(config, mode):
    """The train ('train') or evaluation ('val') transform of config: PIL RGB image -> train: (uint8 [S, S, 3],
    erasing boxes), see RandomErasing.boxes; val: float32 [3, S, S]."""
    size, interp = config.DATA.IMAGE_SIZE, config.DATA.INTERPOLATION
    if mode != 'train':
        return Compose([ResizeShortSide(eval_resize_size(size, config.DATA.CROP_PCT), interp), CenterCrop(size),
                        ToNormalizedArray(config.DATA.IMAGENET_MEAN, config.DATA.IMAGENET_STD)])
    if config.AUG.AUTO_AUGMENT:
        img_mean = tuple(min(255, round(255 * m)) for m in config.DATA.IMAGENET_MEAN)
        colour = auto_augment_transform(config.AUG.AUTO_AUGMENT, {'translate_const': int(size * 0.45),
                                                           'img_mean': img_mean, 'interpolation': interp})
    else:
        colour = ColorJitter(config.AUG.COLOR_JITTER) if config.AUG.COLOR_JITTER > 0 else None
    return Compose([RandomResizedCrop(size, tuple(config.AUG.SCALE), tuple(config.AUG.RATIO), interp),
                    RandomHorizontalFlip(config.AUG.HFLIP) if config.AUG.HFLIP > 0 else None, colour, to_array,
                    build_erasing(config)])
