"""Hostile corners through the real entry points: a machine without a C++ compiler or with a HOME nobody can
write, paths with spaces, values of the wrong type in any config key, inputs smaller than a patch, weights
holding NaN/Inf, and list files whose bad line sits far down. Each ends in one line naming the thing (or, for
an optional feature, one warning while the run goes on), never a traceback or a late failure."""
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tarfile

import numpy as np
import paddle
import pytest

import cpu_kernels
from conftest import TINY_ONE_EPOCH, one_line_error
from demo_data import write_dataset
from pit import PiTFeatures, PoolingTransformer
from tests.torch_zip import save_torch_zip
from weights import read_paddle_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMPILER = re.compile(r'(^|.*-)(g\+\+|c\+\+|gcc|cc|clang|clang\+\+)(-[\d.]+)?$')


@pytest.fixture(scope='module')
def listed(tmp_path_factory):
    """The digits in the list layout: {train,val}_list.txt over images/<class>/*.png."""
    root = str(tmp_path_factory.mktemp('listed'))
    write_dataset(root, source='digits', layout='list', image_size=32, train_per_class=4, val_per_class=2)
    return root


@pytest.fixture(scope='module')
def trained(digits, tmp_path_factory):
    """A checkpoint of the tiny model, trained one epoch."""
    save = tmp_path_factory.mktemp('trained')
    result = train(digits, save)
    assert result.returncode == 0, result.stderr[-2000:]
    return str(save / 'checkpoint-latest.pdparams')


def run(*cmd, env=None, timeout=600):
    return subprocess.run([sys.executable, *cmd], capture_output=True, text=True, cwd=ROOT, env=env, timeout=timeout)


def train(data, save, *flags, opts=(), env=None):
    return run('main_single_gpu.py', '-cfg', 'configs/pit_ti.yaml', '-data_path', str(data), '-save_path', str(save),
               '-batch_size', '8', *flags, '-opts', *TINY_ONE_EPOCH, *opts, env=env)


def predict(weights, images, env=None):
    return run('predict.py', '-pretrained', weights, '-img_path', images, env=env)


def output(result):
    return result.stdout + result.stderr


# ---------------------------------------------------------------- the environment (class 3)

def path_without_compilers(folder):
    """A PATH of one folder holding links to every program of this PATH but the C/C++ compilers."""
    os.makedirs(folder, exist_ok=True)
    for directory in reversed(os.environ['PATH'].split(os.pathsep)):
        if not os.path.isdir(directory):
            continue
        for name in os.listdir(directory):
            target = os.path.join(directory, name)
            if not COMPILER.match(name) and os.access(target, os.X_OK):
                link = os.path.join(folder, name)
                if os.path.lexists(link):
                    os.remove(link)
                os.symlink(target, link)
    return folder


def env_without(tmp_path, **extra):
    env = dict(os.environ, PATH=path_without_compilers(str(tmp_path / 'bin')), **extra)
    for name in ('CC', 'CXX', 'PADDLE_EXTENSION_DIR'):
        env.pop(name, None)
    return env


def test_without_a_compiler_training_and_predict_say_so_once_and_go_on(digits, tmp_path):
    env = env_without(tmp_path)
    assert shutil.which('g++', path=env['PATH']) is None and shutil.which('gcc', path=env['PATH']) is None
    result = train(digits, tmp_path / 'run', env=env)
    assert result.returncode == 0 and 'Traceback' not in output(result), output(result)[-3000:]
    assert output(result).count('CPU kernels') == 1
    assert 'CPU kernels: no C++ compiler found (g++, gcc not on PATH' in output(result)
    assert 'using paddle kernels' in output(result) and 'Epoch 1 done' in result.stdout
    shown = predict(str(tmp_path / 'run' / 'checkpoint-latest'), os.path.join(digits, 'heldout'), env=env)
    assert shown.returncode == 0 and shown.stdout.count('class_id') == 50
    assert shown.stderr.count('no C++ compiler found') == 1 and 'Traceback' not in shown.stderr


@pytest.mark.slow
def test_without_a_compiler_a_two_process_run_says_so_once_on_the_console(digits, tmp_path):
    result = run('main_multi_gpu.py', '-ngpus', '2', '-cfg', 'configs/pit_ti.yaml', '-data_path', digits,
                 '-save_path', str(tmp_path / 'run'), '-batch_size', '4', '-opts', *TINY_ONE_EPOCH,
                 env=env_without(tmp_path))
    assert result.returncode == 0 and 'Traceback' not in output(result), output(result)[-3000:]
    assert output(result).count('no C++ compiler found') == 1
    assert 'no C++ compiler found' in (tmp_path / 'run' / 'log_rank1.txt').read_text()  # each rank's log has it


BROKEN_BUILD = r'''
import sys
sys.path.insert(0, sys.argv[1])
import quiet, cpu_kernels
cpu_kernels.SOURCE = sys.argv[2]
for _ in range(3):  # every model a process builds asks; the build runs once
    cpu_kernels.for_model()
print(cpu_kernels.status())
'''


@pytest.mark.slow
def test_a_failed_build_is_one_warning_with_the_compilers_first_error_line(tmp_path):
    source = tmp_path / 'cpu_kernels.cc'
    source.write_text(open(os.path.join(ROOT, 'csrc', 'cpu_kernels.cc')).read() + '\nthis is not C++;\n')
    env = dict(os.environ, PADDLE_EXTENSION_DIR=str(tmp_path / 'build'))
    result = subprocess.run([sys.executable, '-c', BROKEN_BUILD, ROOT, str(source)], capture_output=True,
                            text=True, env=env, timeout=600)
    status = result.stdout.strip().splitlines()[-1]
    assert re.match(r'CPU kernels: could not be built \(.*cpu_kernels\.cc:\d+:\d+: error: ', status), status
    log = re.search(r'full output: (\S+build\.log)\)', status).group(1)
    assert 'this' in open(log).read()  # the compiler's whole output is kept, not printed
    assert 'Traceback' not in result.stderr and result.stderr.count('RuntimeWarning: CPU kernels') == 1


def test_a_home_nobody_can_write_turns_kernels_and_visualdl_off_with_one_warning_each(digits, tmp_path):
    """Tests run as root, which ignores permission bits: HOME is a path under a regular file, which no one can
    create (ENOTDIR), so ~/.cache/paddle_extensions and ~/.visualdl really cannot be written."""
    (tmp_path / 'file').write_text('not a folder')
    env = dict(os.environ, HOME=str(tmp_path / 'file' / 'home'))
    env.pop('PADDLE_EXTENSION_DIR', None)
    result = train(digits, tmp_path / 'run', env=env)
    text = output(result)
    assert result.returncode == 0 and 'Traceback' not in text, text[-3000:]
    assert text.count('CPU kernels') == 1 and 'cannot write their build folder' in text
    assert 'paddle_extensions' in text and 'set PADDLE_EXTENSION_DIR' in text
    if importlib.util.find_spec('visualdl'):
        assert text.count('VisualDL records off') == 1 and 'cannot write ~/.visualdl (Not a directory' in text
    assert (tmp_path / 'run' / 'checkpoint-latest.pdparams').is_file() and 'Epoch 1 done' in result.stdout


def list_archive(digits, archive):
    """An AI Studio dataset archive: Light_ILSVRC2012/ in the list layout, written to the path archive."""
    staging = os.path.join(os.path.dirname(archive), 'staging', 'Light_ILSVRC2012')
    for split in ('train', 'val'):
        lines = []
        for label, name in enumerate(sorted(os.listdir(os.path.join(digits, split)))):
            for file in sorted(os.listdir(os.path.join(digits, split, name))):
                os.makedirs(os.path.join(staging, split, name), exist_ok=True)
                shutil.copy(os.path.join(digits, split, name, file), os.path.join(staging, split, name, file))
                lines.append(f'{split}/{name}/{file} {label}\n')
        with open(os.path.join(staging, f'{split}_list.txt'), 'w') as f:
            f.writelines(lines)
    with tarfile.open(archive, 'w') as tar:
        tar.add(staging, arcname='Light_ILSVRC2012')


@pytest.mark.slow
@pytest.mark.journey
def test_run_sh_with_spaces_in_every_path(digits, tmp_path):
    datasets = tmp_path / 'mounted datasets'
    (datasets / 'data 101').mkdir(parents=True)
    list_archive(digits, str(datasets / 'data 101' / 'Light_ILSVRC2012 part 0.tar'))
    workspace = tmp_path / 'work space'
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ['PATH'],
               WORKSPACE=str(workspace), DATA_ROOT=str(datasets), NGPUS='1', BATCH_SIZE='8',
               EXTRA_OPTS=' '.join(TINY_ONE_EPOCH).replace(', ', ','))
    env.pop('OMP_NUM_THREADS', None)
    result = subprocess.run(['bash', 'run.sh'], capture_output=True, text=True, cwd=ROOT, env=env, timeout=900)
    assert result.returncode == 0, output(result)[-3000:]
    assert f'unpacking {datasets}/data 101/Light_ILSVRC2012 part 0.tar' in result.stdout
    assert (workspace / 'output' / 'pit_ti' / 'checkpoint-latest.pdparams').is_file()
    assert (workspace / 'imagenet' / 'Light_ILSVRC2012' / 'train_list.txt').is_file()


# ---------------------------------------------------------------- values of the wrong type (class 4)

@pytest.mark.parametrize('opts, expected', [
    (['TRAIN.OPTIMIZER.BETAS', "['a', 0.9]"], "'TRAIN.OPTIMIZER.BETAS' in -opts expects a list of 2 numbers"),
    (['DATA.IMAGENET_MEAN', "[0.5, 'x', 0.5]"], "'DATA.IMAGENET_MEAN' in -opts expects a list of 3 numbers"),
    (['AUG.SCALE', '[0.1]'], "'AUG.SCALE' in -opts expects a list of 2 numbers, got [0.1]"),
    (['MODEL.TRANS.HEADS', '[2, four, 8]'], "'MODEL.TRANS.HEADS' in -opts expects a list of integers"),
    (['TRAIN.BASE_LR', '.nan'], "'TRAIN.BASE_LR' in -opts expects a finite number, got nan"),
    (['SAVE', 'None'], "'SAVE' in -opts expects a string, got None"),
])
def test_a_wrong_value_in_any_key_is_one_line_naming_the_key(tmp_path, opts, expected):
    result = train(tmp_path / 'no_data', tmp_path / 'save', opts=opts)
    assert expected in one_line_error(result, 2)
    assert not (tmp_path / 'save').exists()


def test_a_wrong_list_item_in_a_yaml_file_is_one_line_naming_key_and_file(tmp_path):
    cfg = tmp_path / 'mine.yaml'
    cfg.write_text("BASE: ['" + os.path.join(ROOT, 'configs', 'pit_ti.yaml') + "']\nAUG:\n  RATIO: [0.75, high]\n")
    result = run('main_single_gpu.py', '-cfg', str(cfg), '-data_path', str(tmp_path))
    line = one_line_error(result, 2)
    assert "'AUG.RATIO'" in line and 'mine.yaml' in line and 'expects a list of 2 numbers' in line


# ---------------------------------------------------------------- wrong answers without an error (class 5)

SIZES = [(16, 8), (14, 7), (4, 2), (7, 3)]  # (patch, stride) of the variants and odd ones


def tiny_pit(patch, stride, kernels):
    model = PoolingTransformer(image_size=4 * patch, patch_size=patch, stride=stride, base_dims=(8, 8, 8),
                               depth=(1, 1, 1), heads=(2, 2, 2), num_classes=5, cpu_kernels=kernels)
    model.eval()  # (Paddle 2.6's Layer.eval returns None: no chaining)
    return model


@pytest.mark.parametrize('kernels', [True, False])
@pytest.mark.parametrize('patch, stride', SIZES)
def test_inputs_smaller_than_a_patch_are_refused_naming_the_sizes(patch, stride, kernels):
    model = tiny_pit(patch, stride, kernels)
    for height, width in ((patch - 1, 3 * patch), (3 * patch, patch - 1), (1, 1), (patch // 2, patch // 2)):
        for net in (model, PiTFeatures(model)):
            with pytest.raises(ValueError, match=f'input of {height}x{width} pixels is smaller than one patch of '
                                                 f'{patch}x{patch}'):
                net(paddle.zeros([1, 3, height, width]))


@pytest.mark.parametrize('patch, stride', SIZES)
def test_every_input_of_at_least_a_patch_gives_the_same_finite_answer_on_both_kernel_paths(patch, stride):
    if not cpu_kernels.load():
        pytest.skip(cpu_kernels.status())
    fast, plain = tiny_pit(patch, stride, True), tiny_pit(patch, stride, False)
    plain.set_state_dict(fast.state_dict())
    rng = np.random.RandomState(patch)
    for height, width in ((patch, patch), (patch, patch + stride - 1), (patch + 1, 3 * patch + 5)):
        x = paddle.to_tensor(rng.randn(2, 3, height, width).astype('float32'))
        with paddle.no_grad():
            outputs = [(net(x), PiTFeatures(net)(x)) for net in (fast, plain)]
        (logits, maps), (want_logits, want_maps) = outputs
        assert np.isfinite(logits.numpy()).all()
        np.testing.assert_allclose(logits.numpy(), want_logits.numpy(), rtol=1e-4, atol=1e-5)
        for got, want in zip(maps, want_maps):
            np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-4, atol=1e-5)


@pytest.fixture(scope='module')
def fused():
    if not cpu_kernels.load():
        pytest.skip(cpu_kernels.status())
    return cpu_kernels.for_model()


def test_the_kernel_convs_refuse_an_input_smaller_than_their_kernel_with_the_sizes(fused):
    weight, bias = paddle.randn([4, 3, 16, 16]), paddle.randn([4])
    with pytest.raises(Exception, match=r'pit_patch_conv input of 15x40 pixels \(padding 0\) is smaller than its '
                                        r'16x16 kernel'):
        fused.conv2d(paddle.randn([1, 3, 15, 40]), weight, bias, 8, 0, 1)
    depthwise = paddle.randn([6, 1, 5, 5])
    with pytest.raises(Exception, match=r'pit_depthwise_conv input of 2x9 pixels \(padding 1\) is smaller than its '
                                        r'5x5 kernel'):
        fused.conv2d(paddle.randn([1, 3, 2, 9]), depthwise, paddle.randn([6]), 2, 1, 3)


@pytest.mark.parametrize('kernel, stride, padding, groups', [(16, 8, 0, 1), (7, 3, 0, 1), (3, 2, 1, 3), (5, 2, 2, 3)])
def test_the_kernel_convs_match_paddle_at_every_size_from_one_kernel_up(fused, kernel, stride, padding, groups):
    rng = np.random.RandomState(kernel)
    out_channels = 3 if groups == 1 else 6
    weight = paddle.to_tensor(rng.randn(out_channels, 3 // groups, kernel, kernel).astype('float32'))
    bias = paddle.to_tensor(rng.randn(out_channels).astype('float32'))
    smallest = max(kernel - 2 * padding, 1)
    for height in range(smallest, smallest + 2 * stride + 1):
        for width in (smallest, smallest + stride - 1, smallest + 2 * stride + 1):
            x = paddle.to_tensor(rng.randn(2, 3, height, width).astype('float32'))
            got = fused.conv2d(x, weight, bias, stride, padding, groups)
            want = paddle.nn.functional.conv2d(x, weight, bias, stride=stride, padding=padding, groups=groups)
            np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-5, atol=1e-5, err_msg=f'{height}x{width}')


def with_bad_value(source, destination, entry, key, value):
    """A copy of a paddle.save file whose tensor entry[key] (entry None: top level) holds value at one place."""
    import checkpoint
    obj = read_paddle_file(source)
    tensors = obj[entry] if entry else obj
    tensors[key] = tensors[key].copy()
    tensors[key].flat[3] = value
    with open(destination, 'wb') as f:
        f.write(checkpoint.serialize(obj))
    return str(destination)


@pytest.mark.parametrize('entry', ['pretrained', 'eval', 'resume', 'resume auto', 'predict', 'convert'])
def test_weights_holding_nan_are_refused_naming_the_file_and_the_tensor(digits, trained, tmp_path, entry):
    key = 'transformers.1.blocks.0.attn.qkv.weight'
    bad = with_bad_value(trained, tmp_path / 'checkpoint-latest.pdparams', 'model', key, np.nan)
    if entry == 'predict':
        result = predict(bad, os.path.join(digits, 'heldout'))
    elif entry == 'convert':
        result = run('tools/convert_weights.py', '-cfg', 'configs/pit_ti.yaml', '-src', bad, '-dst',
                     str(tmp_path / 'out'))
    elif entry == 'eval':
        result = train(digits, tmp_path / 'save', '-eval', '-pretrained', bad)
    elif entry == 'resume auto':
        result = train(digits, tmp_path, '-resume', 'auto')
    else:
        result = train(digits, tmp_path / 'save', f'-{entry}', bad)
    line = one_line_error(result, 2) if entry != 'convert' else result.stderr  # the converter: argparse's form
    assert result.returncode == 2 and f"'{bad}'" in line and f"tensor 'model.{key}' holds NaN (1 of " in line
    assert 'Traceback' not in result.stderr and 'Epoch 1' not in result.stdout


@pytest.mark.parametrize('fmt', ['pth', 'safetensors'])
def test_pytorch_and_safetensors_weights_holding_inf_are_refused(digits, trained, tmp_path, fmt):
    state = read_paddle_file(trained)['model']
    state['head.bias'] = state['head.bias'].copy()
    state['head.bias'][0] = -np.inf
    path = str(tmp_path / f'weights.{fmt}')
    if fmt == 'pth':
        save_torch_zip(state, path)
    else:
        from safetensors.numpy import save_file
        save_file(state, path)
    line = one_line_error(train(digits, tmp_path / 'save', '-pretrained', path), 2)
    assert f"'{path}': tensor 'head.bias' holds Inf (1 of 10 values)" in line


def test_a_teacher_holding_nan_is_refused_before_training(digits, tmp_path):
    teacher = tmp_path / 'teacher.pdparams'
    paddle.save({'stem.conv.weight': paddle.to_tensor([[1.0, float('nan')]])}, str(teacher))
    result = train(digits, tmp_path / 'save', '-teacher_model', str(teacher),
                   opts=['MODEL.DISTILL', 'True', 'TRAIN.DISTILLATION_TYPE', 'hard'])
    assert f"'{teacher}': tensor 'stem.conv.weight' holds NaN" in one_line_error(result, 2)
    assert 'Epoch 1' not in result.stdout


# ---------------------------------------------------------------- late failures (class 7)

def rewrite_line(list_file, number, text):
    with open(list_file) as f:
        lines = f.readlines()
    lines[number - 1] = text
    with open(list_file, 'w') as f:
        f.writelines(lines)


def copy_listed(listed, tmp_path):
    data = tmp_path / 'data'
    shutil.copytree(listed, data)
    return data


def test_a_missing_val_image_fails_the_run_at_start_naming_list_line_and_count(listed, tmp_path):
    data = copy_listed(listed, tmp_path)
    for number in (7, 12, 19):
        rewrite_line(data / 'val_list.txt', number, f'images/3/gone_{number}.png 3\n')
    result = train(data, tmp_path / 'save')
    line = one_line_error(result, 2)
    assert f"{data / 'val_list.txt'}:7: image '{data}/images/3/gone_7.png' not found" in line
    assert '2 more bad line(s) in this list' in line
    assert 'Epoch 1' not in result.stdout and not list((tmp_path / 'save').glob('checkpoint-*'))


@pytest.mark.parametrize('text, problem', [
    ('images/3/x.png three\n', "expected 'relative/path label', got 'images/3/x.png three'"),
    ('images/3/x.png 10\n', 'label 10 outside [0, MODEL.NUM_CLASSES=10)'),
    ('images/3\n', "expected 'relative/path label', got 'images/3'"),
    ('images 3\n', "image '{data}/images' is not a file"),
])
def test_a_bad_line_far_down_the_train_list_is_named_before_training(listed, tmp_path, text, problem):
    data = copy_listed(listed, tmp_path)
    rewrite_line(data / 'train_list.txt', 37, text)
    line = one_line_error(train(data, tmp_path / 'save'), 2)
    assert f"{data / 'train_list.txt'}:37: {problem.format(data=data)}" in line and 'more bad' not in line


def test_a_list_file_that_is_not_utf8_is_named_with_its_line(listed, tmp_path):
    data = copy_listed(listed, tmp_path)
    with open(data / 'train_list.txt', 'ab') as f:
        f.write(b'images/3/caf\xe9.png 3\n')
    line = one_line_error(train(data, tmp_path / 'save'), 2)
    assert f"{data / 'train_list.txt'}:41: not UTF-8 text" in line


def test_the_existence_check_lists_each_folder_once_and_follows_links(tmp_path, monkeypatch):
    import datasets
    (tmp_path / 'a').mkdir()
    (tmp_path / 'a' / 'x.png').write_bytes(b'')
    (tmp_path / 'a' / 'sub').mkdir()
    os.symlink(tmp_path / 'a' / 'x.png', tmp_path / 'a' / 'link.png')
    os.symlink(tmp_path / 'a' / 'nowhere.png', tmp_path / 'a' / 'dangling.png')
    listed_folders = []
    scandir = os.scandir
    monkeypatch.setattr(datasets.os, 'scandir', lambda path: listed_folders.append(path) or scandir(path))
    names = ['a/x.png', 'a/link.png', 'a/sub', 'a/dangling.png', 'a/y.png', 'b/z.png', 'b/w.png']
    reasons = datasets.missing_files([(str(tmp_path / name), 0) for name in names])
    assert reasons[:2] == ['', ''] and reasons[2] == 'is not a file' and reasons[3:5] == ['not found'] * 2
    assert reasons[5] == reasons[6] == f"not found (no folder '{tmp_path / 'b'}')"
    assert sorted(listed_folders) == [str(tmp_path / 'a'), str(tmp_path / 'b')]
