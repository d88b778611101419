"""Parameters and multiply-accumulates (GMACs) of the PiT a config describes.

    python tools/model_info.py -cfg configs/pit_s.yaml [-opts DATA.IMAGE_SIZE 384]

MACs are counted the way fvcore does (complexity.py), which is how the published PiT figures come out: every
convolution (patch embedding and pooling), Linear, LayerNorm and the two attention matmuls (q k^T and attn v) of
each block. Printed: the total by kind, the total without the attention matmuls (what counters that only hook
layers report), and a table by part: patch embedding, each stage's blocks, each pooling, head. 1 MAC = 2 FLOPs.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import quiet  # noqa: E402,F401  (before paddle)

from cli import argument_parser, run_command  # noqa: E402
from complexity import count_macs, count_params, macs_by_part  # noqa: E402
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
    print(f"counted as fvcore does (the published figures): attention matmuls q k^T and attn v included, "
          f"{macs['attention'] / 1e9:.3f} GMACs; without them {(macs['total'] - macs['attention']) / 1e9:.2f} GMACs; "
          f"GFLOPs = 2 x GMACs = {2 * macs['total'] / 1e9:.2f}")
    print(f"{'part':<16} {'GMACs':>8} {'attention':>10} {'conv':>8} {'linear':>8} {'layernorm':>10}")
    for part, counts in macs_by_part(model, size).items():
        print(f'{part:<16} ' + ' '.join(f'{counts[k] / 1e9:>{w}.4f}' for k, w in (
            ('total', 8), ('attention', 10), ('conv', 8), ('linear', 8), ('layernorm', 10))))

if __name__ == '__main__':
    run_command(main)
