"""Convert timm's / DeiT's RegNetY-16GF weights (the distillation teacher) into a Paddle .pdparams file.

    python tools/convert_regnet.py -src regnety_160-a5fe301d.pth -dst output/regnety_160

writes output/regnety_160.pdparams (the extension is added when missing), used by `-teacher_model
output/regnety_160`. The source is DeiT's checkpoint (weights under 'model') or a timm regnety_160 state dict
(.pth or .safetensors), read without torch. Every key and shape is checked; the file appears only when the
conversion succeeded (temporary file, then rename). Errors print one line to stderr and exit with status 2 (bad input) or 1 (the output could not be written).
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import quiet  # noqa: E402,F401  (before paddle)

import paddle  # noqa: E402

from checkpoint import atomic_save  # noqa: E402
from cli import run_command  # noqa: E402
from regnet import build_regnet, teacher_state_dict  # noqa: E402


def convert(src, dst, cfg=None, num_classes=1000):
    """Convert src into dst (.pdparams added when missing) for build_regnet(cfg, num_classes); returns a summary."""
    dst = dst if dst.endswith('.pdparams') else dst + '.pdparams'
    with paddle.utils.unique_name.guard():
        model = build_regnet(cfg, num_classes)
    model.set_state_dict(teacher_state_dict(src, model))
    atomic_save(model.state_dict(), dst)
    params = sum(int(p.size) for p in model.parameters() if not p.stop_gradient)
    return f"converted '{src}' -> '{dst}' (RegNet, {params / 1e6:.2f}M params)"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('-src', required=True, help="timm/DeiT regnety_160 weights (.pth, .safetensors)")
    parser.add_argument('-dst', required=True, help='output path; .pdparams is appended when missing')
    parser.add_argument('-num_classes', type=int, default=1000, help='classifier outputs of the source')
    args = parser.parse_args(argv)
    print(convert(args.src, args.dst, num_classes=args.num_classes))


if __name__ == '__main__':
    run_command(main)
