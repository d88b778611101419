"""Running a PiT outside training: ImageNet class names, the deploy files of an export, and the two runtimes an
export runs on (paddle.inference, onnxruntime). predict.py and tools/export_model.py (through export.py) use it.

- Class names: the checkpoint's or export's class list (ImageNet wnids made readable), else for 1000 classes the
  shipped ImageNet-1k index (imagenet1k_class_index.txt), else the indices.
- Deploy files: PREFIX.yml, a PaddleClas-style inference config (PreProcess: ResizeImage resize_short, CropImage
  size, NormalizeImage mean/std/scale, ToCHWImage; PostProcess Topk with its class id map), which PaddleClas and
  PaddleX read, plus PREFIX_class_id_map.txt ("index name" per line). Its Global section also keeps the eval crop
  fraction (DATA.CROP_PCT) as the config holds it, so reading the export back gives the config's value, not one
  recomputed from the integer sizes. Reading goes through yaml.safe_load and checks every value it uses.
- paddle.inference: what a request (-device, -use_trt, -precision) enables, as data (PredictorSettings), applied
  to a Config; TensorRT through Config for .pdmodel programs (Paddle 2.6 exports) and through paddle.tensorrt for
  the .json (PIR) programs of Paddle 3, both with the batch range 1 .. batch; on the CPU, oneDNN in fp32, bf16
  or int8 (the int8 export's program holds its calibrated scales).
- onnxruntime: a CPU session of an ONNX file.
"""
import atexit
import collections
import contextlib
import os
import re
import shutil
import sys
import tempfile
import warnings

import numpy as np
import paddle
import paddle.inference as paddle_inference
import yaml

from errors import RunFailed, UserError, error_line
from transforms import eval_resize_size

ROOT = os.path.dirname(os.path.abspath(__file__))
CLASS_INDEX = os.path.join(ROOT, 'imagenet1k_class_index.txt')

INPUT_NAME = 'images'  # the exported program's input (InputSpec name); TensorRT shape ranges are keyed by it
GPU_MEMORY_POOL_MB = 256  # paddle.inference's initial GPU pool; it grows on demand
TRT_WORKSPACE = 1 << 30  # bytes TensorRT may use while choosing kernels

GPU_PRECISIONS = ('fp16',)  # Paddle's GPU mixed precision, or TensorRT's
CPU_PRECISIONS = ('bf16', 'int8')  # oneDNN's
PRECISIONS = ('fp32',) + GPU_PRECISIONS + CPU_PRECISIONS
# CPU instructions (/proc/cpuinfo flags) without which oneDNN runs a precision no faster than fp32: it emulates
# bf16 in fp32, and multiplies int8 without VNNI through 16-bit intermediate sums.
CPU_PRECISION_FLAGS = {'bf16': ('avx512_bf16', 'amx_bf16'), 'int8': ('avx512_vnni', 'avx_vnni', 'amx_int8')}


class ExportError(UserError):
    """Bad input to the export or inference tools (an unreadable or hostile export, a device choice this Paddle
    cannot run, a missing runtime package); the message names the file or flag."""


class ExportFailed(RunFailed):
    """The export could not be written or did not pass its check; nothing of it was published."""


# ------------------------------------------------------------------ class names

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


def check_class_count(names, count, names_source, model_source):
    """ExportError unless there is one class name per class of the model (names_source and model_source name
    both in the message)."""
    if len(names) != count:
        raise ExportError(f'{names_source} names {len(names)} classes, but {model_source} has {count}')


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
    'cpu_precision',   # oneDNN's precision on CPU: 'fp32', 'bf16' or 'int8' (needs an int8 export); None on GPU
])


def paddle_major(version):
    """Major version of a paddle.__version__ string; develop builds ('0.0.0') count as newer than any release."""
    head = version.split('.')[0]
    return int(head) if head.isdigit() and int(head) > 0 else float('inf')


def gpu_visible():
    """Whether this paddle is a CUDA build and sees at least one GPU."""
    return paddle.is_compiled_with_cuda() and paddle.device.cuda.device_count() > 0


def resolve_device(device, has_gpu, paddle_version, precision='fp32'):
    """'gpu' or 'cpu' for -device auto|gpu|cpu: auto takes the GPU when there is one, except for a CPU precision
    (bf16, int8); gpu without one, or with a CPU precision, is an ExportError."""
    if device not in ('auto', 'gpu', 'cpu'):
        raise ExportError(f'-device {device}: expected auto, gpu or cpu')
    if device == 'gpu' and precision in CPU_PRECISIONS:
        raise ExportError(f'-precision {precision} runs on the CPU (oneDNN): use -device cpu or auto')
    if device == 'gpu' and not has_gpu:
        raise ExportError(f'-device gpu: paddle {paddle_version} here has no GPU to run on (a CPU-only build, or '
                          'no GPU visible): use -device cpu or auto')
    return 'gpu' if device == 'gpu' or (device == 'auto' and has_gpu and precision not in CPU_PRECISIONS) else 'cpu'


def cpu_flags(cpuinfo='/proc/cpuinfo'):
    """The instruction-set flags of this CPU (the first 'flags' line of cpuinfo); empty where it cannot be read."""
    try:
        with open(cpuinfo, encoding='utf-8') as f:
            for line in f:
                if line.startswith('flags'):
                    return frozenset(line.partition(':')[2].split())
    except OSError:
        pass
    return frozenset()


def check_cpu_precision(precision, flags, onednn, paddle_version):
    """ExportError naming what is missing when oneDNN cannot run precision (bf16, int8) at speed here: a paddle
    built without oneDNN, or a CPU without any of CPU_PRECISION_FLAGS[precision]."""
    if precision not in CPU_PRECISIONS:
        return
    if not onednn:
        raise ExportError(f'-precision {precision} runs on oneDNN, and paddle {paddle_version} here is built without '
                          'it: use -precision fp32, or a paddlepaddle build with oneDNN (the x86 wheels)')
    wanted = CPU_PRECISION_FLAGS[precision]
    if not flags & set(wanted):
        raise ExportError(f"-precision {precision}: this CPU lacks {' / '.join(wanted)}, without which oneDNN runs "
                          f'{precision} no faster than fp32: use -precision fp32')


def predictor_settings(device, use_trt, precision, batch, image_size, paddle_version, has_gpu, program='.json',
                       max_batch=None, threads=0, flags=frozenset(), onednn=True):
    """The PredictorSettings of a request (-device auto|gpu|cpu, -use_trt, -precision fp32|fp16|bf16|int8) for
    batches of up to `batch` images of image_size, on this paddle_version, with or without a GPU, for an exported
    program file ending in `program`, on a CPU with these instruction flags and a paddle with or without oneDNN.
    TensorRT's batch range is 1 .. max_batch (default: batch), tuned for batch. bf16 and int8 run on the CPU
    (oneDNN; auto picks it). Raises ExportError for what cannot run: GPU requests without a GPU, TensorRT or fp16
    on the CPU, bf16/int8 on the GPU or where oneDNN cannot run them (check_cpu_precision), bf16 of a .pdmodel
    program on Paddle 3 (it fails there at run time), a .json (PIR) program on Paddle 2, a max_batch below
    batch."""
    if precision not in PRECISIONS:
        raise ExportError(f"-precision {precision}: expected {', '.join(PRECISIONS)}")
    device = resolve_device(device, has_gpu, paddle_version, precision)
    if use_trt and precision in CPU_PRECISIONS:
        raise ExportError(f'-use_trt runs on the GPU, -precision {precision} on the CPU: drop one of them')
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
        check_cpu_precision(precision, flags, onednn, paddle_version)
        if precision == 'bf16' and program == '.pdmodel' and paddle_major(paddle_version) >= 3:
            raise ExportError(f'-precision bf16: paddle {paddle_version} runs .pdmodel programs (Paddle 2.6 exports) '
                              'in bf16 with a wrong elementwise_add input type: export again with this Paddle '
                              '(.json), or use -precision fp32')
        return PredictorSettings(device='cpu', gpu_id=None, memory_pool_mb=None, gpu_precision=None, tensorrt=None,
                                 trt_precision=None, shape_range=None, legacy_ir=False, onednn=onednn,
                                 threads=threads or os.cpu_count() or 1, cpu_precision=precision)
    if not use_trt:
        return PredictorSettings(device='gpu', gpu_id=0, memory_pool_mb=GPU_MEMORY_POOL_MB, gpu_precision=precision,
                                 tensorrt=None, trt_precision=None, shape_range=None, legacy_ir=False, onednn=False,
                                 threads=None, cpu_precision=None)
    tensorrt = 'paddle.tensorrt' if program == '.json' else 'Config'
    return PredictorSettings(device='gpu', gpu_id=0, memory_pool_mb=GPU_MEMORY_POOL_MB, gpu_precision='fp32',
                             tensorrt=tensorrt, trt_precision=precision,
                             shape_range=tuple([n, 3, image_size, image_size] for n in (1, batch, max_batch)),
                             legacy_ir=tensorrt == 'Config' and paddle_major(paddle_version) >= 3, onednn=False,
                             threads=None, cpu_precision=None)


def describe(settings):
    """Short human description of settings, e.g. 'gpu:0, TensorRT fp16 (batch 1..16)' or 'cpu, oneDNN bf16, 2
    threads' (fp32 is not named on the CPU)."""
    if settings.device == 'cpu':
        precision = '' if settings.cpu_precision == 'fp32' else f' {settings.cpu_precision}'
        return f'cpu, {"oneDNN" + precision + ", " if settings.onednn else ""}{settings.threads} threads'
    if settings.tensorrt:
        return (f'gpu:{settings.gpu_id}, TensorRT {settings.trt_precision} through {settings.tensorrt} '
                f'(batch 1..{settings.shape_range[2][0]})')
    return f'gpu:{settings.gpu_id}, {settings.gpu_precision}'


def _onednn_method(config, suffix):
    """config's enable_onednn<suffix> where this Paddle has it (3.3 deprecates the enable_mkldnn names), else
    enable_mkldnn<suffix>."""
    return getattr(config, 'enable_onednn' + suffix, None) or getattr(config, 'enable_mkldnn' + suffix)


def apply_settings(config, settings):
    """Enable settings on a paddle.inference.Config (or any object with its method names). oneDNN, and its bf16
    or int8 mode, through the enable_onednn* names where this Paddle has them, else enable_mkldnn*."""
    precisions = {'fp32': paddle_inference.PrecisionType.Float32, 'fp16': paddle_inference.PrecisionType.Half}
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
            _onednn_method(config, '')()
        if settings.cpu_precision in CPU_PRECISIONS:
            _onednn_method(config, {'bf16': '_bfloat16', 'int8': '_int8'}[settings.cpu_precision])()
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


def settings_for(program, device='auto', use_trt=False, precision='fp32', batch=1, image_size=224, max_batch=None,
                 threads=0):
    """predictor_settings of a request for a program ('.json' or '.pdmodel') on this Paddle and machine."""
    return predictor_settings(device, use_trt, precision, batch, image_size, paddle.__version__, gpu_visible(),
                              program=program, max_batch=max_batch, threads=threads, flags=cpu_flags(),
                              onednn=paddle.base.core.is_compiled_with_mkldnn())


# the summary line each oneDNN int8 pass writes to stderr (past GLOG_minloglevel, in colour), e.g.
# '---    quantized 23 fc ops', '---    squashed 84 dequantize-quantize pairs'
ONEDNN_PASS_SUMMARY = re.compile(r'^(?:\x1b\[[0-9;]*m)*---\s+(quantized|squashed) (\d+) (.*?)\s*(?:\x1b\[[0-9;]*m)*$')


def quantized_ops(summary_lines):
    """{op type: count} of the 'quantized N <op> ops' lines among summary_lines (fused variants and 'with residual
    connection' counts added to their op)."""
    counts = collections.Counter()
    for line in summary_lines:
        match = ONEDNN_PASS_SUMMARY.match(line)
        if match and match.group(1) == 'quantized':
            counts[match.group(3).split()[0].replace('fused_', '')] += int(match.group(2))
    return dict(counts)


@contextlib.contextmanager
def onednn_summaries_kept_apart(summaries):
    """Within the block, stderr (file descriptor 2, where paddle.inference's C++ writes) goes through a file: the
    oneDNN pass summary lines are appended to the list summaries, everything else is written back to stderr."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with tempfile.TemporaryFile() as capture:
            os.dup2(capture.fileno(), 2)
            try:
                yield
            finally:
                sys.stderr.flush()
                os.dup2(saved, 2)
                capture.seek(0)
                for line in capture.read().decode('utf-8', 'replace').splitlines(keepends=True):
                    if ONEDNN_PASS_SUMMARY.match(line.rstrip('\n')):
                        summaries.append(line.rstrip('\n'))
                    else:
                        sys.stderr.write(line)
                sys.stderr.flush()
    finally:
        os.close(saved)


def build_predictor(model_prefix, settings):
    """A paddle.inference predictor of the export at model_prefix under settings, without the oneDNN int8 passes'
    summary lines on stderr; where those say that no fully-connected layer was quantised, a RuntimeWarning says the
    Linears run in fp32 (the int8 export would then gain little: see quantize.route_linear_weights). Raises
    ExportError naming the export when paddle.inference cannot load it (a damaged or foreign file)."""
    if settings.tensorrt == 'paddle.tensorrt':
        model_prefix = tensorrt_program(model_prefix, settings)
    config = paddle_inference.Config(*model_files(model_prefix))
    apply_settings(config, settings)
    summaries = []
    try:
        with onednn_summaries_kept_apart(summaries):
            predictor = paddle_inference.create_predictor(config)
    except (RuntimeError, ValueError, OSError) as e:
        raise ExportError(f"cannot load the exported model '{model_prefix}': {error_line(e)}") from None
    counts = quantized_ops(summaries)
    if counts and not counts.get('fc'):
        warnings.warn(f"'{model_prefix}': paddle.inference quantised no fully-connected layer of this int8 export "
                      f'({", ".join(f"{n} {op}" for op, n in counts.items() if n)}): its Linears run in fp32',
                      RuntimeWarning, stacklevel=2)
    return predictor


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


# ------------------------------------------------------------------ the deploy files of an export

def deploy_config(config, class_map_file, topk=5, precision='fp32'):
    """The PaddleClas inference config (dict) of config's eval transform and top-k output; Global.crop_pct keeps
    DATA.CROP_PCT as the config holds it, Global.precision the precision the export was checked at and runs at
    by default (predict.py; PaddleClas and PaddleX ignore both)."""
    size = config.DATA.IMAGE_SIZE
    return {
        'Global': {'model_name': config.MODEL.NAME, 'model_type': config.MODEL.TYPE,
                   'inference_model_dir': '.', 'batch_size': 1, 'crop_pct': config.DATA.CROP_PCT,
                   'precision': precision},
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


def write_deploy_files(config, names, save_prefix, precision='fp32'):
    """save_prefix.yml (PaddleClas PreProcess/PostProcess, Global.precision) and save_prefix_class_id_map.txt;
    returns the yml path. The class map is named relative to the yml's folder, so the export folder can be moved
    as a whole."""
    class_map = save_prefix + '_class_id_map.txt'
    with open(class_map, 'w', encoding='utf-8') as f:
        f.writelines(f'{index} {name}\n' for index, name in enumerate(names))
    yml = save_prefix + '.yml'
    with open(yml, 'w', encoding='utf-8') as f:
        yaml.safe_dump(deploy_config(config, os.path.basename(class_map), precision=precision), f, sort_keys=False)
    return yml


def _load_yaml(yml):
    """The object of a yaml file through yaml.safe_load; ExportError naming the file on any read or yaml error
    (tags that would build Python objects are yaml errors there)."""
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


def _preprocess_keys(ops, crop_pct, yml):
    """{dotted config key: value} of the preprocessing that transform_ops describe. DATA.CROP_PCT is crop_pct (the
    Global.crop_pct of an export of this repo) where it gives the file's resize_short, else CropImage.size /
    ResizeImage.resize_short (an export written elsewhere, or a resize edited since)."""
    number = (int, float)
    described = {}
    size = _get(ops, ('CropImage', 'size'), (int,), yml)
    if size:
        described['DATA.IMAGE_SIZE'] = size
        resize = _get(ops, ('ResizeImage', 'resize_short'), number, yml)
        if resize:
            kept = crop_pct is not None and 0 < crop_pct <= 1 and eval_resize_size(size, crop_pct) == resize
            described['DATA.CROP_PCT'] = crop_pct if kept else size / resize
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


def export_precision(save_prefix):
    """The precision the export at save_prefix runs at by default: its yml's Global.precision, fp32 for an export
    without one (older exports, or written elsewhere). ExportError naming the file for a value not in
    PRECISIONS."""
    yml = save_prefix + '.yml'
    if not os.path.isfile(yml):
        return 'fp32'
    precision = _get(_load_yaml(yml), ('Global', 'precision'), (str,), yml) or 'fp32'
    if precision not in PRECISIONS:
        raise ExportError(f"'{yml}': Global.precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return precision


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
    crop_pct = _get(deploy, ('Global', 'crop_pct'), (int, float), yml)
    described = _preprocess_keys(_transform_ops(deploy, yml), crop_pct, yml)
    class_map = _get(deploy, ('PostProcess', 'Topk', 'class_id_map_file'), (str,), yml)
    if not class_map:
        return described, None, None
    path = os.path.join(os.path.dirname(os.path.abspath(yml)), class_map)
    names = read_class_map(path, yml)
    described['MODEL.NUM_CLASSES'] = len(names)
    return described, names, path


# ------------------------------------------------------------------ onnxruntime

def create_onnx_session(onnx_path, threads=0):
    """An onnxruntime CPU session of an ONNX file; raises FileNotFoundError, or ExportError (onnxruntime missing, a
    file it cannot load) in one line."""
    if not os.path.isfile(onnx_path):
        raise FileNotFoundError(f"ONNX model '{onnx_path}' not found (-onnx_model; tools/export_model.py -onnx "
                                'writes one)')
    try:
        import onnxruntime
    except ImportError:
        raise ExportError(f"onnxruntime is not installed: pip install onnxruntime to run '{onnx_path}'") from None
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
