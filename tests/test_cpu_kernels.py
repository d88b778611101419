"""cpu_kernels: the fused attention and the multi-threaded CPU softmax, LayerNorm, bias add, GELU, residual add
(with a drop path's scale), patch and depthwise convolutions and AdamP step (tests/test_optim.py) compute paddle's
values and gradients; the model picks its kernels when it is built and uses them on CPU in
dygraph only; and a failed build is reported (not silent), paddle's kernels being used instead."""
import copy
import os
import subprocess
import sys

import numpy as np
import paddle
import paddle.nn.functional as F
import pytest

import cpu_kernels
from pit import Attention, PoolingTransformer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
linux_only = pytest.mark.skipif(not sys.platform.startswith('linux'), reason='cpu_kernels are built on Linux only')


@pytest.fixture(scope='module')
def kernels():
    return cpu_kernels.for_model()


def values_and_grads(fn, inputs, upstream):
    leaves = [paddle.to_tensor(a, stop_gradient=False) for a in inputs]
    out = fn(*leaves)
    (out * paddle.to_tensor(upstream)).sum().backward()
    return [out.numpy()] + [leaf.grad.numpy() for leaf in leaves]


def assert_same(fn, reference_fn, inputs, upstream, rtol, atol):
    for got, want in zip(values_and_grads(fn, inputs, upstream), values_and_grads(reference_fn, inputs, upstream)):
        np.testing.assert_allclose(got, want, rtol=rtol, atol=atol)


@linux_only
def test_kernels_are_built_and_in_use_on_linux(kernels):
    assert cpu_kernels.load(), cpu_kernels.status()
    assert cpu_kernels.in_use() and 'in use' in cpu_kernels.status()
    assert kernels.applies(paddle.ones([2, 3]))
    assert not kernels.applies(paddle.ones([2, 3], dtype='float64'))
    assert not cpu_kernels.PADDLE.applies(paddle.ones([2, 3]))


@linux_only
@pytest.mark.parametrize('shape', [[3, 1], [5, 7], [2, 3, 17, 33]])
def test_softmax_matches_paddle_values_and_gradients(kernels, shape):
    rng = np.random.RandomState(0)
    x = (rng.randn(*shape) * 4).astype('float32')
    assert_same(kernels.softmax, lambda t: F.softmax(t, axis=-1), [x], rng.randn(*shape).astype('float32'),
                rtol=1e-5, atol=1e-7)


@linux_only
@pytest.mark.parametrize('shape', [[5, 3], [2, 40, 130]])
def test_linear_gelu_and_residual_add_match_paddle_values_and_gradients(kernels, shape):
    rng = np.random.RandomState(2)
    x, y = (rng.randn(*shape) * 3).astype('float32'), rng.randn(*shape).astype('float32')
    weight, bias = rng.randn(shape[-1], shape[-1]).astype('float32'), rng.randn(shape[-1]).astype('float32')
    upstream = rng.randn(*shape).astype('float32')
    checks = [(kernels.linear, F.linear, [x, weight, bias]),
              (kernels.linear_gelu, lambda *t: F.gelu(F.linear(*t)), [x, weight, bias]),
              (kernels.add, lambda a, b: a + b, [x, y])]
    for ours, paddle_fn, inputs in checks:
        assert_same(ours, paddle_fn, inputs, upstream, rtol=1e-5, atol=1e-4)


@linux_only
@pytest.mark.parametrize('shape', [[2, 3, 5], [3, 197, 64], [1, 40, 33]])
def test_token_map_transpose_matches_paddle_values_and_gradients(kernels, shape):
    rng = np.random.RandomState(10)
    assert_same(kernels.swap_last2, lambda t: t.transpose([0, 2, 1]), [rng.randn(*shape).astype('float32')],
                rng.randn(shape[0], shape[2], shape[1]).astype('float32'), rtol=0, atol=0)


@linux_only
def test_residual_add_with_a_drop_path_scale_matches_the_unfused_form(kernels):
    rng = np.random.RandomState(5)
    x, y = rng.randn(4, 7, 6).astype('float32'), rng.randn(4, 7, 6).astype('float32')
    scale = paddle.to_tensor([0.0, 1.25, 1.25, 0.0])
    assert_same(lambda a, b: kernels.add(a, b, scale), lambda a, b: a + b * scale.reshape([-1, 1, 1]), [x, y],
                rng.randn(4, 7, 6).astype('float32'), rtol=1e-6, atol=1e-6)


@linux_only
def test_drop_path_fused_into_the_add_drops_whole_samples_and_rescales_the_kept_ones(kernels):
    from droppath import DropPath
    layer = DropPath(0.5)
    layer.train()
    y = paddle.to_tensor(np.random.RandomState(6).randn(16, 3, 4).astype('float32'))
    paddle.seed(7)
    fused = kernels.add(paddle.zeros_like(y), y, layer.sample_scale(y)).numpy()
    kept = np.abs(fused).reshape(16, -1).sum(1) > 0
    assert 0 < kept.sum() < 16, 'the draw should drop some samples and keep others'
    np.testing.assert_allclose(fused[kept], y.numpy()[kept] / 0.5, rtol=1e-6)  # kept: scaled by 1 / keep_prob
    layer.eval()  # (Paddle 2.6's Layer.eval/train return None: no chaining)
    assert layer.sample_scale(y) is None
    keep_all = DropPath(0.0)
    keep_all.train()
    assert keep_all.sample_scale(y) is None


@linux_only
@pytest.mark.parametrize('batch, channels, size, multiplier, kernel, stride, padding', [
    (3, 4, 27, 2, 3, 2, 1), (2, 5, 14, 2, 3, 2, 1), (2, 3, 7, 1, 3, 1, 1), (1, 2, 9, 3, 5, 2, 2)])
def test_depthwise_conv_matches_paddle_values_and_gradients(kernels, batch, channels, size, multiplier, kernel,
                                                            stride, padding):
    rng = np.random.RandomState(3)
    x = rng.randn(batch, channels, size, size).astype('float32')
    weight = rng.randn(channels * multiplier, 1, kernel, kernel).astype('float32')
    bias = rng.randn(channels * multiplier).astype('float32')
    out = (size + 2 * padding - kernel) // stride + 1
    assert_same(lambda *t: kernels.conv2d(*t, stride, padding, channels),
                lambda a, w, b: F.conv2d(a, w, b, stride=stride, padding=padding, groups=channels), [x, weight, bias],
                rng.randn(batch, channels * multiplier, out, out).astype('float32'), rtol=1e-5, atol=1e-4)


@linux_only
@pytest.mark.parametrize('batch, channels, size, width, kernel, stride', [
    (3, 3, 40, 8, 16, 8), (1, 3, 48, 16, 16, 8), (9, 2, 20, 5, 4, 4)])
def test_patch_conv_matches_paddle_values_and_parameter_gradients(kernels, batch, channels, size, width, kernel,
                                                                  stride):
    rng = np.random.RandomState(4)
    images = paddle.to_tensor(rng.randn(batch, channels, size, size).astype('float32'))  # no gradient, as images
    weight = rng.randn(width, channels, kernel, kernel).astype('float32')
    bias = rng.randn(width).astype('float32')
    out = (size - kernel) // stride + 1
    assert_same(lambda w, b: kernels.conv2d(images, w, b, stride, 0, 1),
                lambda w, b: F.conv2d(images, w, b, stride=stride), [weight, bias],
                rng.randn(batch, width, out, out).astype('float32'), rtol=1e-5, atol=1e-3)


@linux_only
def test_a_conv_input_that_needs_its_gradient_gets_it(kernels):
    """The patch conv kernel gives no input gradient: such inputs (a backbone fed features, saliency maps)
    take paddle's conv."""
    rng = np.random.RandomState(8)
    x, weight, bias = (rng.randn(2, 3, 24, 24).astype('float32'), rng.randn(4, 3, 8, 8).astype('float32'),
                       rng.randn(4).astype('float32'))
    assert_same(lambda *t: kernels.conv2d(*t, 4, 0, 1), lambda a, w, b: F.conv2d(a, w, b, stride=4),
                [x, weight, bias], rng.randn(2, 4, 5, 5).astype('float32'), rtol=1e-5, atol=1e-3)


@linux_only
def test_under_no_grad_the_kernels_keep_no_graph(kernels):
    """paddle records custom ops for the backward even under no_grad; the kernels must not, or inference would
    keep every activation alive (and its peak memory would be a training step's)."""
    model = PoolingTransformer(image_size=32, patch_size=8, stride=4, base_dims=[8, 8, 8], depth=[1, 1, 1],
                               heads=[1, 2, 2], num_classes=10)
    model.eval()
    x = paddle.randn([2, 3, 32, 32])
    with paddle.no_grad():
        assert model(x).stop_gradient
        layer = model.transformers[0].blocks[0]
        tokens = paddle.randn([2, 50, 8])
        assert all(t.stop_gradient for t in (layer.mlp.fc1(tokens), layer.norm1(tokens), layer.attn(tokens),
                                             kernels.add(tokens, tokens), kernels.swap_last2(tokens)))
    assert not model(x).stop_gradient  # with gradients enabled, the graph is recorded


@linux_only
def test_softmax_keeps_a_nan_in_its_row(kernels):
    out = kernels.softmax(paddle.to_tensor([[1.0, float('nan'), 2.0], [1.0, 2.0, 3.0]])).numpy()
    assert np.isnan(out[0]).all() and np.isfinite(out[1]).all()


@linux_only
@pytest.mark.parametrize('shape', [[4, 8], [3, 130, 24]])
def test_layer_norm_matches_paddle_values_and_gradients(kernels, shape):
    rng = np.random.RandomState(1)
    x = (rng.randn(*shape) * 3 + 1).astype('float32')
    weight, bias = rng.randn(shape[-1]).astype('float32'), rng.randn(shape[-1]).astype('float32')
    assert_same(lambda a, w, b: kernels.layer_norm(a, w, b, 1e-6),
                lambda a, w, b: F.layer_norm(a, shape[-1:], w, b, 1e-6), [x, weight, bias],
                rng.randn(*shape).astype('float32'), rtol=1e-4, atol=1e-5)


def plain_attention(qkv, num_heads):
    """softmax(q k^T / sqrt(head_dim)) v as matmul + softmax + matmul; [B, N, 3C] -> [B, N, C]."""
    B, N, C3 = qkv.shape
    head_dim = C3 // 3 // num_heads
    q, k, v = qkv.reshape([B, N, 3, num_heads, head_dim]).transpose([2, 0, 3, 1, 4])
    weights = F.softmax(paddle.matmul(q * head_dim ** -0.5, k, transpose_y=True), axis=-1)
    return paddle.matmul(weights, v).transpose([0, 2, 1, 3]).reshape([B, N, C3 // 3])


@linux_only
@pytest.mark.parametrize('batch, tokens, heads, head_dim', [(2, 1, 2, 8), (2, 7, 2, 4), (3, 130, 3, 16),
                                                            (1, 197, 4, 32)])
def test_fused_attention_matches_the_plain_formulation_values_and_gradients(kernels, batch, tokens, heads,
                                                                            head_dim):
    rng = np.random.RandomState(3)
    qkv = (rng.randn(batch, tokens, 3 * heads * head_dim) * 2).astype('float32')
    upstream = rng.randn(batch, tokens, heads * head_dim).astype('float32')
    assert_same(lambda t: kernels.attention(t, heads, head_dim ** -0.5), lambda t: plain_attention(t, heads),
                [qkv], upstream, rtol=1e-4, atol=2e-5)


class CountingKernels(cpu_kernels.Kernels):
    """The extension's kernels, counting fused attention calls."""

    def __init__(self, ops):
        super().__init__(ops)
        self.attention_calls = 0

    def attention(self, qkv, num_heads, scale):
        self.attention_calls += 1
        return super().attention(qkv, num_heads, scale)


@linux_only
def test_attention_dropout_in_training_falls_back_to_the_plain_path_which_drops_weights(kernels):
    counting = CountingKernels(kernels._ops)
    layer = Attention(16, 2, attn_drop=0.5, kernels=counting)
    x = paddle.randn([2, 9, 16])
    layer.train()
    train_out = layer(x)
    assert counting.attention_calls == 0
    paddle.seed(7)
    dropped = layer(x).numpy()
    paddle.seed(7)
    qkv = layer.qkv(x)
    plain = layer.proj(layer._attend_plain(qkv, 2, 9).reshape([2, 9, 16])).numpy()
    np.testing.assert_allclose(dropped, plain, rtol=1e-6, atol=1e-6)
    layer.eval()
    with paddle.no_grad():
        eval_out = layer(x).numpy()
    assert counting.attention_calls == 1 and not np.allclose(train_out.numpy(), eval_out)


def test_folding_the_query_scale_into_the_qkv_weights_keeps_the_attention():
    layer = Attention(24, 3)
    layer.eval()
    x = paddle.randn([2, 11, 24])
    want = layer(x).numpy()
    layer.fold_query_scale()
    assert layer.scale == 1.0
    np.testing.assert_allclose(layer(x).numpy(), want, rtol=1e-5, atol=1e-6)


@linux_only
@pytest.mark.parametrize('backend', ['sdpa', 'flash'])
def test_gpu_attention_branches_compute_the_cpu_kernels_values_and_gradients(kernels, backend):
    """The GPU branches run here through Paddle's math backend (sdpa on 3.3+, and flash_attention, which on the
    CPU takes the math path in 2.6 and 3.x): the layout and call they make give the fused kernel's values and
    gradients."""
    layer = Attention(24, 3, kernels=kernels)
    layer.train()
    qkv = layer.qkv(paddle.randn([2, 11, 24])).numpy()
    upstream = np.random.RandomState(5).randn(2, 11, 24).astype('float32')
    assert_same(lambda t: layer.attend(t, 2, 11, backend).reshape([2, 11, 24]),
                lambda t: kernels.attention(t, 3, layer.scale), [qkv], upstream, rtol=1e-4, atol=2e-5)


@linux_only
def test_model_layers_use_the_kernels_on_cpu_and_paddle_ops_under_static_export(kernels):
    norm = cpu_kernels.LayerNorm(6, epsilon=1e-6, kernels=kernels)
    x = paddle.randn([2, 6])
    np.testing.assert_allclose(norm(x).numpy(), F.layer_norm(x, [6], norm.weight, norm.bias, 1e-6).numpy(),
                               rtol=1e-5, atol=1e-6)
    layer = Attention(16, 2, kernels=kernels)
    layer.eval()
    static = paddle.jit.to_static(layer, input_spec=[paddle.static.InputSpec([None, 9, 16], 'float32')],
                                  full_graph=True)
    program = str(static.forward.concrete_program.main_program)
    assert 'softmax' in program and 'pit_' not in program


@linux_only
def test_the_model_keeps_the_kernels_it_was_built_with():
    small = dict(image_size=32, patch_size=4, stride=2, base_dims=[8, 8, 8], depth=[1, 1, 1], num_classes=10)
    fast, plain = PoolingTransformer(**small), PoolingTransformer(cpu_kernels=False, **small)
    assert fast.kernels.applies(paddle.ones([1])) and plain.kernels is cpu_kernels.PADDLE
    block = fast.transformers[0].blocks[0]
    assert block.attn.kernels is fast.kernels and block.mlp.fc1.kernels is fast.kernels
    assert fast.patch_embed.conv.kernels is fast.kernels and fast.pools[0].conv.kernels is fast.kernels
    assert copy.deepcopy(fast).kernels is fast.kernels
    plain.set_state_dict(fast.state_dict())
    x = paddle.randn([2, 3, 32, 32])
    fast.eval()
    plain.eval()
    np.testing.assert_allclose(fast(x).numpy(), plain(x).numpy(), rtol=1e-4, atol=1e-5)


@linux_only
def test_a_training_step_on_the_kernels_equals_paddles_ops_with_drop_path():
    small = dict(image_size=32, patch_size=8, stride=4, base_dims=[8, 8, 8], depth=[2, 1, 1], heads=[1, 2, 2],
                 num_classes=10, drop_path_rate=0.5)
    fast, plain = PoolingTransformer(**small), PoolingTransformer(cpu_kernels=False, **small)
    plain.set_state_dict(fast.state_dict())
    x = paddle.to_tensor(np.random.RandomState(9).randn(6, 3, 32, 32).astype('float32'))
    grads = []
    for model in (fast, plain):
        paddle.seed(11)  # the same drop-path draws on both sides
        model.train()
        loss = F.cross_entropy(model(x), paddle.arange(6) % 10)
        loss.backward()
        grads.append({n: p.grad.numpy() for n, p in model.named_parameters()})
    for name in grads[1]:
        np.testing.assert_allclose(grads[0][name], grads[1][name], rtol=1e-4, atol=1e-5, err_msg=name)


BROKEN_BUILD = r'''
import sys, warnings
sys.path.insert(0, sys.argv[1])
import paddle
import cpu_kernels
cpu_kernels.SOURCE = sys.argv[2]
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter('always')
    kernels = cpu_kernels.for_model()
assert kernels is cpu_kernels.PADDLE and cpu_kernels.load() is False
print(cpu_kernels.status())
print(caught[0].category.__name__, str(caught[0].message) == cpu_kernels.status())
x = paddle.to_tensor([[0.0, 1.0]])
print(kernels.applies(x), float(kernels.softmax(x).sum()))
'''


@linux_only
def test_a_failed_build_is_reported_and_paddle_kernels_are_used(tmp_path):
    source = tmp_path / 'cpu_kernels.cc'
    source.write_text(open(os.path.join(ROOT, 'csrc', 'cpu_kernels.cc')).read() + '\nthis is not C++;\n')
    env = dict(os.environ, PADDLE_EXTENSION_DIR=str(tmp_path / 'build'))
    out = subprocess.run([sys.executable, '-c', BROKEN_BUILD, ROOT, str(source)], capture_output=True, text=True,
                         env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    status, warning, fallback = out.stdout.strip().splitlines()[-3:]
    assert status.startswith('CPU kernels: could not be built (') and 'using paddle kernels' in status
    assert warning == 'RuntimeWarning True'
    assert fallback == 'False 1.0'
