"""Preflight: check the machine, the data and the config before a long run, in about a minute.

    python tools/check_setup.py -cfg configs/pit_ti.yaml -data_path /dataset/imagenet -ngpus 4 -amp

It takes the training command's flags (-cfg, -data_path, -batch_size, -save_path, -ngpus, -amp, -opts ...) and
reports, section by section: Paddle's version and build (CUDA, cuDNN, NCCL), the devices it sees, the precision
the run would train in, /dev/shm against what the DataLoader workers need, free disk in SAVE against the
checkpoints the run keeps, an all-reduce across the processes (NCCL on GPU, GLOO on CPU), training steps of the
real config on random images (AMP as configured; the loss must be finite) and the DataLoader's speed on the real
data with the configured workers. It ends with a verdict and what to change. Nothing is written into SAVE.
Exit status: 0 ready (warnings allowed), 1 a check failed, 2 bad input (the config or flags).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import quiet  # noqa: E402,F401  (before paddle)

import functools  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import math  # noqa: E402
import multiprocessing  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import paddle  # noqa: E402
import paddle.distributed as dist  # noqa: E402

import gpu  # noqa: E402
from checkpoint import checkpoint_bytes, checkpoint_files  # noqa: E402
from cli import argument_parser, command_config, num_processes, run_command, setup_device, spawn, use_gpu  # noqa: E402
from compat import parse_version, unsupported_reason  # noqa: E402
from config import ConfigError, finalize_config  # noqa: E402
from datasets import (DatasetError, advised_workers, build_dataloader, build_dataset, num_workers,  # noqa: E402
                      worker_budget)
from engine import build_train_state, train_one_epoch  # noqa: E402
from losses import build_criterion  # noqa: E402
from mixup import build_mixup  # noqa: E402
from pit import build_model  # noqa: E402
from regnet import build_teacher  # noqa: E402

OK, WARN, FAIL = 'ok', 'warning', 'FAIL'
WARMUP_STEPS = 3  # steps before the timed ones (kernel selection, allocator, first all-reduce)
LOADER_WARMUP_BATCHES = 2  # batches before the timed ones (workers start, files reach the page cache)


class Report:
    """Sections of (status, text) lines printed as they are made, and the advice the verdict repeats."""

    def __init__(self):
        self.statuses, self.advice = [], []

    def section(self, title):
        print(f'\n== {title}', flush=True)

    def line(self, status, text, advice=None):
        self.statuses.append(status)
        print(f'  [{status}] {text}', flush=True)
        if advice:
            self.advice.append(advice)

    def verdict(self):
        """Print the verdict; returns the exit status (1 when a check failed)."""
        failed, warned = self.statuses.count(FAIL), self.statuses.count(WARN)
        print('\n== verdict', flush=True)
        if failed:
            print(f'  NOT READY: {failed} check(s) failed, {warned} warning(s)')
        elif warned:
            print(f'  READY, with {warned} warning(s)')
        else:
            print('  READY: every check passed')
        for advice in self.advice:
            print(f'  - {advice}')
        return 1 if failed else 0


# ---------------------------------------------------------------- the machine

def check_paddle(report):
    report.section('paddle')
    reason = unsupported_reason(paddle.__version__)
    report.line(FAIL if reason else OK, reason or f'paddle {paddle.__version__} (supported)',
                'install paddlepaddle(-gpu) 3.3.1, or 2.6.2' if reason else None)
    if paddle.device.is_compiled_with_cuda():
        nccl = getattr(paddle.version, 'nccl', lambda: 'unknown')()
        report.line(OK, f'built with CUDA {paddle.version.cuda()}, cuDNN {paddle.version.cudnn()}, NCCL {nccl}')
    else:
        report.line(OK, 'CPU build (no CUDA): training runs on the CPU, over GLOO with several processes')


def visible_gpus():
    """[(name, (major, minor) capability, total memory in bytes)] of the visible GPUs ([] without)."""
    if not paddle.device.is_compiled_with_cuda():
        return []
    gpus = []
    for index in range(paddle.device.cuda.device_count()):
        props = paddle.device.cuda.get_device_properties(index)
        gpus.append((props.name, (props.major, props.minor), props.total_memory))
    return gpus


def check_devices(report, config, nprocs, gpus):
    report.section('devices')
    report.line(OK, f'{os.cpu_count()} CPU cores')
    for index, (name, capability, memory) in enumerate(gpus):
        report.line(OK, f'gpu:{index} {name}, compute capability {capability[0]}.{capability[1]}, '
                        f'{memory / 2 ** 30:.1f} GiB')
    if config.DEVICE == 'gpu' and not gpus:
        report.line(FAIL, 'DEVICE gpu but no GPU is visible to paddle',
                    'install paddlepaddle-gpu for your CUDA, check CUDA_VISIBLE_DEVICES, or use -device cpu')
    elif gpus and nprocs > len(gpus):
        report.line(FAIL, f'{nprocs} processes asked (-ngpus) but {len(gpus)} GPU(s) visible',
                    f'use -ngpus {len(gpus)} or make the other GPUs visible')
    elif not gpus:
        report.line(WARN, 'no GPU visible: the run would train on the CPU (slow for ImageNet)')


def check_precision(report, config, gpus):
    """The precision the run trains in (gpu.amp_precision, as training decides it) and, on a GPU, the attention
    kernel and its activation memory per GPU against the GPU's memory."""
    report.section('precision and attention')
    capability = min(c for _, c, _ in gpus) if gpus else None
    cuda = parse_version(paddle.version.cuda()) if gpus else None
    try:
        precision, reason = gpu.amp_precision(config.AMP, config.AMP_DTYPE, 'gpu' if gpus else 'cpu', capability,
                                              cuda[0] if cuda else None)
    except ConfigError as e:
        report.line(FAIL, str(e), 'use float16 on this GPU: -opts AMP_DTYPE float16')
        return
    report.line(OK, f'{precision} ({reason})')
    if not gpus:
        return
    facts = gpu.DeviceFacts('gpu', gpus[0][0], capability, cuda[0] if cuda else None, parse_version(paddle.__version__))
    dropout = config.MODEL.ATTENTION_DROPOUT
    report.line(OK, gpu.attention_note(facts, precision, config.MODEL.TRANS.BASE_DIMS, dropout))
    kernel_of = functools.partial(_kernel_of, facts, precision, dropout)
    need = gpu.model_attention_bytes(config, config.DATA.BATCH_SIZE, precision, kernel_of)
    memory = min(m for _, _, m in gpus)
    text = (f'attention activations of a training step: {gpu.gigabytes(need)} per GPU at batch '
            f'{config.DATA.BATCH_SIZE}, of {gpu.gigabytes(memory)}')
    if need > memory / 2:
        report.line(WARN, text, 'likely out of GPU memory: paddle >= 3.3 (memory-efficient attention), a smaller '
                                'DATA.BATCH_SIZE with TRAIN.ACCUM_ITER, or -amp')
    else:
        report.line(OK, text)


def _kernel_of(facts, precision, dropout, head_dim):
    backend = gpu.attention_backend(facts.paddle, 'gpu', facts.capability, precision, head_dim, dropout)
    return gpu.attention_kernel(backend, facts.capability, precision, head_dim)


def check_shared_memory(report, config, nprocs):
    """/dev/shm against what the loaders of this node hold, decided as training decides it."""
    report.section('shared memory')
    need = gpu.shared_memory_need(config.DATA.BATCH_SIZE, config.DATA.IMAGE_SIZE,
                                  num_workers(config.DATA.NUM_WORKERS, processes=nprocs), nprocs)
    free = gpu.free_shared_memory()
    use, warning = gpu.shared_memory_decision(need, free, config.DATA.SHARED_MEMORY)
    if warning:
        report.line(WARN, warning, warning)
    elif not need or config.DATA.SHARED_MEMORY is False:
        report.line(OK, 'not used (no DataLoader workers, or DATA.SHARED_MEMORY False)')
    else:
        shown = 'not measurable here' if free is None else f'{gpu.gigabytes(free)} free'
        report.line(OK, f'/dev/shm: {shown}, the DataLoader workers of this node need about {gpu.gigabytes(need)}')


def check_disk(report, config, model):
    report.section('disk')
    folder = config.SAVE
    while not os.path.isdir(folder) and os.path.dirname(os.path.abspath(folder)) != os.path.abspath(folder):
        folder = os.path.dirname(os.path.abspath(folder))
    size = checkpoint_bytes(model, config)
    files = checkpoint_files(config)
    need = size * (files + 1)  # + the file of a save in progress
    free = shutil.disk_usage(folder).free
    text = (f"SAVE '{config.SAVE}': {free / 2 ** 30:,.1f} GiB free; a checkpoint is {size / 2 ** 20:,.0f} MiB, "
            f'up to {files} distinct files kept plus one being written: {need / 2 ** 30:,.2f} GiB')
    if not os.access(folder, os.W_OK):
        report.line(FAIL, f"'{folder}' is not writable", 'choose a writable -save_path')
    elif free < need:
        report.line(FAIL, text, f'free {gpu.gigabytes(need - free)} in {folder} or lower KEEP_CHECKPOINTS')
    else:
        report.line(OK, text)


# ---------------------------------------------------------------- the processes: all-reduce and training steps

def _process(args, nprocs, out_dir, steps):
    """Body of each process: join the group, time an all-reduce, run training steps; writes rank{r}.json."""
    rank = int(os.environ.get('PADDLE_TRAINER_ID', '0'))
    result = {}
    try:
        config, _ = command_config(args)
        setup_device(config)
        result['allreduce'] = time_allreduce(paddle.get_device().startswith('gpu'))
        result.update(time_training_steps(config, steps))
    except Exception as e:  # reported by the parent with its rank
        result['error'] = f'{type(e).__name__}: {" ".join(str(e).split())[:300]}'
    with open(os.path.join(out_dir, f'rank{rank}.json'), 'w') as f:
        json.dump(result, f)


def time_allreduce(on_gpu):
    """(seconds, correct) of an all-reduce of 64 MiB (GPU) or 4 MiB (CPU) of ones; one process: no collective."""
    world = dist.get_world_size() if dist.is_initialized() else 1
    tensor = paddle.ones([(16 if on_gpu else 1) * 2 ** 20], dtype='float32')
    if world == 1:
        return {'seconds': 0.0, 'correct': True, 'bytes': 0}
    dist.all_reduce(tensor)  # the first one sets up the communicator; every element is now `world`
    float(tensor[0])  # waits for it
    start = time.time()
    dist.all_reduce(tensor)
    correct = float(tensor[0]) == world * world  # reading the value waits for the all-reduce
    return {'seconds': time.time() - start, 'correct': correct, 'bytes': tensor.size * 4}


def time_training_steps(config, steps):
    """Loss and img/s (this process) of WARMUP_STEPS + steps training steps of config on random images, through
    the training loop itself (engine.train_one_epoch: AMP, scaler, mixup, EMA as configured)."""
    logging.getLogger('pit').setLevel(logging.WARNING)  # no progress lines from the loop
    model = build_model(config)
    state = build_train_state(config, model, WARMUP_STEPS + steps)
    mixup_fn = build_mixup(config)
    criterion = build_criterion(config, build_teacher(config), mixup_active=mixup_fn is not None)
    batch = _random_batch(config)
    train_one_epoch(state, criterion, [batch] * WARMUP_STEPS, 0, config, mixup_fn)
    # the timed pass is an epoch of its own: train_one_epoch continues a state from state.step (the batches a
    # stopped epoch did), which the warm-up pass left at WARMUP_STEPS
    state.step, state.progress = 0, None
    stats = train_one_epoch(state, criterion, [batch] * steps, 0, config, mixup_fn)
    return {'loss': stats['loss'], 'img_per_s': stats['images'] / max(stats['seconds'], 1e-9),
            'memory': paddle.device.cuda.max_memory_allocated() if paddle.get_device().startswith('gpu') else 0}


def _random_batch(config):
    size, batch = config.DATA.IMAGE_SIZE, config.DATA.BATCH_SIZE
    images = paddle.randn([batch, 3, size, size])
    labels = paddle.randint(0, config.MODEL.NUM_CLASSES, [batch], dtype='int64')
    return images, labels, paddle.zeros([batch], dtype='int64')


def run_processes(args, config, nprocs, steps, timeout):
    """[result dict per rank] of _process in nprocs processes (dist.spawn) or in this one (nprocs 1)."""
    with tempfile.TemporaryDirectory() as out_dir:
        if nprocs == 1:
            _process(args, 1, out_dir, steps)
        else:
            _spawn(args, config, nprocs, out_dir, steps, timeout)
        results = []
        for rank in range(nprocs):
            path = os.path.join(out_dir, f'rank{rank}.json')
            results.append(json.load(open(path)) if os.path.isfile(path) else
                           {'error': 'the process ended without a result (crashed or killed)'})
        return results


def _spawn(args, config, nprocs, out_dir, steps, timeout):
    """The processes of run_processes, killed when they take longer than timeout seconds (a hung collective)."""
    context = spawn(_process, (args, nprocs, out_dir, steps), nprocs, use_gpu(config))
    deadline = time.time() + timeout
    for process in context.processes:
        process.join(max(deadline - time.time(), 0))
    for process in context.processes:
        if process.is_alive():
            process.kill()
            process.join()


def check_processes(report, args, config, nprocs, steps, timeout):
    report.section(f'{nprocs} training process(es): all-reduce and {steps} steps of the config on random images')
    results = run_processes(args, config, nprocs, steps, timeout)
    for rank, result in enumerate(results):
        if 'error' in result:
            report.line(FAIL, f'process {rank}: {result["error"]}', 'fix the error above before a long run')
    if any('error' in r for r in results):
        return None
    reduce = results[0]['allreduce']
    if nprocs > 1:
        backend = 'NCCL' if paddle.get_device().startswith('gpu') else 'GLOO'
        rate = reduce['bytes'] * 2 * (nprocs - 1) / nprocs / max(reduce['seconds'], 1e-9)
        report.line(OK if all(r['allreduce']['correct'] for r in results) else FAIL,
                    f'all-reduce over {nprocs} processes ({backend}): {reduce["bytes"] / 2 ** 20:.0f} MiB in '
                    f'{reduce["seconds"] * 1000:.1f} ms, bus bandwidth {rate / 1e9:.2f} GB/s')
    losses = [r['loss'] for r in results]
    speed = sum(r['img_per_s'] for r in results)
    finite = all(math.isfinite(v) for v in losses)
    report.line(OK if finite else FAIL, f'loss {losses[0]:.4f} (rank 0), {"finite" if finite else "NOT finite"}; '
                f'model speed {speed:,.1f} img/s over {nprocs} process(es)',
                None if finite else 'the loss is not finite on random images: check AMP_DTYPE and the config')
    memory = max(r['memory'] for r in results)
    if memory:
        report.line(OK, f'peak GPU memory {memory / 2 ** 30:.1f} GiB per process at batch {config.DATA.BATCH_SIZE}')
    return speed / nprocs


def check_loader(report, config, batches, model_speed, nprocs):
    """DataLoader img/s of one process on the real training data, with the workers each of nprocs training
    processes would start, against the model's; more workers advised within the cores each process has."""
    workers = num_workers(config.DATA.NUM_WORKERS, processes=nprocs)
    report.section(f'data loader: {batches} batches of the real training data, {workers} workers '
                   f'(DATA.NUM_WORKERS {config.DATA.NUM_WORKERS})')
    try:
        speed = loader_speed(config, batches, workers)
    except (DatasetError, OSError) as e:
        report.line(FAIL, f"the training data under '{config.DATA.DATA_PATH}' cannot be loaded: "
                          f"{' '.join(str(e).split())}", 'fix DATA.DATA_PATH / -data_path')
        return
    except SystemError as e:
        if 'Blocking queue is killed' not in str(e):
            raise
        report.line(FAIL, 'a DataLoader worker died while loading (out of memory, or of /dev/shm)',
                    'give the machine more memory or shared memory, or lower DATA.NUM_WORKERS')
        return
    text = f'{speed:,.1f} img/s per process'
    if model_speed is None:
        report.line(OK, text)
    elif speed < model_speed:
        workers = advised_workers(workers, speed, model_speed, worker_budget(processes=nprocs))
        report.line(WARN, f'{text}: the loader feeds {speed:,.0f} img/s, the model takes {model_speed:,.0f}',
                    f'set DATA.NUM_WORKERS {workers} (the loader bounds the run at {speed / model_speed:.0%} of '
                    f'the model speed)')
    else:
        report.line(OK, f'{text}, the model takes {model_speed:,.1f}: the loader keeps up')


def loader_speed(config, batches, workers):
    """img/s of the training DataLoader of one process with `workers` workers over `batches` batches (after
    LOADER_WARMUP_BATCHES)."""
    config = config.clone()
    config.defrost()
    config.DATA.NUM_WORKERS = workers
    config.freeze()
    loader = build_dataloader(config, build_dataset(config, 'train'), 'train')
    loader.batch_sampler.set_epoch(0)
    if len(loader) <= LOADER_WARMUP_BATCHES:
        raise DatasetError(f'{len(loader)} training batches per process: too few to time the loader')
    count, start = 0, None
    for index, (images, _, _) in enumerate(loader):
        if index == LOADER_WARMUP_BATCHES:
            start = time.time()
        if index >= LOADER_WARMUP_BATCHES:
            count += images.shape[0]
        if index + 1 == LOADER_WARMUP_BATCHES + batches:
            break
    return count / max(time.time() - start, 1e-9)


def get_arguments():
    extra = {'-steps': dict(type=int, default=20, help='timed training steps (after 3 warm-up steps)'),
             '-batches': dict(type=int, default=10, help='timed DataLoader batches (after 2 warm-up batches)'),
             '-timeout': dict(type=int, default=600, help='seconds the training processes may take')}
    return argument_parser(__doc__, extra=extra).parse_args()


def main():
    args = get_arguments()
    config, _ = command_config(args)
    nprocs = num_processes(config)
    checked = finalize_config(config.clone(), nprocs)
    gpus = visible_gpus()
    report = Report()
    logging.getLogger('pit').setLevel(logging.ERROR)  # the sections say what the builders would log
    check_paddle(report)
    check_devices(report, checked, nprocs, gpus)
    check_precision(report, checked, gpus)
    check_shared_memory(report, checked, nprocs)
    check_disk(report, checked, build_model(checked))
    model_speed = check_processes(report, args, checked, nprocs, args.steps, args.timeout)
    check_loader(report, checked, args.batches, model_speed, nprocs)
    sys.exit(report.verdict())


if __name__ == '__main__':
    multiprocessing.freeze_support()
    run_command(main)
