"""Compare every RandAugment/AutoAugment op of augment.py with timm's, pixel for pixel (needs timm).

    PIT_REFERENCE_PYTHON=/path/to/python-with-timm python -m pytest tests/test_augment.py -k timm
    /path/to/python-with-timm tools/compare_augment_timm.py

Each op runs at magnitudes 0..10 with probability 1 on a random image after the same python `random` seed
(so directional ops draw the same sign); prints 'mismatches: []' when all outputs are identical.
"""
import os
import random
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402
from timm.data import auto_augment as timm_aa  # noqa: E402
from timm.data.transforms import str_to_pil_interp  # noqa: E402

import augment  # noqa: E402


def main():
    img = Image.fromarray(np.random.RandomState(0).randint(0, 255, (60, 80, 3), dtype=np.uint8))
    hparams = {'img_mean': (124, 116, 104), 'interpolation': 'bicubic', 'translate_const': 100}
    timm_hparams = dict(hparams, interpolation=str_to_pil_interp('bicubic'))
    names = sorted(set(augment.RAND_OPS + augment.RAND_INCREASING_OPS + ['PosterizeOriginal', 'TranslateX',
                                                                          'TranslateY']))
    mismatches, skipped = [], []
    for name in names:
        for magnitude in range(11):
            random.seed(magnitude)
            ours = np.asarray(augment.AugmentOp(name, 1.0, magnitude, hparams)(img), dtype=np.int16)
            random.seed(magnitude)
            try:
                theirs = np.asarray(timm_aa.AugmentOp(name, 1.0, magnitude, timm_hparams)(img), dtype=np.int16)
            except ValueError:  # timm's posterize at 0 bits fails on Pillow >= 10; ours gives black
                skipped.append((name, magnitude))
                continue
            if ours.shape != theirs.shape or np.abs(ours - theirs).max() > 0:
                mismatches.append((name, magnitude))
    print(f'compared {len(names)} ops at magnitudes 0..10')
    print(f'timm raised (not compared): {skipped}')
    print(f'mismatches: {mismatches}')


if __name__ == '__main__':
    main()
