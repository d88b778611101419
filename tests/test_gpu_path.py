"""The GPU training path, checked where the CPU can check it: the decisions of gpu.py (precision, auto_cast lists,
loss-scaler restore, attention kernel and its memory, DataLoader shared memory) as tables, the calls the GPU-only
branches make against this Paddle's signatures, the non-finite-step count, and resumes across -amp through the
command line."""
import functools
import os
import subprocess
import sys

import numpy as np
import paddle
import pytest
from paddle.amp.auto_cast import _update_list

import checkpoint
from config import ConfigError, build_config, finalize_config, merge_opts
from conftest import TINY_MODEL
import datasets
from datasets import build_dataloader, build_dataset
from engine import TrainState, train_one_epoch
import gpu
from metrics import RunRecords, read_records
from optim import build_optimizer
from pit import Attention
from weights import read_paddle_file

pytestmark = pytest.mark.usefixtures('gpu_strides')  # the plain (GPU) path as a GPU runs it: strided views

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
V100, A100, P100 = (7, 0), (8, 0), (6, 0)
# GradScaler.state_dict() of an enabled scaler, as a float16 GPU run saves it (python/paddle/amp/grad_scaler.py)
FLOAT16_SCALER_STATE = {'scale': np.array([32768.0], dtype=np.float32), 'incr_ratio': 2.0, 'decr_ratio': 0.5,
                        'incr_every_n_steps': 2000, 'decr_every_n_nan_or_inf': 1, 'incr_count': 7, 'decr_count': 0,
                        'use_dynamic_loss_scaling': True}


# ---------------------------------------------------------------- precision

@pytest.mark.parametrize('requested, dtype, device, capability, cuda, expected', [
    (False, 'float16', 'gpu', A100, 12, 'float32'),
    (True, 'float16', 'cpu', None, None, 'float32'),
    (True, 'float16', 'gpu', V100, 11, 'float16'),
    (True, 'bfloat16', 'gpu', A100, 11, 'bfloat16'),
    (True, 'float16', 'gpu', P100, 11, 'float32'),  # paddle's auto_cast turns float16 off below 7.0
])
def test_effective_precision_follows_what_paddle_allows_on_the_device(requested, dtype, device, capability, cuda,
                                                                      expected):
    precision, reason = gpu.amp_precision(requested, dtype, device, capability, cuda)
    assert precision == expected and reason


def test_the_reasons_say_why_float32_was_chosen():
    assert gpu.amp_precision(True, 'float16', 'cpu') == ('float32', 'AMP requested but running on the CPU')
    assert '6.0' in gpu.amp_precision(True, 'float16', 'gpu', P100, 11)[1]


@pytest.mark.parametrize('capability, cuda, advice', [(V100, 11, 'AMP_DTYPE float16'), (A100, 10, 'AMP_DTYPE float16'),
                                                      (P100, 11, 'without -amp')])
def test_bfloat16_where_the_gpu_lacks_it_is_an_error_at_start_not_a_silent_float32_run(capability, cuda, advice):
    with pytest.raises(ConfigError, match='AMP_DTYPE=bfloat16 needs a GPU of compute capability >= 8.0') as error:
        gpu.amp_precision(True, 'bfloat16', 'gpu', capability, cuda)
    assert advice in str(error.value) and f'{capability[0]}.{capability[1]}' in str(error.value)


@pytest.mark.filterwarnings('ignore:amp_guard can only be enabled')
def test_float16_o1_keeps_softmax_exp_log_softmax_and_layer_norm_in_float32():
    kwargs = gpu.autocast_kwargs('float16')
    assert kwargs['level'] == 'O1' and kwargs['dtype'] == 'float16'
    white, black = _update_list(None, kwargs['custom_black_list'], 'O1', 'float16')  # what auto_cast applies
    assert {'softmax', 'exp', 'log_softmax', 'layer_norm'} <= black and not black & white
    assert {'matmul_v2', 'conv2d'} <= white  # the matmuls still run in float16
    with paddle.amp.auto_cast(**kwargs):  # accepted by this paddle (on the CPU it warns and stays float32)
        paddle.nn.Linear(2, 2)(paddle.ones([1, 2]))
    assert gpu.autocast_kwargs('float32') == {'enable': False}
    assert gpu.loss_scaling('float16') and not gpu.loss_scaling('bfloat16') and not gpu.loss_scaling('float32')


# ---------------------------------------------------------------- loss scaler across resumes

def test_scaler_restore_decides_both_directions_across_amp():
    assert gpu.scaler_state_to_load(FLOAT16_SCALER_STATE, True) == (FLOAT16_SCALER_STATE, None)
    state, note = gpu.scaler_state_to_load({}, True)  # saved without AMP, resumed with float16 AMP
    assert state is None and 'starts afresh' in note  # GradScaler.load_state_dict({}) would raise
    state, note = gpu.scaler_state_to_load(FLOAT16_SCALER_STATE, False)  # saved with AMP, resumed without
    assert state is None and 'not used' in note
    assert gpu.scaler_state_to_load({}, False) == (None, None)


TINY = TINY_MODEL + ['TRAIN.WARMUP_EPOCHS', '0', 'DATA.NUM_WORKERS', '0']


def train(data, save, epochs, *flags):
    cmd = [sys.executable, 'main_single_gpu.py', '-cfg', 'configs/pit_ti.yaml', '-data_path', data, '-save_path',
           str(save), '-batch_size', '8', '-device', 'cpu', *flags, '-opts', *TINY, 'TRAIN.NUM_EPOCHS', str(epochs)]
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


@pytest.mark.slow
def test_resumes_across_amp_train_on_in_both_directions(digits, tmp_path):
    train(digits, tmp_path, 1)
    out = train(digits, tmp_path, 2, '-amp', '-resume', 'auto')  # saved without AMP, resumed with -amp
    assert out.count('precision float32 (AMP requested but running on the CPU)') == 1
    assert 'Epoch 2 done' in out and 'steps skipped for non-finite gradients: 0' in out
    path = str(tmp_path / checkpoint.LATEST)
    ckpt = read_paddle_file(path)
    assert ckpt['scaler'] == {}  # what a run without loss scaling saves
    ckpt['scaler'] = FLOAT16_SCALER_STATE  # as a float16 GPU run saves it
    checkpoint.atomic_save(ckpt, path)
    out = train(digits, tmp_path, 3, '-resume', 'auto')  # saved with float16 AMP, resumed without
    assert "float16 loss scale is not used" in out and 'Epoch 3 done' in out
    assert [r['skipped_steps'] for r in read_records(str(tmp_path))] == [0, 0, 0]


# ---------------------------------------------------------------- steps skipped for non-finite gradients

class Loader(list):
    """A list of (images, labels, skipped files) batches, as train_one_epoch reads a DataLoader."""


@pytest.mark.parametrize('name', ['AdamP', 'AdamW', 'SGD'])
def test_a_step_the_scaler_finds_non_finite_is_skipped_counted_and_recorded(name, tmp_path):
    config = finalize_config(merge_opts(build_config(), ['TRAIN.OPTIMIZER.NAME', name, 'REPORT_FREQ', '100',
                                                       'SAVE', str(tmp_path), 'VISUALDL', 'False']))
    paddle.seed(0)
    model = paddle.nn.Linear(4, 3)
    optimizer = build_optimizer(config, model, 0.1)
    backward = []

    def nan_at_second_step(grad):
        """Gradient hook: the second backward yields NaN, and the finding is handed to the optimizer as an
        enabled GradScaler's step hands it (check_finite_and_unscale, then _set_auxiliary_var)."""
        backward.append(1)
        if len(backward) == 2:
            grad = grad * float('nan')
        optimizer._set_auxiliary_var('found_inf', paddle.logical_not(paddle.isfinite(grad).all()))
        return grad

    model.weight.register_hook(nan_at_second_step)
    x = paddle.to_tensor(np.random.RandomState(0).rand(4, 4).astype('float32'))
    batch = (x, paddle.to_tensor([0, 1, 2, 0]), paddle.to_tensor([0, 0, 0, 0]))
    state = TrainState(model, optimizer, None, paddle.amp.GradScaler(enable=False), {'enable': False})
    criterion = lambda inputs, outputs, targets: paddle.nn.functional.cross_entropy(outputs, targets)  # noqa: E731
    before = model.weight.numpy().copy()
    stats = train_one_epoch(state, criterion, Loader([batch] * 3), 0, config)
    assert stats['skipped_steps'] == 1
    assert np.isfinite(model.weight.numpy()).all() and not np.array_equal(model.weight.numpy(), before)
    records = RunRecords(config, 0)
    records.epoch(1, stats, 0.1)
    records.close()
    assert read_records(str(tmp_path))[0]['skipped_steps'] == 1


def test_no_step_is_counted_without_loss_scaling():
    config = finalize_config(merge_opts(build_config(), ['REPORT_FREQ', '100']))
    model = paddle.nn.Linear(2, 2)
    optimizer = paddle.optimizer.SGD(learning_rate=0.1, parameters=model.parameters())
    batch = (paddle.ones([2, 2]), paddle.to_tensor([0, 1]), paddle.to_tensor([0, 0]))
    state = TrainState(model, optimizer, None, paddle.amp.GradScaler(enable=False), {'enable': False})
    criterion = lambda inputs, outputs, targets: paddle.nn.functional.cross_entropy(outputs, targets)  # noqa: E731
    assert train_one_epoch(state, criterion, Loader([batch] * 2), 0, config)['skipped_steps'] == 0


# ---------------------------------------------------------------- attention kernel

NEW, OLD = (3, 3, 1), (2, 6, 2)


@pytest.mark.parametrize('version, capability, dtype, head_dim, expected', [
    (NEW, V100, 'float16', 64, 'sdpa'),
    (None, V100, 'float16', 64, 'sdpa'),  # a development build counts as the newest
    (OLD, A100, 'float16', 64, 'flash'),
    (OLD, A100, 'bfloat16', 32, 'flash'),
    (OLD, A100, 'float32', 64, 'memory_efficient'),  # flash takes half types only
    (OLD, V100, 'float16', 64, 'memory_efficient'),  # flash needs 8.0; this is pit_b's fp16 run on a V100
    (OLD, V100, 'float32', 48, 'memory_efficient'),
    (OLD, P100, 'float32', 48, 'memory_efficient'),
    (OLD, (3, 7), 'float32', 64, 'plain'),  # below the kernels' sm50
    (OLD, A100, 'float16', 20, 'plain'),  # head dim not aligned to 8: neither kernel
    ((3, 0, 0), V100, 'float16', 64, 'memory_efficient'),  # 3.0-3.2's sdpa would take flash and fail here
])
def test_gpu_attention_kernel_by_paddle_version_capability_dtype(version, capability, dtype, head_dim, expected):
    assert gpu.attention_backend(version, 'gpu', capability, dtype, head_dim, 0.0) == expected


@pytest.mark.parametrize('capability, dtype, expected', [(A100, 'float16', 'flash'), (V100, 'float16',
                                                         'memory_efficient'), (A100, 'float32', 'memory_efficient')])
def test_paddle_33_sdpa_resolves_to_the_same_kernels(capability, dtype, expected):
    assert gpu.attention_kernel('sdpa', capability, dtype, 64) == expected


def test_on_the_cpu_the_fused_kernel_runs_unless_attention_dropout_is_drawn():
    assert gpu.attention_backend(NEW, 'cpu', None, 'float32', 32, 0.0, True) == 'cpu_kernels'
    assert gpu.attention_backend(NEW, 'cpu', None, 'float32', 32, 0.1, True) == 'plain'
    assert gpu.attention_backend(OLD, 'cpu', None, 'float32', 32, 0.0, False) == 'plain'


def test_the_model_routes_each_call_by_the_decision_on_the_cpu():
    layer = Attention(16, 2, attn_drop=0.1)
    qkv = layer.qkv(paddle.randn([2, 5, 16]))
    if not qkv.place.is_cpu_place():
        pytest.skip('the CPU routing; a GPU takes the kernels of the table above')
    kernels_here = layer.kernels.applies(qkv)
    layer.eval()
    assert layer.backend_for(qkv) == ('cpu_kernels' if kernels_here else 'plain')
    layer.train()
    assert layer.backend_for(qkv) == 'plain'


def test_the_memory_efficient_branch_calls_paddles_kernel_with_its_signature():
    """Paddle's memory_efficient_attention has no CPU kernel: on the CPU the branch's call passes the Python
    signature of this Paddle (2.6 and 3.x alike) and reaches the operator, which names the missing kernel; where
    the kernel exists (a GPU), the branch computes the plain attention."""
    layer = Attention(16, 2)
    layer.eval()
    qkv = layer.qkv(paddle.randn([2, 5, 16]))
    try:
        out = layer.attend(qkv, 2, 5, 'memory_efficient')
    except RuntimeError as error:
        assert qkv.place.is_cpu_place() and 'memory_efficient_attention' in str(error)
        assert 'not registered' in str(error)
    else:
        np.testing.assert_allclose(out.numpy(), layer.attend(qkv, 2, 5, 'plain').numpy(), rtol=1e-4, atol=1e-5)


def test_the_start_log_names_kernels_paddle_and_what_33_would_do():
    facts = gpu.DeviceFacts('gpu', 'Tesla V100-SXM2-32GB', V100, 11, OLD)
    note = gpu.attention_note(facts, 'float16', [64, 64, 64], 0.0)
    assert 'paddle 2.6.2' in note and 'V100' in note and 'memory-efficient' in note and '>= 3.3' in note
    newer = gpu.attention_note(facts._replace(paddle=NEW, capability=A100), 'float16', [48], 0.0)
    assert 'flash attention through scaled_dot_product_attention' in newer and '>= 3.3' not in newer


def pit_b_config(batch=256):
    return build_config(os.path.join(ROOT, 'configs', 'pit_b.yaml'), ['DATA.BATCH_SIZE', str(batch)])


def test_stage_shapes_of_pit_b_follow_its_grids():
    assert gpu.stage_shapes(pit_b_config()) == [(3, 4, 31 * 31 + 1, 64), (6, 8, 16 * 16 + 1, 64),
                                                 (4, 16, 8 * 8 + 1, 64)]


def test_attention_memory_of_pit_b_at_batch_256_matches_the_hand_count():
    # plain attention under float16 O1 keeps per block the float32 softmax and its float16 copy: 6 bytes a score
    stage0 = 3 * 256 * 4 * 962 * 962 * (4 + 2)
    assert stage0 == 17_057_783_808  # about 17 GB for the three stage-0 blocks alone
    total = stage0 + 6 * 256 * 8 * 257 * 257 * 6 + 4 * 256 * 16 * 65 * 65 * 6
    assert gpu.model_attention_bytes(pit_b_config(), 256, 'float16', lambda head_dim: 'plain') == total
    row_stats = (3 * 4 * 962 + 6 * 8 * 257 + 4 * 16 * 65) * 256 * 4  # one float32 log-sum-exp per query row
    kernel_of = functools.partial(gpu.sdpa_kernel, V100, 'float16')
    assert gpu.model_attention_bytes(pit_b_config(), 256, 'float16', kernel_of) == row_stats
    assert gpu.attention_activation_bytes(2, 3, 10, 'float32', 'plain') == 2 * 3 * 100 * 4


# ---------------------------------------------------------------- DataLoader shared memory

def test_shared_memory_need_of_the_shipped_recipe_is_about_300_mb_per_process_of_4_workers():
    batch = 256 * 224 * 224 * 3  # uint8 pixels: 38.5 MB
    assert gpu.shared_memory_need(256, 224, workers=4, processes=1) == batch * 2 * 4
    assert gpu.shared_memory_need(256, 224, workers=4, processes=8) == batch * 2 * 4 * 8
    assert gpu.shared_memory_need(256, 224, workers=4, processes=1, itemsize=4) == batch * 4 * 2 * 4  # eval


@pytest.mark.parametrize('requested, free, use, warns', [
    ('auto', 8 * 2 ** 30, True, False),
    ('auto', 64 * 2 ** 20, False, True),  # Docker's default /dev/shm
    (True, 64 * 2 ** 20, True, True),
    (False, 64 * 2 ** 20, False, False),
    ('auto', None, True, False),  # no /dev/shm to measure: paddle's default stands
])
def test_shared_memory_decision(requested, free, use, warns):
    decided, message = gpu.shared_memory_decision(2 ** 30, free, requested)
    assert decided is use and (message is not None) is warns


def test_the_warning_names_both_sizes_and_the_fixes():
    _, message = gpu.shared_memory_decision(2 ** 30, 64 * 2 ** 20, 'auto')
    assert '64 MB free' in message and '1.2 GB' in message
    assert '--shm-size=2g' in message and 'DATA.NUM_WORKERS' in message


def test_local_processes_come_from_the_launcher():
    assert gpu.local_process_count({'PADDLE_LOCAL_SIZE': '4', 'PADDLE_TRAINERS_NUM': '8'}) == 4
    assert gpu.local_process_count({'PADDLE_TRAINERS_NUM': '2'}) == 2
    assert gpu.local_process_count({}) == 1


@pytest.mark.parametrize('requested, free, expected', [('auto', 10 ** 9, True), ('auto', 10 ** 4, False),
                                                       ('True', 10 ** 4, True), ('False', 10 ** 9, False)])
def test_the_loader_is_built_with_the_decided_value(digits, pit_log, requested, free, expected):
    config = finalize_config(merge_opts(build_config(), ['DATA.DATA_PATH', digits, 'DATA.IMAGE_SIZE', '32',
                                                       'DATA.BATCH_SIZE', '8', 'DATA.NUM_WORKERS', '2',
                                                       'MODEL.NUM_CLASSES', '10', 'DATA.SHARED_MEMORY', requested]))
    datasets.SHARED_MEMORY_IN_USE.clear()
    loader = build_dataloader(config, build_dataset(config, 'train'), 'train', shm_free_bytes=free)
    assert loader.use_shared_memory is expected  # need: 8 x 32 x 32 x 3 uint8 x 2 prefetched x 2 workers
    assert ('/dev/shm has' in pit_log.getvalue()) is (free == 10 ** 4)
    assert ('/dev/shm' in datasets.shared_memory_note()) is expected
    datasets.SHARED_MEMORY_IN_USE.clear()


def test_a_dead_worker_error_mentions_dev_shm_when_batches_went_through_it(monkeypatch, capsys):
    import cli
    monkeypatch.setattr(sys, 'argv', ['main_single_gpu.py', '-device', 'cpu'])
    monkeypatch.setattr(datasets, 'SHARED_MEMORY_IN_USE', {'train': (2 ** 30, 64 * 2 ** 20)})

    def worker_killed(config, weights):
        raise SystemError('(Fatal) Blocking queue is killed because the data reader raises an exception.')
    with pytest.raises(SystemExit) as status:
        cli.run_training(worker_killed, cli.argument_parser('').parse_args())
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert status.value.code == 1 and line.startswith('error: a DataLoader worker process died')
    assert 'or by a full /dev/shm' in line and '64 MB free at start, about 1.0 GB needed' in line
    assert '--shm-size' in line and 'DATA.SHARED_MEMORY False' in line


# ---------------------------------------------------------------- config

def test_distillation_none_given_on_the_command_line_stays_a_string():
    config = build_config(opts=['MODEL.DISTILL', 'True', 'TRAIN.DISTILLATION_TYPE', 'none', 'MODEL.RESUME', 'None'])
    assert config.TRAIN.DISTILLATION_TYPE == 'none' and config.MODEL.RESUME is None


@pytest.mark.parametrize('value, expected', [('auto', 'auto'), ('True', True), ('false', False)])
def test_shared_memory_key_takes_auto_or_a_boolean(value, expected):
    assert build_config(opts=['DATA.SHARED_MEMORY', value]).DATA.SHARED_MEMORY == expected


def test_shared_memory_key_refuses_other_values():
    with pytest.raises(ConfigError, match="DATA.SHARED_MEMORY='sometimes' is not one of"):
        build_config(opts=['DATA.SHARED_MEMORY', 'sometimes'])
