"""Export a PiT to a static Paddle inference model, and run it through paddle.inference.

    python tools/export_model.py -pretrained output/pit_ti_730 -save_path output/inference
    python tools/export_model.py -pretrained output/pit_ti_730 -save_path output/inference -use_trt -precision fp16
    python predict.py -infer_model output/inference -img_path images/

writes, for the prefix output/inference:
    inference.json (or .pdmodel) + inference.pdiparams   input `images` [N, 3, S, S] float32, the logits as output
                                                          (distilled models: the mean of both heads)
    inference.yml                                         PaddleClas-style deploy config: PreProcess
                                                          (ResizeImage, CropImage, NormalizeImage, ToCHWImage)
                                                          and PostProcess Topk, read by PaddleClas and PaddleX
    inference_class_id_map.txt                            "index name" per class, named in inference.yml
    inference.onnx                                        with -onnx (see below)
Weights of this repo (checkpoints, converted official weights) describe their model and preprocessing, so -cfg
is optional. The files are written into a hidden folder beside the prefix, checked, then moved into place all
together: an export that fails leaves nothing behind, and one that succeeds replaces every file of an older
export at the same prefix (a stale .onnx of older weights included).

The check runs the export through paddle.inference with -device (auto: the GPU when paddle has CUDA and sees
one), -use_trt and -precision, on a batch of 1 and of 2, and compares the logits with the dygraph model's (within
1% of the largest logit for fp32, 5% for fp16; TensorRT and TF32 matmuls are not bit-exact). These flags choose
only the check: the exported files are the same for every device, and predict.py takes the same flags.
TensorRT runs through `Config.enable_tensorrt_engine` for .pdmodel programs (Paddle 2.6 exports) and through
`paddle.tensorrt` for the .json (PIR) programs of Paddle 3, whose Config ignores TensorRT; both get the batch
range 1 .. batch (opt = batch). `-onnx` also writes output/inference.onnx through paddle2onnx and onnx when they
are installed (never installing anything itself): opset 13 (`-opset N`), input `images`, output `logits`, dynamic
batch.
"""
import argparse
import atexit
import collections
import contextlib
import copy
import inspect
import os
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import quiet  # noqa: E402,F401  (before paddle)

import numpy as np  # noqa: E402
import paddle  # noqa: E402

INPUT_NAME = 'images'  # the exported program's input (InputSpec name); TensorRT shape ranges are keyed by it
EXPORT_SUFFIXES = ('.json', '.pdmodel', '.pdiparams', '.pdiparams.info', '.yml', '_class_id_map.txt', '.onnx')
GPU_MEMORY_POOL_MB = 256  # paddle.inference's initial GPU pool; it grows on demand
TRT_WORKSPACE = 1 << 30  # bytes TensorRT may use while choosing kernels
CHECK_BATCH = 2
CHECK_TOLERANCE = {'fp32': 1e-2, 'fp16': 5e-2}  # of the largest |logit|: GPUs run fp32 matmuls in TF32


class ExportError(ValueError):
    """Bad input to the export or inference tools (an unreadable or hostile export, a device choice this Paddle
    cannot run); the message names the file or flag."""


class ExportFailed(RuntimeError):
    """The export could not be written or did not pass its check; nothing of it was published."""


def error_line(error):
    """The line of an error message that says what went wrong: Paddle's span many lines around a C++ stack."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip().strip('-')]
    for i, line in enumerate(lines[:-1]):
        if line.startswith('Error Message Summary'):
            return lines[i + 1]
    return lines[0] if lines else type(error).__name__


# ------------------------------------------------------------------ what paddle.inference enables, as data

PredictorSettings = collections.namedtuple('PredictorSettings', [
    'device',          # 'cpu' or 'gpu'
    'gpu_id',          # GPU index (CUDA_VISIBLE_DEVICES chooses which one is 0), None on CPU
    'memory_pool_mb',  # initial GPU memory pool, None on CPU
    'gpu_precision',   # precision of Paddle's own GPU kernels: 'fp16' is its mixed precision; None on CPU
    'tensorrt',        # None, 'Config' (Config.enable_tensorrt_engine, .pdmodel) or 'paddle.tensorrt' (.json)
    'trt_precision',   # 'fp32' or 'fp16' with TensorRT, else None
    'shape_range',     # TensorRT's (min, opt, max) shapes of the input, each [N, 3, S, S]; else None
    'legacy_ir',       # turn off Paddle 3's PIR translation, whose passes drop Config's TensorRT subgraphs
    'onednn',          # oneDNN kernels (CPU)
    'threads',         # CPU math threads, None on GPU
])


def paddle_major(version):
    """Major version of a paddle.__version__ string; develop builds ('0.0.0') count as newer than any release."""
    head = version.split('.')[0]
    return int(head) if head.isdigit() and int(head) > 0 else float('inf')


def gpu_visible():
    """Whether this paddle is a CUDA build and sees at least one GPU."""
    return paddle.is_compiled_with_cuda() and paddle.device.cuda.device_count() > 0


def resolve_device(device, has_gpu, paddle_version):
    """'gpu' or 'cpu' for -device auto|gpu|cpu: auto takes the GPU when there is one; gpu without one is an
    ExportError."""
    if device not in ('auto', 'gpu', 'cpu'):
        raise ExportError(f'-device {device}: expected auto, gpu or cpu')
    if device == 'gpu' and not has_gpu:
        raise ExportError(f'-device gpu: paddle {paddle_version} here has no GPU to run on (a CPU-only build, or '
                          'no GPU visible): use -device cpu or auto')
    return 'gpu' if device == 'gpu' or (device == 'auto' and has_gpu) else 'cpu'


def predictor_settings(device, use_trt, precision, batch, image_size, paddle_version, has_gpu, program='.json',
                       max_batch=None, threads=0):
    """The PredictorSettings of a request (-device auto|gpu|cpu, -use_trt, -precision fp32|fp16) for batches of
    up to `batch` images of image_size, on this paddle_version, with or without a GPU, for an exported program
    file ending in `program`. TensorRT's batch range is 1 .. max_batch (default: batch), tuned for batch.
    Raises ExportError for what cannot run: GPU requests without a GPU, TensorRT or fp16 on the CPU, a .json
    (PIR) program on Paddle 2, a max_batch below batch."""
    device = resolve_device(device, has_gpu, paddle_version)
    if precision not in ('fp32', 'fp16'):
        raise ExportError(f'-precision {precision}: expected fp32 or fp16')
    wanted = [flag for flag, on in (('-use_trt', use_trt), ('-precision fp16', precision == 'fp16')) if on]
    if wanted and device == 'cpu':
        wanted = ' and '.join(wanted)
        raise ExportError(f'{wanted} run on the GPU: drop them or -device cpu' if has_gpu else
                          f'{wanted} run on an NVIDIA GPU, and paddle {paddle_version} here has none (a CPU-only '
                          'build, or no GPU visible): drop them, or use paddlepaddle-gpu on a machine with a GPU')
    if program == '.json' and paddle_major(paddle_version) < 3:
        raise ExportError(f'a .json (PIR) program needs Paddle 3; paddle {paddle_version} reads .pdmodel programs: '
                          'export with this Paddle version, or run it with Paddle 3')
    max_batch = max_batch or batch
    if max_batch < batch:
        raise ExportError(f'TensorRT batch range: max_batch {max_batch} is below the batch size {batch}')
    if device == 'cpu':
        return PredictorSettings(device='cpu', gpu_id=None, memory_pool_mb=None, gpu_precision=None, tensorrt=None,
                                 trt_precision=None, shape_range=None, legacy_ir=False, onednn=True,
                                 threads=threads or os.cpu_count() or 1)
    if not use_trt:
        return PredictorSettings(device='gpu', gpu_id=0, memory_pool_mb=GPU_MEMORY_POOL_MB, gpu_precision=precision,
                                 tensorrt=None, trt_precision=None, shape_range=None, legacy_ir=False, onednn=False,
                                 threads=None)
    tensorrt = 'paddle.tensorrt' if program == '.json' else 'Config'
    return PredictorSettings(device='gpu', gpu_id=0, memory_pool_mb=GPU_MEMORY_POOL_MB, gpu_precision='fp32',
                             tensorrt=tensorrt, trt_precision=precision,
                             shape_range=tuple([n, 3, image_size, image_size] for n in (1, batch, max_batch)),
                             legacy_ir=tensorrt == 'Config' and paddle_major(paddle_version) >= 3, onednn=False,
                             threads=None)


def describe(settings):
    """Short human description of settings, e.g. 'gpu:0, TensorRT fp16 (batch 1..16)' or 'cpu, oneDNN, 2 threads'."""
    if settings.device == 'cpu':
        return f'cpu, {"oneDNN, " if settings.onednn else ""}{settings.threads} threads'
    if settings.tensorrt:
        return (f'gpu:{settings.gpu_id}, TensorRT {settings.trt_precision} through {settings.tensorrt} '
                f'(batch 1..{settings.shape_range[2][0]})')
    return f'gpu:{settings.gpu_id}, {settings.gpu_precision}'


def apply_settings(config, settings):
    """Enable settings on a paddle.inference.Config (or any object with its method names). oneDNN goes
    through enable_onednn where this Paddle has it (3.3 deprecates enable_mkldnn), else enable_mkldnn."""
    from paddle.inference import PrecisionType
    precisions = {'fp32': PrecisionType.Float32, 'fp16': PrecisionType.Half}
    if settings.device == 'gpu':
        config.enable_use_gpu(settings.memory_pool_mb, settings.gpu_id, precisions[settings.gpu_precision])
        if settings.tensorrt == 'Config':
            if settings.legacy_ir:
                config.enable_new_ir(False)
            low, opt, high = settings.shape_range
            config.enable_tensorrt_engine(workspace_size=TRT_WORKSPACE, max_batch_size=high[0], min_subgraph_size=3,
                                          precision_mode=precisions[settings.trt_precision], use_static=False,
                                          use_calib_mode=False)
            config.set_trt_dynamic_shape_info(min_input_shape={INPUT_NAME: low}, max_input_shape={INPUT_NAME: high},
                                              optim_input_shape={INPUT_NAME: opt})
    else:
        config.disable_gpu()
        if settings.onednn:
            (config.enable_onednn if hasattr(config, 'enable_onednn') else config.enable_mkldnn)()
        config.set_cpu_math_library_num_threads(settings.threads)
    config.disable_glog_info()


def tensorrt_config(settings, save_model_dir, api):
    """The paddle.tensorrt TensorRTConfig (api: the paddle.tensorrt.export module) that converts a .json program
    for settings into save_model_dir (a prefix): the input's batch range and TensorRT's precision."""
    low, opt, high = settings.shape_range
    batch_range = api.Input(min_input_shape=low, optim_input_shape=opt, max_input_shape=high, name=INPUT_NAME)
    precision = api.PrecisionMode.FP16 if settings.trt_precision == 'fp16' else api.PrecisionMode.FP32
    return api.TensorRTConfig(inputs=[batch_range], precision_mode=precision, save_model_dir=save_model_dir)


def tensorrt_program(model_prefix, settings):
    """Prefix of a TensorRT-converted copy of the .json program at model_prefix (paddle.tensorrt, Paddle 3), in
    a temporary folder removed when the process exits (the converted program reads its engines from there)."""
    try:
        import paddle.tensorrt
        from paddle.tensorrt import export as api
    except (ImportError, OSError) as e:  # OSError: TensorRT's libraries
        raise ExportError(f"-use_trt: the .json program '{model_prefix}.json' goes through paddle.tensorrt on paddle "
                          f'{paddle.__version__}, which cannot be imported here ({error_line(e)}): install the '
                          'TensorRT Python package that matches this paddlepaddle-gpu, or drop -use_trt') from None
    folder = tempfile.mkdtemp(prefix='pit-tensorrt-')
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    converted = os.path.join(folder, 'inference')
    try:
        paddle.tensorrt.convert(model_prefix, tensorrt_config(settings, converted, api))
    except Exception as e:  # the converter raises assertion, type, value and NotImplemented errors alike
        raise ExportFailed(f"paddle.tensorrt could not convert '{model_prefix}.json': {error_line(e)}") from None
    return converted


def model_files(prefix):
    """(program, params) files of the export at prefix; raises FileNotFoundError naming what is missing."""
    for ext in ('.json', '.pdmodel'):
        if os.path.isfile(prefix + ext):
            if not os.path.isfile(prefix + '.pdiparams'):
                raise FileNotFoundError(f"exported model '{prefix}{ext}' has no parameters file "
                                        f"'{prefix}.pdiparams'")
            return prefix + ext, prefix + '.pdiparams'
    raise FileNotFoundError(f"no exported model at '{prefix}' (expected {prefix}.json or {prefix}.pdmodel; "
                            'run tools/export_model.py first)')


def program_suffix(model_prefix):
    """'.json' or '.pdmodel': the program format of the export at model_prefix."""
    return os.path.splitext(model_files(model_prefix)[0])[1]


def saved_program_suffix():
    """The program format paddle.jit.save writes here: .json (PIR) from Paddle 3 on, .pdmodel before."""
    return '.json' if paddle_major(paddle.__version__) >= 3 else '.pdmodel'


def settings_for(program, device='auto', use_trt=False, precision='fp32', batch=1, image_size=224, max_batch=None,
                 threads=0):
    """predictor_settings of a request for a program ('.json' or '.pdmodel') on this Paddle and machine."""
    return predictor_settings(device, use_trt, precision, batch, image_size, paddle.__version__, gpu_visible(),
                              program=program, max_batch=max_batch, threads=threads)


def build_predictor(model_prefix, settings):
    """A paddle.inference predictor of the export at model_prefix under settings. Raises ExportError naming the
    export when paddle.inference cannot load it (a damaged or foreign file)."""
    from paddle import inference
    if settings.tensorrt == 'paddle.tensorrt':
        model_prefix = tensorrt_program(model_prefix, settings)
    config = inference.Config(*model_files(model_prefix))
    apply_settings(config, settings)
    try:
        return inference.create_predictor(config)
    except (RuntimeError, ValueError, OSError) as e:
        raise ExportError(f"cannot load the exported model '{model_prefix}': {error_line(e)}") from None


def create_predictor(model_prefix, device='auto', use_trt=False, precision='fp32', threads=0, batch=1,
                     image_size=224, max_batch=None):
    """A paddle.inference predictor of an exported model: the GPU when there is one (device 'auto'), TensorRT
    and fp16 on request; oneDNN on the CPU. See predictor_settings for the arguments and errors."""
    settings = settings_for(program_suffix(model_prefix), device, use_trt, precision, batch, image_size, max_batch,
                            threads)
    return build_predictor(model_prefix, settings)


def run_predictor(predictor, images):
    """images float32 [N, 3, S, S] numpy -> logits numpy [N, classes]."""
    handle = predictor.get_input_handle(predictor.get_input_names()[0])
    handle.reshape(list(images.shape))
    handle.copy_from_cpu(np.ascontiguousarray(images, dtype='float32'))
    predictor.run()
    return predictor.get_output_handle(predictor.get_output_names()[0]).copy_to_cpu()


# ------------------------------------------------------------------ writing an export

def export_inference_model(model, image_size, save_prefix):
    """paddle.jit.save of model in eval mode with a dynamic batch; returns save_prefix. A copy is traced, with
    the attention scale folded into the qkv weights (pit.Attention.fold_query_scale): the exported
    .pdiparams hold those folded weights (same outputs); model itself is left as it was. Raises ExportFailed
    when paddle cannot write the files."""
    from pit import Attention
    model = copy.deepcopy(model)
    model.eval()  # (Paddle 2.6's Layer.eval returns None)
    for layer in model.sublayers():
        if isinstance(layer, Attention):
            layer.fold_query_scale()
    os.makedirs(os.path.dirname(os.path.abspath(save_prefix)), exist_ok=True)
    spec = [paddle.static.InputSpec([None, 3, image_size, image_size], 'float32', name=INPUT_NAME)]
    static_model = paddle.jit.to_static(model, input_spec=spec, full_graph=True)
    try:
        paddle.jit.save(static_model, save_prefix)
    except (RuntimeError, OSError) as e:  # paddle reports a failed write as a RuntimeError
        raise ExportFailed(f"cannot write the exported model '{save_prefix}': {error_line(e)}") from None
    return save_prefix


def deploy_config(config, class_map_file, topk=5):
    """The PaddleClas inference config (dict) of config's eval transform and top-k output."""
    from transforms import eval_resize_size
    size = config.DATA.IMAGE_SIZE
    return {
        'Global': {'model_name': config.MODEL.NAME, 'model_type': config.MODEL.TYPE,
                   'inference_model_dir': '.', 'batch_size': 1},
        'PreProcess': {'transform_ops': [
            {'ResizeImage': {'resize_short': eval_resize_size(size, config.DATA.CROP_PCT),
                             'interpolation': config.DATA.INTERPOLATION, 'backend': 'pil'}},
            {'CropImage': {'size': size}},
            {'NormalizeImage': {'scale': 1.0 / 255.0, 'mean': list(config.DATA.IMAGENET_MEAN),
                                'std': list(config.DATA.IMAGENET_STD), 'order': 'hwc', 'channel_num': 3}},
            {'ToCHWImage': None},
        ]},
        'PostProcess': {'main_indicator': 'Topk',
                        'Topk': {'topk': min(topk, config.MODEL.NUM_CLASSES), 'class_id_map_file': class_map_file}},
    }


def write_deploy_files(config, names, save_prefix):
    """save_prefix.yml (PaddleClas PreProcess/PostProcess) and save_prefix_class_id_map.txt; returns the yml path.
    The class map is named relative to the yml's folder, so the export folder can be moved as a whole."""
    import yaml
    class_map = save_prefix + '_class_id_map.txt'
    with open(class_map, 'w', encoding='utf-8') as f:
        f.writelines(f'{index} {name}\n' for index, name in enumerate(names))
    yml = save_prefix + '.yml'
    with open(yml, 'w', encoding='utf-8') as f:
        yaml.safe_dump(deploy_config(config, os.path.basename(class_map)), f, sort_keys=False)
    return yml


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


def check_export(model, save_prefix, settings, image_size):
    """Largest |logit difference| between the export at save_prefix, run under settings on a batch of 1 and of
    CHECK_BATCH random images, and the dygraph model (in eval mode); raises ExportFailed when it exceeds
    CHECK_TOLERANCE of the precision times the largest |logit| (at least 1)."""
    predictor = build_predictor(save_prefix, settings)
    x = np.random.RandomState(0).rand(CHECK_BATCH, 3, image_size, image_size).astype('float32')
    with paddle.no_grad():
        reference = model(paddle.to_tensor(x)).numpy()
    diff = max(float(np.abs(run_predictor(predictor, x[:n]) - reference[:n]).max()) for n in (1, CHECK_BATCH))
    precision = settings.trt_precision or settings.gpu_precision or 'fp32'
    allowed = CHECK_TOLERANCE[precision] * max(1.0, float(np.abs(reference).max()))
    if not diff <= allowed:  # also a NaN
        raise ExportFailed(f'the exported model run on {describe(settings)} differs from the dygraph model by '
                           f'{diff:.3g} (allowed {allowed:.3g}): not published')
    return diff


def check_class_count(names, count, names_source, model_source):
    """ExportError unless there is one class name per class of the model (names_source and model_source name
    both in the message)."""
    if len(names) != count:
        raise ExportError(f'{names_source} names {len(names)} classes, but {model_source} has {count}')


# ------------------------------------------------------------------ reading an export's deploy files

def _load_yaml(yml):
    """The object of a yaml file through yaml.safe_load; ExportError naming the file on any read or yaml error
    (tags that would build Python objects are yaml errors there)."""
    import yaml
    try:
        with open(yml, encoding='utf-8') as f:
            return yaml.safe_load(f)
    except yaml.MarkedYAMLError as e:
        where = f' (line {e.problem_mark.line + 1})' if e.problem_mark else ''
        raise ExportError(f"'{yml}' is not a readable deploy config: {e.problem or e.context}{where}") from None
    except (yaml.YAMLError, OSError, UnicodeDecodeError) as e:
        raise ExportError(f"'{yml}' is not a readable deploy config: {error_line(e)}") from None


def _get(node, keys, kinds, yml):
    """node[keys[0]][keys[1]]..., None where a key is missing; ExportError naming yml and the keys when a value on
    the way is not a mapping, or the value is not of kinds (bool is not a number here)."""
    for i, key in enumerate(keys):
        if node is None:
            return None
        if not isinstance(node, dict):
            raise ExportError(f"'{yml}': {'.'.join(keys[:i]) or 'the file'} must be a mapping, got {node!r}")
        node = node.get(key)
    if node is not None and (not isinstance(node, kinds) or isinstance(node, bool) and bool not in kinds):
        names = ' or '.join(kind.__name__ for kind in kinds)
        raise ExportError(f"'{yml}': {'.'.join(keys)} must be {names}, got {node!r}")
    return node


def _transform_ops(deploy, yml):
    """{op name: its arguments (a mapping)} of PreProcess.transform_ops."""
    ops = {}
    for op in _get(deploy, ('PreProcess', 'transform_ops'), (list,), yml) or []:
        if not isinstance(op, dict):
            raise ExportError(f"'{yml}': each of PreProcess.transform_ops must be a mapping, got {op!r}")
        ops.update({name: args or {} for name, args in op.items()})
    return ops


def _preprocess_keys(ops, yml):
    """{dotted config key: value} of the preprocessing that transform_ops describe."""
    number = (int, float)
    described = {}
    size = _get(ops, ('CropImage', 'size'), (int,), yml)
    if size:
        described['DATA.IMAGE_SIZE'] = size
        resize = _get(ops, ('ResizeImage', 'resize_short'), number, yml)
        if resize:
            described['DATA.CROP_PCT'] = size / resize
        interpolation = _get(ops, ('ResizeImage', 'interpolation'), (str,), yml)
        if interpolation:
            described['DATA.INTERPOLATION'] = interpolation
    for key, name in (('mean', 'DATA.IMAGENET_MEAN'), ('std', 'DATA.IMAGENET_STD')):
        values = _get(ops, ('NormalizeImage', key), (list,), yml)
        if values is not None:
            positive = key == 'std'  # the image is divided by it
            if len(values) != 3 or not all(isinstance(v, number) and not isinstance(v, bool) and (v > 0 or not positive)
                                           for v in values):
                need = '3 numbers above 0' if positive else '3 numbers'
                raise ExportError(f"'{yml}': NormalizeImage.{key} must be {need}, got {values!r}")
            described[name] = list(values)
    return described


def read_class_map(path, yml):
    """Class names of a class id map ("index name" per line, indices 0, 1, ... in order); ExportError naming the
    file and line when it cannot be read or a line does not fit."""
    try:
        with open(path, encoding='utf-8') as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        raise ExportError(f"class map '{path}' named in '{yml}' not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ExportError(f"cannot read class map '{path}' named in '{yml}': {error_line(e)}") from None
    names = []
    for number, line in enumerate(lines, 1):
        if line.strip():
            index, _, name = line.partition(' ')
            if index != str(len(names)) or not name.strip():
                raise ExportError(f"class map '{path}' line {number}: expected '{len(names)} <class name>', "
                                  f'got {line.strip()[:80]!r}')
            names.append(name)
    return names


def read_export_description(save_prefix):
    """({dotted config key: value} of the export's preprocessing and class count, class names or None, the class
    map's path or None), read from save_prefix.yml and its class map; ({}, None, None) for an export without
    them. Raises ExportError naming the file for anything it cannot use (yaml errors, hostile tags, wrong types,
    a missing or malformed class map)."""
    yml = save_prefix + '.yml'
    if not os.path.isfile(yml):
        return {}, None, None
    deploy = _load_yaml(yml)
    described = _preprocess_keys(_transform_ops(deploy, yml), yml)
    class_map = _get(deploy, ('PostProcess', 'Topk', 'class_id_map_file'), (str,), yml)
    if not class_map:
        return described, None, None
    path = os.path.join(os.path.dirname(os.path.abspath(yml)), class_map)
    names = read_class_map(path, yml)
    described['MODEL.NUM_CLASSES'] = len(names)
    return described, names, path


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


def create_onnx_session(onnx_path, threads=0):
    """An onnxruntime CPU session of an ONNX file; raises FileNotFoundError / ImportError / ExportError (a file
    onnxruntime cannot load) in one line."""
    if not os.path.isfile(onnx_path):
        raise FileNotFoundError(f"ONNX model '{onnx_path}' not found (-onnx_model; tools/export_model.py -onnx "
                                'writes one)')
    try:
        import onnxruntime
    except ImportError:
        raise ImportError(f"onnxruntime is not installed: pip install onnxruntime to run '{onnx_path}'") from None
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads  # 0: onnxruntime's default, one per physical core
    try:
        return onnxruntime.InferenceSession(onnx_path, options, providers=['CPUExecutionProvider'])
    except Exception as e:  # onnxruntime's load errors (InvalidProtobuf, Fail, ...) derive from Exception only
        raise ExportError(f"cannot load ONNX model '{onnx_path}': {error_line(e)}") from None


def run_onnx(session, images):
    """images float32 [N, 3, S, S] numpy -> logits numpy [N, classes] through an onnxruntime session."""
    feed = {session.get_inputs()[0].name: np.ascontiguousarray(images, dtype='float32')}
    return session.run([session.get_outputs()[0].name], feed)[0]


def get_arguments():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('-cfg', default=None, help='model config (optional for weights of this repo)')
    parser.add_argument('-pretrained', required=True, help='weights (.pdparams optional)')
    parser.add_argument('-save_path', default='output/inference', help='output prefix')
    parser.add_argument('-device', choices=('auto', 'gpu', 'cpu'), default='auto',
                        help='where the export is checked (auto: the GPU when paddle has CUDA and sees one)')
    parser.add_argument('-use_trt', action='store_true', help='check the export through TensorRT (GPU)')
    parser.add_argument('-precision', choices=('fp32', 'fp16'), default='fp32',
                        help='precision of the check (fp16: GPU)')
    parser.add_argument('-onnx', action='store_true', help='also export ONNX (needs paddle2onnx and onnx)')
    parser.add_argument('-opset', type=int, default=DEFAULT_ONNX_OPSET, help='ONNX opset of -onnx')
    parser.add_argument('-opts', nargs='+', default=[], help='config overrides KEY VALUE ...')
    return parser.parse_args()


def export(args):
    """Export -pretrained to -save_path, checked under -device/-use_trt/-precision (see the module docstring);
    returns the lines that report it."""
    from config import build_config, described_keys
    from predict import class_names, read_weights_file
    from pit import build_pit
    from weights import load_pretrained
    if args.onnx:
        check_opset(args.opset)
    source, ckpt = read_weights_file(args.pretrained)
    config = build_config(cfg=args.cfg, opts=args.opts, described=described_keys(ckpt), described_by=source,
                          world_size=1)
    size = config.DATA.IMAGE_SIZE
    request = dict(device=args.device, use_trt=args.use_trt, precision=args.precision, batch=CHECK_BATCH,
                   image_size=size, threads=config.CPU_THREADS)
    settings_for(saved_program_suffix(), **request)  # refuses what this machine cannot run before any work
    names = class_names((ckpt or {}).get('classes'), config.MODEL.NUM_CLASSES)
    check_class_count(names, config.MODEL.NUM_CLASSES, f"the class list of '{source}'",
                      'the model (MODEL.NUM_CLASSES)')
    with staged_export(args.save_path) as prefix:
        model = build_pit(config)
        load_pretrained(model, source, prefer_ema=config.MODEL.EMA_WEIGHTS)
        model.eval()
        export_inference_model(model, size, prefix)
        write_deploy_files(config, names, prefix)
        settings = settings_for(program_suffix(prefix), **request)
        diff = check_export(model, prefix, settings, size)
        onnx = args.onnx and export_onnx(prefix, opset=args.opset)
    lines = [f'exported {config.MODEL.NAME} to {args.save_path} (input images: [N, 3, {size}, {size}]), deploy '
             f'config {args.save_path}.yml',
             f'checked through paddle.inference on {describe(settings)}: the logits differ from the dygraph '
             f"model's by at most {diff:.2g}"]
    return lines + ([f'exported ONNX to {args.save_path}.onnx'] if onnx else [])


def main():
    args = get_arguments()
    from config import ConfigError
    from weights import WeightsError
    try:
        lines = export(args)
    except (ConfigError, WeightsError, FileNotFoundError, ExportError) as e:
        print(f'error: {e}', file=sys.stderr)
        sys.exit(2)
    except ExportFailed as e:
        print(f'error: {e}', file=sys.stderr)
        sys.exit(1)
    except OSError as e:
        print(f"error: cannot write the export '{args.save_path}': {e.strerror or e}", file=sys.stderr)
        sys.exit(1)
    print('\n'.join(lines))


if __name__ == '__main__':
    from predict import run_quietly_on_broken_pipe
    run_quietly_on_broken_pipe(main)
