"""Parameters and multiply-accumulates (GMACs) of the PiT a config describes.

    python tools/model_info.py -cfg configs/pit_s.yaml [-opts DATA.IMAGE_SIZE 384]

MACs are counted the way fvcore does (complexity.py), which is how the published PiT figures come out.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import quiet  # noqa: E402,F401  (before paddle)

from cli import argument_parser, run_command  # noqa: E402
from complexity import count_macs, count_params  # noqa: E402
from config import build_config  # noqa: E402
from pit import build_pit  # noqa: E402


def main():
    args = argument_parser(__doc__, flags=('-cfg', '-opts'), extra={
        '-cfg': dict(required=True, help='model config yaml, e.g. configs/pit_s.yaml')}).parse_args()
    config = build_config(args.cfg, args.opts or ())
    model = build_pit(config)
    size = config.DATA.IMAGE_SIZE
    macs = count_macs(model, size)
    parts = ', '.join(f'{k} {v / 1e9:.3f}' for k, v in macs.items() if k != 'total')
    print(f'{config.MODEL.NAME} @ {size}px: {count_params(model) / 1e6:.2f}M params, '
          f"{macs['total'] / 1e9:.2f} GMACs ({parts})")


if __name__ == '__main__':
    run_command(main)
