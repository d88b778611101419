"""Speed of a PiT config: dygraph inference, exported inference (paddle.inference), a training step, batch-1
dygraph latency and the train data pipeline per worker, with peak memory; with the reference timm/PyTorch model
side by side when available. Any of the configs/*.yaml, with -opts KEY VALUE ... overrides.

    python tools/benchmark.py -cfg configs/pit_ti.yaml -batch_size 32 -json output/bench.json -markdown
    PIT_REFERENCE_PYTHON=/path/to/python-with-torch-and-timm python tools/benchmark.py -cfg configs/pit_s.yaml
    python tools/benchmark.py -cfg configs/pit_b.yaml -threads 2 -phases train_step -opts MODEL.DROP_PATH 0.0

`-phases exported_infer exported_infer_bf16 exported_infer_int8` times the export at oneDNN's CPU precisions too
(not run by default; int8 calibrated on the timed batch), each against the reference's eager fp32 model.

Where a GPU exists, everything runs on it, train_step_amp adds a training step under auto_cast (AMP_DTYPE), and
the reference runs on CUDA (ratios are printed only when both sides ran on the same kind of device).

Each figure is the median images/s over `-repeats` timed runs after warmup, measured in its own subprocess so
that its peak memory (max RSS on CPU, max allocated on GPU) is its own; `-rounds R` runs R such processes per
phase, ours and the reference in turn, and gives the medians over rounds and the median of the pairs' ratios.
latency_b1 runs one image at a time (ms per image = 1000 / img/s). Threads default to all cores (paddle would
otherwise use one). The reference runs through tools/benchmark_reference.py under PIT_REFERENCE_PYTHON (or this
python, if it has torch and timm) with the same threads, batch, input size, drop path and optimizer (the config's
TRAIN.OPTIMIZER: torch's AdamW or SGD, timm's AdamP), one process per phase too; ratios are ours/reference.
"""
import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import quiet  # noqa: E402,F401  (before paddle, here and in each phase's process)

from timing import timed  # noqa: E402

PHASES = ['dygraph_infer', 'exported_infer', 'train_step', 'latency_b1', 'data_per_worker']
# data phases beside data_per_worker, each ours vs the reference: the same sample pipeline against timm's
# prefetcher mode (uint8 out, normalise and erasing left to the device), and JPEG decode alone (the limit)
DATA_PHASES = ['data_vs_prefetcher', 'data_decode']
# ours only, no images/s: the data pipeline stage by stage; ops and host reads of a plain-path training step
DETAIL_PHASES = ['data_breakdown', 'step_launches']
GPU_PHASES = ['train_step_amp']  # measured only where a GPU exists: a training step under auto_cast (AMP_DTYPE)
# exported inference at oneDNN's CPU precisions (where this CPU and paddle run them); the reference is timm eager
# fp32, as for exported_infer. int8 is calibrated on the timed random batch (speed does not depend on the scales).
CPU_PRECISION_PHASES = {'exported_infer_bf16': 'bf16', 'exported_infer_int8': 'int8'}


def gpu_available():
    import paddle
    return paddle.device.is_compiled_with_cuda() and paddle.device.cuda.device_count() > 0


def peak_memory_mb():
    import paddle
    if paddle.device.is_compiled_with_cuda() and paddle.get_device().startswith('gpu'):
        return paddle.device.cuda.max_memory_allocated() / 2 ** 20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


PHOTOS = ('chelsea', 'coffee', 'astronaut', 'rocket')  # scikit-image's photographs (skimage.data)


def sample_images(folder, count=48):
    """ImageNet-like JPEGs (500x375 and 375x500, quality 90) resized and cut from real photographs: scikit-image's
    (skimage.data) where it is installed, else the two scikit-learn ships; written once to folder."""
    from PIL import Image
    os.makedirs(folder, exist_ok=True)
    existing = sorted(f for f in os.listdir(folder) if f.endswith('.JPEG'))
    if len(existing) >= count:
        return [os.path.join(folder, f) for f in existing[:count]]
    try:
        import skimage.data
        photos = [getattr(skimage.data, name)() for name in PHOTOS]
    except ImportError:
        from sklearn.datasets import load_sample_images
        photos = load_sample_images().images  # two 427x640 photos
    paths = []
    for i in range(count):
        photo = Image.fromarray(photos[i % len(photos)]).convert('RGB')
        width, height = (375, 500) if i % 4 == 0 else (500, 375)
        scale = max(width / photo.width, height / photo.height) * (1 + 0.05 * (i % 3))
        big = photo.resize((round(photo.width * scale), round(photo.height * scale)), Image.BICUBIC)
        left, top = (i * 13) % (big.width - width + 1), (i * 7) % (big.height - height + 1)
        path = os.path.join(folder, f'img{i:03d}.JPEG')
        big.crop((left, top, left + width, top + height)).save(path, quality=90)
        paths.append(path)
    return paths


def image_folder(args):
    return args.images or os.path.join(args.tmp, 'images')


def data_phase(phase, config, args):
    """img/s of one core on the photos: the training sample (decode, transform, erasing boxes) or decode
    alone; with the bytes a sample carries from its worker."""
    import random
    from datasets import load_rgb
    from transforms import build_transforms
    random.seed(0)
    transform = build_transforms(config, 'train')
    paths = sample_images(image_folder(args))
    state = {'i': 0, 'bytes': 0}

    def load_one():
        img = load_rgb(paths[state['i'] % len(paths)])
        if phase != 'data_decode':
            pixels, boxes = transform(img)
            state['bytes'] = pixels.nbytes + 16 * len(boxes)
        state['i'] += 1
    rate, rates = timed(load_one, 1, args.repeats)
    figures = {'img_per_s': rate, 'runs': rates, 'threads': 1}
    if phase != 'data_decode':
        figures['bytes_per_sample'] = state['bytes']
    return figures


def data_breakdown(config, args):
    """ms per image of each stage of the training sample pipeline on the photos (one core), and of what the
    trainer does with a batch: the stages as the pipeline runs them (RandAugment: 2 ops drawn per image, each
    applied with p 0.5), each RandAugment op alone (applied, at the recipe's magnitude), and the float32 path
    this repo had before (ToTensor + Normalize in the worker, 4-byte batches) for comparison."""
    import random
    import numpy as np
    import paddle
    from augment import AugmentOp
    from datasets import collate_train, load_rgb
    from transforms import (NormalizeOnDevice, RandomHorizontalFlip, RandomResizedCrop, ToNormalizedArray,
                            build_erasing, build_transforms, to_array)
    random.seed(0)
    np.random.seed(0)
    size = config.DATA.IMAGE_SIZE
    paths = sample_images(image_folder(args))
    pipeline = build_transforms(config, 'train').transforms
    crop, flip, augment = (next(t for t in pipeline if isinstance(t, kind))
                           for kind in (RandomResizedCrop, RandomHorizontalFlip, type(pipeline[2])))
    images = [load_rgb(p) for p in paths]
    crops = [crop(img) for img in images]
    pixels = [to_array(c) for c in crops]
    erasing = build_erasing(config)
    batch = [(p, 0, 0, erasing.boxes(size, size)) for p in pixels] * (args.batch_size // len(pixels) + 1)
    batch = batch[:args.batch_size]
    collated = collate_train(batch)
    on_device = [paddle.to_tensor(collated[0]), collated[3]]
    normalize = NormalizeOnDevice(config.DATA.IMAGENET_MEAN, config.DATA.IMAGENET_STD)
    to_float = ToNormalizedArray(config.DATA.IMAGENET_MEAN, config.DATA.IMAGENET_STD)
    floats = [to_float(c) for c in crops]

    def each(items, fn):
        state = {'i': 0}

        def call():
            fn(items[state['i'] % len(items)])
            state['i'] += 1
        return call
    stages = {
        'decode (PIL, to RGB)': (each(paths, load_rgb), 1),
        'RandomResizedCrop (bicubic)': (each(images, crop), 1),
        'horizontal flip': (each(crops, flip), 1),
        'RandAugment as drawn': (each(crops, augment), 1),
        'to uint8 array': (each(crops, to_array), 1),
        'erasing boxes (draw)': (each(pixels, erasing), 1),
        f'collate uint8, batch {args.batch_size}': (lambda: collate_train(batch), args.batch_size),
        'worker -> trainer copy uint8 (memcpy of the batch)': (lambda: collated[0].copy(), args.batch_size),
        f'trainer: normalise + erase the batch ({paddle.get_device()})':
            (lambda: erasing.erase(normalize(on_device[0]), on_device[1]).numpy(), args.batch_size),
        'before: ToTensor + Normalize (float32, in the worker)': (each(crops, to_float), 1),
        f'before: collate float32, batch {args.batch_size}': (lambda: np.stack(floats * (args.batch_size // len(floats) + 1))[:args.batch_size], args.batch_size),
    }
    hparams = {'translate_const': int(size * 0.45), 'interpolation': config.DATA.INTERPOLATION, 'magnitude_std': 0.5,
               'img_mean': tuple(min(255, round(255 * m)) for m in config.DATA.IMAGENET_MEAN)}
    for op in augment.ops:
        applied = AugmentOp(op.name, 1.0, op.magnitude, hparams)
        stages[f'  RandAugment op {op.name} (applied)'] = (each(crops, applied), 1)
    result = {}
    for name, (fn, images_per_call) in stages.items():
        rate, _ = timed(fn, images_per_call, max(1, args.repeats // 2), min_seconds=0.5)
        result[name] = 1000.0 / rate
    return {'ms_per_image': result, 'threads': 1,
            'bytes_per_sample': {'uint8 (now)': int(pixels[0].nbytes), 'float32 (before)': int(floats[0].nbytes)}}


def step_launches(config, args):
    """Paddle ops per optimizer step (the optimizer and the EMA update, on the plain path that GPU runs take:
    CPU_KERNELS False) counted by paddle.profiler, and host reads (Tensor.numpy/item, which float(), int() and
    bool() go through) per training step of engine.train_one_epoch with the recipe's mixup and loss, between
    report steps and at them."""
    import numpy as np
    import paddle
    from paddle.profiler import Profiler, ProfilerTarget
    from paddle.profiler.profiler_statistic import StatisticData
    from engine import TrainState, train_one_epoch
    from losses import build_criterion
    from mixup import build_mixup
    from model_ema import ModelEma
    from optim import build_lr_scheduler, build_optimizer
    from pit import build_pit
    model = build_pit(config)
    model.train()
    optimizer = build_optimizer(config, model, build_lr_scheduler(config, 1))
    ema = ModelEma(model, config.TRAIN.MODEL_EMA_DECAY)
    size, batch = config.DATA.IMAGE_SIZE, args.batch_size
    x = paddle.to_tensor(np.random.RandomState(0).rand(batch, 3, size, size).astype('float32'))
    y = paddle.to_tensor(np.arange(batch) % config.MODEL.NUM_CLASSES)

    def backward():
        out = model(x)
        paddle.nn.functional.cross_entropy(out[0] if isinstance(out, tuple) else out, y).backward()
    for _ in range(2):  # the accumulators, the groups, the EMA's scratch exist after the first step
        backward()
        optimizer.step()
        optimizer.clear_grad()
        ema.update(model)
    backward()
    profiler = Profiler(targets=[ProfilerTarget.CPU], on_trace_ready=lambda prof: None)
    profiler.start()
    optimizer.step()
    ema.update(model)
    profiler.stop()
    optimizer.clear_grad()
    items = StatisticData(profiler.profiler_result.get_data(), profiler.profiler_result.get_extra_info()
                          ).event_summary.items
    ops = {name: item.call for name, item in items.items()}
    steps, report = 6, 3
    reads = []
    originals = {name: getattr(paddle.Tensor, name) for name in ('numpy', 'item')}
    for name, original in originals.items():
        setattr(paddle.Tensor, name, lambda self, *a, _f=original, **k: (reads.append(1), _f(self, *a, **k))[1])
    try:
        trained = config.clone()
        trained.defrost()
        trained.REPORT_FREQ = report
        trained.freeze()
        mixup = build_mixup(trained)
        criterion = build_criterion(trained, None, mixup_active=mixup is not None)
        scaler = paddle.amp.GradScaler(enable=False)
        state = TrainState(model, optimizer, None, scaler, {'enable': False}, ema)
        per_step = []
        train_one_epoch(state, criterion, [(x, y, paddle.zeros([batch], 'int64'))] * steps, 0, trained, mixup,
                        stop=lambda: per_step.append(len(reads)) or False)
    finally:
        for name, original in originals.items():
            setattr(paddle.Tensor, name, original)
    between = [b - a for a, b in zip(per_step, per_step[1:])]
    return {'ops_per_optimizer_step': sum(ops.values()), 'params': len(optimizer._parameter_list),
            'ops_by_name': dict(sorted(ops.items(), key=lambda kv: -kv[1])[:12]),
            'host_reads_per_step_between_reports': [d for i, d in enumerate(between) if (i + 2) % report],
            'host_reads_per_epoch_of_6_steps_report_every_3': len(reads)}


def run_phase(phase, args):
    """Measure one phase in this process; returns a dict of figures."""
    import numpy as np
    import paddle
    from config import build_config
    from pit import build_pit
    from cpu_kernels import configure_cpu
    threads = args.threads if gpu_available() else configure_cpu(args.threads)
    config = build_config(args.cfg, args.opts + ['DATA.BATCH_SIZE', str(args.batch_size)], world_size=1)
    if phase == 'step_launches':  # the plain path GPU runs take: Paddle's ops, AdamPGroups, merged EMA update
        config = build_config(args.cfg, args.opts + ['DATA.BATCH_SIZE', str(args.batch_size), 'CPU_KERNELS', 'False'],
                              world_size=1)
    size, batch = config.DATA.IMAGE_SIZE, 1 if phase == 'latency_b1' else args.batch_size
    paddle.seed(0)
    if phase in ['data_per_worker'] + DATA_PHASES:
        return data_phase(phase, config, args)
    if phase == 'data_breakdown':
        return data_breakdown(config, args)
    if phase == 'step_launches':
        return step_launches(config, args)
    model = build_pit(config)
    x = paddle.to_tensor(np.random.RandomState(0).rand(batch, 3, size, size).astype('float32'))
    if phase in ('dygraph_infer', 'latency_b1'):
        model.eval()

        def infer():
            with paddle.no_grad():
                model(x).numpy()
        rate, rates = timed(infer, batch, args.repeats)
    elif phase == 'exported_infer' or phase in CPU_PRECISION_PHASES:
        from export import export_inference_model
        from inference import INPUT_NAME, create_predictor, run_predictor
        from quantize import quantize_export
        precision = CPU_PRECISION_PHASES.get(phase, 'fp32')
        prefix = export_inference_model(model, size, os.path.join(args.tmp, phase, 'inference'),
                                        legacy_program=precision == 'int8')
        if precision == 'int8':
            quantize_export(prefix, x.numpy(), INPUT_NAME)
        on_gpu = paddle.get_device().startswith('gpu')
        predictor = create_predictor(prefix, device='cpu' if precision != 'fp32' or not on_gpu else 'gpu',
                                     precision=precision, threads=threads, batch=batch, image_size=size)
        xs = x.numpy()
        rate, rates = timed(lambda: run_predictor(predictor, xs), batch, args.repeats)
    else:
        from optim import build_lr_scheduler, build_optimizer
        import paddle.nn.functional as F
        model.train()
        optimizer = build_optimizer(config, model, build_lr_scheduler(config, 1))
        y = paddle.to_tensor(np.arange(batch) % config.MODEL.NUM_CLASSES)
        use_amp = phase == 'train_step_amp'
        scaler = paddle.amp.GradScaler(enable=use_amp and config.AMP_DTYPE == 'float16', init_loss_scaling=2.0 ** 16)

        def step():
            with paddle.amp.auto_cast(enable=use_amp, dtype=config.AMP_DTYPE, level='O1'):
                out = model(x)
                loss = F.cross_entropy(out[0] if isinstance(out, tuple) else out, y)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            optimizer.clear_grad()
            float(loss)
        rate, rates = timed(step, batch, args.repeats)
    import cpu_kernels
    return {'img_per_s': rate, 'runs': rates, 'threads': threads, 'cpu_kernels': cpu_kernels.status()}


def run_reference(args, variant, phase):
    python = os.environ.get('PIT_REFERENCE_PYTHON', sys.executable)
    script = os.path.join(ROOT, 'tools', 'benchmark_reference.py')
    cmd = [python, script, '-model', variant, '-batch_size', str(args.batch_size), '-threads', str(args.threads),
           '-repeats', str(args.repeats), '-image_size', str(args.image_size), '-tmp', args.tmp,
           '-amp_dtype', args.amp_dtype, '-drop_path', str(args.drop_path), '-phases', phase,
           '-optimizer', json.dumps(args.optimizer)] + (['-images', args.images] if args.images else [])
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        return None, out.stderr.strip().splitlines()[-1] if out.stderr.strip() else 'failed'
    return json.loads(out.stdout.strip().splitlines()[-1]), None


def summary(runs):
    """One phase's figures over rounds: the median img/s and peak, and each round's figures under 'rounds'."""
    figures = dict(runs[-1])
    figures.update(img_per_s=statistics.median(r['img_per_s'] for r in runs),
                   peak_mb=statistics.median(r['peak_mb'] for r in runs), rounds=runs)
    return figures


def run_detail(cmd, phase):
    """Run a phase of DETAIL_PHASES once (ours only) and print its figures."""
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        print(f'  {phase}: failed: {out.stderr.strip().splitlines()[-1]}')
        return None
    figures = json.loads(out.stdout.strip().splitlines()[-1])
    print(f'  {phase}:')
    for line in detail_lines(phase, figures):
        print(f'    {line}')
    return figures


def detail_lines(phase, figures):
    """The lines a DETAIL_PHASES result prints as."""
    if phase == 'data_breakdown':
        return ([f"{ms:7.3f} ms/img  {name}" for name, ms in figures['ms_per_image'].items()] +
                [f"bytes per sample: {figures['bytes_per_sample']}"])
    return [f"ops per optimizer step (AdamP + EMA, plain path): {figures['ops_per_optimizer_step']} for "
            f"{figures['params']} parameters; most called: {figures['ops_by_name']}",
            f"host reads per training step between report steps: {figures['host_reads_per_step_between_reports']}; "
            f"in an epoch of 6 steps reporting every 3: {figures['host_reads_per_epoch_of_6_steps_report_every_3']}"]


def ratio(ours, ref, key):
    return f"{ours[key] / ref[key]:.2f}x" if ours.get(key) and ref.get(key) else '-'


def markdown(result):
    lines = [f"| {result['model']} batch {result['batch_size']}, {result['threads']} threads | ours img/s | "
             f"ours peak MB | reference img/s | reference peak MB | speed ours / reference | "
             f"peak ours / reference |", '|---|---|---|---|---|---|---|']
    nan = float('nan')
    for phase in [p for p in result['phases'] if p not in DETAIL_PHASES]:  # a failed phase: a row of nan
        ours = result['ours'].get(phase, {})
        ref = (result.get('reference') or {}).get(phase, {})
        pairs = result.get('pair_ratios', {}).get(phase)  # the median of the pairs' ratios, where pairs ran
        speed, peak = ((f"{pairs['img_per_s']:.2f}x", f"{pairs['peak_mb']:.2f}x") if pairs else
                       (ratio(ours, ref, 'img_per_s'), ratio(ours, ref, 'peak_mb')))
        lines.append(f"| {phase} | {ours.get('img_per_s', nan):.1f} | {ours.get('peak_mb', nan):.0f} | "
                     f"{ref.get('img_per_s', nan):.1f} | {ref.get('peak_mb', nan):.0f} | {speed} | {peak} |")
    for phase in DETAIL_PHASES:
        if result['ours'].get(phase):
            lines += ['', f'{phase}:'] + [f'- {line}' for line in detail_lines(phase, result['ours'][phase])]
    return '\n'.join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('-cfg', required=True)
    parser.add_argument('-batch_size', type=int, default=32)
    parser.add_argument('-threads', type=int, default=0, help='0: all cores')
    parser.add_argument('-repeats', type=int, default=5)
    parser.add_argument('-rounds', type=int, default=1,
                        help='alternate ours / the reference this many times per phase (processes in turn); the '
                             'ratio is the median of the pairs')
    parser.add_argument('-phases', nargs='+', default=None,
                        choices=PHASES + DATA_PHASES + DETAIL_PHASES + GPU_PHASES + list(CPU_PRECISION_PHASES),
                        help='default: all but exported_infer_bf16/int8 (train_step_amp only where a GPU exists)')
    parser.add_argument('-images', default=None,
                        help='a folder of JPEGs for the data phases (default: photos written to a temporary folder)')
    parser.add_argument('-json', default=None, help='also write the figures here')
    parser.add_argument('-markdown', action='store_true', help='print a markdown table')
    parser.add_argument('-no_reference', action='store_true')
    parser.add_argument('-opts', nargs='+', default=[], help='config overrides: KEY VALUE ...')
    parser.add_argument('-phase', default=None, help=argparse.SUPPRESS)  # internal: measure one phase
    parser.add_argument('-tmp', default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.threads = args.threads or os.cpu_count() or 1
    if args.phase:
        figures = run_phase(args.phase, args)
        figures['peak_mb'] = peak_memory_mb()
        print(json.dumps(figures))
        return
    import paddle
    from config import build_config
    from complexity import count_macs, count_params
    on_gpu = gpu_available()
    if args.phases is None:
        args.phases = PHASES + DATA_PHASES + DETAIL_PHASES + (GPU_PHASES if on_gpu else [])
    from pit import build_pit
    config = build_config(args.cfg, args.opts)
    args.image_size, args.amp_dtype = config.DATA.IMAGE_SIZE, config.AMP_DTYPE
    args.drop_path = config.MODEL.DROP_PATH
    opt = config.TRAIN.OPTIMIZER  # the reference's training step runs the same optimizer, same settings
    args.optimizer = dict(name=opt.NAME, lr=config.TRAIN.BASE_LR, weight_decay=config.TRAIN.WEIGHT_DECAY,
                          betas=list(opt.BETAS), eps=opt.EPS, delta=opt.DELTA, wd_ratio=opt.WD_RATIO,
                          nesterov=opt.NESTEROV, momentum=opt.MOMENTUM)
    model = build_pit(config)
    variant = config.MODEL.NAME
    result = {'model': variant, 'batch_size': args.batch_size, 'image_size': args.image_size,
              'threads': args.threads, 'params': count_params(model),
              'gmacs': count_macs(model, args.image_size)['total'] / 1e9, 'paddle': paddle.__version__,
              'machine': f'{platform.machine()}, {os.cpu_count()} cores, {platform.processor() or "cpu"}',
              'device': 'gpu' if on_gpu else 'cpu', 'date': time.strftime('%Y-%m-%d'),
              'optimizer': args.optimizer['name'], 'phases': args.phases, 'ours': {}}
    print(f"{variant}: {result['params'] / 1e6:.2f}M params, {result['gmacs']:.2f} GMACs, batch {args.batch_size}, "
          f"{args.threads} threads, training step with {args.optimizer['name']}")
    reference_error = None if not args.no_reference else 'not asked for'
    result['reference'] = {}
    with tempfile.TemporaryDirectory() as tmp:
        args.tmp = tmp
        # Each phase: ours, then the reference right after it, so that both see the same load on a shared machine;
        # with -rounds R, R such pairs in turn, and the ratio is the median of the pairs' ratios.
        for phase in args.phases:
            cmd = [sys.executable, os.path.abspath(__file__), '-cfg', args.cfg, '-batch_size', str(args.batch_size),
                   '-threads', str(args.threads), '-repeats', str(args.repeats), '-phase', phase, '-tmp', tmp]
            cmd += ['-images', args.images] if args.images else []
            cmd += ['-opts'] + args.opts if args.opts else []
            if phase in DETAIL_PHASES:
                result['ours'][phase] = run_detail(cmd, phase)
                continue
            ours_runs, ref_runs = [], []
            for round_ in range(args.rounds):
                out = subprocess.run(cmd, capture_output=True, text=True)
                if out.returncode != 0:
                    print(f'  {phase}: failed: {out.stderr.strip().splitlines()[-1]}')
                    break
                ours_runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
                label = f'{phase} {round_ + 1}/{args.rounds}' if args.rounds > 1 else phase
                print(f"  {label:16s} {ours_runs[-1]['img_per_s']:8.1f} img/s  peak {ours_runs[-1]['peak_mb']:.0f} MB")
                if reference_error:
                    continue
                reference, reference_error = run_reference(args, variant, phase)
                if reference is None:
                    print(f'  reference: not run ({reference_error})')
                    continue
                result['torch'] = reference.pop('versions', None)
                ref_device = result['torch'].get('device', 'cpu')
                if ref_device != {'gpu': 'cuda', 'cpu': 'cpu'}[result['device']]:
                    reference_error = f"reference ran on {ref_device}, ours on {result['device']}: no ratios"
                    print(f'  {reference_error}')
                    continue
                ref = reference.get(phase)
                if ref:
                    ref['peak_mb'] = reference.get('peak_mb')
                    ref_runs.append(ref)
                    print(f"  {label:16s} reference {ref['img_per_s']:8.1f} img/s  peak {ref['peak_mb']:.0f} MB  "
                          f"ours/reference {ratio(ours_runs[-1], ref, 'img_per_s')}, "
                          f"peak {ratio(ours_runs[-1], ref, 'peak_mb')}")
            if ours_runs:
                result['ours'][phase] = summary(ours_runs)
            if ref_runs:
                result['reference'][phase] = summary(ref_runs)
                pairs = list(zip(ours_runs, ref_runs))
                result.setdefault('pair_ratios', {})[phase] = {
                    key: statistics.median(o[key] / r[key] for o, r in pairs) for key in ('img_per_s', 'peak_mb')}
                if args.rounds > 1:
                    med = result['pair_ratios'][phase]
                    print(f"  {phase:16s} median of {len(pairs)} pairs: ours/reference {med['img_per_s']:.2f}x, "
                          f"peak {med['peak_mb']:.2f}x")
    if args.markdown:
        print(markdown(result))
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, 'w') as f:
            json.dump(result, f, indent=2)


if __name__ == '__main__':
    main()
