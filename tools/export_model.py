"""Export a PiT to a static Paddle inference model, and run it through paddle.inference.

    python tools/export_model.py -pretrained output/pit_ti_730 -save_path output/inference
    python predict.py -infer_model output/inference -img_path images/

writes, for the prefix output/inference:
    inference.json (or .pdmodel) + inference.pdiparams   input `images` [N, 3, S, S] float32, the logits as output
                                                          (distilled models: the mean of both heads)
    inference.yml                                         PaddleClas-style deploy config: PreProcess
                                                          (ResizeImage, CropImage, NormalizeImage, ToCHWImage)
                                                          and PostProcess Topk, read by PaddleClas and FastDeploy
    inference_class_id_map.txt                            "index name" per class, named in inference.yml
Weights of this repo (checkpoints, converted official weights) describe their model and preprocessing, so -cfg
is optional. On CPU the predictor runs with oneDNN; on GPU `-use_trt` / `-precision fp16` switch TensorRT and
half precision. `-onnx` also writes output/inference.onnx through paddle2onnx and onnx when they are installed
(never installing anything itself): opset 13 (`-opset N`), input `images`, output `logits`, dynamic batch.
"""
import argparse
import copy
import inspect
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import quiet  # noqa: E402,F401  (before paddle)

import numpy as np  # noqa: E402
import paddle  # noqa: E402


def export_inference_model(model, image_size, save_prefix):
    """paddle.jit.save of model in eval mode with a dynamic batch; returns save_prefix. A copy is traced, with
    the attention scale folded into the qkv weights (pit.Attention.fold_query_scale): the exported
    .pdiparams hold those folded weights (same outputs); model itself is left as it was."""
    from pit import Attention
    model = copy.deepcopy(model)
    model.eval()  # (Paddle 2.6's Layer.eval returns None)
    for layer in model.sublayers():
        if isinstance(layer, Attention):
            layer.fold_query_scale()
    os.makedirs(os.path.dirname(os.path.abspath(save_prefix)), exist_ok=True)
    spec = [paddle.static.InputSpec([None, 3, image_size, image_size], 'float32', name='images')]
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


def deploy_config(config, class_map_file, topk=5):
    """The PaddleClas inference config (dict) of config's eval transform and top-k output."""
    from transforms import eval_resize_size
    size = config.DATA.IMAGE_SIZE
    return {
        'Global': {'model_name': config.MODEL.NAME, 'model_type': config.MODEL.TYPE,
                   'inference_model_dir': '.', 'batch_size': 1},
        'PreProcess': {'transform_ops': [
            {'ResizeImage': {'resize_short': eval_resize_size(size, config.DATA.CROP_PCT),
                             'interpolation': config.DATA.INTERPOLATION, 'backend': 'pil'}},
            {'CropImage': {'size': size}},
            {'NormalizeImage': {'scale': 1.0 / 255.0, 'mean': list(config.DATA.IMAGENET_MEAN),
                                'std': list(config.DATA.IMAGENET_STD), 'order': 'hwc', 'channel_num': 3}},
            {'ToCHWImage': None},
        ]},
        'PostProcess': {'main_indicator': 'Topk',
                        'Topk': {'topk': min(topk, config.MODEL.NUM_CLASSES), 'class_id_map_file': class_map_file}},
    }


def write_deploy_files(config, names, save_prefix):
    """save_prefix.yml (PaddleClas PreProcess/PostProcess) and save_prefix_class_id_map.txt; returns the yml path.
    The class map is named relative to the yml's folder, so the export folder can be moved as a whole."""
    import yaml
    class_map = save_prefix + '_class_id_map.txt'
    with open(class_map, 'w', encoding='utf-8') as f:
        f.writelines(f'{index} {name}\n' for index, name in enumerate(names))
    yml = save_prefix + '.yml'
    with open(yml, 'w', encoding='utf-8') as f:
        yaml.safe_dump(deploy_config(config, os.path.basename(class_map)), f, sort_keys=False)
    return yml


def read_export_description(save_prefix):
    """({dotted config key: value} of the export's preprocessing and class count, class names or None), read
    from save_prefix.yml and its class map; ({}, None) for an export without them."""
    import yaml
    yml = save_prefix + '.yml'
    if not os.path.isfile(yml):
        return {}, None
    with open(yml, encoding='utf-8') as f:
        deploy = yaml.safe_load(f) or {}
    ops = {name: args or {} for op in deploy.get('PreProcess', {}).get('transform_ops', []) for name, args in op.items()}
    size = ops.get('CropImage', {}).get('size')
    described = {}
    if size:
        described['DATA.IMAGE_SIZE'] = int(size)
        resize = ops.get('ResizeImage', {})
        if resize.get('resize_short'):
            described['DATA.CROP_PCT'] = size / resize['resize_short']
        if resize.get('interpolation'):
            described['DATA.INTERPOLATION'] = resize['interpolation']
    normalize = ops.get('NormalizeImage', {})
    for key, name in (('mean', 'DATA.IMAGENET_MEAN'), ('std', 'DATA.IMAGENET_STD')):
        if normalize.get(key):
            described[name] = list(normalize[key])
    names = None
    class_map = deploy.get('PostProcess', {}).get('Topk', {}).get('class_id_map_file')
    if class_map:
        path = os.path.join(os.path.dirname(os.path.abspath(yml)), class_map)
        with open(path, encoding='utf-8') as f:
            names = [line.rstrip('\n').split(' ', 1)[1] for line in f if line.strip()]
        described['MODEL.NUM_CLASSES'] = len(names)
    return described, names


DEFAULT_ONNX_OPSET = 13  # the lowest opset the checks ask for; every current ONNX runtime reads it
ONNX_INPUT, ONNX_OUTPUT, ONNX_BATCH = 'images', 'logits', 'batch'


def export_onnx(save_prefix, opset=DEFAULT_ONNX_OPSET):
    """save_prefix.onnx from the exported model save_prefix via paddle2onnx at exactly this opset: input
    `images` [batch, 3, S, S], output `logits` [batch, classes], the batch dimension named `batch`, and no node
    or initializer that the output does not need. Returns the path, or None when paddle2onnx is missing."""
    try:
        import onnx
        import paddle2onnx
    except ImportError:
        print('paddle2onnx/onnx not installed: skipping ONNX export (pip install paddle2onnx onnx to enable it)')
        return None
    except ValueError:  # paddle2onnx >= 2 refuses to be imported beside Paddle 2.x
        print(f"the installed paddle2onnx needs Paddle >= 3.0, this is paddle {paddle.__version__}: skipping ONNX "
              "export (with Paddle 2.x: pip install 'paddle2onnx<2')")
        return None
    # optimize_tool 'None' (paddle2onnx >= 2): its default optimizer step would pip-install packages at run time
    options = {'optimize_tool': 'None'} if 'optimize_tool' in inspect.signature(paddle2onnx.export).parameters else {}
    data = paddle2onnx.export(_model_file(save_prefix), save_prefix + '.pdiparams', None, opset_version=opset,
                              auto_upgrade_opset=False, **options)
    model = onnx.load_model_from_string(data)
    graph = model.graph
    _rename_value(graph, graph.input[0].name, ONNX_INPUT)
    _rename_value(graph, graph.output[0].name, ONNX_OUTPUT)
    for value in (graph.input[0], graph.output[0]):
        value.type.tensor_type.shape.dim[0].dim_param = ONNX_BATCH
    _prune_unused(graph)
    onnx.checker.check_model(model)
    onnx_path = save_prefix + '.onnx'
    onnx.save(model, onnx_path)
    return onnx_path


def _rename_value(graph, old, new):
    """Rename a graph value (paddle2onnx calls the output `fetch_name_0`) wherever it is produced or read."""
    for value in list(graph.input) + list(graph.output):
        if value.name == old:
            value.name = new
    for node in graph.node:
        node.input[:] = [new if name == old else name for name in node.input]
        node.output[:] = [new if name == old else name for name in node.output]


def _prune_unused(graph):
    """Drop the nodes no graph output depends on, then the initializers no node reads. paddle2onnx leaves
    dead Constant nodes (140 for pit_ti at opset 13), which onnxruntime turns into initializers and warns about."""
    needed = {value.name for value in graph.output}
    kept = []
    for node in reversed(graph.node):  # ONNX nodes are in topological order
        if any(name in needed for name in node.output):
            kept.append(node)
            needed.update(node.input)
            for attr in node.attribute:  # values read inside control-flow subgraphs
                needed.update(name for sub in [attr.g, *attr.graphs] for inner in sub.node for name in inner.input)
    del graph.node[:]
    graph.node.extend(reversed(kept))
    initializers = [init for init in graph.initializer if init.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(initializers)


def create_onnx_session(onnx_path, threads=0):
    """An onnxruntime CPU session of an ONNX file; raises FileNotFoundError / ImportError in one line."""
    if not os.path.isfile(onnx_path):
        raise FileNotFoundError(f"ONNX model '{onnx_path}' not found (-onnx_model; tools/export_model.py -onnx "
                                'writes one)')
    try:
        import onnxruntime
    except ImportError:
        raise ImportError(f"onnxruntime is not installed: pip install onnxruntime to run '{onnx_path}'") from None
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads  # 0: onnxruntime's default, one per physical core
    return onnxruntime.InferenceSession(onnx_path, options, providers=['CPUExecutionProvider'])


def run_onnx(session, images):
    """images float32 [N, 3, S, S] numpy -> logits numpy [N, classes] through an onnxruntime session."""
    feed = {session.get_inputs()[0].name: np.ascontiguousarray(images, dtype='float32')}
    return session.run([session.get_outputs()[0].name], feed)[0]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('-cfg', default=None, help='model config (optional for weights of this repo)')
    parser.add_argument('-pretrained', required=True, help='weights (.pdparams optional)')
    parser.add_argument('-save_path', default='output/inference', help='output prefix')
    parser.add_argument('-onnx', action='store_true', help='also export ONNX (needs paddle2onnx and onnx)')
    parser.add_argument('-opset', type=int, default=DEFAULT_ONNX_OPSET, help='ONNX opset of -onnx')
    parser.add_argument('-opts', nargs='+', default=[], help='config overrides KEY VALUE ...')
    args = parser.parse_args()
    from config import ConfigError, build_config, described_keys
    from predict import class_names, read_weights_file
    from pit import build_pit
    from weights import WeightsError, load_pretrained
    try:
        source, ckpt = read_weights_file(args.pretrained)
        config = build_config(cfg=args.cfg, opts=args.opts, described=described_keys(ckpt), described_by=source,
                              world_size=1)
        model = build_pit(config)
        load_pretrained(model, source, prefer_ema=config.MODEL.EMA_WEIGHTS)
        names = class_names((ckpt or {}).get('classes'), config.MODEL.NUM_CLASSES)
        export_inference_model(model, config.DATA.IMAGE_SIZE, args.save_path)
        yml = write_deploy_files(config, names, args.save_path)
    except (ConfigError, WeightsError, FileNotFoundError) as e:
        print(f'error: {e}', file=sys.stderr)
        sys.exit(2)
    except OSError as e:
        print(f"error: cannot write the export '{args.save_path}': {e.strerror or e}", file=sys.stderr)
        sys.exit(1)
    print(f'exported {config.MODEL.NAME} to {args.save_path} (input images: [N, 3, {config.DATA.IMAGE_SIZE}, '
          f'{config.DATA.IMAGE_SIZE}]), deploy config {yml}')
    if args.onnx:
        path = export_onnx(args.save_path, opset=args.opset)
        if path:
            print(f'exported ONNX to {path}')


if __name__ == '__main__':
    main()
