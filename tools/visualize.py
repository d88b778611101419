"""Pictures of what a PiT looks at: per image, one PNG of the image as the model sees it, each stage's attention
rollout and a Grad-CAM, under the top-k classes.

    python tools/visualize.py -pretrained output/pit_ti_730 -img_path images/cat.jpg -save_path output/viz
    python tools/visualize.py -pretrained output/train/checkpoint-best -img_path photos/ -save_path viz -topk 3

For each image, -save_path gets <image name without extension>.png (written under a temporary name, then
renamed), with side by side:
- the eval transform's crop (resize the short side to IMAGE_SIZE / CROP_PCT, center crop IMAGE_SIZE), shown
  un-normalised, enlarged by a whole factor (nearest) to at least 224 pixels;
- per stage, the class token's attention rolled out over that stage's blocks (Abnar & Zuidema 2020), a heat
  map over the stage's token grid laid over the crop (red: where the class token draws from);
- a Grad-CAM (Selvaraju et al. 2017) of the top-1 class on the last stage's patch tokens;
under the file name and the top-k classes with their softmax probabilities. How the maps are computed: explain.py.
Class names as predict.py gives them (the weights' class list, ImageNet names for 1000 classes). Weights of this
repo describe their model and preprocessing, so -cfg is optional; -opts DATA.IMAGE_SIZE N looks at another input
size (pos_embed resized). -device auto (default) runs on the GPU when paddle has CUDA and sees one.

Files in a given folder without an image extension, and its sub-folders, are skipped. An image that cannot be
read is named on stderr and the others are drawn; the run then ends with one error line (exit status 2).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import quiet  # noqa: E402,F401  (before paddle)

import numpy as np  # noqa: E402
import paddle  # noqa: E402
from PIL import Image  # noqa: E402

import cpu_kernels  # noqa: E402
from checkpoint import read_weights  # noqa: E402
from cli import argument_parser, prepare_save_dir, run_command  # noqa: E402
from config import build_config  # noqa: E402
from datasets import IMAGE_FILE_EXTENSIONS, list_images, load_rgb  # noqa: E402
from drawing import overlay, panel_row, save_png  # noqa: E402
from errors import RunFailed, UserError, error_line  # noqa: E402
from explain import explain  # noqa: E402
from inference import check_class_count, class_names, gpu_visible, resolve_device  # noqa: E402
from pit import build_model  # noqa: E402
from transforms import build_transforms, normalization  # noqa: E402

MIN_PANEL = 224  # pixels: smaller crops are enlarged by a whole factor to at least this


class VisualizeError(UserError):
    """Bad input to visualize.py (an -img_path, -topk or image it cannot use); the message names it."""


def get_arguments():
    return argument_parser(__doc__, flags=('-cfg', '-pretrained', '-save_path', '-device', '-opts'), extra={
        '-cfg': dict(help='model config (optional for weights of this repo)'),
        '-pretrained': dict(required=True, help='weights (.pdparams optional): converted or a checkpoint'),
        '-save_path': dict(required=True, help='folder of the pictures (made if missing)'),
        '-device': dict(choices=('auto', 'gpu', 'cpu'), default='auto',
                        help='auto: the GPU when paddle has CUDA and sees one'),
        '-img_path': dict(type=str, nargs='+', required=True, help='images and/or folders of images'),
        '-topk': dict(type=int, default=5, help='classes named per image'),
    }).parse_args()


def image_files(paths):
    """The image files of -img_path (datasets.list_images: the other entries of its folders are left out);
    VisualizeError when none is left."""
    files, _ = list_images(paths)
    if not files:
        raise VisualizeError(f'no image files in -img_path {" ".join(paths)} ({" ".join(IMAGE_FILE_EXTENSIONS)})')
    return files


def output_paths(files, save_dir):
    """save_dir/<stem>.png per file; VisualizeError when two files would share a picture, or a picture would
    replace one of the images."""
    outputs, owners = [], {}
    inputs = {os.path.realpath(path) for path in files}
    for path in files:
        out = os.path.join(save_dir, os.path.splitext(os.path.basename(path))[0] + '.png')
        if out in owners:
            raise VisualizeError(f"'{owners[out]}' and '{path}' would both be drawn to '{out}': give them in separate "
                                 'runs with different -save_path')
        if os.path.realpath(out) in inputs:
            raise VisualizeError(f"the picture of '{path}' would replace the image '{out}': choose another -save_path")
        owners[out] = path
        outputs.append(out)
    return outputs


def load_model(args, config, weights):
    """The model of config with the weights, in eval mode on -device (paddle's CPU set-up when on the CPU), and its
    class names (checked against its class count)."""
    paddle.set_device(resolve_device(args.device, gpu_visible(), paddle.__version__))
    if paddle.get_device() == 'cpu':
        cpu_kernels.configure_cpu(config.CPU_THREADS, kernels=config.CPU_KERNELS)
        warning = cpu_kernels.take_warning()
        if warning:
            print(f'warning: {warning}', file=sys.stderr)
    names = class_names(weights.classes, config.MODEL.NUM_CLASSES)
    check_class_count(names, config.MODEL.NUM_CLASSES, f"the class list of '{weights.path}'",
                      f'the model (MODEL.NUM_CLASSES={config.MODEL.NUM_CLASSES})')
    model = build_model(config)
    weights.load_into(model, prefer_ema=config.MODEL.EMA_WEIGHTS)
    model.eval()
    return model, names


def read_crop(path, transform):
    """The eval transform of the image at path (float32 [3, S, S]); VisualizeError naming the file when it cannot
    be read or decoded."""
    try:
        return transform(load_rgb(path))
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as e:
        raise VisualizeError(f"cannot read image '{path}': {error_line(e)}") from None


def shown_crop(image, config):
    """The crop as the model sees it: the normalised [3, S, S] array back to RGB pixels, enlarged (nearest) by the
    smallest whole factor that makes it at least MIN_PANEL pixels."""
    scale, shift = normalization(config.DATA.IMAGENET_MEAN, config.DATA.IMAGENET_STD)
    pixels = np.clip(np.rint((image + shift) / scale), 0, 255).astype(np.uint8).transpose(1, 2, 0)
    crop = Image.fromarray(pixels, 'RGB')
    factor = -(-MIN_PANEL // crop.size[0])
    return crop.resize((crop.size[0] * factor, crop.size[1] * factor), Image.NEAREST)


def picture(path, image, explanation, names, config, topk):
    """The PNG image of one image's explanation (batch index 0): title, crop, rollouts, Grad-CAM."""
    logits = explanation.logits[0].astype(np.float64)
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    order = np.argsort(-probs)[:topk]
    title = [os.path.basename(path)] + [f'{rank}. {100 * probs[i]:.1f}%  {names[i]}' for rank, i in enumerate(order, 1)]
    crop = shown_crop(image, config)
    panels = [(f'input {image.shape[2]}x{image.shape[1]}', crop)]
    panels += [(f'rollout stage {s + 1} ({m.shape[2]}x{m.shape[1]})', overlay(crop, m[0]))
               for s, m in enumerate(explanation.rollouts)]
    panels.append((f'Grad-CAM: {names[order[0]]}', overlay(crop, explanation.cam[0])))
    return panel_row(title, panels)


def draw_all(files, outputs, model, names, config, topk):
    """Draw each file's picture; of several files, unreadable ones are named on stderr and skipped (a single one
    is the run's error). Returns the files skipped."""
    transform = build_transforms(config, 'val')
    skipped = []
    for path, out in zip(files, outputs):
        try:
            image = read_crop(path, transform)
        except VisualizeError as e:
            if len(files) == 1:
                raise
            print(f'skipped: {e}', file=sys.stderr)
            skipped.append(path)
            continue
        try:
            explanation = explain(model, image[None])
        except (RuntimeError, MemoryError) as e:  # paddle's own errors
            raise RunFailed(f"the model failed on '{path}': {error_line(e)}") from None
        save_png(picture(path, image, explanation, names, config, topk), out)
        print(out)
    return skipped


def main():
    """Draw the pictures of the command line; bad input and failures end in one line (cli.run_command)."""
    args = get_arguments()
    if args.topk < 1:
        raise VisualizeError(f'-topk {args.topk}: expected a positive number')
    files = image_files(args.img_path)
    outputs = output_paths(files, args.save_path)
    weights = read_weights(args.pretrained)
    config = build_config(cfg=args.cfg, opts=args.opts or (), described=weights.described, described_by=weights.path,
                          world_size=1)
    prepare_save_dir(args.save_path)
    model, names = load_model(args, config, weights)
    skipped = draw_all(files, outputs, model, names, config, args.topk)
    if skipped:
        raise VisualizeError(f'{len(skipped)} of {len(files)} image(s) could not be read (named above); the others '
                             f'are drawn in {args.save_path}')


if __name__ == '__main__':
    run_command(main)
