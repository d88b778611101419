"""Reference weights and outputs of timm's RegNet (PyTorch), for the parity tests of regnet.py.

Runs in a Python environment with torch and timm (not needed by this repo otherwise):

    python tools/make_regnet_fixture.py        # rewrites tests/fixtures/regnet_tiny.{pth,npz} (< 1 MB)

regnet_tiny.pth: the state dict of a small RegNetY (regnet_tiny.json: same code path as regnety_160, 4 stages,
SE, group widths that force timm's width/group adjustment) with timm's init plus N(0, 0.1) noise on every tensor
and random BatchNorm statistics, so no identity-initialised part can hide a mapping error.
regnet_tiny.npz: a fixed input and the eval-mode logits; the stage widths/depths/group widths timm derives for
TINY and for regnety_160; the parameter count of timm's regnety_160.
"""
import json
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, 'tests', 'fixtures')
with open(os.path.join(FIXTURES, 'regnet_tiny.json')) as f:  # the tiny model's sizes, read by the tests too
    TINY = json.load(f)


def stage_table(model):
    """[[width, blocks, group width], ...] of a built timm RegNet."""
    table = []
    for name in ('s1', 's2', 's3', 's4'):
        stage = getattr(model, name)
        block = stage.b1
        table.append([block.conv3.conv.out_channels, len(list(stage.children())),
                      block.conv2.conv.out_channels // block.conv2.conv.groups])
    return table


def main():
    import timm
    import torch
    from timm.models.regnet import RegNet, RegNetCfg

    torch.manual_seed(0)
    model = RegNet(RegNetCfg(**TINY['config']), num_classes=TINY['num_classes'])
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(0.1 * torch.randn_like(m.running_mean))
                m.running_var.copy_(0.5 + torch.rand_like(m.running_var))
    model.eval()
    x = np.random.RandomState(1).randn(2, 3, TINY['image_size'], TINY['image_size']).astype(np.float32)
    with torch.no_grad():
        logits = model(torch.from_numpy(x)).numpy()
    full = timm.create_model('regnety_160', pretrained=False)
    os.makedirs(FIXTURES, exist_ok=True)
    torch.save(model.state_dict(), os.path.join(FIXTURES, 'regnet_tiny.pth'))
    np.savez(os.path.join(FIXTURES, 'regnet_tiny.npz'), input=x, logits=logits,
             tiny_stages=np.array(stage_table(model)), regnety_160_stages=np.array(stage_table(full)),
             regnety_160_params=np.array(sum(p.numel() for p in full.parameters())))
    return 0


if __name__ == '__main__':
    sys.exit(main())
