"""ONNX export (paddle2onnx + onnx) and its run through onnxruntime: opset, names, dynamic batch, parity."""
import importlib.util
import os
import re
import subprocess
import sys

import numpy as np
import paddle
import pytest

from export import export_inference_model, export_onnx
from inference import ExportError, create_onnx_session, run_onnx

MISSING = [name for name in ('paddle2onnx', 'onnx', 'onnxruntime') if importlib.util.find_spec(name) is None]
needs_onnx = pytest.mark.skipif(bool(MISSING), reason=f'{", ".join(MISSING)} not installed (requirements-dev.txt '
                                                      'has them): ONNX export and onnxruntime are optional')

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ['DATA.IMAGE_SIZE', '32', 'MODEL.TRANS.PATCH_SIZE', '4', 'MODEL.TRANS.STRIDE', '2',
        'MODEL.TRANS.BASE_DIMS', '[8, 8, 8]', 'MODEL.TRANS.DEPTH', '[1, 1, 1]', 'MODEL.TRANS.HEADS', '[2, 4, 8]']


def export_tiny(name, tmp):
    """(model, tmp holding its tiny.pdparams, path of its ONNX export at the default opset): a tiny PiT of name."""
    from config import build_config, merge_opts
    from pit import build_pit
    paddle.seed(2)
    model = build_pit(merge_opts(build_config(os.path.join(ROOT, 'configs', name + '.yaml')), TINY))
    model.eval()  # (Paddle 2.6's Layer.eval returns None: no chaining)
    paddle.save(model.state_dict(), str(tmp / 'tiny.pdparams'))
    return model, tmp, export_onnx(export_inference_model(model, 32, str(tmp / 'inference')))


@pytest.fixture(scope='module', params=['pit_ti', 'pit_ti_distilled'])
def exported(request, tmp_path_factory):
    return export_tiny(request.param, tmp_path_factory.mktemp('onnx'))


@needs_onnx
def test_onnx_has_opset_13_named_images_and_logits_with_one_dynamic_batch_dimension(exported):
    import onnx
    graph_model = onnx.load(exported[2])
    assert max(o.version for o in graph_model.opset_import if o.domain in ('', 'ai.onnx')) >= 13
    (images,), (logits,) = graph_model.graph.input, graph_model.graph.output
    assert (images.name, logits.name) == ('images', 'logits')
    dims = [[d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] for v in (images, logits)]
    assert dims == [['batch', 3, 32, 32], ['batch', 1000]]


@needs_onnx
def test_onnx_has_no_unused_initializers_or_dead_nodes(exported):
    import onnx
    graph = onnx.load(exported[2]).graph
    read = {name for node in graph.node for name in node.input} | {v.name for v in graph.output}
    assert all(init.name in read for init in graph.initializer)
    assert all(any(out in read for out in node.output) for node in graph.node)


@needs_onnx
def test_onnxruntime_logits_match_the_dygraph_model_at_batch_1_and_3(exported):
    model, _, path = exported
    session = create_onnx_session(path)
    x = np.random.RandomState(0).rand(3, 3, 32, 32).astype('float32')
    with paddle.no_grad():
        reference = model(paddle.to_tensor(x)).numpy()
    for batch in (1, 3):
        np.testing.assert_allclose(run_onnx(session, x[:batch]), reference[:batch], rtol=1e-5, atol=1e-5)


@needs_onnx
@pytest.mark.parametrize('opset', [11, 17])
def test_opset_is_configurable(exported, tmp_path, opset):
    import onnx
    model = exported[0]
    path = export_onnx(export_inference_model(model, 32, str(tmp_path / 'inference')), opset=opset)
    assert [o.version for o in onnx.load(path).opset_import if o.domain in ('', 'ai.onnx')] == [opset]


def run_tool(script, *args, cfg=True):
    cmd = [sys.executable, os.path.join(ROOT, *script.split('/')), *args]
    if cfg:
        cmd += ['-cfg', os.path.join(ROOT, 'configs', 'pit_ti.yaml'), '-opts', *TINY]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)


@needs_onnx
@pytest.mark.slow
def test_predict_onnx_model_of_the_export_tool_needs_no_cfg_and_prints_the_dygraph_topk(tmp_path):
    """export_model.py -onnx writes the ONNX file beside the export's inference.yml, which predict.py reads."""
    from PIL import Image
    _, tmp, _ = export_tiny('pit_ti', tmp_path)
    export = run_tool('tools/export_model.py', '-pretrained', str(tmp / 'tiny'), '-save_path',
                      str(tmp / 'cli' / 'inference'), '-onnx')
    assert export.returncode == 0, export.stderr
    Image.fromarray(np.random.RandomState(3).randint(0, 255, (48, 40, 3), dtype=np.uint8)).save(tmp_path / 'a.png')
    image = ['-img_path', str(tmp_path / 'a.png'), '-topk', '3']
    outputs = [run_tool('predict.py', '-pretrained', str(tmp / 'tiny'), *image),
               run_tool('predict.py', '-onnx_model', str(tmp / 'cli' / 'inference.onnx'), *image, cfg=False)]
    for result in outputs:
        assert result.returncode == 0, result.stderr
    dygraph, onnx_run = ([(int(i), float(p)) for i, p in re.findall(r'class_id: (\d+), prob: ([\d.]+)', r.stdout)]
                         for r in outputs)
    assert [i for i, _ in onnx_run] == [i for i, _ in dygraph] and len(dygraph) == 3
    np.testing.assert_allclose([p for _, p in onnx_run], [p for _, p in dygraph], atol=1e-4)


def test_predict_onnx_model_that_is_missing_fails_in_one_line_with_exit_2(tmp_path):
    result = run_tool('predict.py', '-onnx_model', str(tmp_path / 'none.onnx'), '-img_path', str(tmp_path / 'a.png'))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == f"error: ONNX model '{tmp_path / 'none.onnx'}' not found " \
                                                      "(-onnx_model; tools/export_model.py -onnx writes one)"


def test_onnx_session_without_onnxruntime_is_bad_input_in_one_line(tmp_path, monkeypatch):
    (tmp_path / 'm.onnx').write_bytes(b'')
    monkeypatch.setitem(sys.modules, 'onnxruntime', None)  # what `import onnxruntime` meets when it is absent
    with pytest.raises(ExportError, match=r"^onnxruntime is not installed: pip install onnxruntime to run '.*m.onnx'$"):
        create_onnx_session(str(tmp_path / 'm.onnx'))


@needs_onnx
def test_predict_onnx_model_that_onnxruntime_cannot_load_fails_in_one_line_with_exit_2(tmp_path):
    (tmp_path / 'damaged.onnx').write_bytes(b'not a protobuf')
    result = run_tool('predict.py', '-onnx_model', str(tmp_path / 'damaged.onnx'), '-img_path', str(tmp_path / 'a.png'),
                      cfg=False)
    assert result.returncode == 2 and 'Traceback' not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: cannot load ONNX model '{tmp_path / 'damaged.onnx'}': ")
