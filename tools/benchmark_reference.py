"""Reference figures for tools/benchmark.py: timm's PiT in PyTorch (eager), and timm's train pipeline.

Run by tools/benchmark.py under a python with torch and timm (PIT_REFERENCE_PYTHON); prints one JSON line.
Phases mirror ours: dygraph_infer (eager, no_grad), exported_infer (the same eager model: the target compares
our exported model with the reference's eager one), latency_b1 (eager, one image at a time), train_step (forward,
backward and a step of the config's optimizer: torch's AdamW or SGD, timm's AdamP, with the config's settings),
data_per_worker (PIL decode + timm.create_transform of the recipe, on the JPEGs benchmark.py wrote),
data_vs_prefetcher (the same in timm's prefetcher mode: uint8 out, normalise and erasing left to the device),
data_decode (PIL decode to RGB alone).
"""
import argparse
import glob
import json
import os
import random
import resource
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from timing import timed  # noqa: E402  (the standard library only, like this script)


PHASES = ['dygraph_infer', 'exported_infer', 'exported_infer_bf16', 'exported_infer_int8', 'latency_b1', 'train_step',
          'train_step_amp', 'data_per_worker', 'data_vs_prefetcher', 'data_decode']
DATA_PHASES = {'data_per_worker': False, 'data_vs_prefetcher': True, 'data_decode': None}  # -> use_prefetcher


def figures(timing):
    rate, rates = timing
    return {'img_per_s': rate, 'runs': rates}


def build_optimizer(params, spec):
    """The optimizer our side runs, in PyTorch: torch's AdamW or SGD, timm's AdamP (clovaai's update)."""
    import torch
    lr, wd = spec.get('lr', 5e-4), spec.get('weight_decay', 0.05)
    betas, eps = tuple(spec.get('betas', (0.9, 0.999))), spec.get('eps', 1e-8)
    if spec['name'] == 'AdamW':
        return torch.optim.AdamW(params, lr=lr, betas=betas, eps=eps, weight_decay=wd)
    if spec['name'] == 'AdamP':
        from timm.optim import AdamP
        return AdamP(params, lr=lr, betas=betas, eps=eps, weight_decay=wd, delta=spec.get('delta', 0.1),
                     wd_ratio=spec.get('wd_ratio', 0.1), nesterov=spec.get('nesterov', False))
    if spec['name'] == 'SGD':
        return torch.optim.SGD(params, lr=lr, momentum=spec.get('momentum', 0.9), weight_decay=wd,
                               nesterov=spec.get('nesterov', False))
    sys.exit(f"no reference optimizer for {spec['name']!r}")


def data_pipeline(paths, image_size, prefetcher):
    """One sample per call: decode (PIL, to RGB), then timm's create_transform of the recipe (prefetcher
    False: ToTensor, Normalize, RandomErasing on the CPU; True: uint8 out), or nothing more (None)."""
    import timm
    from PIL import Image
    transform = None if prefetcher is None else timm.data.create_transform(
        image_size, is_training=True, auto_augment='rand-m9-mstd0.5-inc1', re_prob=0.25, re_mode='pixel', re_count=1,
        interpolation='bicubic', use_prefetcher=prefetcher)
    random.seed(0)
    state = {'i': 0}

    def load_one():
        with Image.open(paths[state['i'] % len(paths)]) as img:
            img = img.convert('RGB')
            try:
                if transform is not None:
                    transform(img)
            except ValueError:  # timm's posterize at 0 bits fails on Pillow >= 10; the sample still counts
                pass
        state['i'] += 1
    return load_one


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument('-model', required=True)
    parser.add_argument('-batch_size', type=int, default=32)
    parser.add_argument('-threads', type=int, default=0)
    parser.add_argument('-repeats', type=int, default=5)
    parser.add_argument('-image_size', type=int, default=224)
    parser.add_argument('-tmp', default=None)
    parser.add_argument('-images', default=None, help='the JPEG folder (default: TMP/images)')
    parser.add_argument('-amp_dtype', default='float16', choices=['float16', 'bfloat16'])
    parser.add_argument('-drop_path', type=float, default=0.0, help="the config's MODEL.DROP_PATH (training step)")
    parser.add_argument('-phases', nargs='+', default=PHASES, choices=PHASES)
    parser.add_argument('-optimizer', default='{"name": "AdamW"}',
                        help='JSON: name (AdamW, AdamP or SGD), lr, weight_decay, betas, eps, delta, wd_ratio, '
                             'nesterov, momentum (the config\'s TRAIN.OPTIMIZER, as benchmark.py passes it)')
    args = parser.parse_args()
    import timm
    import torch
    torch.set_num_threads(args.threads or os.cpu_count())
    name = f'{args.model}_{args.image_size}'
    if name not in timm.list_models('pit_*'):
        sys.exit(f'no timm reference for {args.model} at {args.image_size} px')
    torch.manual_seed(0)
    device = 'cuda' if torch.cuda.is_available() else 'cpu'  # the device ours runs on when it has a GPU
    model = timm.create_model(name, pretrained=False, drop_path_rate=args.drop_path).to(device)
    x = torch.rand(args.batch_size, 3, args.image_size, args.image_size, device=device)
    result = {'versions': {'torch': torch.__version__, 'timm': timm.__version__, 'device': device}}
    model.eval()

    def infer():
        with torch.no_grad():
            model(x).cpu()
    # the reference's exported figure (at every precision of ours) is its eager fp32 one
    for phase in ('dygraph_infer', 'exported_infer', 'exported_infer_bf16', 'exported_infer_int8'):
        if phase in args.phases:
            result[phase] = figures(timed(infer, args.batch_size, args.repeats))
    if 'latency_b1' in args.phases:
        one = x[:1]

        def infer_one():
            with torch.no_grad():
                model(one).cpu()
        result['latency_b1'] = figures(timed(infer_one, 1, args.repeats))
    model.train()
    optimizer = build_optimizer(model.parameters(), json.loads(args.optimizer))
    y = torch.arange(args.batch_size, device=device) % 1000

    def train_step(amp_dtype=None):
        scaler = torch.amp.GradScaler(device, enabled=amp_dtype == torch.float16)

        def step():
            with torch.autocast(device, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                out = model(x)
                loss = torch.nn.functional.cross_entropy(out[0] if isinstance(out, tuple) else out, y)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad()
            loss.item()
        return step
    if 'train_step' in args.phases:
        result['train_step'] = figures(timed(train_step(), args.batch_size, args.repeats))
    if 'train_step_amp' in args.phases and device == 'cuda':
        dtype = torch.bfloat16 if args.amp_dtype == 'bfloat16' else torch.float16
        result['train_step_amp'] = figures(timed(train_step(dtype), args.batch_size, args.repeats))
    paths = sorted(glob.glob(os.path.join(args.images or os.path.join(args.tmp or '', 'images'), '*.JPEG')))
    for phase, prefetcher in DATA_PHASES.items():
        if phase in args.phases and paths:
            torch.set_num_threads(1)
            result[phase] = figures(timed(data_pipeline(paths, args.image_size, prefetcher), 1, args.repeats))
    # of this process's phases, measured as ours is: max RSS on CPU, max allocated on GPU
    result['peak_mb'] = (torch.cuda.max_memory_allocated() if device == 'cuda' else
                         resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) / 2 ** 20
    print(json.dumps(result))


if __name__ == '__main__':
    main()
