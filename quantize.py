"""Post-training int8 quantisation of an exported PiT, for paddle.inference's oneDNN int8 path
(tools/export_model.py -precision int8 -calib_data ...).

Calibration: up to `count` images of a folder (searched through its sub-folders, e.g. an ImageNet val/<wnid>/
layout) or of a list file ('relative/path [label]' lines, paths relative to the list's folder), taken evenly
spread over the sorted list (so every class of a class-folder layout is seen), read with the model's eval
transform. paddle.static.quantization.PostTrainingQuantization then runs them through the exported program,
records each quantised op's input range (CALIBRATION_ALGO) and its weights' per-channel abs-max (the convs'; a
Linear's weight is ranged as an input, see route_linear_weights), and writes the program back with
quantise/dequantise ops that carry these scales; paddle.inference's oneDNN int8 passes turn them into int8
kernels. Run in fp32, the same program simulates int8 (the ops round to the int8 grid).

That tool reads legacy (.pdmodel) programs only. Paddle 3 writes .json (PIR) programs by default, so an int8 export
is traced into a legacy program there (legacy_programs; pit.py and cpu_kernels.py keep the traced ops to ones with
a legacy form) and quantised under the same switch.

What int8 keeps (the 32-px quickstart PiT on the digits, 510 val images; Paddle 3.3.1 and 2.6.2 alike): 96.3%
top-1 and 99.0% agreement with fp32 (96.1%), at 1.4-1.8x fp32's speed on pit_ti (224 px, batch 32). That needs
route_linear_weights. Left to itself, paddle.inference's compute_propagate_scales_onednn_pass gives every int8
`fc` (a fused Linear) without a weight scale per-output-channel scales computed from the weights, and reads the
[in, out] weight as if it were column-major (ComputePropagateScalesOnednnPass::GetScales, axis 0): channel i gets
the largest of `in` consecutive values of the buffer, not of its column, and oneDNN saturates the weights above
it in about half the channels (92.7% top-1). PTQ's per-channel weight scales do not help: the passes use them
only to restore fp32 weights. A scale the pass finds already recorded for the weight is kept, and PTQ records
one (per tensor) for a weight that reaches its matmul through an op. Measured without it: other calibrations
(avg, mse, KL; 256 images) 92.5-93.1%; the Linears left in fp32 95.7-95.9% at 1.04-1.15x; the pass deleted
95.9% at 0.93-0.97x (nothing then runs in int8).
"""
import contextlib
import io
import logging
import os
import shutil

import numpy as np
import paddle

from datasets import IMAGE_EXTENSIONS, load_rgb
from errors import error_line
from inference import ExportError, paddle_major

DEFAULT_CALIB_IMAGES = 64
CALIB_BATCH = 16
# 'hist': the 99.999th percentile of |activation| (abs_max lets a few outliers after the GELU and in the
# attention widen the int8 step of every value; KL is several times slower for the same top-1 here).
CALIBRATION_ALGO = 'hist'
WEIGHT_QUANTIZE = 'channel_wise_abs_max'  # the convs' (the Linears' weights are ranged as inputs)
QUANTIZED_OPS = ['conv2d', 'depthwise_conv2d', 'matmul_v2', 'matmul', 'mul']  # PiT's convs, Linears, attention
LINEAR_OPS = ('matmul_v2', 'matmul', 'mul')  # a Linear's x @ weight in a legacy program (its bias is an add)


def legacy_programs():
    """A context under which paddle.jit.save traces into, and paddle.static loads and runs, legacy (.pdmodel)
    programs: Paddle 3's switch from its default PIR to them (its DygraphOldIrGuard), which it undoes on exit;
    Paddle 2 has no other kind."""
    if paddle_major(paddle.__version__) < 3:
        return contextlib.nullcontext()
    from paddle.pir_utils import DygraphOldIrGuard
    return DygraphOldIrGuard()


def _list_file_images(list_file):
    """The image paths a list file names ('relative/path [label]' lines, relative to its folder)."""
    with open(list_file, encoding='utf-8-sig') as f:
        lines = [line.strip() for line in f if line.strip()]
    root = os.path.dirname(os.path.abspath(list_file))
    paths = []
    for line in lines:
        head, _, last = line.rpartition(' ')
        paths.append(os.path.join(root, head.strip() if head and last.lstrip('-').isdigit() else line))
    return paths


def _folder_images(folder):
    """The image files under folder and its sub-folders, sorted."""
    found = []
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        found += [os.path.join(root, f) for f in sorted(files) if f.lower().endswith(IMAGE_EXTENSIONS)]
    return found


def calibration_files(path, count):
    """Up to count image paths of path (a folder or a list file), spread evenly over its sorted images. Raises
    ExportError naming path when it is missing, unreadable or holds no images."""
    if count < 1:
        raise ExportError(f'-calib_images {count}: expected a positive number')
    try:
        if os.path.isdir(path):
            files = _folder_images(path)
        elif os.path.isfile(path):
            files = _list_file_images(path)
        else:
            raise ExportError(f"-calib_data '{path}' not found (expected a folder of images or a list file)")
    except (OSError, UnicodeDecodeError) as e:
        raise ExportError(f"-calib_data '{path}' cannot be read: {error_line(e)}") from None
    if not files:
        raise ExportError(f"-calib_data '{path}' holds no images ({' '.join(IMAGE_EXTENSIONS)})")
    step = max(1, len(files) // count)
    return files[::step][:count]


def calibration_images(path, count, transform):
    """float32 [N, 3, S, S] of calibration_files(path, count) through transform (the eval transform); ExportError
    naming the first image that cannot be decoded."""
    images = []
    for file in calibration_files(path, count):
        try:
            images.append(transform(load_rgb(file)))
        except (OSError, SyntaxError, ValueError, EOFError) as e:
            raise ExportError(f"-calib_data: cannot read image '{file}': {error_line(e)}") from None
    return np.stack(images).astype('float32')


class _CalibrationBatches(paddle.io.DataLoader):
    """The calibration images as the feeds PostTrainingQuantization runs (it takes only a paddle.io.DataLoader
    and calls it for {input name: batch} dicts); nothing of DataLoader's own machinery is used."""

    def __init__(self, images, input_name):  # DataLoader.__init__ not called: no workers, no sampler
        self.images, self.input_name = images, input_name

    def __len__(self):
        return -(-len(self.images) // CALIB_BATCH)

    def __call__(self):
        for start in range(0, len(self.images), CALIB_BATCH):
            yield {self.input_name: self.images[start:start + CALIB_BATCH]}


@contextlib.contextmanager
def _static_mode_quietly():
    """Paddle's static mode for the block, without the progress bars and INFO lines PTQ prints, nor the warning
    paddle.static.io gives for PTQ's way of loading the program."""
    loggers = [logging.getLogger(name) for name in list(logging.root.manager.loggerDict)
               if name.startswith(('paddle.static.quantization', 'paddle.static.io'))]
    levels = [logger.level for logger in loggers]
    paddle.enable_static()
    try:
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        with contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        paddle.disable_static()
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def route_linear_weights(program_file):
    """Rewrite the legacy program in program_file (in place, through a temporary file) so that every Linear (a
    LINEAR_OPS op whose Y is a persistable 2-D weight) reads its weight through an `assign` op; same outputs.
    PTQ then calibrates that weight as an input (one scale for the tensor). paddle.inference folds the assign
    back into a constant and fuses the Linear into an int8 `fc` as before, and that fc keeps the calibrated
    scale: oneDNN's scale pass computes per-channel weight scales (wrongly, see above) only for an fc weight
    that has none yet."""
    from paddle.base.framework import Program
    with open(program_file, 'rb') as f:
        serialized = f.read()
    with legacy_programs(), _static_mode_quietly():
        program = Program.parse_from_string(serialized)
        block = program.global_block()
        for index in reversed(range(len(block.ops))):  # an inserted op shifts the ones after it
            op = block.ops[index]
            weight = block._find_var_recursive(op.input('Y')[0]) if op.type in LINEAR_OPS else None
            if weight is None or not weight.persistable or len(weight.shape) != 2:
                continue
            routed = block.create_var(name=weight.name + '.routed', shape=weight.shape, dtype=weight.dtype)
            block._insert_op(index, type='assign', inputs={'X': [weight]}, outputs={'Out': [routed]})
            op._rename_input(weight.name, routed.name)
        serialized = program.desc.serialize_to_string()
    partial = program_file + '.partial'
    with open(partial, 'wb') as f:
        f.write(serialized)
    os.replace(partial, program_file)


def quantize_export(prefix, images, input_name):
    """Replace the .pdmodel export at prefix (prefix.pdmodel, .pdiparams) by its int8 quantisation calibrated on
    images (float32 [N, 3, S, S]); input_name is the program's input."""
    from paddle.static.quantization import PostTrainingQuantization
    folder, name = os.path.split(prefix)
    quantized = os.path.join(folder, name + '.int8')
    route_linear_weights(prefix + '.pdmodel')
    scope = paddle.static.Scope()  # the program's variables, dropped with it
    with legacy_programs(), _static_mode_quietly(), paddle.static.scope_guard(scope):
        ptq = PostTrainingQuantization(
            executor=paddle.static.Executor(paddle.CPUPlace()), scope=scope, model_dir=folder,
            model_filename=name + '.pdmodel', params_filename=name + '.pdiparams',
            data_loader=_CalibrationBatches(images, input_name), batch_nums=None, algo=CALIBRATION_ALGO,
            quantizable_op_type=QUANTIZED_OPS, weight_quantize_type=WEIGHT_QUANTIZE)
        ptq.quantize()
        ptq.save_quantized_model(quantized, model_filename=name + '.pdmodel', params_filename=name + '.pdiparams')
    for suffix in ('.pdmodel', '.pdiparams'):
        os.replace(os.path.join(quantized, name + suffix), prefix + suffix)
    shutil.rmtree(quantized)
    if os.path.exists(prefix + '.pdiparams.info'):  # describes the fp32 parameters
        os.remove(prefix + '.pdiparams.info')
