"""Optimizers: the no-weight-decay rule, AdamW/AdamP/SGD updates against their published formulas, clipping."""
import math

import numpy as np
import paddle
import pytest

import cpu_kernels

from config import build_config, merge_opts
from optim import SGD, AdamP, AdamW, build_optimizer, param_groups
from pit import build_pit

# the plain (GPU) paths run as on a GPU: with Paddle's strided views
pytestmark = pytest.mark.usefixtures('gpu_strides')

LR, WD = 0.05, 0.5


def small_config(*opts):
    return merge_opts(build_config('configs/pit_ti.yaml'), [
        'DATA.IMAGE_SIZE', '32', 'MODEL.NUM_CLASSES', '5', 'MODEL.DROP_PATH', '0.0',
        'MODEL.TRANS.BASE_DIMS', '[4, 4, 4]', 'MODEL.TRANS.DEPTH', '[1, 1, 1]', 'MODEL.TRANS.HEADS', '[1, 2, 2]',
        'TRAIN.WEIGHT_DECAY', str(WD), *opts])


def small_pit(config):
    with paddle.utils.unique_name.guard():
        return build_pit(config)


def test_param_groups_exclude_1d_params_biases_and_model_no_weight_decay():
    model = small_pit(small_config())
    decay, no_decay = param_groups(model, 0.05)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay['params']}
    kept = {names[id(p)] for p in no_decay['params']}
    assert (decay['weight_decay'], no_decay['weight_decay']) == (0.05, 0.0)
    assert decayed | kept == set(names.values()) and not decayed & kept
    assert {'pos_embed', 'cls_token'} <= kept
    assert all(model.state_dict()[n].ndim <= 1 for n in kept - {'pos_embed', 'cls_token'})
    assert all(model.state_dict()[n].ndim >= 2 for n in decayed)
    assert 'head.weight' in decayed and 'patch_embed.conv.weight' in decayed



def test_param_groups_of_a_data_parallel_wrapper_follow_the_inner_model():
    model = small_pit(small_config())
    wrapper = paddle.nn.Layer()
    wrapper._layers = model  # what paddle.DataParallel holds; it has no no_weight_decay() of its own
    groups = [[p.name for p in group['params']] for group in param_groups(model, 0.05)]
    assert [[p.name for p in group['params']] for group in param_groups(wrapper, 0.05)] == groups
    assert model.pos_embed.name in groups[1]


def zero_grad_step(name, *opts):
    """(model, its parameters before, after) one optimizer step with all-zero gradients."""
    config = small_config('TRAIN.OPTIMIZER.NAME', name, *opts)
    model = small_pit(config)
    optimizer = build_optimizer(config, model, LR)
    before = {n: p.numpy().copy() for n, p in model.named_parameters()}
    (model(paddle.randn([2, 3, 32, 32])) * 0).sum().backward()
    optimizer.step()
    return model, before, {n: p.numpy() for n, p in model.named_parameters()}


@pytest.mark.parametrize('name, shrink', [
    ('AdamW', LR * WD),                # decoupled: w <- w - lr * wd * w
    ('AdamP', LR * WD * 0.01),         # zero gradient is orthogonal to w: projected, decay scaled by wd_ratio
    ('SGD', LR * WD * (1 + 0.9)),      # coupled L2 with Nesterov momentum 0.9: g = wd * w, v = g, step g + 0.9 v
])
def test_zero_gradient_step_decays_only_the_decayed_weights(name, shrink):
    model, before, after = zero_grad_step(name, 'TRAIN.OPTIMIZER.WD_RATIO', '0.01')
    decayed = {p.name for p in param_groups(model, WD)[0]['params']}
    for key, param in model.named_parameters():
        if param.name in decayed:
            np.testing.assert_allclose(after[key], before[key] * (1 - shrink), rtol=1e-6, atol=1e-9, err_msg=key)
        else:
            np.testing.assert_array_equal(after[key], before[key], err_msg=key)


# ---------------------------------------------------------------- AdamP against the published update

def reference_adamp(p, g, state, lr, beta1=0.9, beta2=0.999, eps=1e-8, wd=0.0, delta=0.1, wd_ratio=0.1,
                    nesterov=False):
    """One AdamP step on PyTorch-layout float64 arrays (clovaai/AdamP): returns (new p, view that projected)."""
    state['step'] += 1
    state['m'] = beta1 * state['m'] + (1 - beta1) * g
    state['v'] = beta2 * state['v'] + (1 - beta2) * g * g
    denom = np.sqrt(state['v']) / math.sqrt(1 - beta2 ** state['step']) + eps
    step_size = lr / (1 - beta1 ** state['step'])
    perturb = (beta1 * state['m'] + (1 - beta1) * g) / denom if nesterov else state['m'] / denom
    ratio, projected_by = 1.0, None
    if p.ndim > 1:
        for view_name, rows in (('channel', p.shape[0]), ('layer', 1)):
            pv, gv, uv = p.reshape(rows, -1), g.reshape(rows, -1), perturb.reshape(rows, -1)
            p_norm = np.linalg.norm(pv, axis=1, keepdims=True)
            g_norm = np.linalg.norm(gv, axis=1, keepdims=True)
            cosine = np.abs((gv / np.maximum(g_norm, eps) * (pv / np.maximum(p_norm, eps))).sum(axis=1))
            if cosine.max() < delta / math.sqrt(pv.shape[1]):
                unit = pv / (p_norm + eps)
                perturb = (uv - unit * (unit * uv).sum(axis=1, keepdims=True)).reshape(p.shape)
                ratio, projected_by = wd_ratio, view_name
                break
    p = p * (1 - lr * wd * ratio) - step_size * perturb
    return p, projected_by


def crafted_grad(p, kind, rng):
    """A gradient (PyTorch layout) that the channel view, only the layer view, or no view finds orthogonal."""
    rows = p.reshape(p.shape[0], -1)
    noise = rng.randn(*rows.shape)
    if kind == 'channel':  # every output channel's gradient orthogonal to its weights
        g = noise - rows * ((noise * rows).sum(1, keepdims=True) / (rows * rows).sum(1, keepdims=True))
    elif kind == 'layer':  # per channel parallel (|cos| = 1) but cancelling over the whole tensor
        signs = np.where(np.arange(rows.shape[0]) % 2 == 0, 1.0, -1.0)[:, None]
        g = signs * rows / (rows * rows).sum(1, keepdims=True)
    else:
        g = noise + 3 * rows
    return g.reshape(p.shape)


@pytest.mark.parametrize('fused', [False, True], ids=['paddle_ops', 'cpu_kernel'])
@pytest.mark.parametrize('nesterov', [True, False])
def test_adamp_matches_the_published_update_step_by_step(nesterov, fused):
    rng = np.random.RandomState(0)
    with paddle.utils.unique_name.guard():
        linear, conv = paddle.nn.Linear(6, 4), paddle.nn.Conv2D(2, 4, 3)
    params = {'linear.weight': linear.weight, 'conv.weight': conv.weight, 'conv.bias': conv.bias}
    to_torch = {'linear.weight': lambda a: a.T, 'conv.weight': lambda a: a, 'conv.bias': lambda a: a}
    kinds = {'linear.weight': ['channel', 'layer', 'none', 'channel'],
             'conv.weight': ['layer', 'none', 'channel', 'layer'], 'conv.bias': ['none'] * 4}
    decayed = {linear.weight.name, conv.weight.name}
    kernels = cpu_kernels.for_model() if fused else cpu_kernels.PADDLE
    if fused and not kernels.applies(linear.weight):
        pytest.skip(cpu_kernels.status())
    optimizer = AdamP(LR, list(params.values()), weight_decay=WD, wd_ratio=0.01, nesterov=nesterov,
                      apply_decay_param_fun=decayed.__contains__, kernels=kernels)
    ref = {k: to_torch[k](p.numpy().astype(np.float64)) for k, p in params.items()}
    states = {k: {'step': 0, 'm': np.zeros_like(v), 'v': np.zeros_like(v)} for k, v in ref.items()}
    for step in range(4):
        grads = {k: crafted_grad(ref[k], kinds[k][step], rng) if ref[k].ndim > 1 else rng.randn(*ref[k].shape)
                 for k in ref}
        loss = sum((p * paddle.to_tensor(to_torch[k](grads[k]), dtype='float32')).sum() for k, p in params.items())
        loss.backward()
        optimizer.step()
        optimizer.clear_grad()
        for k, p in params.items():
            ref[k], projected_by = reference_adamp(ref[k], grads[k], states[k], LR, wd=WD if p.name in decayed else 0,
                                                   wd_ratio=0.01, nesterov=nesterov)
            assert projected_by == {'none': None}.get(kinds[k][step], kinds[k][step]), (k, step)
            np.testing.assert_allclose(to_torch[k](p.numpy()), ref[k], rtol=1e-5, atol=1e-5, err_msg=f'{k} {step}')


def test_adamw_on_the_cpu_kernel_equals_paddles_adamw_op_step_by_step():
    kernels = cpu_kernels.for_model()
    if not kernels.applies(paddle.ones([1])):
        pytest.skip(cpu_kernels.status())
    rng = np.random.RandomState(3)
    layers = []
    for _ in range(2):
        with paddle.utils.unique_name.guard():
            layers.append((paddle.nn.Linear(6, 4), paddle.nn.Conv2D(2, 4, 3)))
    for a, b in zip(*[[p for layer in pair for p in layer.parameters()] for pair in layers]):
        b.set_value(a.numpy())
    optimizers = [AdamW(LR, parameters=[p for layer in pair for p in layer.parameters()], weight_decay=WD, kernels=k,
                        apply_decay_param_fun={pair[0].weight.name, pair[1].weight.name}.__contains__)
                  for pair, k in zip(layers, (kernels, cpu_kernels.PADDLE))]
    for step in range(4):
        grads = [rng.randn(*p.shape).astype('float32') for p in layers[0][0].parameters() + layers[0][1].parameters()]
        for pair, optimizer in zip(layers, optimizers):
            params = [p for layer in pair for p in layer.parameters()]
            sum((p * paddle.to_tensor(g)).sum() for p, g in zip(params, grads)).backward()
            optimizer.step()
            optimizer.clear_grad()
        for fused, plain in zip(*[[p for layer in pair for p in layer.parameters()] for pair in layers]):
            np.testing.assert_allclose(fused.numpy(), plain.numpy(), rtol=1e-5, atol=1e-6, err_msg=f'step {step}')
    # the same accumulators under the same names: a state saved by one path resumes on the other
    fused_state, plain_state = optimizers[0].state_dict(), optimizers[1].state_dict()
    assert set(fused_state) == set(plain_state)
    for key in plain_state:
        if hasattr(plain_state[key], 'numpy'):
            np.testing.assert_allclose(fused_state[key].numpy(), plain_state[key].numpy(), rtol=1e-5, atol=1e-7)


def test_sgd_matches_torch_sgd_with_nesterov_and_coupled_weight_decay():
    rng = np.random.RandomState(1)
    with paddle.utils.unique_name.guard():
        linear = paddle.nn.Linear(3, 2)
    optimizer = SGD(LR, linear.parameters(), momentum=0.9, nesterov=True, weight_decay=WD,
                    apply_decay_param_fun={linear.weight.name}.__contains__)
    ref = {p.name: p.numpy().astype(np.float64) for p in linear.parameters()}
    velocity = {k: np.zeros_like(v) for k, v in ref.items()}
    for _ in range(3):
        grads = {p.name: rng.randn(*p.shape) for p in linear.parameters()}
        sum((p * paddle.to_tensor(grads[p.name], dtype='float32')).sum() for p in linear.parameters()).backward()
        optimizer.step()
        optimizer.clear_grad()
        for p in linear.parameters():
            g = grads[p.name] + (WD * ref[p.name] if p.name == linear.weight.name else 0)
            velocity[p.name] = 0.9 * velocity[p.name] + g
            ref[p.name] = ref[p.name] - LR * (g + 0.9 * velocity[p.name])
            np.testing.assert_allclose(p.numpy(), ref[p.name], rtol=1e-5, atol=1e-6)


def test_grad_clip_scales_by_the_global_norm_over_all_parameters():
    config = small_config('TRAIN.OPTIMIZER.NAME', 'SGD', 'TRAIN.OPTIMIZER.MOMENTUM', '0.0',
                          'TRAIN.OPTIMIZER.NESTEROV', 'False', 'TRAIN.WEIGHT_DECAY', '0.0', 'TRAIN.GRAD_CLIP', '0.5')
    model = small_pit(config)
    optimizer = build_optimizer(config, model, LR)
    before = {n: p.numpy().copy() for n, p in model.named_parameters()}
    (model(paddle.randn([2, 3, 32, 32])) ** 2).sum().backward()
    grads = {n: p.grad.numpy().copy() for n, p in model.named_parameters()}
    norm = math.sqrt(sum(float((g.astype(np.float64) ** 2).sum()) for g in grads.values()))
    assert norm > 0.5, 'the test needs gradients above the clipping threshold'
    optimizer.step()
    for n, p in model.named_parameters():
        np.testing.assert_allclose(p.numpy(), before[n] - LR * grads[n] * 0.5 / norm, rtol=1e-5, atol=1e-7)


def train_steps(config, x, steps, state=None, kernels=None):
    """{'model', 'optimizer'} state dicts after `steps` steps of a seeded small PiT on the loss mean(model(x)^2),
    started from `state` when given; `kernels` forces the optimizer's path (cpu_kernels.PADDLE: the grouped one)."""
    paddle.seed(3)
    model = small_pit(config)
    if state is not None:
        model.set_state_dict(state['model'])
    optimizer = build_optimizer(config, model, LR)
    if kernels is not None:
        optimizer._kernels = kernels
    if state is not None:
        optimizer.set_state_dict(state['optimizer'])
    for _ in range(steps):
        (model(x) ** 2).mean().backward()
        optimizer.step()
        optimizer.clear_grad()
    return {'model': model.state_dict(), 'optimizer': optimizer.state_dict()}


@pytest.mark.parametrize('name', ['AdamW', 'AdamP', 'SGD'])
def test_optimizer_state_dict_resumes_the_same_trajectory(name):
    config = small_config('TRAIN.OPTIMIZER.NAME', name)
    x = paddle.randn([2, 3, 32, 32])
    straight = train_steps(config, x, 3)
    resumed = train_steps(config, x, 1, state=train_steps(config, x, 2))
    for key, value in straight['model'].items():
        np.testing.assert_allclose(resumed['model'][key].numpy(), value.numpy(), rtol=1e-6, atol=1e-7, err_msg=key)


@pytest.mark.parametrize('name', ['AdamP', 'SGD'])
def test_step_is_skipped_when_the_grad_scaler_found_inf(name):
    config = small_config('TRAIN.OPTIMIZER.NAME', name)
    model = small_pit(config)
    optimizer = build_optimizer(config, model, LR)
    before = {n: p.numpy().copy() for n, p in model.named_parameters()}
    (model(paddle.randn([2, 3, 32, 32])) ** 2).sum().backward()
    optimizer._set_auxiliary_var('found_inf', paddle.to_tensor(True))  # what GradScaler.step does on overflow
    optimizer.step()
    assert all(np.array_equal(p.numpy(), before[n]) for n, p in model.named_parameters())


def test_grouped_adamp_updates_same_shaped_parameters_together_as_each_alone():
    """The plain (GPU) path groups parameters by shape and decay; each must still take its own view test and
    update: two Linear and two conv weights of one shape whose gradients ask for different views, biases
    concatenated, one with decay, against the published update in float64, step by step."""
    rng = np.random.RandomState(5)
    with paddle.utils.unique_name.guard():
        layers = [paddle.nn.Linear(6, 4), paddle.nn.Linear(6, 4), paddle.nn.Conv2D(2, 4, 3), paddle.nn.Conv2D(2, 4, 3)]
    params = {f'{i}.{n}': p for i, layer in enumerate(layers) for n, p in layer.named_parameters()}
    to_torch = {k: (lambda a: a.T) if k.endswith('weight') and p.ndim == 2 else (lambda a: a)
                for k, p in params.items()}
    kinds = {'0.weight': ['channel', 'layer', 'none'], '1.weight': ['layer', 'none', 'channel'],
             '2.weight': ['none', 'channel', 'layer'], '3.weight': ['channel', 'channel', 'none']}
    decayed = {p.name for k, p in params.items() if k.endswith('weight') or k == '1.bias'}
    optimizer = AdamP(LR, list(params.values()), weight_decay=WD, wd_ratio=0.01, nesterov=True,
                      apply_decay_param_fun=decayed.__contains__, kernels=cpu_kernels.PADDLE)
    ref = {k: to_torch[k](p.numpy().astype(np.float64)) for k, p in params.items()}
    states = {k: {'step': 0, 'm': np.zeros_like(v), 'v': np.zeros_like(v)} for k, v in ref.items()}
    for step in range(3):
        grads = {k: crafted_grad(ref[k], kinds[k][step], rng) if k in kinds else rng.randn(*ref[k].shape)
                 for k in ref}
        sum((p * paddle.to_tensor(to_torch[k](grads[k]), dtype='float32')).sum() for k, p in params.items()).backward()
        optimizer.step()
        optimizer.clear_grad()
        for k, p in params.items():
            ref[k], projected_by = reference_adamp(ref[k], grads[k], states[k], LR, wd=WD if p.name in decayed else 0,
                                                   wd_ratio=0.01, nesterov=True)
            if k in kinds:
                assert projected_by == {'none': None}.get(kinds[k][step], kinds[k][step]), (k, step)
            np.testing.assert_allclose(to_torch[k](p.numpy()), ref[k], rtol=1e-5, atol=1e-5, err_msg=f'{k} {step}')
    groups, = optimizer._groups
    assert len(groups.segments) == 4  # the Linear weights, the conv weights, the decayed bias, the other biases


def test_the_gpu_configuration_steps_every_parameter_of_a_pit_as_the_published_adamp():
    """CPU_KERNELS False builds the model and the optimizer as a GPU run has them (plain Paddle layers, grouped
    AdamP): every parameter of a whole PiT, Linear weights included (their rows are a transposed view of a
    group), takes the published update, step by step."""
    config = small_config('TRAIN.OPTIMIZER.NAME', 'AdamP', 'CPU_KERNELS', 'False')  # the recipe: nesterov, wd_ratio
    model = small_pit(config)
    optimizer = build_optimizer(config, model, LR)
    decayed = {id(p) for p in param_groups(model, WD)[0]['params']}
    params = dict(model.named_parameters())
    to_torch = {k: (lambda a: a.T) if p.ndim == 2 else (lambda a: a) for k, p in params.items()}
    ref = {k: to_torch[k](p.numpy().astype(np.float64)) for k, p in params.items()}
    states = {k: {'step': 0, 'm': np.zeros_like(v), 'v': np.zeros_like(v)} for k, v in ref.items()}
    rng = np.random.RandomState(2)
    for step in range(2):
        grads = {k: rng.randn(*v.shape) for k, v in ref.items()}
        sum((p * paddle.to_tensor(to_torch[k](grads[k]), dtype='float32')).sum() for k, p in params.items()).backward()
        optimizer.step()
        optimizer.clear_grad()
        for k, p in params.items():
            ref[k], _ = reference_adamp(ref[k], grads[k], states[k], LR, wd=WD if id(p) in decayed else 0,
                                        wd_ratio=0.01, nesterov=True)
            np.testing.assert_allclose(to_torch[k](p.numpy()), ref[k], rtol=1e-5, atol=1e-5, err_msg=f'{k} {step}')


def test_adamp_state_moves_between_the_grouped_and_the_fused_cpu_path():
    """The grouped (GPU) path keeps its moments in its own buffers: state_dict() gives them back per parameter,
    under the names the fused CPU path uses, so a saved state resumes on either path. (Whole trajectories of
    the two paths are not compared: the k part of a qkv bias has gradients of pure rounding noise, which Adam
    scales up to visible steps.)"""
    kernels = cpu_kernels.for_model()
    if not kernels.applies(paddle.ones([1])):
        pytest.skip(cpu_kernels.status())
    config = small_config('TRAIN.OPTIMIZER.NAME', 'AdamP')
    paddle.seed(0)  # the same input whatever ran before
    x = paddle.randn([2, 3, 32, 32])

    def run(steps, path, state=None):
        return train_steps(config, x, steps, state, kernels=path)

    grouped, fused = run(2, cpu_kernels.PADDLE), run(2, kernels)
    assert set(grouped['optimizer']) == set(fused['optimizer'])
    for key, value in fused['optimizer'].items():
        if hasattr(value, 'numpy'):
            # the moments of near-zero gradients differ by rounding (a few 1e-7) between the two summation orders
            np.testing.assert_allclose(grouped['optimizer'][key].numpy(), value.numpy(), rtol=1e-4, atol=1e-6,
                                       err_msg=key)
    straight = run(3, cpu_kernels.PADDLE)
    resumed = run(1, cpu_kernels.PADDLE, state=grouped)
    for key, value in straight['model'].items():
        np.testing.assert_allclose(resumed['model'][key].numpy(), value.numpy(), rtol=1e-6, atol=1e-7, err_msg=key)
