"""Random Erasing (Zhong et al.) on a normalised [C, H, W] array, as timm's RandomErasing.

With probability `probability`, erase `count` boxes (count = max_count, or uniform in [min_count, max_count]),
each of area uniform in [min_area, max_area] x image area / count and log-uniform aspect in
[min_aspect, 1 / min_aspect] (up to 10 tries per box). Fill: 'const' zeros, 'rand' one N(0, 1) value per channel,
'pixel' N(0, 1) per pixel (the normalised image's mean and std).
"""
import math
import random

import numpy as np


class RandomErasing:
    def __init__(self, probability=0.5, min_area=0.02, max_area=1 / 3, min_aspect=0.3, max_aspect=None,
                 mode='const', min_count=1, max_count=None):
        if mode not in ('const', 'rand', 'pixel'):
            raise ValueError(f"mode must be 'const', 'rand' or 'pixel', got {mode!r}")
        self.probability = probability
        self.min_area, self.max_area = min_area, max_area
        max_aspect = max_aspect or 1 / min_aspect
        self.log_aspect = (math.log(min_aspect), math.log(max_aspect))
        self.mode = mode
        self.min_count = min_count
        self.max_count = max_count or min_count

    def fill(self, shape):
        channels, h, w = shape
        if self.mode == 'pixel':
            return np.random.normal(size=shape).astype(np.float32)
        if self.mode == 'rand':
            return np.broadcast_to(np.random.normal(size=(channels, 1, 1)).astype(np.float32), shape)
        return np.zeros(shape, dtype=np.float32)

    def __call__(self, img):
        if random.random() > self.probability:
            return img
        channels, height, width = img.shape
        area = height * width
        count = self.min_count if self.min_count == self.max_count else random.randint(self.min_count, self.max_count)
        for _ in range(count):
            for _attempt in range(10):
                target_area = random.uniform(self.min_area, self.max_area) * area / count
                aspect = math.exp(random.uniform(*self.log_aspect))
                h = int(round(math.sqrt(target_area * aspect)))
                w = int(round(math.sqrt(target_area / aspect)))
                if w < width and h < height:
                    top, left = random.randint(0, height - h), random.randint(0, width - w)
                    img[:, top:top + h, left:left + w] = self.fill((channels, h, w))
                    break
        return img
