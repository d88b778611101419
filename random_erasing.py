"""Random Erasing (Zhong et al.) as timm's RandomErasing, split as timm's prefetcher splits it: the boxes are
drawn per sample where the sample is made (a DataLoader worker), the erasing itself is done on the device on the
normalised batch.

With probability `probability`, erase `count` boxes (count = max_count, or uniform in [min_count, max_count]),
each of area uniform in [min_area, max_area] x image area / count and log-uniform aspect in
[min_aspect, 1 / min_aspect] (up to 10 tries per box). Fill: 'const' zeros, 'rand' one N(0, 1) value per channel
and box, 'pixel' N(0, 1) per pixel (the normalised image's mean and std). The boxes are the draws of python's
`random` that erasing the image itself made before (so a seeded sample keeps its boxes); the fill values come from
paddle's generator on the device (as timm's prefetcher draws them with torch's on the GPU).
"""
import math
import random

import paddle


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

    def boxes(self, height, width):
        """The boxes to erase in a height x width image: a tuple of (top, left, box height, box width) tuples of
        python ints (empty: nothing erased), drawn from python's `random` (nothing drawn when probability is 0).
        Plain ints pass through paddle's DataLoader as they are: the trainer gets them without a device read."""
        if self.probability <= 0 or random.random() > self.probability:
            return ()
        area = height * width
        count = self.min_count if self.min_count == self.max_count else random.randint(self.min_count, self.max_count)
        boxes = []
        for _ in range(count):
            for _attempt in range(10):
                target_area = random.uniform(self.min_area, self.max_area) * area / count
                aspect = math.exp(random.uniform(*self.log_aspect))
                h = int(round(math.sqrt(target_area * aspect)))
                w = int(round(math.sqrt(target_area / aspect)))
                if w < width and h < height:
                    boxes.append((random.randint(0, height - h), random.randint(0, width - w), h, w))
                    break
        return tuple(boxes)

    def __call__(self, pixels):
        """A sample's last step: uint8 [H, W, C] pixels -> (pixels, their boxes) (see `boxes`)."""
        return pixels, self.boxes(*pixels.shape[:2])

    def erase(self, images, boxes):
        """Erase, in place on their device, the boxes of a batch: images float [B, C, H, W] (normalised), boxes
        one sequence per sample as `boxes` gives them; a later box is drawn over an earlier one, as timm does.
        Two ops per box (its fill, its assignment), only for the samples that have one (a quarter of them in
        the recipe); nothing is read back from the device."""
        channels = images.shape[1]
        for index, sample_boxes in enumerate(boxes):
            for top, left, h, w in sample_boxes:
                images[index, :, top:top + h, left:left + w] = self._fill([channels, h, w], images.dtype)
        return images

    def _fill(self, shape, dtype):
        if self.mode == 'pixel':
            return paddle.randn(shape, dtype=dtype)
        if self.mode == 'rand':
            return paddle.randn([shape[0], 1, 1], dtype=dtype).expand(shape)
        return paddle.zeros(shape, dtype=dtype)
