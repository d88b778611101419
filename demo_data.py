"""Small real data sets written in the ImageNet layouts, for the quickstart, demos and tests
(tools/prepare_data.py is the command line).

Sources: Fashion-MNIST (70,000 28x28 greys, 10 clothing classes, MIT) from Debian's `dataset-fashion-mnist`
package (IDX files in /usr/share/datasets/fashion-mnist), or scikit-learn's digits (1,797 8x8 greys, 10 classes).
Layouts: 'folder' writes DST/{train,val}/<class>/*.png; 'list' writes DST/images/... plus DST/{train,val}_list.txt
(`relative/path label`). One held-out image per class, never in train or val, goes to DST/heldout/.
"""
import gzip
import os

import numpy as np
from PIL import Image

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
    """A grey image array resized (bicubic) to size x size, written to path (its folder made)."""
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
