"""Speed and accuracy of a PiT export on the CPU at each precision, against onnxruntime on its ONNX copy.

    python tools/export_model.py -pretrained output/quickstart/checkpoint-best -save_path output/q/inference -onnx
    python tools/export_model.py -pretrained output/quickstart/checkpoint-best -save_path output/q8/inference \\
        -precision int8 -calib_data data/quickstart/train
    python tools/benchmark_deploy.py -infer_model output/q/inference -int8_model output/q8/inference \\
        -data_path data/quickstart/val

Runs: paddle.inference fp32 and bf16 (oneDNN; bf16 where this CPU and Paddle run it) of -infer_model,
int8 of -int8_model, and onnxruntime (CPU, fp32) of -onnx_model (default: -infer_model's .onnx when it exists).
For the images of -data_path (class folders: the label is the folder's sorted index; at most -images, spread
evenly), through the export's own preprocessing: top-1 of each run and its top-1 agreement with paddle fp32.
Then batch -batch_size throughput (img/s) and batch-1 latency (ms): `-rounds` rounds, each timing every run in
turn for about -seconds (after a warm-up), so that a machine shared with other work slows all runs alike; the
table gives the medians over rounds. Threads: -threads (default all cores), the same for every run.
"""
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import quiet  # noqa: E402,F401  (before paddle)

import numpy as np  # noqa: E402

from cli import argument_parser, run_command  # noqa: E402
from config import build_config  # noqa: E402
from datasets import IMAGE_EXTENSIONS, load_rgb  # noqa: E402
from inference import (CPU_PRECISION_FLAGS, ExportError, cpu_flags, create_onnx_session, create_predictor,  # noqa: E402
                       read_export_description, run_onnx, run_predictor)
from transforms import build_transforms  # noqa: E402


def get_arguments():
    return argument_parser(__doc__, flags=(), extra={
        '-infer_model': dict(required=True, help='fp32 export prefix (tools/export_model.py)'),
        '-int8_model': dict(default=None, help='int8 export prefix (export_model.py -precision int8)'),
        '-onnx_model': dict(default=None, help="ONNX file (default: -infer_model's .onnx when it exists)"),
        '-data_path': dict(required=True, help='labelled images: one folder per class'),
        '-images': dict(type=int, default=512, help='at most this many images of -data_path'),
        '-batch_size': dict(type=int, default=32, help='batch of the throughput figure'),
        '-rounds': dict(type=int, default=5, help='timing rounds (each times every run in turn)'),
        '-seconds': dict(type=float, default=3.0, help='about how long each run is timed per round and batch'),
        '-threads': dict(type=int, default=0, help='CPU threads of every run (0: all cores)'),
    }).parse_args()


def labelled_images(folder, count, transform):
    """(float32 [N, 3, S, S], labels [N]) of up to count images of class folders, spread evenly."""
    files = []
    for label, name in enumerate(sorted(d.name for d in os.scandir(folder) if d.is_dir())):
        for root, dirs, names in os.walk(os.path.join(folder, name)):
            dirs.sort()
            files += [(os.path.join(root, f), label) for f in sorted(names) if f.lower().endswith(IMAGE_EXTENSIONS)]
    if not files:
        raise ExportError(f"-data_path '{folder}' holds no class folders of images")
    files = files[::max(1, len(files) // count)][:count]
    return (np.stack([transform(load_rgb(path)) for path, _ in files]).astype('float32'),
            np.array([label for _, label in files]))


def runs_of(args):
    """{name: images -> logits} of every run args ask for and this machine can run."""
    threads = args.threads or os.cpu_count()
    runs = {}

    def paddle_run(prefix, precision):
        predictor = create_predictor(prefix, device='cpu', precision=precision, threads=threads,
                                     batch=args.batch_size)
        return lambda x: run_predictor(predictor, x)
    runs['paddle fp32'] = paddle_run(args.infer_model, 'fp32')
    if cpu_flags() & set(CPU_PRECISION_FLAGS['bf16']):
        try:
            runs['paddle bf16'] = paddle_run(args.infer_model, 'bf16')
        except ExportError as e:  # what this Paddle cannot run in bf16 (inference.predictor_settings)
            print(f'paddle bf16 skipped: {e}')
    if args.int8_model:
        runs['paddle int8'] = paddle_run(args.int8_model, 'int8')
    onnx = args.onnx_model or (args.infer_model + '.onnx' if os.path.isfile(args.infer_model + '.onnx') else None)
    if onnx:
        session = create_onnx_session(onnx, threads=threads)
        runs['onnxruntime fp32'] = lambda x: run_onnx(session, x)
    return runs


def accuracy(runs, images, labels, batch):
    """{name: (top-1, top-1 agreement with paddle fp32)} over images in batches."""
    predictions = {name: np.concatenate([run(images[i:i + batch]) for i in range(0, len(images), batch)]).argmax(1)
                   for name, run in runs.items()}
    reference = predictions['paddle fp32']
    return {name: (float((p == labels).mean()), float((p == reference).mean())) for name, p in predictions.items()}


def timed_rate(run, batch, seconds):
    """Images per second of run on batch over about `seconds` (after two warm-up calls)."""
    run(batch)
    run(batch)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        run(batch)
        count += 1
    return count * len(batch) / (time.perf_counter() - start)


def speed(runs, images, batch_size, rounds, seconds):
    """{name: (median batch throughput img/s, median batch-1 latency ms)}, every run timed in turn each round."""
    batch = np.ascontiguousarray(np.resize(images, (batch_size,) + images.shape[1:]))
    rates = {name: ([], []) for name in runs}
    for round_ in range(rounds):
        order = list(runs) if round_ % 2 == 0 else list(reversed(runs))  # neither side always goes first
        for name in order:
            rates[name][0].append(timed_rate(runs[name], batch, seconds))
            rates[name][1].append(1000 / timed_rate(runs[name], batch[:1], seconds))
    return {name: (statistics.median(t), statistics.median(lat)) for name, (t, lat) in rates.items()}


def main():
    args = get_arguments()
    described, _, _ = read_export_description(args.infer_model)
    config = build_config(described=described, described_by=args.infer_model + '.yml', world_size=1)
    images, labels = labelled_images(args.data_path, args.images, build_transforms(config, 'val'))
    runs = runs_of(args)
    top1 = accuracy(runs, images, labels, args.batch_size)
    figures = speed(runs, images, args.batch_size, args.rounds, args.seconds)
    fp32 = figures['paddle fp32'][0]
    print(f'{args.infer_model} ({config.DATA.IMAGE_SIZE}px): {len(images)} images of {args.data_path}, '
          f'{args.threads or os.cpu_count()} threads, {args.rounds} rounds')
    print(f'| run | top-1 | agrees with fp32 | batch {args.batch_size} img/s | vs paddle fp32 | batch 1 ms |')
    print('|---|---|---|---|---|---|')
    for name, (rate, latency) in figures.items():
        accuracy_, agree = top1[name]
        print(f'| {name} | {100 * accuracy_:.1f}% | {100 * agree:.1f}% | {rate:.1f} | {rate / fp32:.2f}x | '
              f'{latency:.2f} |')


if __name__ == '__main__':
    run_command(main)
