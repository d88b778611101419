"""tools/export_model.py and the paddle.inference settings: what each device request enables (GPU, TensorRT with a
batch range, fp16, oneDNN), how it reaches a Config, and exports that appear whole or not at all."""
import os
import subprocess
import sys

import paddle
import pytest
from paddle import inference

from errors import error_line
from export import export_inference_model, publish_export
from inference import (GPU_MEMORY_POOL_MB, ExportError, PredictorSettings, apply_settings, class_names, model_files,
                       predictor_settings, read_export_description, tensorrt_config, write_deploy_files)
from conftest import one_line_error, tmpfs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ['DATA.IMAGE_SIZE', '32', 'MODEL.NUM_CLASSES', '10', 'MODEL.TRANS.PATCH_SIZE', '4', 'MODEL.TRANS.STRIDE', '2',
        'MODEL.TRANS.BASE_DIMS', '[8, 8]', 'MODEL.TRANS.DEPTH', '[1, 1]', 'MODEL.TRANS.HEADS', '[2, 4]']
SHAPES_16 = ([1, 3, 224, 224], [16, 3, 224, 224], [16, 3, 224, 224])
CPU = PredictorSettings(device='cpu', gpu_id=None, memory_pool_mb=None, gpu_precision=None, tensorrt=None,
                        trt_precision=None, shape_range=None, legacy_ir=False, onednn=True, threads=3,
                        cpu_precision='fp32')
GPU = PredictorSettings(device='gpu', gpu_id=0, memory_pool_mb=GPU_MEMORY_POOL_MB, gpu_precision='fp32',
                        tensorrt=None, trt_precision=None, shape_range=None, legacy_ir=False, onednn=False,
                        threads=None, cpu_precision=None)


def settings(device='auto', use_trt=False, precision='fp32', version='3.3.1', has_gpu=True, program='.json',
             **kw):
    """predictor_settings of a request for batches of 16 images of 224 px with 3 CPU threads."""
    return predictor_settings(device, use_trt, precision, 16, 224, version, has_gpu, program=program, threads=3, **kw)


@pytest.mark.parametrize('request_, expected', [
    (dict(has_gpu=False), CPU),
    (dict(device='cpu'), CPU),
    (dict(), GPU),
    (dict(device='gpu', version='2.6.2', program='.pdmodel'), GPU),
    (dict(precision='fp16'), GPU._replace(gpu_precision='fp16')),
    (dict(use_trt=True), GPU._replace(tensorrt='paddle.tensorrt', trt_precision='fp32', shape_range=SHAPES_16)),
    (dict(use_trt=True, precision='fp16', version='2.6.2', program='.pdmodel'),
     GPU._replace(tensorrt='Config', trt_precision='fp16', shape_range=SHAPES_16)),
    (dict(use_trt=True, program='.pdmodel'),
     GPU._replace(tensorrt='Config', trt_precision='fp32', shape_range=SHAPES_16, legacy_ir=True)),
    (dict(use_trt=True, version='0.0.0', program='.pdmodel', max_batch=32),
     GPU._replace(tensorrt='Config', trt_precision='fp32', legacy_ir=True,
                  shape_range=([1, 3, 224, 224], [16, 3, 224, 224], [32, 3, 224, 224]))),
])
def test_each_request_enables_what_its_paddle_and_program_can_run(request_, expected):
    assert settings(**request_) == expected


@pytest.mark.parametrize('request_, message', [
    (dict(device='gpu', has_gpu=False), '-device gpu: paddle 3.3.1 here has no GPU to run on'),
    (dict(use_trt=True, has_gpu=False), '-use_trt run on an NVIDIA GPU, and paddle 3.3.1 here has none'),
    (dict(precision='fp16', has_gpu=False), '-precision fp16 run on an NVIDIA GPU'),
    (dict(use_trt=True, precision='fp16', device='cpu'), '-use_trt and -precision fp16 run on the GPU: drop them or '
                                                         '-device cpu'),
    (dict(version='2.6.2', has_gpu=False), 'a .json (PIR) program needs Paddle 3; paddle 2.6.2 reads .pdmodel'),
    (dict(use_trt=True, max_batch=8), 'max_batch 8 is below the batch size 16'),
    (dict(device='tpu'), '-device tpu: expected auto, gpu or cpu'),
])
def test_what_cannot_run_here_is_refused_in_one_line_naming_the_flag(request_, message):
    with pytest.raises(ExportError) as error:
        settings(**request_)
    assert message in str(error.value) and '\n' not in str(error.value)


class ConfigRecorder:
    """Records calls under the paddle.inference.Config method names it is given; other names do not exist."""

    def __init__(self, names):
        self.names, self.calls = set(names), []

    def __getattr__(self, name):
        if name not in self.names:
            raise AttributeError(name)
        return lambda *args, **kwargs: self.calls.append((name, args, kwargs))


CONFIG_METHODS = ['enable_use_gpu', 'enable_new_ir', 'enable_tensorrt_engine', 'set_trt_dynamic_shape_info',
                  'disable_gpu', 'enable_onednn', 'enable_mkldnn', 'set_cpu_math_library_num_threads',
                  'disable_glog_info']


def recorded(record, names=CONFIG_METHODS):
    config = ConfigRecorder(names)
    apply_settings(config, record)
    return config.calls


def test_a_gpu_record_enables_the_gpu_pool_and_its_precision():
    half = inference.PrecisionType.Half
    assert recorded(settings(precision='fp16')) == [('enable_use_gpu', (GPU_MEMORY_POOL_MB, 0, half), {}),
                                                    ('disable_glog_info', (), {})]


def test_tensorrt_through_config_gets_its_precision_and_the_batch_range_of_the_input():
    calls = recorded(settings(use_trt=True, precision='fp16', program='.pdmodel'))
    assert [name for name, _, _ in calls] == ['enable_use_gpu', 'enable_new_ir', 'enable_tensorrt_engine',
                                              'set_trt_dynamic_shape_info', 'disable_glog_info']
    assert calls[0][1] == (GPU_MEMORY_POOL_MB, 0, inference.PrecisionType.Float32)  # TensorRT owns the fp16
    assert calls[1][1] == (False,)
    engine = calls[2][2]
    assert engine['precision_mode'] == inference.PrecisionType.Half and engine['max_batch_size'] == 16
    assert not engine['use_calib_mode'] and not engine['use_static']
    assert calls[3][2] == {'min_input_shape': {'images': [1, 3, 224, 224]},
                           'optim_input_shape': {'images': [16, 3, 224, 224]},
                           'max_input_shape': {'images': [16, 3, 224, 224]}}


def test_paddle_2_keeps_its_program_ir_for_tensorrt():
    names = [name for name, _, _ in recorded(settings(use_trt=True, version='2.6.2', program='.pdmodel'))]
    assert 'enable_new_ir' not in names and 'enable_tensorrt_engine' in names


def test_a_pir_program_gets_tensorrt_from_paddle_tensorrt_not_from_config():
    names = [name for name, _, _ in recorded(settings(use_trt=True))]
    assert names == ['enable_use_gpu', 'disable_glog_info']


@pytest.mark.parametrize('names, called', [(CONFIG_METHODS, 'enable_onednn'),
                                           ([n for n in CONFIG_METHODS if n != 'enable_onednn'], 'enable_mkldnn')])
def test_cpu_records_use_the_current_onednn_name_where_paddle_has_it(names, called):
    assert recorded(CPU, names) == [('disable_gpu', (), {}), (called, (), {}),
                                    ('set_cpu_math_library_num_threads', (3,), {}), ('disable_glog_info', (), {})]


@pytest.mark.parametrize('record', [CPU, GPU, GPU._replace(gpu_precision='fp16'),
                                    settings(use_trt=True, version=paddle.__version__, program='.pdmodel')])
def test_every_config_method_the_settings_call_exists_in_this_paddle(record):
    """Fails when Paddle renames or drops a Config method these settings rely on (run under 2.6 and 3.x)."""
    present = [name for name in CONFIG_METHODS if hasattr(inference.Config, name)]
    assert recorded(record, present)  # AttributeError where the settings call a method this Config lacks


def test_the_cpu_record_applied_to_a_real_config_sets_threads_and_onednn(tiny_export):
    config = inference.Config(*model_files(tiny_export))
    apply_settings(config, CPU)
    onednn = config.onednn_enabled() if hasattr(config, 'onednn_enabled') else config.mkldnn_enabled()
    assert not config.use_gpu() and onednn and config.cpu_math_library_num_threads() == 3
    inference.create_predictor(config)


class TensorRTApi:
    """The three names of paddle.tensorrt.export that tensorrt_config uses, recording what they are given."""

    class PrecisionMode:
        FP32, FP16 = 'FP32', 'FP16'

    @staticmethod
    def Input(**kwargs):
        return ('Input', kwargs)

    @staticmethod
    def TensorRTConfig(**kwargs):
        return ('TensorRTConfig', kwargs)


def test_paddle_tensorrt_converts_with_the_batch_range_and_precision_of_the_record():
    _, config = tensorrt_config(settings(use_trt=True, precision='fp16', max_batch=32), '/tmp/trt/inference',
                                TensorRTApi)
    assert config['precision_mode'] == 'FP16' and config['save_model_dir'] == '/tmp/trt/inference'
    assert config['inputs'] == [('Input', {'min_input_shape': [1, 3, 224, 224], 'optim_input_shape': [16, 3, 224, 224],
                                           'max_input_shape': [32, 3, 224, 224], 'name': 'images'})]


def test_paddle_errors_become_their_message_line():
    paddle_style = ('\n\n--------------------------------------\nC++ Traceback (most recent call last):\n'
                    '0   paddle::AnalysisPredictor::Init\n\n----------------------\nError Message Summary:\n'
                    '----------------------\nInvalidArgumentError: Cannot open file x.pdmodel\n  [Hint: ...]\n')
    assert error_line(RuntimeError(paddle_style)) == 'InvalidArgumentError: Cannot open file x.pdmodel'
    assert error_line(RuntimeError('(Unavailable) Cannot read tensor desc size\n  [Hint: x]')) == \
        '(Unavailable) Cannot read tensor desc size'


# ------------------------------------------------------------------ the deploy files

@pytest.mark.parametrize('crop_pct', [0.875, 0.9, 0.95])
def test_the_deploy_files_give_back_the_crop_fraction_of_the_config_as_it_is(tmp_path, crop_pct):
    from config import build_config
    config = build_config(opts=['DATA.CROP_PCT', str(crop_pct)])
    write_deploy_files(config, class_names(None, 1000), str(tmp_path / 'inference'))
    described, names, _ = read_export_description(str(tmp_path / 'inference'))
    assert described['DATA.CROP_PCT'] == crop_pct and len(names) == 1000  # 0.95: 224 / 235 would be 0.9532


def test_a_deploy_config_without_the_crop_fraction_gives_crop_size_over_resize(tmp_path):
    (tmp_path / 'inference.yml').write_text('Global: {crop_pct: 0.9}\nPreProcess:\n  transform_ops:\n'
                                            '    - ResizeImage: {resize_short: 256}\n    - CropImage: {size: 224}\n')
    # the crop fraction kept there does not give this resize (edited since): the sizes the ops run decide
    assert read_export_description(str(tmp_path / 'inference'))[0]['DATA.CROP_PCT'] == 224 / 256


# ------------------------------------------------------------------ the export tool

@pytest.fixture(scope='module')
def tiny_weights(tmp_path_factory):
    """A 10-class tiny PiT's weights: (path prefix, model)."""
    from config import build_config, merge_opts
    from pit import build_pit
    tmp = tmp_path_factory.mktemp('export')
    paddle.seed(3)
    model = build_pit(merge_opts(build_config(os.path.join(ROOT, 'configs', 'pit_ti.yaml')), TINY))
    model.eval()  # (Paddle 2.6's Layer.eval returns None: no chaining)
    paddle.save(model.state_dict(), str(tmp / 'tiny.pdparams'))
    return str(tmp / 'tiny'), model


@pytest.fixture(scope='module')
def tiny_export(tiny_weights, tmp_path_factory):
    return export_inference_model(tiny_weights[1], 32, str(tmp_path_factory.mktemp('export') / 'inference'))


def export_tool(weights, save_path, *flags):
    cmd = [sys.executable, os.path.join(ROOT, 'tools', 'export_model.py'), '-cfg',
           os.path.join(ROOT, 'configs', 'pit_ti.yaml'), '-pretrained', weights, '-save_path', str(save_path), *flags,
           '-opts', *TINY]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600)


def test_an_export_replaces_every_file_of_an_older_one_and_reports_its_check(tiny_weights, tmp_path):
    stale = [tmp_path / ('inference' + suffix) for suffix in ('.onnx', '.pdmodel', '.yml')]
    for path in stale:
        path.write_text('older export')
    result = export_tool(tiny_weights[0], tmp_path / 'inference')
    assert result.returncode == 0, result.stderr
    assert 'checked through paddle.inference on cpu, oneDNN' in result.stdout
    program = '.json' if paddle.__version__.split('.')[0] != '2' else '.pdmodel'
    expected = {'inference' + s for s in (program, '.pdiparams', '.yml', '_class_id_map.txt')}
    assert set(os.listdir(tmp_path)) - {'inference.pdiparams.info'} == expected  # no staging folder, nothing stale
    assert 'older export' not in (tmp_path / 'inference.yml').read_text()


def test_an_export_into_a_read_only_folder_fails_in_one_line_before_any_work(tiny_weights, tmp_path):
    with tmpfs(tmp_path / 'ro', readonly=True) as folder:
        line = one_line_error(export_tool(tiny_weights[0], folder / 'inference'), 2)
        assert f"folder '{folder}' is not writable: Read-only file system" in line
        assert os.listdir(folder) == []


def test_an_export_that_fails_late_leaves_nothing_behind(tiny_weights, tmp_path):
    """The .yml name is taken by a folder: the model, params and class map written before it must not appear."""
    (tmp_path / 'inference.yml').mkdir()
    line = one_line_error(export_tool(tiny_weights[0], tmp_path / 'inference'), 1)
    assert f"'{tmp_path / 'inference.yml'}' is a folder" in line
    assert os.listdir(tmp_path) == ['inference.yml'] and os.listdir(tmp_path / 'inference.yml') == []


def test_a_failed_move_puts_the_older_export_back_whole(tmp_path, monkeypatch):
    staging, folder = tmp_path / 'staging', tmp_path / 'out'
    staging.mkdir()
    folder.mkdir()
    for suffix in ('.json', '.pdiparams', '.yml', '_class_id_map.txt'):
        (staging / ('inference' + suffix)).write_text('new')
        (folder / ('inference' + suffix)).write_text('old')
    (folder / 'inference.onnx').write_text('old')
    real_replace, moves = os.replace, []

    def failing_replace(src, dst):  # the disk fails at the 6th rename: the new .yml into place
        moves.append(dst)
        if len(moves) == 6:
            raise OSError(5, 'Input/output error')
        real_replace(src, dst)
    monkeypatch.setattr(os, 'replace', failing_replace)
    with pytest.raises(OSError):
        publish_export(str(staging), 'inference', str(folder))
    assert {p: (folder / p).read_text() for p in os.listdir(folder)} == {
        'inference' + s: 'old' for s in ('.json', '.pdiparams', '.yml', '_class_id_map.txt', '.onnx')}


def test_a_checkpoint_whose_class_list_does_not_fit_its_model_is_refused(tiny_weights, tmp_path):
    paddle.save({'model': tiny_weights[1].state_dict(), 'classes': ['cat', 'dog']}, str(tmp_path / 'ckpt.pdparams'))
    line = one_line_error(export_tool(str(tmp_path / 'ckpt'), tmp_path / 'out' / 'inference'), 2)
    assert f"the class list of '{tmp_path / 'ckpt.pdparams'}' names 2 classes, but the model" in line
    assert line.endswith('has 10')
    assert not (tmp_path / 'out').exists()


def test_an_onnx_opset_paddle2onnx_would_abort_on_is_refused_first(tiny_weights, tmp_path):
    line = one_line_error(export_tool(tiny_weights[0], tmp_path / 'inference', '-onnx', '-opset', '23'), 2)
    assert line == 'error: -opset 23: paddle2onnx exports PiT at opsets 9 to 21'
    assert os.listdir(tmp_path) == []
