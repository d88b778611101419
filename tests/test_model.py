"""PiT model: official sizes, init, drop path wiring, distilled outputs."""
import glob
import os

import numpy as np
import paddle
import pytest

from config import build_config
from cpu_kernels import Linear
from pit import Attention, build_pit, PoolingTransformer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# parameter counts of the reference implementation (timm pit_*_224 / pit_*_distilled_224)
OFFICIAL_PARAMS = {
    'pit_ti': 4847272, 'pit_xs': 10618888, 'pit_s': 23461912, 'pit_b': 73764840,
    'pit_ti_distilled': 5104336, 'pit_xs_distilled': 11003984, 'pit_s_distilled': 24039056,
    'pit_b_distilled': 74790096,
}


def count_params(model):
    return sum(int(np.prod(p.shape)) for p in model.parameters())


@pytest.mark.parametrize('name', sorted(OFFICIAL_PARAMS))
def test_config_builds_official_parameter_count(name):
    model = build_pit(build_config(os.path.join(ROOT, 'configs', name + '.yaml')))
    assert count_params(model) == OFFICIAL_PARAMS[name]


def test_every_variant_has_a_config():
    names = {os.path.basename(f)[:-5] for f in glob.glob(os.path.join(ROOT, 'configs', 'pit_*.yaml'))}
    assert names == set(OFFICIAL_PARAMS)


def tiny(**kw):
    args = dict(image_size=32, patch_size=4, stride=2, base_dims=[8, 8], depth=[1, 2], heads=[2, 4],
                num_classes=5)
    args.update(kw)
    return PoolingTransformer(**args)


def test_drop_path_config_reaches_every_block_as_rate_i_over_n():
    config = build_config(os.path.join(ROOT, 'configs', 'pit_ti.yaml'))
    config.MODEL.DROP_PATH = 0.3
    model = build_pit(config)
    rates = [blk.drop_path.drop_prob for t in model.transformers for blk in t.blocks]
    assert rates == pytest.approx([0.3 * i / 12 for i in range(12)])


def test_dropout_config_reaches_model():
    config = build_config(os.path.join(ROOT, 'configs', 'pit_ti.yaml'))
    config.MODEL.DROPOUT = 0.2
    config.MODEL.ATTENTION_DROPOUT = 0.1
    model = build_pit(config)
    block = model.transformers[0].blocks[0]
    assert model.pos_drop.p == 0.2 and block.mlp.drop.p == 0.2 and block.attn.proj_drop.p == 0.2
    assert block.attn.attn_drop.p == 0.1


def test_distilled_returns_two_heads_in_train_and_their_mean_in_eval():
    paddle.seed(0)
    model = tiny(distilled=True)
    x = paddle.randn([2, 3, 32, 32])
    model.train()
    cls_logits, dist_logits = model(x)
    model.eval()
    mean = model(x)
    np.testing.assert_allclose(mean.numpy(), ((cls_logits + dist_logits) / 2).numpy(), atol=1e-6)


def test_linear_and_conv_use_pytorch_default_init_bounds():
    paddle.seed(0)
    model = tiny(base_dims=[64, 64], heads=[2, 4])
    fc1 = model.transformers[0].blocks[0].mlp.fc1  # fan_in 128
    bound = 1 / np.sqrt(128)
    w = fc1.weight.numpy()
    assert np.abs(w).max() <= bound and np.abs(w).max() > 0.95 * bound
    assert np.abs(fc1.bias.numpy()).max() <= bound
    conv = model.pools[0].conv  # depthwise: fan_in = 1 * 3 * 3
    assert np.abs(conv.weight.numpy()).max() <= 1 / 3


def test_layernorm_eps_and_token_init():
    paddle.seed(0)
    model = tiny()
    assert model.norm._epsilon == 1e-6
    assert abs(float(model.pos_embed.numpy().std()) - 0.02) < 0.01
    assert model.no_weight_decay() == {'pos_embed', 'cls_token'}


def test_export_attention_form_computes_the_dygraph_attention():
    """Attention has two op layouts of one computation: the dygraph one (split q/k/v) and the one traced for
    export (the pattern paddle.inference fuses into one CPU kernel). They must agree."""
    paddle.seed(3)
    attn = Attention(dim=48, num_heads=3)
    attn.eval()
    B, N = 2, 17
    qkv = attn.qkv(paddle.randn([B, N, 48]))
    dygraph = attn._attend_plain(qkv, B, N).numpy()
    export = attn._attend_fusable(qkv, B, N).numpy()
    assert dygraph.shape == (B, N, 3, 16)
    np.testing.assert_allclose(export, dygraph, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('shape', [[5, 8], [2, 7, 8]])
@pytest.mark.parametrize('x_needs_grad', [True, False])
def test_cpu_linear_has_the_values_and_gradients_of_f_linear(shape, x_needs_grad):
    paddle.seed(4)
    layer = Linear(8, 6)
    layer.train()
    x = paddle.randn(shape)
    upstream = paddle.randn(shape[:-1] + [6])
    results = []
    for through_layer in (True, False):
        layer.clear_gradients()
        xi = x.detach()
        xi.stop_gradient = not x_needs_grad
        out = layer(xi) if through_layer else paddle.nn.functional.linear(xi, layer.weight, layer.bias)
        (out * upstream).sum().backward()
        results.append([out.numpy(), layer.weight.grad.numpy(), layer.bias.grad.numpy(),
                        None if xi.grad is None else xi.grad.numpy()])
    custom, reference = results
    for got, want in zip(custom, reference):
        if want is None:
            assert got is None
        else:
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert (custom[3] is None) == (not x_needs_grad)
