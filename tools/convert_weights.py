"""Convert official PiT weights (naver-ai/pit .pth, timm .pth/.safetensors) into a Paddle .pdparams file.

    python tools/convert_weights.py -cfg configs/pit_ti.yaml -src pit_ti_730.pth -dst output/pit_ti_730

writes output/pit_ti_730.pdparams (the extension is added when missing): the state dict of the model that
-cfg describes, checked key by key and shape by shape, so it loads with `model.set_state_dict(paddle.load(f))`
or `-pretrained`. Needs no torch. The file appears only when the conversion succeeded (written to a temporary
file, then renamed). Errors print one line to stderr and exit with status 2.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import paddle  # noqa: E402

from config import ConfigError, get_config, merge_opts  # noqa: E402
from pit import build_pit  # noqa: E402
from weights import WeightsError, load_pretrained  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('-cfg', required=True, help='model config yaml, e.g. configs/pit_ti.yaml')
    parser.add_argument('-src', required=True, help='source weights: .pth/.pt (PyTorch zip), .safetensors, .pdparams')
    parser.add_argument('-dst', required=True, help='output path; .pdparams is appended when missing')
    parser.add_argument('-ema', action='store_true', help='take the EMA weights when the file holds both')
    parser.add_argument('-opts', nargs='+', default=[], help='config overrides KEY VALUE ...')
    return parser.parse_args(argv)


def save_atomically(state_dict, path):
    """paddle.save to a temporary file beside path, then rename: path is either complete or untouched."""
    tmp = f'{path}.tmp{os.getpid()}'
    try:
        paddle.save(state_dict, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def convert(cfg, src, dst, prefer_ema=False, opts=()):
    """Convert src for the model of cfg into dst (.pdparams added when missing); returns a one-line summary."""
    config = merge_opts(get_config(cfg), list(opts))
    dst = dst if dst.endswith('.pdparams') else dst + '.pdparams'
    model = build_pit(config)
    report = load_pretrained(model, src, strict=True, prefer_ema=prefer_ema)
    if os.path.dirname(dst):
        os.makedirs(os.path.dirname(dst), exist_ok=True)
    save_atomically(model.state_dict(), dst)
    params = sum(int(p.size) for p in model.parameters())
    return f"{report} -> '{dst}' ({config.MODEL.NAME}, {params / 1e6:.2f}M params)"


def main(argv=None):
    args = parse_args(argv)
    try:
        print(convert(args.cfg, args.src, args.dst, prefer_ema=args.ema, opts=args.opts))
    except (WeightsError, ConfigError, OSError) as e:
        print(f'convert_weights: error: {e}', file=sys.stderr)
        return 2
    return 0


if __name__ == '__main__':
    sys.exit(main())
