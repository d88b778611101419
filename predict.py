"""Classify images with a PiT: top-k class ids, softmax probabilities and readable class names.

    python predict.py -pretrained output/pit_ti_730 -img_path images/cat.jpg
    python predict.py -pretrained output/train/checkpoint-best -img_path photos/ -topk 3
    python predict.py -infer_model output/inference -img_path a.jpg b.png
    python predict.py -onnx_model output/inference.onnx -img_path a.jpg   # onnxruntime

Checkpoints of this repo and converted official weights describe their model and preprocessing, so -cfg is
optional (given, with -opts, it applies; a model key that contradicts the weights is an error). Preprocessing is
the evaluation transform (resize short side to IMAGE_SIZE / CROP_PCT, center crop). Class names: the class list of
the checkpoint or export (ImageNet wnids become readable names); otherwise 1000-class models use the shipped
ImageNet-1k index. Unreadable files are reported on stderr, the others are still classified, and the exit status
is 1 if any failed. Folders end with a throughput line.
"""
import quiet  # noqa: F401  (first: quiets paddle's import)

import argparse
import os
import sys
import time

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


def read_weights_file(path):
    """(resolved path, the file's object or None): .pdparams files of this repo carry their class list and
    model description; other formats (.pth, .safetensors) carry neither."""
    from weights import read_paddle_file, resolve_weights_path
    path = resolve_weights_path(path)
    return path, read_paddle_file(path) if path.endswith('.pdparams') and os.path.isfile(path) else None


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
    """Preprocessed CHW float32 array; raises ValueError naming the file when it cannot be decoded (or is
    larger than PIL's decompression-bomb limit)."""
    from datasets import load_rgb
    try:
        return transform(load_rgb(path))
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ValueError(f"cannot read image '{path}': {e}") from None


def softmax(logits):
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def get_arguments():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('-cfg', type=str, default=None,
                        help='yaml config of the model (optional for weights and exports of this repo)')
    parser.add_argument('-pretrained', type=str, default=None, help='weights (.pdparams optional): converted or a checkpoint')
    parser.add_argument('-infer_model', type=str, default=None, help='exported model prefix (tools/export_model.py)')
    parser.add_argument('-onnx_model', type=str, default=None, help='ONNX file (export_model.py -onnx); onnxruntime')
    parser.add_argument('-img_path', type=str, nargs='+', required=True, help='images and/or folders')
    parser.add_argument('-topk', type=int, default=5)
    parser.add_argument('-batch_size', type=int, default=16)
    parser.add_argument('-opts', nargs='+', default=None, metavar='KEY VALUE', help='override config keys')
    args = parser.parse_args()
    if sum(bool(m) for m in (args.pretrained, args.infer_model, args.onnx_model)) != 1:
        parser.error('give exactly one of -pretrained, -infer_model and -onnx_model')
    return args


def build_classifier(args, config):
    """A function images [B,3,S,S] float32 -> logits numpy [B, classes], dynamic or exported."""
    if args.infer_model:
        from tools.export_model import create_predictor, run_predictor
        predictor = create_predictor(args.infer_model, threads=config.CPU_THREADS)
        return lambda batch: run_predictor(predictor, batch)
    if args.onnx_model:
        from tools.export_model import create_onnx_session, run_onnx
        session = create_onnx_session(args.onnx_model, threads=config.CPU_THREADS)
        return lambda batch: run_onnx(session, batch)
    import paddle
    from pit import build_pit
    from weights import load_pretrained
    model = build_pit(config)
    load_pretrained(model, args.pretrained, prefer_ema=config.MODEL.EMA_WEIGHTS)
    model.eval()

    def classify(batch):
        with paddle.no_grad():
            return model(paddle.to_tensor(batch)).numpy()
    return classify


def load_setup(args):
    """(config, class names or None) from -cfg/-opts and what the weights file or export describes."""
    from config import build_config, described_keys
    if args.infer_model or args.onnx_model:
        from tools.export_model import read_export_description
        source = args.infer_model or args.onnx_model
        # export_model.py -onnx writes PREFIX.onnx beside the export's PREFIX.yml
        described, classes = read_export_description(args.infer_model or os.path.splitext(args.onnx_model)[0])
    else:
        source, ckpt = read_weights_file(args.pretrained)
        described, classes = described_keys(ckpt), (ckpt or {}).get('classes')
    config = build_config(cfg=args.cfg, opts=args.opts or [], described=described, described_by=source,
                          world_size=1)
    return config, classes


def main():
    args = get_arguments()
    from config import ConfigError
    from datasets import build_transforms
    import paddle
    import cpu_kernels
    from weights import WeightsError
    try:
        config, classes = load_setup(args)
        if paddle.get_device() == 'cpu':
            dygraph = args.pretrained is not None  # exported models run their runtime's own kernels
            cpu_kernels.configure_cpu(config.CPU_THREADS, kernels=dygraph and config.CPU_KERNELS)
            warning = cpu_kernels.take_warning()  # once: the model's build then says nothing more
            if warning:
                print(f'warning: {warning}', file=sys.stderr)
        classify = build_classifier(args, config)
        names = class_names(classes, config.MODEL.NUM_CLASSES)
    except (ConfigError, WeightsError, FileNotFoundError, ImportError) as e:  # ImportError: onnxruntime
        print(f'error: {e}', file=sys.stderr)
        sys.exit(2)
    transform = build_transforms(config, 'val')
    files, failed, start = list_images(args.img_path), 0, time.time()
    for first in range(0, len(files), args.batch_size):
        batch, good = [], []
        for path in files[first:first + args.batch_size]:
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
    seconds = time.time() - start
    if len(files) > 1:
        done = len(files) - failed
        print(f'classified {done} image(s) in {seconds:.1f}s ({done / max(seconds, 1e-9):.1f} img/s)')
    if failed or not files:
        print(f'error: {failed} of {len(files)} image(s) could not be read', file=sys.stderr)
        sys.exit(1)


if __name__ == '__main__':
    main()
