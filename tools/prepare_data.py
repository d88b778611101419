"""Write a small real dataset in ImageNet layout, for the quickstart, demos and tests.

    python tools/prepare_data.py -dst data/fashion_mnist                 # Fashion-MNIST if installed, else digits
    python tools/prepare_data.py -dst data/digits -source digits -layout list

Sources: Fashion-MNIST (70,000 28x28 greys, 10 clothing classes, MIT) from Debian's `dataset-fashion-mnist`
package (IDX files in /usr/share/datasets/fashion-mnist), or scikit-learn's digits (1,797 8x8 greys, 10 classes).
Layouts: 'folder' writes DST/{train,val}/<class>/*.png; 'list' writes DST/images/... plus DST/{train,val}_list.txt
(`relative/path label`). One held-out image per class, never in train or val, goes to DST/heldout/.
"""
import argparse
import gzip
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import quiet  # noqa: E402,F401  (before paddle)

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from cli import run_command  # noqa: E402

FASHION_DIR = '/usr/share/datasets/fashion-mnist'
FASHION_CLASSES = ['t-shirt_top', 'trouser', 'pullover', 'dress', 'coat', 'sandal', 'shirt', 'sneaker', 'bag',
                   'ankle_boot']


def read_idx(path):
    """Array of an IDX file (gzip or raw): magic (2 zero bytes, dtype code, ndim), big-endian dims, data."""
    opener = gzip.open if path.endswith('.gz') else open
    with opener(path, 'rb') as f:
        raw = f.read()
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i:8 + 4 * i], 'big') for i in range(ndim)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load_source(source):
    """(images uint8 [N, H, W], labels [N], class names, source name)."""
    if source in ('auto', 'fashion_mnist') and os.path.isfile(os.path.join(FASHION_DIR, 'train-images-idx3-ubyte.gz')):
        images = np.concatenate([read_idx(os.path.join(FASHION_DIR, f'{s}-images-idx3-ubyte.gz'))
                                 for s in ('train', 't10k')])
        labels = np.concatenate([read_idx(os.path.join(FASHION_DIR, f'{s}-labels-idx1-ubyte.gz'))
                                 for s in ('train', 't10k')])
        return images, labels, FASHION_CLASSES, 'fashion_mnist'
    if source == 'fashion_mnist':
        raise FileNotFoundError(f'Fashion-MNIST not found in {FASHION_DIR} (apt-get install dataset-fashion-mnist)')
    from sklearn.datasets import load_digits
    digits = load_digits()
    images = (digits.images * (255.0 / 16.0)).round().astype(np.uint8)
    return images, digits.target, [str(i) for i in range(10)], 'digits'


def split_indices(labels, num_classes, train_per_class, val_per_class, rng):
    """Per class: 1 held-out, then val, then train indices (disjoint), from a seeded permutation."""
    heldout, val, train = [], [], []
    for c in range(num_classes):
        idx = rng.permutation(np.flatnonzero(labels == c))
        heldout.append(idx[0])
        val += list(idx[1:1 + val_per_class])
        train += list(idx[1 + val_per_class:1 + val_per_class + train_per_class])
    return train, val, heldout


def write_image(array, path, size):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(array, mode='L').resize((size, size), Image.BICUBIC).save(path)


def write_dataset(dst, source='auto', layout='folder', image_size=32, train_per_class=300, val_per_class=51,
                  seed=0):
    """Write the dataset; returns a dict of counts and the source used."""
    images, labels, classes, used = load_source(source)
    rng = np.random.RandomState(seed)
    train, val, heldout = split_indices(labels, len(classes), train_per_class, val_per_class, rng)
    for split, indices in (('train', train), ('val', val)):
        lines = []
        for i in indices:
            name = f'{classes[labels[i]]}/{split}_{i:05d}.png'
            if layout == 'folder':
                write_image(images[i], os.path.join(dst, split, name), image_size)
            else:
                write_image(images[i], os.path.join(dst, 'images', name), image_size)
                lines.append(f'images/{name} {labels[i]}\n')
        if layout == 'list':
            with open(os.path.join(dst, f'{split}_list.txt'), 'w') as f:
                f.writelines(lines)
    for i in heldout:
        write_image(images[i], os.path.join(dst, 'heldout', f'{classes[labels[i]]}.png'), image_size)
    return {'source': used, 'train': len(train), 'val': len(val), 'heldout': len(heldout), 'classes': classes}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('-dst', required=True, help='output folder')
    parser.add_argument('-source', choices=['auto', 'fashion_mnist', 'digits'], default='auto')
    parser.add_argument('-layout', choices=['folder', 'list'], default='folder')
    parser.add_argument('-image_size', type=int, default=32)
    parser.add_argument('-train_per_class', type=int, default=300)
    parser.add_argument('-val_per_class', type=int, default=51)
    parser.add_argument('-seed', type=int, default=0)
    args = parser.parse_args()
    info = write_dataset(args.dst, args.source, args.layout, args.image_size, args.train_per_class,
                         args.val_per_class, args.seed)
    print(f"wrote {info['source']} to {args.dst} ({args.layout} layout): {info['train']} train, {info['val']} val, "
          f"{info['heldout']} held-out images, classes {', '.join(info['classes'])}")


if __name__ == '__main__':
    run_command(main)
