"""Exporting a PiT for deployment: a static Paddle inference model with its deploy files, checked, published whole
or not at all, and optionally an ONNX copy. tools/export_model.py is its command line.

For the prefix output/inference an export writes:
    inference.json (or .pdmodel) + inference.pdiparams   input `images` [N, 3, S, S] float32, the logits as output
                                                          (distilled models: the mean of both heads)
    inference.yml, inference_class_id_map.txt             the deploy files (inference.write_deploy_files)
    inference.onnx                                        on request: paddle2onnx at one opset (export_onnx)
An int8 export's program is quantised (quantize.py) after tracing, calibrated on the images given; bf16 and fp16
change only how the export runs (and is checked), not its files; inference.yml records the precision.
The files are written into a hidden folder beside the prefix, checked through paddle.inference against the dygraph
model (check_export), then moved into place all together (staged_export): an export that fails leaves nothing
behind, and one that succeeds replaces every file of an older export at the same prefix.
"""
import contextlib
import copy
import inspect
import os
import shutil
import tempfile

import numpy as np
import paddle

from errors import error_line
from inference import (INPUT_NAME, ExportError, ExportFailed, check_class_count, class_names, build_predictor,
                       describe, model_files, paddle_major, program_suffix, run_predictor, settings_for,
                       write_deploy_files)
from pit import Attention, build_model
from quantize import DEFAULT_CALIB_IMAGES, calibration_images, legacy_programs, quantize_export
from transforms import build_transforms

EXPORT_SUFFIXES = ('.json', '.pdmodel', '.pdiparams', '.pdiparams.info', '.yml', '_class_id_map.txt', '.onnx')


CHECK_BATCH = 2


# Of the largest |logit|: GPUs run fp32 matmuls in TF32; bf16 keeps 8 bits of mantissa (measured: 1% on trained
# and random PiTs); int8 is checked on its calibration images, where oneDNN's int8 path stays within about 10% on
# trained digit PiTs (tests/test_quant.py) and a broken calibration (a wrong input range) is off by far more.
CHECK_TOLERANCE = {'fp32': 1e-2, 'fp16': 5e-2, 'bf16': 5e-2, 'int8': 0.5}


def saved_program_suffix(legacy_program=False):
    """The program format export_inference_model writes here: .json (PIR) from Paddle 3 on, .pdmodel before
    and for a legacy_program."""
    return '.json' if paddle_major(paddle.__version__) >= 3 and not legacy_program else '.pdmodel'


def export_inference_model(model, image_size, save_prefix, legacy_program=False):
    """paddle.jit.save of model in eval mode with a dynamic batch; returns save_prefix. A copy is traced, with
    the attention scale folded into the qkv weights (pit.Attention.fold_query_scale): the exported
    .pdiparams hold those folded weights (same outputs); model itself is left as it was. legacy_program: a
    .pdmodel program also on Paddle 3 (what int8 quantises: quantize.legacy_programs). Raises ExportFailed
    when paddle cannot write the files."""
    model = copy.deepcopy(model)
    model.eval()  # (Paddle 2.6's Layer.eval returns None)
    for layer in model.sublayers():
        if isinstance(layer, Attention):
            layer.fold_query_scale()
    os.makedirs(os.path.dirname(os.path.abspath(save_prefix)), exist_ok=True)
    spec = [paddle.static.InputSpec([None, 3, image_size, image_size], 'float32', name=INPUT_NAME)]
    static_model = paddle.jit.to_static(model, input_spec=spec, full_graph=True)
    try:
        with legacy_programs() if legacy_program else contextlib.nullcontext():
            paddle.jit.save(static_model, save_prefix)
    except (RuntimeError, OSError) as e:  # paddle reports a failed write as a RuntimeError
        raise ExportFailed(f"cannot write the exported model '{save_prefix}': {error_line(e)}") from None
    return save_prefix


@contextlib.contextmanager
def staged_export(save_prefix):
    """Yields a prefix with save_prefix's file name inside a new hidden folder beside save_prefix. When the block
    ends without an error, the files written under it replace the export at save_prefix all together
    (publish_export); either way the folder is then removed. An unwritable folder is an ExportError."""
    folder, name = os.path.split(os.path.abspath(save_prefix))
    if not name:
        raise ExportError(f"-save_path '{save_prefix}' must end in a file name, e.g. "
                          f"{os.path.join(save_prefix, 'inference')}")
    try:
        os.makedirs(folder, exist_ok=True)
        staging = tempfile.mkdtemp(prefix=f'.{name}.export-', dir=folder)
    except OSError as e:
        raise ExportError(f"cannot write the export '{save_prefix}': folder '{folder}' is not writable: "
                          f'{e.strerror or e}') from None
    try:
        yield os.path.join(staging, name)
        publish_export(staging, name, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def publish_export(staging, name, folder):
    """Move the export files staged as staging/NAME<suffix> to folder/NAME<suffix>, all or none: every file of
    an older export there (also those the new one lacks, such as a stale .onnx or the other program format) is
    first moved into staging/old, and all moves are undone if one fails. Raises ExportFailed when a target name
    is taken by a folder."""
    files = [name + suffix for suffix in EXPORT_SUFFIXES]
    for file in files:
        if os.path.isdir(os.path.join(folder, file)):
            raise ExportFailed(f"cannot write the export: '{os.path.join(folder, file)}' is a folder")
    old = os.path.join(staging, 'old')
    os.mkdir(old)
    done = []
    try:
        for file in files:
            target = os.path.join(folder, file)
            if os.path.lexists(target):
                os.replace(target, os.path.join(old, file))
            done.append(file)
            if os.path.exists(os.path.join(staging, file)):
                os.replace(os.path.join(staging, file), target)
    except OSError:
        for file in reversed(done):
            target = os.path.join(folder, file)
            if os.path.lexists(target):
                os.replace(target, os.path.join(staging, file))
            if os.path.lexists(os.path.join(old, file)):
                os.replace(os.path.join(old, file), target)
        raise


def check_export(model, save_prefix, settings, image_size, images=None):
    """Largest |logit difference| between the export at save_prefix, run under settings on a batch of 1 and of
    CHECK_BATCH images (the first of images, else random ones), and the dygraph model (in eval mode); raises
    ExportFailed when it exceeds CHECK_TOLERANCE of the precision times the largest |logit| (at least 1)."""
    predictor = build_predictor(save_prefix, settings)
    x = np.random.RandomState(0).rand(CHECK_BATCH, 3, image_size, image_size).astype('float32')
    if images is not None:
        x = images[:CHECK_BATCH]
    with paddle.no_grad():
        reference = model(paddle.to_tensor(x)).numpy()
    diff = max(float(np.abs(run_predictor(predictor, x[:n]) - reference[:n]).max()) for n in (1, CHECK_BATCH))
    precision = settings.trt_precision or settings.gpu_precision or settings.cpu_precision or 'fp32'
    allowed = CHECK_TOLERANCE[precision] * max(1.0, float(np.abs(reference).max()))
    if not diff <= allowed:  # also a NaN
        raise ExportFailed(f'the exported model run on {describe(settings)} differs from the dygraph model by '
                           f'{diff:.3g} (allowed {allowed:.3g}): not published')
    return diff


# ------------------------------------------------------------------ ONNX

DEFAULT_ONNX_OPSET = 13  # the lowest opset the checks ask for; every current ONNX runtime reads it


ONNX_OPSETS = range(9, 22)  # paddle2onnx 2.1 exports PiT at these; on others it aborts the whole process


ONNX_INPUT, ONNX_OUTPUT, ONNX_BATCH = 'images', 'logits', 'batch'


def check_opset(opset):
    """ExportError for an ONNX opset outside ONNX_OPSETS."""
    if opset not in ONNX_OPSETS:
        raise ExportError(f'-opset {opset}: paddle2onnx exports PiT at opsets {ONNX_OPSETS[0]} to {ONNX_OPSETS[-1]}')


def export_onnx(save_prefix, opset=DEFAULT_ONNX_OPSET):
    """save_prefix.onnx from the exported model save_prefix via paddle2onnx at exactly this opset: input
    `images` [batch, 3, S, S], output `logits` [batch, classes], the batch dimension named `batch`, and no node
    or initializer that the output does not need. Returns the path, or None when paddle2onnx is missing or
    refuses this Paddle; an opset outside ONNX_OPSETS is an ExportError."""
    try:
        import onnx
        import paddle2onnx
    except ImportError:
        print('paddle2onnx/onnx not installed: skipping ONNX export (pip install paddle2onnx onnx to enable it)')
        return None
    except ValueError:  # paddle2onnx >= 2 refuses to be imported beside Paddle 2.x
        print(f"the installed paddle2onnx needs Paddle >= 3.0, this is paddle {paddle.__version__}: skipping ONNX "
              "export (with Paddle 2.x: pip install 'paddle2onnx<2')")
        return None
    check_opset(opset)
    # optimize_tool 'None' (paddle2onnx >= 2): its default optimizer step would pip-install packages at run time
    options = {'optimize_tool': 'None'} if 'optimize_tool' in inspect.signature(paddle2onnx.export).parameters else {}
    data = paddle2onnx.export(*model_files(save_prefix), None, opset_version=opset, auto_upgrade_opset=False,
                              **options)
    model = onnx.load_model_from_string(data)
    graph = model.graph
    _rename_value(graph, graph.input[0].name, ONNX_INPUT)
    _rename_value(graph, graph.output[0].name, ONNX_OUTPUT)
    for value in (graph.input[0], graph.output[0]):
        value.type.tensor_type.shape.dim[0].dim_param = ONNX_BATCH
    _prune_unused(graph)
    onnx.checker.check_model(model)
    onnx_path = save_prefix + '.onnx'
    onnx.save(model, onnx_path)
    return onnx_path


def onnx_copy(model, image_size, prefix, opset, legacy_program):
    """prefix.onnx of model in fp32 (export_onnx; its path, or None where it skips), converted from the program
    at prefix, except a legacy one on Paddle 3 (an int8 export's), on which paddle2onnx 2 aborts the process: then
    from a .json trace of model at a prefix beside it, in the same folder."""
    if saved_program_suffix(legacy_program) == saved_program_suffix():
        return export_onnx(prefix, opset=opset)
    traced = export_inference_model(model, image_size, prefix + '.fp32')
    path = export_onnx(traced, opset=opset)
    if path:
        os.replace(path, prefix + '.onnx')
    return path and prefix + '.onnx'


def _rename_value(graph, old, new):
    """Rename a graph value (paddle2onnx calls the output `fetch_name_0`) wherever it is produced or read."""
    for value in list(graph.input) + list(graph.output):
        if value.name == old:
            value.name = new
    for node in graph.node:
        node.input[:] = [new if name == old else name for name in node.input]
        node.output[:] = [new if name == old else name for name in node.output]


def _prune_unused(graph):
    """Drop the nodes no graph output depends on, then the initializers no node reads. paddle2onnx leaves
    dead Constant nodes (140 for pit_ti at opset 13), which onnxruntime turns into initializers and warns about."""
    needed = {value.name for value in graph.output}
    kept = []
    for node in reversed(graph.node):  # ONNX nodes are in topological order
        if any(name in needed for name in node.output):
            kept.append(node)
            needed.update(node.input)
            for attr in node.attribute:  # values read inside control-flow subgraphs
                needed.update(name for sub in [attr.g, *attr.graphs] for inner in sub.node for name in inner.input)
    del graph.node[:]
    graph.node.extend(reversed(kept))
    initializers = [init for init in graph.initializer if init.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(initializers)


# ------------------------------------------------------------------ the whole export

def calibration_for(config, precision, calib_data, calib_images):
    """The calibration images of an int8 export (quantize.calibration_images with the eval transform), None for
    other precisions. ExportError when int8 lacks calib_data, when calib_data is given for another precision, or
    when it cannot be read."""
    if precision != 'int8':
        if calib_data is not None:
            raise ExportError(f'-calib_data calibrates -precision int8 exports; this one is {precision}')
        return None
    if calib_data is None:
        raise ExportError('-precision int8 needs -calib_data: a folder of images or a list file to calibrate on '
                          '(a few dozen images of the task, e.g. the val set)')
    return calibration_images(calib_data, calib_images, build_transforms(config, 'val'))


def export_weights(config, weights, save_path, device='auto', use_trt=False, precision='fp32', onnx_opset=None,
                   calib_data=None, calib_images=DEFAULT_CALIB_IMAGES):
    """Export the model of config with the weights of a checkpoint.WeightsFile to the prefix save_path, checked
    through paddle.inference under device/use_trt/precision (inference.predictor_settings; they choose only the
    check and the precision save_path.yml records, except int8: its program is quantised, calibrated on
    calib_images images of calib_data); with onnx_opset, also save_path.onnx (of the fp32 model). Returns the
    lines that report it. Raises ExportError for what this machine cannot run, calibration data it cannot use or a
    class list that does not fit the model (before any work), ExportFailed when the export cannot be written or
    fails its check: then nothing of it is published."""
    if onnx_opset is not None:
        check_opset(onnx_opset)
    size = config.DATA.IMAGE_SIZE
    request = dict(device=device, use_trt=use_trt, precision=precision, batch=CHECK_BATCH, image_size=size,
                   threads=config.CPU_THREADS)
    legacy = precision == 'int8'  # quantize.py's PTQ reads legacy (.pdmodel) programs
    settings_for(saved_program_suffix(legacy), **request)  # refuses what this machine cannot run before any work
    names = class_names(weights.classes, config.MODEL.NUM_CLASSES)
    check_class_count(names, config.MODEL.NUM_CLASSES, f"the class list of '{weights.path}'",
                      'the model (MODEL.NUM_CLASSES)')
    images = calibration_for(config, precision, calib_data, calib_images)
    try:
        with staged_export(save_path) as prefix:
            model = build_model(config)
            weights.load_into(model, prefer_ema=config.MODEL.EMA_WEIGHTS)
            model.eval()
            export_inference_model(model, size, prefix, legacy_program=legacy)
            onnx = onnx_opset is not None and onnx_copy(model, size, prefix, onnx_opset, legacy)
            if images is not None:
                quantize_export(prefix, images, INPUT_NAME)
            write_deploy_files(config, names, prefix, precision=precision)
            settings = settings_for(program_suffix(prefix), **request)
            diff = check_export(model, prefix, settings, size, images)
    except OSError as e:
        raise ExportFailed(f"cannot write the export '{save_path}': {e.strerror or e}") from None
    quantized = f', int8 calibrated on {len(images)} images of {calib_data}' if images is not None else ''
    lines = [f'exported {config.MODEL.NAME} to {save_path} (input images: [N, 3, {size}, {size}]{quantized}), '
             f'deploy config {save_path}.yml (precision {precision})',
             f'checked through paddle.inference on {describe(settings)}: the logits differ from the dygraph '
             f"model's by at most {diff:.2g}"]
    return lines + ([f'exported ONNX to {save_path}.onnx'] if onnx else [])
