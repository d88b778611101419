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

from cli import run_command  # noqa: E402
from regnet import convert_teacher  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('-src', required=True, help="timm/DeiT regnety_160 weights (.pth, .safetensors)")
    parser.add_argument('-dst', required=True, help='output path; .pdparams is appended when missing')
    parser.add_argument('-num_classes', type=int, default=1000, help='classifier outputs of the source')
    args = parser.parse_args()
    print(convert_teacher(args.src, args.dst, num_classes=args.num_classes))


if __name__ == '__main__':
    run_command(main)
