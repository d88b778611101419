"""cpu_kernels: the multi-threaded CPU softmax, LayerNorm, bias add and GELU compute paddle's values
and gradients, the model uses them on CPU in dygraph, and a failed build is reported (not silent), paddle's
kernels being used instead."""
import os
import subprocess
import sys

import numpy as np
import paddle
import paddle.nn.functional as F
import pytest

import cpu_kernels
from pit import LayerNorm

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
linux_only = pytest.mark.skipif(not sys.platform.startswith('linux'), reason='cpu_kernels are built on Linux only')


def values_and_grads(fn, inputs, upstream):
    leaves = [paddle.to_tensor(a, stop_gradient=False) for a in inputs]
    out = fn(*leaves)
    (out * paddle.to_tensor(upstream)).sum().backward()
    return [out.numpy()] + [leaf.grad.numpy() for leaf in leaves]


@linux_only
def test_kernels_are_built_and_in_use_on_linux():
    assert cpu_kernels.load(), cpu_kernels.status()
    assert cpu_kernels.in_use() and 'in use' in cpu_kernels.status()
    assert cpu_kernels.usable(paddle.ones([2, 3]))
    assert not cpu_kernels.usable(paddle.ones([2, 3], dtype='float64'))


@linux_only
@pytest.mark.parametrize('shape', [[3, 1], [5, 7], [2, 3, 17, 33]])
def test_softmax_matches_paddle_values_and_gradients(shape):
    rng = np.random.RandomState(0)
    x = (rng.randn(*shape) * 4).astype('float32')
    upstream = rng.randn(*shape).astype('float32')
    ours = values_and_grads(cpu_kernels.softmax, [x], upstream)
    reference = values_and_grads(lambda t: F.softmax(t, axis=-1), [x], upstream)
    for got, want in zip(ours, reference):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)


@linux_only
@pytest.mark.parametrize('shape', [[5, 3], [2, 40, 130]])
def test_bias_add_and_gelu_match_paddle_values_and_gradients(shape):
    rng = np.random.RandomState(2)
    x = (rng.randn(*shape) * 3).astype('float32')
    bias = rng.randn(shape[-1]).astype('float32')
    upstream = rng.randn(*shape).astype('float32')
    checks = [(cpu_kernels.add_bias, lambda a, b: a + b, [x, bias]), (cpu_kernels.gelu, F.gelu, [x])]
    for ours_fn, paddle_fn, inputs in checks:
        ours = values_and_grads(ours_fn, inputs, upstream)
        reference = values_and_grads(paddle_fn, inputs, upstream)
        for got, want in zip(ours, reference):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@linux_only
def test_softmax_keeps_a_nan_in_its_row():
    out = cpu_kernels.softmax(paddle.to_tensor([[1.0, float('nan'), 2.0], [1.0, 2.0, 3.0]])).numpy()
    assert np.isnan(out[0]).all() and np.isfinite(out[1]).all()


@linux_only
@pytest.mark.parametrize('shape', [[4, 8], [3, 130, 24]])
def test_layer_norm_matches_paddle_values_and_gradients(shape):
    rng = np.random.RandomState(1)
    x = (rng.randn(*shape) * 3 + 1).astype('float32')
    weight, bias = rng.randn(shape[-1]).astype('float32'), rng.randn(shape[-1]).astype('float32')
    upstream = rng.randn(*shape).astype('float32')
    ours = values_and_grads(lambda a, w, b: cpu_kernels.layer_norm(a, w, b, 1e-6), [x, weight, bias], upstream)
    reference = values_and_grads(lambda a, w, b: F.layer_norm(a, shape[-1:], w, b, 1e-6), [x, weight, bias],
                                 upstream)
    for got, want in zip(ours, reference):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


@linux_only
def test_model_layer_norm_uses_the_kernel_on_cpu_and_paddle_under_static_export():
    norm = LayerNorm(6, epsilon=1e-6)
    x = paddle.randn([2, 6])
    np.testing.assert_allclose(norm(x).numpy(), F.layer_norm(x, [6], norm.weight, norm.bias, 1e-6).numpy(),
                               rtol=1e-5, atol=1e-6)
    static = paddle.jit.to_static(norm, input_spec=[paddle.static.InputSpec([None, 6], 'float32')], full_graph=True)
    program = str(static.forward.concrete_program.main_program)
    assert 'layer_norm' in program and 'pit_layer_norm' not in program


BROKEN_BUILD = r'''
import sys
sys.path.insert(0, sys.argv[1])
import paddle
import cpu_kernels
cpu_kernels.SOURCE = sys.argv[2]
assert cpu_kernels.load() is False
print(cpu_kernels.status())
x = paddle.to_tensor([[0.0, 1.0]])
print(cpu_kernels.usable(x), float(cpu_kernels.softmax(x).sum()))
'''


@linux_only
def test_a_failed_build_is_reported_and_paddle_kernels_are_used(tmp_path):
    source = tmp_path / 'cpu_kernels.cc'
    source.write_text(open(os.path.join(ROOT, 'csrc', 'cpu_kernels.cc')).read() + '\nthis is not C++;\n')
    env = dict(os.environ, PADDLE_EXTENSION_DIR=str(tmp_path / 'build'))
    out = subprocess.run([sys.executable, '-c', BROKEN_BUILD, ROOT, str(source)], capture_output=True, text=True,
                         env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    status, fallback = out.stdout.strip().splitlines()[-2:]
    assert status.startswith('CPU kernels: could not be built (') and 'using paddle kernels' in status
    assert fallback == 'False 1.0'
