"""weights.py: reading PyTorch/safetensors/Paddle files without torch, unwrapping, mapping onto the model."""
import json
import os
import pickle
import sys
import zipfile

import numpy as np
import paddle
import paddle.nn.functional as F
import pytest

from config import build_config, merge_opts
from pit import build_pit
from pit import pooling_layout
from weights import (WeightsError, fit_state_dict, load_pretrained, read_checkpoint,
                     to_paddle_state_dict)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, 'tests', 'fixtures')


def fixture(name):
    return os.path.join(FIXTURES, name)


def micro_model():
    paddle.seed(0)
    return build_pit(build_config(fixture('pit_micro.yaml')))


def micro_logits(model):
    ref = np.load(fixture('pit_micro.npz'))
    model.eval()
    return model(paddle.to_tensor(ref['input'])).numpy(), ref


# ---------------------------------------------------------------- reading PyTorch zip checkpoints

def test_torch_reader_rebuilds_offsets_strides_shared_storage_and_dtypes_exactly():
    tensors = read_checkpoint(fixture('tensors.pth'))
    expected = np.load(fixture('tensors.npz'))
    assert sorted(tensors) == sorted(expected.files)
    for key in expected.files:
        assert tensors[key].dtype == expected[key].dtype, key
        np.testing.assert_array_equal(tensors[key], expected[key], err_msg=key)


def test_torch_reader_widens_bfloat16_to_float32():
    assert read_checkpoint(fixture('tensors.pth'))['bf16'].dtype == np.float32


def write_torch_zip(path, pickle_bytes):
    """A torch.save-shaped archive around arbitrary pickle bytes (for hostile-file tests)."""
    with zipfile.ZipFile(path, 'w') as archive:
        archive.writestr('evil/data.pkl', pickle_bytes)
        archive.writestr('evil/byteorder', 'little')


def test_torch_reader_refuses_a_pickle_that_calls_os_system_without_running_it(tmp_path):
    marker = tmp_path / 'pwned'
    payload = b'cos\nsystem\n(S' + repr(f'touch {marker}').encode() + b'\ntR.'
    write_torch_zip(tmp_path / 'evil.pth', payload)
    with pytest.raises(WeightsError, match=r'refusing to load global os\.system'):
        read_checkpoint(str(tmp_path / 'evil.pth'))
    assert not marker.exists()


def test_torch_reader_refuses_builtins_eval_in_a_protocol_4_pickle(tmp_path):
    payload = pickle.dumps({'w': eval}, protocol=4)  # STACK_GLOBAL builtins.eval
    write_torch_zip(tmp_path / 'evil.pth', payload)
    with pytest.raises(WeightsError, match=r'builtins\.eval'):
        read_checkpoint(str(tmp_path / 'evil.pth'))


def test_legacy_non_zip_torch_file_asks_to_resave_with_recent_torch():
    with pytest.raises(WeightsError, match=r"legacy.*re-save"):
        read_checkpoint(fixture('legacy.pth'))


@pytest.mark.parametrize('name', ['pit_micro_timm.pth', 'pit_micro_timm.safetensors', 'tensors.pth'])
def test_truncated_file_raises_one_line_error_naming_it(tmp_path, name):
    data = open(fixture(name), 'rb').read()
    path = tmp_path / name
    path.write_bytes(data[:len(data) * 2 // 3])
    with pytest.raises(WeightsError) as info:
        read_checkpoint(str(path))
    assert str(path) in str(info.value) and '\n' not in str(info.value)


def test_missing_file_is_named():
    with pytest.raises(WeightsError, match='nowhere.pth'):
        read_checkpoint('nowhere.pth')


# ---------------------------------------------------------------- safetensors

def test_safetensors_reader_matches_the_safetensors_package(tmp_path):
    from safetensors.numpy import save_file
    rng = np.random.RandomState(0)
    arrays = {'a': rng.randn(3, 4).astype(np.float32), 'b': rng.randn(5).astype(np.float16),
              'c': np.arange(6, dtype=np.int64).reshape(2, 3), 'empty': np.zeros((0, 2), np.float32)}
    save_file(arrays, str(tmp_path / 'x.safetensors'), metadata={'format': 'np'})
    got = read_checkpoint(str(tmp_path / 'x.safetensors'))
    assert sorted(got) == sorted(arrays)
    for key, value in arrays.items():
        assert got[key].dtype == value.dtype and got[key].shape == value.shape
        np.testing.assert_array_equal(got[key], value)


def test_safetensors_reader_decodes_bf16_as_the_top_half_of_float32(tmp_path):
    values = np.array([1.0, -2.5, 3.140625], dtype=np.float32)  # exactly representable in bfloat16
    raw = (values.view(np.uint32) >> 16).astype('<u2').tobytes()
    header = ('{"w": {"dtype": "BF16", "shape": [3], "data_offsets": [0, %d]}}' % len(raw)).encode()
    (tmp_path / 'bf16.safetensors').write_bytes(len(header).to_bytes(8, 'little') + header + raw)
    np.testing.assert_array_equal(read_checkpoint(str(tmp_path / 'bf16.safetensors'))['w'], values)


# ---------------------------------------------------------------- unwrapping

def test_wrapped_file_prefers_model_over_model_ema_by_default():
    state = read_checkpoint(fixture('pit_micro_deit.pth'))
    assert not any(k.startswith('module.') for k in state)
    model = micro_model()
    model.set_state_dict(to_paddle_state_dict(state, model))
    out, ref = micro_logits(model)
    np.testing.assert_allclose(out, ref['logits'], atol=1e-5)


def test_prefer_ema_takes_model_ema_and_strips_its_module_prefix():
    model = micro_model()
    report = load_pretrained(model, fixture('pit_micro_deit.pth'), prefer_ema=True)
    assert report.entry == 'model_ema'
    out, ref = micro_logits(model)
    np.testing.assert_allclose(out, ref['logits_ema'], atol=1e-5)


def test_prefer_ema_falls_back_to_the_model_entry_and_says_so():
    report = load_pretrained(micro_model(), fixture('pit_micro_timm08.pth'), prefer_ema=True)
    assert report.entry == 'state_dict'


def test_file_without_weights_names_the_entries_it_has(tmp_path):
    paddle.save({'epoch': 3, 'optimizer': {}}, str(tmp_path / 'x.pdparams'))
    with pytest.raises(WeightsError, match=r"no weights found.*epoch"):
        read_checkpoint(str(tmp_path / 'x.pdparams'))


# ---------------------------------------------------------------- mapping

@pytest.mark.parametrize('name, layout', [('pit_micro_naver.pth', 'native'), ('pit_micro_timm.pth', 'timm>=0.9'),
                                          ('pit_micro_timm08.pth', 'timm<=0.8')])
def test_pooling_layout_is_detected_from_keys(name, layout):
    assert pooling_layout(read_checkpoint(fixture(name))) == layout


def test_linear_weights_are_transposed_and_convs_kept():
    state = read_checkpoint(fixture('pit_micro_naver.pth'))
    mapped = to_paddle_state_dict(state, micro_model())
    np.testing.assert_array_equal(mapped['head.weight'], state['head.weight'].T)
    np.testing.assert_array_equal(mapped['pools.0.fc.weight'], state['pools.0.fc.weight'].T)
    np.testing.assert_array_equal(mapped['pools.0.conv.weight'], state['pools.0.conv.weight'])


def test_misfit_error_lists_missing_unexpected_and_misshaped_keys_on_one_line():
    state = dict(read_checkpoint(fixture('pit_micro_naver.pth')))
    del state['norm.bias']
    state['extra.weight'] = np.zeros(3, np.float32)
    state['head.bias'] = np.zeros(7, np.float32)
    with pytest.raises(WeightsError) as info:
        to_paddle_state_dict(state, micro_model(), source='w.pth')
    message = str(info.value)
    assert message.startswith("'w.pth': weights do not fit") and '\n' not in message
    assert 'missing (1): norm.bias' in message and 'unexpected (1): extra.weight' in message
    assert 'mis-shaped (1): head.bias [7] vs model [5]' in message


def test_a_parameter_named_twice_by_mixed_pooling_layouts_is_unexpected():
    state = dict(read_checkpoint(fixture('pit_micro_timm.pth')))
    state['pools.0.fc.bias'] = state['transformers.1.pool.fc.bias'] + 1  # same parameter, naver-ai name
    fit = fit_state_dict(state, micro_model())
    assert fit.unexpected == ['pools.0.fc.bias'] and not fit.missing and not fit.mismatched


def test_pos_embed_of_a_different_grid_is_resized_with_paddle_bicubic():
    state = dict(read_checkpoint(fixture('pit_micro_naver.pth')))
    original = np.random.RandomState(0).randn(1, 2, 4, 7).astype(np.float32)  # non-square source grid
    state['pos_embed'] = original
    fit = fit_state_dict(state, micro_model())
    assert fit.resized == ((4, 7), (5, 5)) and not fit.problems()
    expected = F.interpolate(paddle.to_tensor(original), size=[5, 5], mode='bicubic', align_corners=False)
    np.testing.assert_allclose(fit.arrays['pos_embed'], expected.numpy(), atol=1e-6)


@pytest.mark.parametrize('size', ['up_9x9', 'down_3x4'])
def test_paddle_bicubic_resize_matches_torch_interpolate(size):
    ref = np.load(fixture('resize.npz'))
    out = F.interpolate(paddle.to_tensor(ref['grid']), size=list(ref[size].shape[2:]), mode='bicubic',
                        align_corners=False)
    np.testing.assert_allclose(out.numpy(), ref[size], atol=1e-5)


# ---------------------------------------------------------------- load_pretrained

def test_checkpoint_trained_at_224_loads_into_a_384_model_and_runs(tmp_path):
    config = build_config(os.path.join(ROOT, 'configs', 'pit_ti.yaml'))
    paddle.seed(1)
    model_224 = build_pit(config)
    paddle.save({'model': model_224.state_dict(), 'epoch': 299}, str(tmp_path / 'checkpoint.pdparams'))
    model_384 = build_pit(merge_opts(config, ['DATA.IMAGE_SIZE', '384']))
    report = load_pretrained(model_384, str(tmp_path / 'checkpoint'))  # extension added like seed checkpoints
    assert report.fit.resized == ((27, 27), (47, 47)) and report.entry == 'model'
    expected = F.interpolate(model_224.pos_embed, size=[47, 47], mode='bicubic', align_corners=False)
    np.testing.assert_allclose(model_384.pos_embed.numpy(), expected.numpy(), atol=1e-6)
    np.testing.assert_array_equal(model_384.head.weight.numpy(), model_224.head.weight.numpy())
    model_384.eval()
    with paddle.no_grad():
        out = model_384(paddle.randn([1, 3, 384, 384]))
    assert out.shape == [1, 1000] and np.isfinite(out.numpy()).all()


def test_strict_misfit_leaves_the_model_unchanged():
    model = micro_model()
    before = {k: v.numpy().copy() for k, v in model.state_dict().items()}
    with pytest.raises(WeightsError, match='pit_tiny.pth'):
        load_pretrained(model, fixture('pit_tiny.pth'))
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(value.numpy(), before[key])


def test_non_strict_loads_what_fits_and_reports_a_new_classifier():
    config = merge_opts(build_config(fixture('pit_micro.yaml')), ['MODEL.NUM_CLASSES', '3'])
    model = build_pit(config)
    head_before = model.head.weight.numpy().copy()
    report = load_pretrained(model, fixture('pit_micro_timm.pth'), strict=False)
    assert {k for k, _, _ in report.fit.mismatched} == {'head.weight', 'head.bias'}
    np.testing.assert_array_equal(model.head.weight.numpy(), head_before)
    state = read_checkpoint(fixture('pit_micro_timm.pth'))
    np.testing.assert_array_equal(model.norm.weight.numpy(), state['norm.weight'])
    assert 'head.weight' in str(report)


class Probe(paddle.nn.Layer):
    """A model that is not PiT: its classifier layer is `fc`, declared as the model declares it (classifier_names)."""

    def __init__(self, classes, declared=('fc',)):
        super().__init__()
        self.head = paddle.nn.Linear(4, 4)  # named like PiT's classifier, but not this model's
        self.fc = paddle.nn.Linear(4, classes)
        self.declared = declared

    def classifier_names(self):
        return self.declared


def test_fine_tuning_reinitialises_only_the_classifier_the_model_declares():
    source = {k: v.numpy() for k, v in Probe(3).state_dict().items()}
    source['head.weight'] = np.zeros([4, 5], 'float32')
    fit = fit_state_dict(source, Probe(7), from_torch=False, finetune=True)
    assert fit.reinitialised == ['fc.weight', 'fc.bias']
    assert [k for k, _, _ in fit.mismatched] == ['head.weight']
    fit = fit_state_dict(source, Probe(7, declared=()), from_torch=False, finetune=True)
    assert fit.reinitialised == [] and [k for k, _, _ in fit.mismatched] == ['head.weight', 'fc.weight', 'fc.bias']


def test_a_distilled_pit_declares_both_heads_as_its_classifier():
    config = merge_opts(build_config(fixture('pit_micro.yaml')), ['MODEL.DISTILL', 'True'])
    assert build_pit(config).classifier_names() == ('head', 'head_dist')
    assert micro_model().classifier_names() == ('head',)


def _safetensors_file(path, header, body=b''):
    raw = json.dumps(header).encode()
    path.write_bytes(len(raw).to_bytes(8, 'little') + raw + body)
    return str(path)


MALFORMED_HEADERS = {
    'gap between tensors': ({'a': {'dtype': 'F32', 'shape': [1], 'data_offsets': [0, 4]},
                             'b': {'dtype': 'F32', 'shape': [1], 'data_offsets': [8, 12]}}, 12),
    'overlapping tensors': ({'a': {'dtype': 'F32', 'shape': [2], 'data_offsets': [0, 8]},
                             'b': {'dtype': 'F32', 'shape': [1], 'data_offsets': [4, 8]}}, 8),
    'size not shape x itemsize': ({'a': {'dtype': 'F32', 'shape': [3], 'data_offsets': [0, 8]}}, 8),
    'unknown dtype': ({'a': {'dtype': 'Q7', 'shape': [1], 'data_offsets': [0, 1]}}, 1),
    'negative dimension': ({'a': {'dtype': 'U8', 'shape': [-1], 'data_offsets': [0, 1]}}, 1),
    'trailing bytes': ({'a': {'dtype': 'U8', 'shape': [1], 'data_offsets': [0, 1]}}, 5),
    'metadata not strings': ({'__metadata__': {'k': 1}, 'a': {'dtype': 'U8', 'shape': [1], 'data_offsets': [0, 1]}}, 1),
}


@pytest.mark.parametrize('case', sorted(MALFORMED_HEADERS))
def test_malformed_safetensors_headers_are_refused_by_the_package_and_by_the_parser(tmp_path, monkeypatch, case):
    import safetensors.numpy
    header, size = MALFORMED_HEADERS[case]
    path = _safetensors_file(tmp_path / 'bad.safetensors', header, b'\0' * size)
    with pytest.raises(Exception):
        safetensors.numpy.load_file(path)
    with pytest.raises(WeightsError, match=r"bad.safetensors': truncated or corrupt safetensors"):
        read_checkpoint(path)
    monkeypatch.setitem(sys.modules, 'safetensors.numpy', None)  # as where the package is not installed
    with pytest.raises(WeightsError, match=r"bad.safetensors': truncated or corrupt safetensors"):
        read_checkpoint(path)


def test_a_hostile_paddle_file_is_refused_naming_the_global_without_running_it(tmp_path):
    marker = tmp_path / 'pwned'
    payload = b'cos\nsystem\n(S' + repr(f'touch {marker}').encode() + b'\ntR.'
    (tmp_path / 'w.pdparams').write_bytes(payload)
    with pytest.raises(WeightsError, match=r"w.pdparams': refusing to load global os\.system"):
        read_checkpoint(str(tmp_path / 'w.pdparams'))
    assert not marker.exists()


def test_paddle_files_read_by_the_allow_list_equal_paddle_load(tmp_path):
    from weights import read_paddle_file
    layer = paddle.nn.Linear(3, 2)
    optimizer = paddle.optimizer.AdamW(parameters=layer.parameters())
    layer(paddle.ones([1, 3])).sum().backward()
    optimizer.step()
    obj = {'model': layer.state_dict(), 'optimizer': optimizer.state_dict(), 'epoch': 3, 'name': 'x',
           'nested': [1.5, (2, None)], 'np': np.float64(0.25)}
    paddle.save(obj, str(tmp_path / 'x.pdparams'))
    ours, theirs = read_paddle_file(str(tmp_path / 'x.pdparams')), paddle.load(str(tmp_path / 'x.pdparams'))
    assert ours['epoch'] == 3 and ours['nested'] == [1.5, (2, None)] and ours['np'] == 0.25
    for part in ('model', 'optimizer'):
        for key, value in theirs[part].items():
            if hasattr(value, 'numpy'):
                np.testing.assert_array_equal(ours[part][key], value.numpy(), err_msg=key)
