"""Reference weights and outputs from timm's PiT (PyTorch), for the parity tests of the Paddle model.

Runs in a Python environment with torch, timm and safetensors (not needed by this repo otherwise):

    python tools/make_parity_fixture.py fixtures                      # rewrite tests/fixtures/ (< 1 MB)
    python tools/make_parity_fixture.py variant pit_ti_distilled OUT  # full-size reference in OUT/

`fixtures` builds small timm PiTs (random init, fixed seed) and writes, with the yaml configs that describe them:
- pit_tiny{,_distilled}.pth + .npz: pit_ti-shaped models (heads 2, 4, 8) at 48 px; eval logits, and for the
  distilled one the train-mode (cls, dist) logits, for a fixed input;
- pit_micro_*.pth / .safetensors + pit_micro.npz: one small model saved in every layout and wrapping the
  converter understands (naver-ai, timm >= 0.9, timm <= 0.8, DeiT-style with EMA, DDP `module.`), its logits;
- tensors.pth + tensors.npz: tensors with storage offsets, strides, shared storage, fp16/bf16/int/bool;
- legacy.pth: the pre-1.6 (non-zip) torch format, which the reader must refuse clearly;
- resize.npz: torch's bicubic F.interpolate of a non-square grid, the reference for pos_embed resizing.
`variant NAME OUT` writes OUT/NAME.pth (timm pit_*_224 state dict) and OUT/NAME.npz (input and outputs), used by
tests/test_parity.py through PIT_REFERENCE_PYTHON.

Every parameter gets Gaussian noise (std 0.1) on top of timm's init, so identity-initialised norms and zero
biases cannot hide a mapping error.
"""
import argparse
import os
import re
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, 'tests', 'fixtures')

# model sizes: timm keyword arguments and the yaml overrides that give the same Paddle model
TINY = dict(img_size=48, patch_size=16, stride=8, base_dims=[4, 4, 4], depth=[1, 2, 1], heads=[2, 4, 8],
            num_classes=10)
MICRO = dict(img_size=24, patch_size=8, stride=4, base_dims=[2, 2, 2], depth=[1, 1, 1], heads=[1, 2, 4],
             num_classes=5)


def yaml_text(name, sizes, distilled):
    """A config with BASE pit_ti.yaml and the model sizes of the fixture (the file lives in tests/fixtures)."""
    return (f'# {name}: small PiT of the parity fixtures, written by tools/make_parity_fixture.py\n'
            "BASE: ['../../configs/pit_ti.yaml']\n"
            f"DATA:\n  IMAGE_SIZE: {sizes['img_size']}\n"
            f"MODEL:\n  NAME: {name}\n  NUM_CLASSES: {sizes['num_classes']}\n  DISTILL: {distilled}\n"
            '  DROP_PATH: 0.0\n'
            f"  TRANS:\n    PATCH_SIZE: {sizes['patch_size']}\n    STRIDE: {sizes['stride']}\n"
            f"    BASE_DIMS: {sizes['base_dims']}\n    DEPTH: {sizes['depth']}\n    HEADS: {sizes['heads']}\n")


def build_reference(torch, timm, seed, distilled=False, **sizes):
    """A timm PoolingVisionTransformer with its init plus N(0, 0.1) noise on every parameter."""
    torch.manual_seed(seed)
    model = timm.models.pit.PoolingVisionTransformer(distilled=distilled, **sizes)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def reference_outputs(torch, model, image_size, seed):
    """{'input', 'logits'} (+ 'train_cls', 'train_dist' for distilled models, dropouts and drop path 0)."""
    x = np.random.RandomState(seed).randn(2, 3, image_size, image_size).astype(np.float32)
    with torch.no_grad():
        out = {'input': x, 'logits': model.eval()(torch.from_numpy(x)).numpy()}
        if model.head_dist is not None:
            model.set_distilled_training(True)
            cls_logits, dist_logits = model.train()(torch.from_numpy(x))
            out.update(train_cls=cls_logits.numpy(), train_dist=dist_logits.numpy())
            model.set_distilled_training(False)
    model.eval()
    return out


def pools_as(state, layout):
    """Rename timm >= 0.9 pooling keys (`transformers.{s+1}.pool.`) to 'naver' (`pools.{s}.`) or 'timm08'
    (`transformers.{s}.pool.`)."""
    target = {'naver': 'pools.{}.', 'timm08': 'transformers.{}.pool.'}[layout]
    pattern = re.compile(r'^transformers\.(\d+)\.pool\.')
    return {pattern.sub(lambda m: target.format(int(m.group(1)) - 1), k): v for k, v in state.items()}


def write_tiny(torch, timm):
    for distilled in (False, True):
        name = 'pit_tiny_distilled' if distilled else 'pit_tiny'
        model = build_reference(torch, timm, seed=1 + distilled, distilled=distilled, **TINY)
        torch.save(model.state_dict(), os.path.join(FIXTURES, name + '.pth'))
        np.savez(os.path.join(FIXTURES, name + '.npz'), **reference_outputs(torch, model, TINY['img_size'], 3))
        with open(os.path.join(FIXTURES, name + '.yaml'), 'w') as f:
            f.write(yaml_text(name, TINY, distilled))


def write_micro(torch, timm):
    from safetensors.torch import save_file
    model = build_reference(torch, timm, seed=4, **MICRO)
    ema = build_reference(torch, timm, seed=5, **MICRO)
    state = model.state_dict()
    path = lambda n: os.path.join(FIXTURES, 'pit_micro_' + n)  # noqa: E731
    torch.save(pools_as(state, 'naver'), path('naver.pth'))
    torch.save(state, path('timm.pth'))
    torch.save({'state_dict': pools_as(state, 'timm08'), 'epoch': 7, 'arch': 'pit_micro'}, path('timm08.pth'))
    torch.save({'state_dict': {'module.' + k: v for k, v in state.items()}}, path('ddp.pth'))
    optimizer = torch.optim.AdamW(model.parameters())
    args = argparse.Namespace(lr=5e-4, model='pit_micro')  # DeiT keeps its command line in checkpoints
    torch.save({'model': pools_as(state, 'naver'),
                'model_ema': {'module.' + k: v for k, v in pools_as(ema.state_dict(), 'naver').items()},
                'optimizer': optimizer.state_dict(), 'epoch': 2, 'args': args}, path('deit.pth'))
    save_file({k: v.contiguous() for k, v in state.items()}, path('timm.safetensors'))
    out = reference_outputs(torch, model, MICRO['img_size'], 6)
    out['logits_ema'] = ema(torch.from_numpy(out['input'])).detach().numpy()
    np.savez(os.path.join(FIXTURES, 'pit_micro.npz'), **out)
    with open(os.path.join(FIXTURES, 'pit_micro.yaml'), 'w') as f:
        f.write(yaml_text('pit_micro', MICRO, False))


def write_tensors(torch):
    """Layouts the torch reader must rebuild exactly; bf16 is compared as its float32 value."""
    torch.manual_seed(7)
    base = torch.arange(40, dtype=torch.float32)
    tensors = {
        'offset_stride': base[3:30:3],
        'shared_view': base.view(5, 8)[1:4, 2:6],
        'transposed_half': torch.randn(3, 4).half().t(),
        'bf16': torch.randn(6).bfloat16(),
        'int64': torch.arange(-3, 3),
        'bool': torch.tensor([True, False, True]),
        'parameter': torch.nn.Parameter(torch.randn(2, 2)),
        'scalar': torch.tensor(2.5),
    }
    torch.save(tensors, os.path.join(FIXTURES, 'tensors.pth'))
    np.savez(os.path.join(FIXTURES, 'tensors.npz'),
             **{k: (v.float() if v.dtype == torch.bfloat16 else v).detach().numpy() for k, v in tensors.items()})
    torch.save({'w': torch.zeros(2)}, os.path.join(FIXTURES, 'legacy.pth'), _use_new_zipfile_serialization=False)


def write_resize(torch):
    grid = np.random.RandomState(8).randn(1, 4, 5, 7).astype(np.float32)
    resize = lambda size: torch.nn.functional.interpolate(  # noqa: E731
        torch.from_numpy(grid), size=size, mode='bicubic', align_corners=False).numpy()
    np.savez(os.path.join(FIXTURES, 'resize.npz'), grid=grid, up_9x9=resize((9, 9)), down_3x4=resize((3, 4)))


def write_variant(name, out_dir):
    """OUT/NAME.pth: timm NAME_224 weights (init + noise); OUT/NAME.npz: reference_outputs at 224 px."""
    import timm
    import torch
    model = build_reference(torch, timm, seed=0, distilled=name.endswith('_distilled'),
                            **timm_sizes(timm, name))
    os.makedirs(out_dir, exist_ok=True)
    torch.save(model.state_dict(), os.path.join(out_dir, name + '.pth'))
    np.savez(os.path.join(out_dir, name + '.npz'), **reference_outputs(torch, model, 224, 0))


def timm_sizes(timm, name):
    """The keyword arguments of timm's `{name}_224` (e.g. pit_s_distilled -> pit_s_distilled_224)."""
    model = timm.create_model(name + '_224')
    return dict(img_size=224, patch_size=model.patch_embed.patch_size[0],
                stride=model.patch_embed.conv.stride[0], base_dims=list(model.base_dims),
                depth=[len(t.blocks) for t in model.transformers], heads=list(model.heads), num_classes=1000)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    sub = parser.add_subparsers(dest='mode', required=True)
    sub.add_parser('fixtures', help='rewrite tests/fixtures')
    variant = sub.add_parser('variant', help='full-size reference of one official variant')
    variant.add_argument('name', help='pit_ti, pit_xs, pit_s, pit_b, with or without _distilled')
    variant.add_argument('out', help='output folder')
    args = parser.parse_args(argv)
    if args.mode == 'variant':
        write_variant(args.name, args.out)
        return 0
    import timm
    import torch
    os.makedirs(FIXTURES, exist_ok=True)
    write_tiny(torch, timm)
    write_micro(torch, timm)
    write_tensors(torch)
    write_resize(torch)
    return 0


if __name__ == '__main__':
    sys.exit(main())
