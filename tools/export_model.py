"""Export a PiT to a static Paddle inference model, and run it through paddle.inference.

    python tools/export_model.py -cfg configs/pit_ti.yaml -pretrained output/pit_ti_730 -save_path output/inference
    python predict.py -cfg configs/pit_ti.yaml -infer_model output/inference -img_path images/

writes output/inference.json (or .pdmodel) + output/inference.pdiparams with input `x` [N, 3, S, S] float32 and
the logits as output (distilled models: the eval output, the mean of both heads). On CPU the predictor runs with
oneDNN; on GPU `-use_trt` / `-precision fp16` switch TensorRT and half precision. `-onnx` also writes
output/inference.onnx through paddle2onnx when it is installed (never installing anything itself).
"""
import warnings
warnings.filterwarnings('ignore', message='No ccache found')  # paddle's import-time warning

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import paddle  # noqa: E402


def export_inference_model(model, image_size, save_prefix):
    """paddle.jit.save of model.eval() with a dynamic batch; returns save_prefix."""
    model.eval()
    os.makedirs(os.path.dirname(os.path.abspath(save_prefix)), exist_ok=True)
    spec = [paddle.static.InputSpec([None, 3, image_size, image_size], 'float32', name='x')]
    static_model = paddle.jit.to_static(model, input_spec=spec, full_graph=True)
    paddle.jit.save(static_model, save_prefix)
    return save_prefix


def _model_file(prefix):
    for ext in ('.json', '.pdmodel'):
        if os.path.isfile(prefix + ext):
            return prefix + ext
    raise FileNotFoundError(f"no exported model at '{prefix}' (expected {prefix}.json or {prefix}.pdmodel; "
                            'run tools/export_model.py first)')


def create_predictor(model_prefix, device='cpu', use_trt=False, precision='fp32', threads=0):
    """A paddle.inference predictor of an exported model (oneDNN on CPU; TensorRT/FP16 optional on GPU)."""
    from paddle import inference
    config = inference.Config(_model_file(model_prefix), model_prefix + '.pdiparams')
    if device == 'gpu':
        config.enable_use_gpu(256, 0)
        if use_trt:
            mode = inference.PrecisionType.Half if precision == 'fp16' else inference.PrecisionType.Float32
            config.enable_tensorrt_engine(workspace_size=1 << 30, max_batch_size=64, min_subgraph_size=3,
                                          precision_mode=mode, use_static=False, use_calib_mode=False)
    else:
        config.disable_gpu()
        config.enable_mkldnn()
        config.set_cpu_math_library_num_threads(threads or os.cpu_count() or 1)
    config.disable_glog_info()
    return inference.create_predictor(config)


def run_predictor(predictor, images):
    """images float32 [N, 3, S, S] numpy -> logits numpy [N, classes]."""
    handle = predictor.get_input_handle(predictor.get_input_names()[0])
    handle.reshape(list(images.shape))
    handle.copy_from_cpu(np.ascontiguousarray(images, dtype='float32'))
    predictor.run()
    return predictor.get_output_handle(predictor.get_output_names()[0]).copy_to_cpu()


def export_onnx(save_prefix):
    """save_prefix.onnx via paddle2onnx, without its optimizer step (that step would pip-install packages)."""
    try:
        import paddle2onnx
    except ImportError:
        print('paddle2onnx is not installed: skipping ONNX export (pip install paddle2onnx to enable it)')
        return None
    onnx_path = save_prefix + '.onnx'
    paddle2onnx.export(_model_file(save_prefix), save_prefix + '.pdiparams', onnx_path, optimize_tool='None')
    return onnx_path


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('-cfg', required=True)
    parser.add_argument('-pretrained', required=True, help='weights (.pdparams optional)')
    parser.add_argument('-save_path', default='output/inference', help='output prefix')
    parser.add_argument('-onnx', action='store_true', help='also export ONNX (needs paddle2onnx)')
    parser.add_argument('-opts', nargs='+', default=[], help='config overrides KEY VALUE ...')
    args = parser.parse_args()
    from config import ConfigError, get_config, merge_opts
    from pit import build_pit
    from weights import WeightsError, load_pretrained
    try:
        config = merge_opts(get_config(args.cfg), args.opts)
        model = build_pit(config)
        load_pretrained(model, args.pretrained)
    except (ConfigError, WeightsError, FileNotFoundError) as e:
        print(f'error: {e}', file=sys.stderr)
        sys.exit(2)
    export_inference_model(model, config.DATA.IMAGE_SIZE, args.save_path)
    print(f'exported {config.MODEL.NAME} to {args.save_path} (input x: [N, 3, {config.DATA.IMAGE_SIZE}, '
          f'{config.DATA.IMAGE_SIZE}])')
    if args.onnx:
        path = export_onnx(args.save_path)
        if path:
            print(f'exported ONNX to {path}')


if __name__ == '__main__':
    main()
