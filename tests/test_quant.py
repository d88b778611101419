"""CPU deployment in bf16 and int8: what each precision enables on paddle.inference's Config, what is refused (and
why, in one line), the precision an export records and predict runs it at, and the parity of every format on a
small trained PiT (dygraph, paddle.inference fp32/bf16/int8, ONNX fp32)."""
import importlib.util
import os
import subprocess
import sys

import numpy as np
import paddle
import pytest
import yaml
from paddle import inference

from conftest import one_line_error
from inference import (CPU_PRECISION_FLAGS, ExportError, apply_settings, cpu_flags, create_predictor,
                       onednn_summaries_kept_apart, predictor_settings, quantized_ops, run_predictor)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ['DATA.IMAGE_SIZE', '32', 'MODEL.NUM_CLASSES', '10', 'MODEL.TRANS.PATCH_SIZE', '4', 'MODEL.TRANS.STRIDE', '2',
        'MODEL.TRANS.BASE_DIMS', '[8, 8]', 'MODEL.TRANS.DEPTH', '[1, 1]', 'MODEL.TRANS.HEADS', '[2, 4]']
ALL_FLAGS = frozenset(flag for flags in CPU_PRECISION_FLAGS.values() for flag in flags)
HERE = cpu_flags()
needs_bf16 = pytest.mark.skipif(not HERE & set(CPU_PRECISION_FLAGS['bf16']),
                                reason='this CPU has no avx512_bf16 / amx_bf16: bf16 is refused here')
needs_int8 = pytest.mark.skipif(not HERE & set(CPU_PRECISION_FLAGS['int8']),
                                reason='this CPU has no avx512_vnni / avx_vnni / amx_int8: int8 is refused here')


def settings(precision, device='auto', has_gpu=False, flags=ALL_FLAGS, **kw):
    return predictor_settings(device, False, precision, 8, 224, '3.3.1', has_gpu, threads=2, flags=flags, **kw)


# ------------------------------------------------------------------ what a precision enables, what is refused

@pytest.mark.parametrize('precision', ['bf16', 'int8'])
def test_cpu_precisions_run_on_onednn_and_auto_picks_the_cpu_even_beside_a_gpu(precision):
    record = settings(precision, has_gpu=True)
    assert (record.device, record.onednn, record.cpu_precision) == ('cpu', True, precision)


@pytest.mark.parametrize('request_, message', [
    (dict(precision='bf16', flags=frozenset({'avx512f', 'avx512_vnni'})),
     '-precision bf16: this CPU lacks avx512_bf16 / amx_bf16'),
    (dict(precision='int8', flags=frozenset({'avx2', 'avx512f'})), '-precision int8: this CPU lacks avx512_vnni'),
    (dict(precision='bf16', onednn=False), 'paddle 3.3.1 here is built without it'),
    (dict(precision='int8', device='gpu', has_gpu=True), '-precision int8 runs on the CPU (oneDNN): use -device cpu'),
    (dict(precision='int4'), '-precision int4: expected fp32, fp16, bf16, int8'),
    (dict(precision='bf16', program='.pdmodel'), 'paddle 3.3.1 runs .pdmodel programs (Paddle 2.6 exports) in bf16'),
])
def test_a_precision_this_cpu_or_paddle_cannot_run_is_refused_naming_what_is_missing(request_, message):
    with pytest.raises(ExportError) as error:
        settings(**request_)
    assert message in str(error.value) and '\n' not in str(error.value)


class Recorder:
    """Records calls under the Config method names it is given; other names do not exist."""

    def __init__(self, names):
        self.names, self.calls = set(names), []

    def __getattr__(self, name):
        if name not in self.names:
            raise AttributeError(name)
        return lambda *args: self.calls.append(name)


BASE = ['disable_gpu', 'set_cpu_math_library_num_threads', 'disable_glog_info']


@pytest.mark.parametrize('precision, current, older', [('bf16', 'enable_onednn_bfloat16', 'enable_mkldnn_bfloat16'),
                                                       ('int8', 'enable_onednn_int8', 'enable_mkldnn_int8')])
def test_a_cpu_precision_uses_the_current_onednn_name_where_paddle_has_it_else_the_older(precision, current, older):
    for names, onednn, called in ((['enable_onednn', current], 'enable_onednn', current),
                                  (['enable_mkldnn', older], 'enable_mkldnn', older)):
        config = Recorder(BASE + names)
        apply_settings(config, settings(precision))
        assert config.calls == ['disable_gpu', onednn, called, 'set_cpu_math_library_num_threads', 'disable_glog_info']


@pytest.mark.parametrize('precision', ['bf16', 'int8'])
def test_every_config_method_a_cpu_precision_calls_exists_in_this_paddle(precision):
    """Fails when Paddle drops both names of a method (run under 2.6 and 3.x)."""
    apply_settings(inference.Config(), settings(precision))


# ------------------------------------------------------------------ the export tool

@pytest.fixture(scope='module')
def tiny_weights(tmp_path_factory):
    from config import build_config, merge_opts
    from pit import build_pit
    tmp = tmp_path_factory.mktemp('quant')
    paddle.seed(3)
    model = build_pit(merge_opts(build_config(os.path.join(ROOT, 'configs', 'pit_ti.yaml')), TINY))
    paddle.save(model.state_dict(), str(tmp / 'tiny.pdparams'))
    return str(tmp / 'tiny')


def run_tool(script, *args, opts=TINY):
    cmd = [sys.executable, os.path.join(ROOT, script), '-cfg', os.path.join(ROOT, 'configs', 'pit_ti.yaml'), *args,
           '-opts', *opts]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600)


def test_int8_without_calibration_data_is_refused_before_any_work(tiny_weights, tmp_path):
    line = one_line_error(run_tool('tools/export_model.py', '-pretrained', tiny_weights, '-save_path',
                                   str(tmp_path / 'out' / 'inference'), '-precision', 'int8'), 2)
    assert line == ('error: -precision int8 needs -calib_data: a folder of images or a list file to calibrate on '
                    '(a few dozen images of the task, e.g. the val set)')
    assert not (tmp_path / 'out').exists()


def calibration_data(tmp, case):
    """(the -calib_data path of a case, the path its error names)."""
    folder = tmp / 'calib'
    folder.mkdir()
    if case == 'missing':
        return folder / 'missing', folder / 'missing'
    if case == 'empty':
        (folder / 'notes.txt').write_text('no images here')
        return folder, folder
    (folder / 'broken.png').write_text('not an image')
    (folder / 'list.txt').write_text('broken.png 0\n')
    return folder / 'list.txt', folder / 'broken.png'


@needs_int8
@pytest.mark.parametrize('case, problem', [
    ('missing', "-calib_data '{}' not found (expected a folder of images or a list file)"),
    ('empty', "-calib_data '{}' holds no images"),
    ('undecodable', "-calib_data: cannot read image '{}'"),
])
def test_unreadable_calibration_data_is_refused_in_one_line_naming_it(tiny_weights, tmp_path, case, problem):
    calib, named = calibration_data(tmp_path, case)
    line = one_line_error(run_tool('tools/export_model.py', '-pretrained', tiny_weights, '-save_path',
                                   str(tmp_path / 'out' / 'inference'), '-precision', 'int8', '-calib_data',
                                   str(calib)), 2)
    assert problem.format(named) in line
    assert not (tmp_path / 'out').exists()


@needs_bf16
def test_a_bf16_export_records_its_precision_and_predict_runs_it_at_bf16(tiny_weights, digits, tmp_path):
    prefix = str(tmp_path / 'inference')
    result = run_tool('tools/export_model.py', '-pretrained', tiny_weights, '-save_path', prefix, '-precision',
                      'bf16', '-device', 'cpu')
    assert result.returncode == 0, result.stderr
    assert 'checked through paddle.inference on cpu, oneDNN bf16' in result.stdout
    with open(prefix + '.yml', encoding='utf-8') as f:
        assert yaml.safe_load(f)['Global']['precision'] == 'bf16'
    result = run_tool('predict.py', '-infer_model', prefix, '-img_path', os.path.join(digits, 'val', '0'))
    assert result.returncode == 0, result.stderr
    assert 'on cpu, oneDNN bf16' in result.stdout.splitlines()[-1]
    result = run_tool('predict.py', '-infer_model', prefix, '-precision', 'fp32', '-img_path',
                      os.path.join(digits, 'val', '0'))
    assert result.returncode == 0 and 'oneDNN bf16' not in result.stdout.splitlines()[-1], result.stderr


# ------------------------------------------------------------------ what int8 quantisation does to the program

def linear_inputs(prefix):
    """[(op type, Y, the type of the op that writes Y or None, whether Y is persistable)] of every matmul_v2 /
    matmul / mul of the legacy program at prefix."""
    from paddle.base.framework import Program
    from quantize import legacy_programs
    with open(prefix + '.pdmodel', 'rb') as f:
        serialized = f.read()
    with legacy_programs():
        paddle.enable_static()
        try:
            block = Program.parse_from_string(serialized).global_block()
            writers = {name: op.type for op in block.ops for name in op.output_arg_names}
            return [(op.type, op.input('Y')[0], writers.get(op.input('Y')[0]), block.var(op.input('Y')[0]).persistable)
                    for op in block.ops if op.type in ('matmul_v2', 'matmul', 'mul')]
        finally:
            paddle.disable_static()


def test_int8_quantisation_reads_each_linear_weight_through_an_op_and_keeps_the_outputs(tmp_path):
    """Each Linear's weight reaches its matmul through an `assign` (quantize.route_linear_weights), so that PTQ
    calibrates it and oneDNN's int8 fc keeps that scale; the attention matmuls and the logits are unchanged."""
    import shutil
    from config import build_config, merge_opts
    from export import export_inference_model
    from pit import build_pit
    from quantize import route_linear_weights
    paddle.seed(3)
    model = build_pit(merge_opts(build_config(os.path.join(ROOT, 'configs', 'pit_ti.yaml')), TINY))
    plain = export_inference_model(model, 32, str(tmp_path / 'plain' / 'inference'), legacy_program=True)
    routed = str(tmp_path / 'routed' / 'inference')
    shutil.copytree(tmp_path / 'plain', tmp_path / 'routed')
    route_linear_weights(routed + '.pdmodel')
    before, after = linear_inputs(plain), linear_inputs(routed)
    linears = [(op, weight) for op, weight, writer, persistable in before if persistable and writer is None]
    assert len(linears) == 10  # qkv, proj, fc1, fc2 of 2 blocks, the pooling's class-token Linear, the head
    assert [(op, weight + '.routed', 'assign', False) for op, weight in linears] == \
        [row for row in after if row[1].endswith('.routed')]
    assert [row for row in before if not row[3]] == [row for row in after if not row[1].endswith('.routed')]
    images = np.random.RandomState(0).rand(4, 3, 32, 32).astype('float32')
    logits = [run_predictor(create_predictor(prefix, device='cpu'), images) for prefix in (plain, routed)]
    assert np.array_equal(logits[0], logits[1])


# ------------------------------------------------------------------ parity of the formats on a trained PiT

TRAIN = ['DATA.IMAGE_SIZE', '32', 'MODEL.NUM_CLASSES', '10', 'MODEL.TRANS.PATCH_SIZE', '4', 'MODEL.TRANS.STRIDE',
         '2', 'MODEL.TRANS.BASE_DIMS', '[16, 16, 16]', 'MODEL.TRANS.DEPTH', '[1, 2, 2]', 'MODEL.TRANS.HEADS',
         '[2, 4, 8]']


def folder_images(folder, transform):
    """(float32 [N, 3, S, S], labels) of a class-folder data set through transform."""
    from datasets import load_rgb
    images, labels = [], []
    for label, name in enumerate(sorted(os.listdir(folder))):
        for file in sorted(os.listdir(os.path.join(folder, name))):
            images.append(transform(load_rgb(os.path.join(folder, name, file))))
            labels.append(label)
    return np.stack(images).astype('float32'), np.array(labels)


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    """(model, val images, val labels, data folder): a small PiT trained 6 epochs on 1,000 digits, above 75% top-1."""
    from config import build_config, merge_opts
    from demo_data import write_dataset
    from pit import build_pit
    from transforms import build_transforms
    root = str(tmp_path_factory.mktemp('digits'))
    write_dataset(root, source='digits', image_size=32, train_per_class=100, val_per_class=40)
    config = merge_opts(build_config(os.path.join(ROOT, 'configs', 'pit_ti.yaml')), TRAIN)
    transform = build_transforms(config, 'val')
    train_x, train_y = folder_images(os.path.join(root, 'train'), transform)
    val_x, val_y = folder_images(os.path.join(root, 'val'), transform)
    paddle.seed(0)
    model = build_pit(config)
    optimizer = paddle.optimizer.AdamW(2e-3, parameters=model.parameters(), weight_decay=0.01)
    order = np.random.RandomState(0)
    for _ in range(6):
        for batch in np.array_split(order.permutation(len(train_x)), len(train_x) // 50):
            loss = paddle.nn.functional.cross_entropy(model(paddle.to_tensor(train_x[batch])),
                                                      paddle.to_tensor(train_y[batch]))
            loss.backward()
            optimizer.step()
            optimizer.clear_grad()
    model.eval()
    with paddle.no_grad():
        logits = model(paddle.to_tensor(val_x)).numpy()
    assert (logits.argmax(1) == val_y).mean() > 0.75  # a trained model (chance: 10%), or the parity below says little
    return model, val_x, logits, root


def agreement(a, b):
    return float((a.argmax(1) == b.argmax(1)).mean())


@pytest.mark.slow
def test_every_format_of_a_trained_pit_gives_its_logits(trained, tmp_path):
    """fp32 everywhere within 1e-4 of the largest logit. bf16 (8 mantissa bits) within 3% of it and 98% top-1
    agreement (measured: 0.7-0.9%, 99.75-100%). int8, calibrated on 64 of the images, within 15% and 97% (measured:
    9.1%, 98.5% on Paddle 3.3.1; 7.5%, 100% on 2.6.2; 37% and 96.5% when oneDNN's int8 fc layers computed their
    own weight scales, see quantize.route_linear_weights)."""
    from export import export_inference_model, export_onnx
    model, images, dygraph, _ = trained
    scale = float(np.abs(dygraph).max())
    prefix = export_inference_model(model, 32, str(tmp_path / 'inference'))
    runs = {'fp32': run_predictor(create_predictor(prefix, device='cpu', batch=len(images)), images)}
    if importlib.util.find_spec('onnxruntime') and export_onnx(prefix):
        from inference import create_onnx_session, run_onnx
        runs['onnx'] = run_onnx(create_onnx_session(prefix + '.onnx'), images)
    for name in ('fp32', 'onnx'):
        if name in runs:
            assert np.abs(runs[name] - dygraph).max() <= 1e-4 * scale, name
    bounds = {}
    if HERE & set(CPU_PRECISION_FLAGS['bf16']):
        runs['bf16'] = run_predictor(create_predictor(prefix, device='cpu', precision='bf16'), images)
        bounds['bf16'] = (0.03, 0.98)
    if HERE & set(CPU_PRECISION_FLAGS['int8']):
        from quantize import quantize_export
        int8 = export_inference_model(model, 32, str(tmp_path / 'int8'), legacy_program=True)
        quantize_export(int8, images[:64], 'images')
        runs['int8'] = run_predictor(create_predictor(int8, device='cpu', precision='int8'), images)
        bounds['int8'] = (0.15, 0.97)
    for name, (error, agrees) in bounds.items():
        assert np.abs(runs[name] - dygraph).max() <= error * scale, name
        assert agreement(runs[name], dygraph) >= agrees, name


@pytest.mark.slow
@needs_int8
def test_an_int8_export_is_made_with_this_paddle_and_predict_runs_it_at_int8(trained, tmp_path):
    """With -onnx, also its fp32 ONNX copy where paddle2onnx is installed (paddle2onnx 2, for Paddle 3, aborts on
    the legacy program an int8 export holds: the copy comes from a trace of its own)."""
    model, images, dygraph, root = trained
    paddle.save(model.state_dict(), str(tmp_path / 'trained.pdparams'))
    out = tmp_path / 'out'
    result = run_tool('tools/export_model.py', '-pretrained', str(tmp_path / 'trained'), '-save_path',
                      str(out / 'inference'), '-precision', 'int8', '-calib_data', os.path.join(root, 'train'),
                      '-onnx', opts=TRAIN)
    assert result.returncode == 0, result.stderr[-3000:]
    assert 'int8 calibrated on 64 images' in result.stdout
    assert 'checked through paddle.inference on cpu, oneDNN int8' in result.stdout
    files = ['inference.pdiparams', 'inference.pdmodel', 'inference.yml', 'inference_class_id_map.txt']
    if all(importlib.util.find_spec(name) for name in ('paddle2onnx', 'onnx', 'onnxruntime')):
        from inference import create_onnx_session, run_onnx
        logits = run_onnx(create_onnx_session(str(out / 'inference.onnx')), images)
        assert np.abs(logits - dygraph).max() <= 1e-4 * np.abs(dygraph).max()
        files.append('inference.onnx')
    assert sorted(os.listdir(out)) == sorted(files)
    result = run_tool('predict.py', '-infer_model', str(out / 'inference'), '-img_path',
                      os.path.join(root, 'val', '3'), opts=TRAIN)
    assert result.returncode == 0, result.stderr[-3000:]
    assert 'on cpu, oneDNN int8' in result.stdout.splitlines()[-1]
    # the oneDNN passes' summaries are kept off stderr, and they quantised the Linears (else a warning says so)
    assert '---' not in result.stderr and 'run in fp32' not in result.stderr, result.stderr[-3000:]


def test_onednn_pass_summaries_are_kept_apart_and_counted_and_other_stderr_passes_through(capfd):
    """paddle.inference's C++ writes the oneDNN int8 passes' summaries to file descriptor 2, past glog's level."""
    summaries = []
    with onednn_summaries_kept_apart(summaries):
        os.write(2, b'\x1b[37m---    quantized 23 fc ops \x1b[0m\n\x1b[37m---    quantized 3 fused_conv2d ops \x1b[0m\n'
                    b'a real error line\n\x1b[37m---    quantized 2 fc ops with residual connection\x1b[0m\n'
                    b'---    squashed 84 dequantize-quantize pairs\n')
    assert capfd.readouterr().err == 'a real error line\n'
    assert len(summaries) == 4
    assert quantized_ops(summaries) == {'fc': 25, 'conv2d': 3}
