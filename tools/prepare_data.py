"""Write a small real dataset in ImageNet layout, for the quickstart, demos and tests.

    python tools/prepare_data.py -dst data/fashion_mnist                 # Fashion-MNIST if installed, else digits
    python tools/prepare_data.py -dst data/digits -source digits -layout list

Sources and layouts: demo_data.py (Fashion-MNIST when Debian's `dataset-fashion-mnist` is installed, else
scikit-learn's digits; class folders or list files; one held-out image per class in DST/heldout/).
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import quiet  # noqa: E402,F401  (before paddle)

from cli import run_command  # noqa: E402
from demo_data import write_dataset  # noqa: E402


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
