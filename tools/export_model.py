"""Export a PiT to a static Paddle inference model, and run it through paddle.inference.

    python tools/export_model.py -pretrained output/pit_ti_730 -save_path output/inference
    python tools/export_model.py -pretrained output/pit_ti_730 -save_path output/inference -use_trt -precision fp16
    python tools/export_model.py -pretrained output/pit_ti_730 -save_path output/bf16/inference -precision bf16
    python tools/export_model.py -pretrained output/pit_ti_730 -save_path output/int8/inference -precision int8 \
        -calib_data data/ILSVRC2012/val -calib_images 64
    python predict.py -infer_model output/inference -img_path images/

writes, for the prefix output/inference:
    inference.json (or .pdmodel) + inference.pdiparams   input `images` [N, 3, S, S] float32, the logits as output
                                                          (distilled models: the mean of both heads)
    inference.yml                                         PaddleClas-style deploy config: PreProcess
                                                          (ResizeImage, CropImage, NormalizeImage, ToCHWImage)
                                                          and PostProcess Topk, read by PaddleClas and PaddleX;
                                                          Global.precision, which predict.py runs it at
    inference_class_id_map.txt                            "index name" per class, named in inference.yml
    inference.onnx                                        with -onnx (see below)
Weights of this repo (checkpoints, converted official weights) describe their model and preprocessing, so -cfg
is optional. The files are written into a hidden folder beside the prefix, checked, then moved into place all
together: an export that fails leaves nothing behind, and one that succeeds replaces every file of an older
export at the same prefix (a stale .onnx of older weights included). The exporting itself is export.py's; the
deploy files and the runtimes are inference.py's.

The check runs the export through paddle.inference with -device (auto: the GPU when paddle has CUDA and sees
one), -use_trt and -precision, on a batch of 1 and of 2, and compares the logits with the dygraph model's (within
1% of the largest logit for fp32, 5% for fp16; TensorRT and TF32 matmuls are not bit-exact). These flags choose
the check and the precision recorded for predict.py (which takes the same flags); the exported files are the same
for every device and precision but int8.
TensorRT runs through `Config.enable_tensorrt_engine` for .pdmodel programs (Paddle 2.6 exports) and through
`paddle.tensorrt` for the .json (PIR) programs of Paddle 3, whose Config ignores TensorRT; both get the batch
range 1 .. batch (opt = batch).

-precision bf16 and int8 run on the CPU through oneDNN (Config.enable_onednn_bfloat16 / _int8, the
enable_mkldnn_* names on Paddle 2.6), where the CPU has the instructions that make them pay (avx512_bf16 or
amx_bf16; VNNI or amx_int8); else the export is refused in one line naming what is missing. bf16 changes only how
the export runs; int8 quantises its program after training (paddle.static.quantization), calibrated on
-calib_images images (default 64) of -calib_data (a folder, searched through its sub-folders, or a list file of
'relative/path [label]' lines), spread evenly over them. paddle.static.quantization reads only .pdmodel
programs: an int8 export is one on every Paddle (Paddle 3 writes .json ones otherwise). The check allows 5% (bf16) and
50% (int8, on calibration images) of the largest logit. The precision is recorded in inference.yml; the ONNX
copy is always fp32.

`-onnx` also writes output/inference.onnx through paddle2onnx and onnx when they are installed (never installing
anything itself): opset 13 (`-opset N`), input `images`, output `logits`, dynamic batch.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import quiet  # noqa: E402,F401  (before paddle)

from checkpoint import read_weights  # noqa: E402
from cli import argument_parser, run_command  # noqa: E402
from config import build_config  # noqa: E402
from export import DEFAULT_ONNX_OPSET, export_weights  # noqa: E402
from inference import PRECISIONS  # noqa: E402
from quantize import DEFAULT_CALIB_IMAGES  # noqa: E402


def get_arguments():
    return argument_parser(__doc__, flags=('-cfg', '-pretrained', '-save_path', '-device', '-opts'), extra={
        '-cfg': dict(help='model config (optional for weights of this repo)'),
        '-pretrained': dict(required=True, help='weights (.pdparams optional)'),
        '-save_path': dict(default='output/inference', help='output prefix'),
        '-device': dict(choices=('auto', 'gpu', 'cpu'), default='auto',
                        help='where the export is checked (auto: the GPU when paddle has CUDA and sees one)'),
        '-use_trt': dict(action='store_true', help='check the export through TensorRT (GPU)'),
        '-precision': dict(choices=PRECISIONS, default='fp32',
                           help='precision the export runs at (fp16: GPU; bf16, int8: CPU, oneDNN)'),
        '-calib_data': dict(default=None, help='-precision int8: images to calibrate on (a folder or a list file)'),
        '-calib_images': dict(type=int, default=DEFAULT_CALIB_IMAGES, help='-precision int8: how many of them'),
        '-onnx': dict(action='store_true', help='also export ONNX (needs paddle2onnx and onnx)'),
        '-opset': dict(type=int, default=DEFAULT_ONNX_OPSET, help='ONNX opset of -onnx'),
    }).parse_args()


def main():
    args = get_arguments()
    weights = read_weights(args.pretrained)
    config = build_config(cfg=args.cfg, opts=args.opts or (), described=weights.described, described_by=weights.path,
                          world_size=1)
    print('\n'.join(export_weights(config, weights, args.save_path, args.device, args.use_trt, args.precision,
                                   onnx_opset=args.opset if args.onnx else None, calib_data=args.calib_data,
                                   calib_images=args.calib_images)))


if __name__ == '__main__':
    run_command(main)
