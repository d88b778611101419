"""Classify images with a PiT: top-k class ids, softmax probabilities and readable class names.

    python predict.py -cfg configs/pit_ti.yaml -pretrained output/pit_ti_730 -img_path images/cat.jpg
    python predict.py -cfg configs/pit_ti.yaml -pretrained output/train/checkpoint-best -img_path photos/ -topk 3
    python predict.py -cfg configs/pit_ti.yaml -infer_model output/inference -img_path a.jpg b.png

Preprocessing is the evaluation transform of the config (resize short side to IMAGE_SIZE / CROP_PCT, center
crop). Class names: a checkpoint of this repo carries its class list (ImageNet wnids become readable names);
otherwise 1000-class models use the shipped ImageNet-1k index. Unreadable files are reported on stderr, the others
are still classified, and the exit status is 1 if any failed.
"""
import warnings
warnings.filterwarnings('ignore', message='No ccache found')  # paddle's import-time warning

import argparse
import os
import sys

import numpy as np
from PIL import Image, UnidentifiedImageError

ROOT = os.path.dirname(os.path.abspath(__file__))
CLASS_INDEX = os.path.join(ROOT, 'imagenet1k_class_index.txt')
IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.webp', '.ppm', '.tif', '.tiff')


def read_imagenet_index(path=CLASS_INDEX):
    """[(wnid, name)] of the 1000 ImageNet-1k classes in index order."""
    rows = []
    with open(path, encoding='utf-8') as f:
        for line in f:
            if line.strip() and not line.startswith('#'):
                _, wnid, name = line.rstrip('\n').split(' ', 2)
                rows.append((wnid, name))
    return rows


def class_names(classes, num_classes):
    """Readable name per class index: from the checkpoint's class list, else ImageNet-1k, else the index."""
    imagenet = read_imagenet_index()
    if classes == [str(i) for i in range(num_classes)]:
        classes = None  # list-layout datasets name classes by index: ImageNet's index when there are 1000
    if classes:
        lookup = dict(imagenet)
        return [f'{lookup[c]} ({c})' if c in lookup else str(c) for c in classes]
    if num_classes == len(imagenet):
        return [f'{name} ({wnid})' for wnid, name in imagenet]
    return [str(i) for i in range(num_classes)]


def checkpoint_classes(path):
    """The class list a training checkpoint of this repo stores, or None (converted weights have none)."""
    import paddle
    from weights import resolve_weights_path
    path = resolve_weights_path(path)
    if not path.endswith('.pdparams'):
        return None
    state = paddle.load(path)
    return state.get('classes') if isinstance(state, dict) else None


def list_images(paths):
    """Files given, plus image files (by extension) inside given folders, sorted."""
    files = []
    for path in paths:
        if os.path.isdir(path):
            files += sorted(os.path.join(path, f) for f in os.listdir(path) if f.lower().endswith(IMAGE_EXTENSIONS))
        else:
            files.append(path)
    return files


def load_image(path, transform):
    """Preprocessed CHW float32 array; raises ValueError naming the file when it cannot be decoded."""
    try:
        with Image.open(path) as img:
            return transform(img.convert('RGB'))
    except (OSError, UnidentifiedImageError, SyntaxError) as e:
        raise ValueError(f"cannot read image '{path}': {e}") from None


def softmax(logits):
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def get_arguments():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('-cfg', type=str, required=True, help='yaml config of the model')
    parser.add_argument('-pretrained', type=str, default=None, help='weights (.pdparams optional): converted or a checkpoint')
    parser.add_argument('-infer_model', type=str, default=None, help='exported model prefix (tools/export_model.py)')
    parser.add_argument('-img_path', type=str, nargs='+', required=True, help='images and/or folders')
    parser.add_argument('-topk', type=int, default=5)
    parser.add_argument('-batch_size', type=int, default=16)
    parser.add_argument('-opts', nargs='+', default=None, metavar='KEY VALUE', help='override config keys')
    args = parser.parse_args()
    if bool(args.pretrained) == bool(args.infer_model):
        parser.error('give exactly one of -pretrained and -infer_model')
    return args


def build_classifier(args, config):
    """A function images [B,3,S,S] float32 -> logits numpy [B, classes], dynamic or exported."""
    if args.infer_model:
        from tools.export_model import create_predictor, run_predictor
        predictor = create_predictor(args.infer_model, threads=config.CPU_THREADS)
        return lambda batch: run_predictor(predictor, batch)
    import paddle
    from pit import build_pit
    from weights import load_pretrained
    model = build_pit(config)
    load_pretrained(model, args.pretrained)
    model.eval()

    def classify(batch):
        with paddle.no_grad():
            return model(paddle.to_tensor(batch)).numpy()
    return classify


def main():
    args = get_arguments()
    from config import ConfigError, finalize_config, get_config, merge_opts
    from datasets import build_transforms
    import paddle
    import cpu_kernels
    from weights import WeightsError
    try:
        config = finalize_config(merge_opts(get_config(args.cfg), args.opts or []))
        if paddle.get_device() == 'cpu':
            dygraph = not args.infer_model  # an exported model runs paddle.inference's own fused kernels
            cpu_kernels.configure_cpu(config.CPU_THREADS, kernels=dygraph and config.CPU_KERNELS)
            if dygraph and config.CPU_KERNELS and not cpu_kernels.in_use():
                print(f'warning: {cpu_kernels.status()}', file=sys.stderr)
        classify = build_classifier(args, config)
        names = class_names(checkpoint_classes(args.pretrained) if args.pretrained else None,
                            config.MODEL.NUM_CLASSES)
    except (ConfigError, WeightsError, FileNotFoundError) as e:
        print(f'error: {e}', file=sys.stderr)
        sys.exit(2)
    transform = build_transforms(config, 'val')
    files, failed = list_images(args.img_path), 0
    for start in range(0, len(files), args.batch_size):
        batch, good = [], []
        for path in files[start:start + args.batch_size]:
            try:
                batch.append(load_image(path, transform))
                good.append(path)
            except (ValueError, FileNotFoundError) as e:
                print(f'error: {e}', file=sys.stderr)
                failed += 1
        if not batch:
            continue
        probs = softmax(classify(np.stack(batch).astype('float32')).astype('float64'))
        for path, p in zip(good, probs):
            print(path)
            for idx in np.argsort(-p)[:args.topk]:
                print(f'  class_id: {idx}, prob: {p[idx]:.4f}, name: {names[idx]}')
    if failed or not files:
        print(f'error: {failed} of {len(files)} image(s) could not be read', file=sys.stderr)
        sys.exit(1)


if __name__ == '__main__':
    main()
