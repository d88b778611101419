"""Classify images with a PiT: top-k class ids, softmax probabilities and readable class names.

    python predict.py -pretrained output/pit_ti_730 -img_path images/cat.jpg
    python predict.py -pretrained output/train/checkpoint-best -img_path photos/ -topk 3
    python predict.py -infer_model output/inference -img_path a.jpg b.png
    python predict.py -infer_model output/inference -img_path photos/ -use_trt -precision fp16   # TensorRT
    python predict.py -onnx_model output/inference.onnx -img_path a.jpg   # onnxruntime
    python predict.py -infer_model output/int8/inference -img_path photos/   # at the export's precision

Checkpoints of this repo and converted official weights describe their model and preprocessing, so -cfg is
optional (given, with -opts, it applies; a model key that contradicts the weights is an error). Preprocessing is
the evaluation transform (resize short side to IMAGE_SIZE / CROP_PCT, center crop). Class names: the class list of
the checkpoint or export (ImageNet wnids become readable names); otherwise 1000-class models use the shipped
ImageNet-1k index; a class list whose length is not the model's class count is an error.

-device auto (default) runs on the GPU when paddle is a CUDA build and sees one, else on the CPU; -device gpu|cpu
forces one. Exported models (-infer_model) can also run through TensorRT (-use_trt, batch range 1 .. -batch_size)
and in half precision (-precision fp16: TensorRT's, or Paddle's GPU mixed precision without -use_trt); both need
a GPU. -precision bf16|int8 run on the CPU through oneDNN (int8: an int8 export). Without -precision, an export runs
at the precision its inference.yml records (Global.precision; fp32 when there is none). onnxruntime runs on the
CPU.

Unreadable files are reported on stderr, the others are still classified, and the exit status is 1 if any failed.
Files in a given folder without an image extension, and its sub-folders, are skipped and named on stderr. Of a
multi-frame file (animated GIF, WebP, multi-page TIFF) the first frame is classified, with a note. Folders end
with a throughput line. Output cut short by its reader (`| head -1`) ends the run quietly.
"""
import quiet  # noqa: F401  (first: quiets paddle's import)

import os
import sys
import time

import numpy as np
import paddle
from PIL import Image, UnidentifiedImageError

import cpu_kernels
from checkpoint import read_weights
from cli import argument_parser, run_command
from config import build_config
from datasets import build_transforms, list_images, load_rgb
from errors import RunFailed, UserError, error_line
from inference import (PRECISIONS, build_predictor, check_class_count, class_names, create_onnx_session, describe,
                       export_precision, gpu_visible, program_suffix, read_export_description, resolve_device,
                       run_onnx, run_predictor, settings_for)
from pit import build_model


class PredictError(UserError):
    """Bad input to predict.py (an -img_path, -topk or -batch_size it cannot use); the message names it."""



def load_image(path, transform):
    """(preprocessed CHW float32 array of the image's first frame, the file's number of frames); raises
    ValueError naming the file when it cannot be decoded (or is larger than PIL's decompression-bomb limit)."""
    try:
        image = transform(load_rgb(path))
        with Image.open(path) as img:
            return image, getattr(img, 'n_frames', 1)
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as e:
        raise ValueError(f"cannot read image '{path}': {e}") from None


def softmax(logits):
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def get_arguments():
    parser = argument_parser(__doc__, flags=('-cfg', '-pretrained', '-batch_size', '-device', '-opts'), extra={
        '-cfg': dict(help='yaml config of the model (optional for weights and exports of this repo)'),
        '-pretrained': dict(help='weights (.pdparams optional): converted or a checkpoint'),
        '-batch_size': dict(default=16, help='images per batch'),
        '-device': dict(choices=('auto', 'gpu', 'cpu'), default='auto',
                        help='auto: the GPU when paddle has CUDA and sees one (-onnx_model: CPU only)'),
        '-infer_model': dict(type=str, default=None, help='exported model prefix (tools/export_model.py)'),
        '-onnx_model': dict(type=str, default=None, help='ONNX file (export_model.py -onnx); onnxruntime'),
        '-img_path': dict(type=str, nargs='+', required=True, help='images and/or folders'),
        '-topk': dict(type=int, default=5, help='classes shown per image'),
        '-use_trt': dict(action='store_true', help='-infer_model through TensorRT (GPU)'),
        '-precision': dict(choices=PRECISIONS, default=None,
                           help="-infer_model precision (fp16: GPU; bf16, int8: CPU); default: the export's"),
    })
    args = parser.parse_args()
    if sum(bool(m) for m in (args.pretrained, args.infer_model, args.onnx_model)) != 1:
        parser.error('give exactly one of -pretrained, -infer_model and -onnx_model')
    return args


def check_arguments(args):
    """PredictError for flag values predict cannot use."""
    for flag, value in (('-topk', args.topk), ('-batch_size', args.batch_size)):
        if value < 1:
            raise PredictError(f'{flag} {value}: expected a positive number')
    if not args.infer_model and (args.use_trt or args.precision):
        raise PredictError('-use_trt and -precision apply to exported models (-infer_model)')
    if args.onnx_model and args.device == 'gpu':
        raise PredictError("-device gpu: -onnx_model runs on onnxruntime's CPU provider here; use -infer_model "
                           'for the GPU')


def build_classifier(args, config, weights):
    """(a function images [B,3,S,S] float32 -> logits numpy [B, classes], a description of where it runs):
    the dygraph model with weights (the -pretrained checkpoint.WeightsFile), an exported model through
    paddle.inference, or an ONNX file through onnxruntime."""
    if args.infer_model:
        precision = args.precision or export_precision(args.infer_model)
        settings = settings_for(program_suffix(args.infer_model), args.device, args.use_trt, precision,
                                batch=args.batch_size, image_size=config.DATA.IMAGE_SIZE, threads=config.CPU_THREADS)
        predictor = build_predictor(args.infer_model, settings)
        return (lambda batch: run_predictor(predictor, batch)), describe(settings)
    if args.onnx_model:
        session = create_onnx_session(args.onnx_model, threads=config.CPU_THREADS)
        return (lambda batch: run_onnx(session, batch)), 'onnxruntime, cpu'
    model = build_model(config)
    weights.load_into(model, prefer_ema=config.MODEL.EMA_WEIGHTS)
    model.eval()

    def classify(batch):
        with paddle.no_grad():
            return model(paddle.to_tensor(batch)).numpy()
    return classify, f'{paddle.get_device()}, dygraph'


def load_setup(args):
    """(config, class names or None, what names them, the -pretrained checkpoint.WeightsFile or None): from
    -cfg/-opts and what the weights file (read once, here) or export describes."""
    weights = None
    if args.infer_model or args.onnx_model:
        source = args.infer_model or args.onnx_model
        # export_model.py -onnx writes PREFIX.onnx beside the export's PREFIX.yml
        described, classes, class_map = read_export_description(args.infer_model or
                                                                 os.path.splitext(args.onnx_model)[0])
        names_source = f"class map '{class_map}'"
    else:
        weights = read_weights(args.pretrained)
        source, described, classes = weights.path, weights.described, weights.classes
        names_source = f"the class list of '{source}'"
    config = build_config(cfg=args.cfg, opts=args.opts or [], described=described, described_by=source,
                          world_size=1)
    if not classes:
        names_source = f'MODEL.NUM_CLASSES={config.MODEL.NUM_CLASSES}'
    return config, classes, names_source, weights


def select_device(args, config):
    """Put dygraph runs on -device, and set up paddle's CPU kernels when the run is on the CPU."""
    if args.pretrained:
        paddle.set_device(resolve_device(args.device, gpu_visible(), paddle.__version__))
    if paddle.get_device() == 'cpu':
        dygraph = args.pretrained is not None  # exported models run their runtime's own kernels
        cpu_kernels.configure_cpu(config.CPU_THREADS, kernels=dygraph and config.CPU_KERNELS)
        warning = cpu_kernels.take_warning()  # once: the model's build then says nothing more
        if warning:
            print(f'warning: {warning}', file=sys.stderr)


def setup(args):
    """(config, classify, class names, where it runs) for args; the class names are checked against the
    model's output count with one image."""
    config, classes, names_source, weights = load_setup(args)
    select_device(args, config)
    classify, runtime = build_classifier(args, config, weights)
    names = class_names(classes, config.MODEL.NUM_CLASSES)
    size = config.DATA.IMAGE_SIZE
    outputs = classify(np.zeros((1, 3, size, size), 'float32')).shape[-1]
    model_source = f"the exported model '{args.infer_model or args.onnx_model}'" if not args.pretrained else 'the model'
    check_class_count(names, outputs, names_source, model_source)
    return config, classify, names, runtime


def read_batch(paths, transform):
    """(images, paths read, number that failed) of a batch of files; unreadable files and multi-frame files
    are reported on stderr."""
    images, good, failed = [], [], 0
    for path in paths:
        try:
            image, frames = load_image(path, transform)
        except (ValueError, FileNotFoundError) as e:
            print(f'error: {e}', file=sys.stderr)
            failed += 1
            continue
        if frames > 1:
            print(f"note: '{path}' has {frames} frames: the first is classified", file=sys.stderr)
        images.append(image)
        good.append(path)
    return images, good, failed


def classify_files(files, transform, classify, names, args):
    """Print each file and its top-k classes, batch by batch; returns the number of files that failed."""
    failed = 0
    for first in range(0, len(files), args.batch_size):
        images, good, bad = read_batch(files[first:first + args.batch_size], transform)
        failed += bad
        if not images:
            continue
        probs = softmax(classify(np.stack(images).astype('float32')).astype('float64'))
        for path, p in zip(good, probs):
            print(path)
            for idx in np.argsort(-p)[:args.topk]:
                print(f'  class_id: {idx}, prob: {p[idx]:.4f}, name: {names[idx]}')
    return failed


def main():
    """Classify the images of the command line; bad input and failures end in one line (cli.run_command)."""
    args = get_arguments()
    check_arguments(args)
    files, skipped = list_images(args.img_path)
    for path, reason in skipped:
        print(f"skipped '{path}': {reason}", file=sys.stderr)
    if not files:
        raise PredictError(f'no image files in -img_path {" ".join(args.img_path)}')
    try:
        config, classify, names, runtime = setup(args)
    except (RuntimeError, MemoryError) as e:  # paddle's own errors while the model is built and first run
        raise RunFailed(f'the model could not run: {error_line(e)}') from None
    start = time.time()
    try:
        failed = classify_files(files, build_transforms(config, 'val'), classify, names, args)
    except (RuntimeError, MemoryError) as e:
        raise RunFailed(f'the model failed on a batch: {error_line(e)}') from None
    seconds = time.time() - start
    if len(files) > 1:
        done = len(files) - failed
        print(f'classified {done} image(s) in {seconds:.1f}s ({done / max(seconds, 1e-9):.1f} img/s) on {runtime}')
    if failed:
        raise RunFailed(f'{failed} of {len(files)} image(s) could not be read')


if __name__ == '__main__':
    run_command(main)
