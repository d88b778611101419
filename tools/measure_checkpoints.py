"""Time, peak memory and bytes of a checkpoint save and of -resume auto, for one config (Linux).

    python tools/measure_checkpoints.py -cfg configs/pit_b.yaml -folder /tmp/ckpt-measure -repeats 3 [-json runs.json]

It builds the config's model, EMA and optimizer and takes one training step on a random image (so the optimizer
holds its moments), then measures, each time in a fresh process:
- save: a new best epoch saved with SAVE_FREQ 1 (numbered file, latest and best) into an empty folder, as rank 0
  saves it;
- resume: what -resume auto reads in a folder of five files (epochs 1-5 saved, the best the first, three numbered
  files kept: latest, epochs 5, 4, 3, best): checkpoint.find_resume, then checkpoint.repair_best where the code
  has it.
Each line gives the medians over the repeats of the seconds, the peak RSS above the RSS before the step (Linux
clear_refs), the bytes read and written (/proc/self/io rchar, wchar: page-cache hits included) and the disk the
folder's distinct files take. It calls only checkpoint.save, find_resume and repair_best, so it measures any
version of checkpoint.py (run a copy of it from another checkout to measure that one).
"""
import argparse
import gc
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import quiet  # noqa: E402,F401  (before paddle)

MIB = 2 ** 20
CLASSES = [str(i) for i in range(1000)]
FIELDS = (('seconds', 's', 1), ('peak_rss', 'MiB', MIB), ('read', 'MiB', MIB), ('written', 'MiB', MIB),
          ('disk', 'MiB', MIB))


def build_state(cfg, opts):
    """(config, TrainState) of cfg with SAVE_FREQ 1 and KEEP_CHECKPOINTS 3, after one AdamP/AdamW step."""
    import paddle
    from config import build_config
    from engine import TrainState
    from model_ema import ModelEma
    from optim import build_lr_scheduler, build_optimizer
    from pit import build_pit
    config = build_config(cfg, ['SAVE_FREQ', '1', 'KEEP_CHECKPOINTS', '3', 'CPU_KERNELS', 'False', *opts],
                          world_size=1)
    model = build_pit(config)
    scheduler = build_lr_scheduler(config, steps_per_epoch=1)
    optimizer = build_optimizer(config, model, scheduler)
    size = config.DATA.IMAGE_SIZE
    model(paddle.randn([1, 3, size, size])).mean().backward()
    optimizer.step()
    optimizer.clear_grad()
    state = TrainState(model, optimizer, scheduler, paddle.amp.GradScaler(enable=False), {'enable': False},
                       ModelEma(model, config.TRAIN.MODEL_EMA_DECAY))
    return config, state


def _proc(name, key):
    with open(f'/proc/self/{name}') as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key))


def measured(step):
    """{'seconds', 'peak_rss', 'read', 'written'} of step() in this process (bytes; peak RSS above the RSS before
    it)."""
    gc.collect()
    with open('/proc/self/clear_refs', 'w') as f:
        f.write('5')  # the peak RSS (VmHWM) starts again from the RSS now
    rss, read, written = _proc('status', 'VmRSS:') * 1024, _proc('io', 'rchar:'), _proc('io', 'wchar:')
    start = time.perf_counter()
    step()
    return {'seconds': time.perf_counter() - start, 'peak_rss': _proc('status', 'VmHWM:') * 1024 - rss,
            'read': _proc('io', 'rchar:') - read, 'written': _proc('io', 'wchar:') - written}


def disk_use(folder):
    """Bytes of the distinct files in folder (hard links counted once)."""
    files = {}
    for name in os.listdir(folder):
        stat = os.stat(os.path.join(folder, name))
        files[stat.st_ino] = stat.st_size
    return sum(files.values())


def save_epochs(config, state, folder, epochs):
    import checkpoint
    for epoch in epochs:
        state.epoch = epoch
        if epoch == 1:
            state.best_acc1, state.best_epoch = 0.5, 1
        checkpoint.save(folder, state, config, CLASSES, is_best=epoch == 1)


def child(args):
    """One measurement (args.child: save or resume) or the resume folder's preparation; prints a JSON line."""
    import checkpoint
    if args.child == 'resume':
        def resume():
            path, ckpt = checkpoint.find_resume(args.folder)
            if hasattr(checkpoint, 'repair_best'):
                checkpoint.repair_best(args.folder, path, ckpt)
        result = measured(resume)
    else:
        config, state = build_state(args.cfg, args.opts)
        os.makedirs(args.folder)
        if args.child == 'prepare':
            save_epochs(config, state, args.folder, range(1, 6))
            return
        result = measured(lambda: save_epochs(config, state, args.folder, [1]))
    print(json.dumps(dict(result, disk=disk_use(args.folder))))


def run_child(args, kind, folder):
    cmd = [sys.executable, os.path.abspath(__file__), '-cfg', args.cfg, '-folder', folder, '-child', kind,
           '-opts', *args.opts]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f'error: the {kind} process failed: {done.stderr.strip()[-2000:]}')
    return json.loads(done.stdout.strip().splitlines()[-1]) if kind != 'prepare' else None


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('-cfg', required=True)
    parser.add_argument('-folder', required=True, help='a folder to create; removed at the end')
    parser.add_argument('-repeats', type=int, default=3)
    parser.add_argument('-json', help='also write every run (bytes, seconds) to this file')
    parser.add_argument('-child', choices=['prepare', 'save', 'resume'], help=argparse.SUPPRESS)
    parser.add_argument('-opts', nargs='*', default=[])
    args = parser.parse_args()
    if args.child:
        return child(args)
    if os.path.exists(args.folder):
        sys.exit(f"error: -folder '{args.folder}' exists; give a new one")
    os.makedirs(args.folder)
    try:
        resume_folder = os.path.join(args.folder, 'resume')
        run_child(args, 'prepare', resume_folder)
        runs = {'save': [], 'resume': []}
        for repeat in range(args.repeats):
            runs['save'].append(run_child(args, 'save', os.path.join(args.folder, f'save{repeat}')))
            shutil.rmtree(os.path.join(args.folder, f'save{repeat}'))
            runs['resume'].append(run_child(args, 'resume', resume_folder))
    finally:
        shutil.rmtree(args.folder)
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(runs, f, indent=1)
    print(f'{args.cfg}, medians of {args.repeats} (lowest-highest):')
    for kind, results in runs.items():
        cells = []
        for name, unit, scale in FIELDS:
            values = [r[name] / scale for r in results]
            cells.append(f'{name} {statistics.median(values):,.1f} {unit} ({min(values):,.1f}-{max(values):,.1f})')
        print(f'{kind}: ' + ', '.join(cells))


if __name__ == '__main__':
    main()
