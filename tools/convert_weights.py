"""Convert official PiT weights (naver-ai/pit .pth, timm .pth/.safetensors) into a Paddle .pdparams file.

    python tools/convert_weights.py -cfg configs/pit_ti.yaml -src pit_ti_730.pth -dst output/pit_ti_730

writes output/pit_ti_730.pdparams (the extension is added when missing): {'model': the state dict of the model
that -cfg describes, checked key by key and shape by shape; 'model_config' / 'preprocess': that model and its
eval transform; 'classes': the ImageNet-1k wnids for 1000-class weights}. So `-pretrained output/pit_ti_730`
works in predict.py, -eval and tools/export_model.py without -cfg, and plain paddle users load it with
`model.set_state_dict(paddle.load(f)['model'])`. Needs no torch; never unpickles anything but tensors. The file
appears only when the conversion succeeded (written to a temporary file, then renamed). Errors print one line to
stderr and exit with status 2 (bad input) or 1 (the output could not be written).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import quiet  # noqa: E402,F401  (before paddle)

from checkpoint import convert_weights  # noqa: E402
from cli import argument_parser, run_command  # noqa: E402
from config import build_config  # noqa: E402


def get_arguments():
    return argument_parser(__doc__, flags=('-cfg', '-ema', '-opts'), extra={
        '-cfg': dict(required=True, help='model config yaml, e.g. configs/pit_ti.yaml'),
        '-ema': dict(help='take the EMA weights when the file holds both'),
        '-src': dict(required=True, help='source weights: .pth/.pt (PyTorch zip), .safetensors, .pdparams'),
        '-dst': dict(required=True, help='output path; .pdparams is appended when missing'),
    }).parse_args()


def main():
    args = get_arguments()
    print(convert_weights(build_config(args.cfg, args.opts or ()), args.src, args.dst, prefer_ema=args.ema))


if __name__ == '__main__':
    run_command(main)
