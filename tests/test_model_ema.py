"""Model EMA: the update rule, buffers copied, a frozen eval copy, state round trip, and names left alone."""
import copy

import numpy as np
import paddle
import pytest

from model_ema import ModelEma
from optim import AdamW

# the plain (GPU) paths run as on a GPU: with Paddle's strided views
pytestmark = pytest.mark.usefixtures('gpu_strides')


class Net(paddle.nn.Layer):
    def __init__(self):
        super().__init__()
        self.fc = paddle.nn.Linear(3, 4)
        self.bn = paddle.nn.BatchNorm1D(4)

    def forward(self, x):
        return self.bn(self.fc(x))


def make_net():
    with paddle.utils.unique_name.guard():
        return Net()


def perturb(model, scale, seed):
    rng = np.random.RandomState(seed)
    for p in model.parameters():
        p.set_value(p.numpy() + scale * rng.randn(*p.shape).astype(np.float32))


def test_update_follows_decay_times_ema_plus_one_minus_decay_times_model():
    model = make_net()
    ema = ModelEma(model, decay=0.9)
    params = {k: v for k, v in model.named_parameters() if not v.stop_gradient}
    expected = {k: v.numpy().astype(np.float64) for k, v in params.items()}
    assert set(params) == {'fc.weight', 'fc.bias', 'bn.weight', 'bn.bias'}
    for step in range(3):
        perturb(model, 1.0, step)
        ema.update(model)
        for name, value in ema.module.named_parameters():
            if name not in params:
                continue
            expected[name] = 0.9 * expected[name] + 0.1 * params[name].numpy()
            np.testing.assert_allclose(value.numpy(), expected[name], rtol=1e-6, atol=1e-7, err_msg=name)


def test_batchnorm_statistics_and_buffers_are_copied_not_averaged():
    model = make_net()
    model.register_buffer('steps', paddle.zeros([1]))
    ema = ModelEma(model, decay=0.9)
    model.train()
    model(paddle.randn([8, 3]) * 5 + 2)  # moves the BatchNorm running statistics (stop_gradient parameters)
    model.steps.set_value(np.array([7.0], dtype=np.float32))
    ema.update(model)
    ema_state = ema.state_dict()
    for name in ('bn._mean', 'bn._variance', 'steps'):
        np.testing.assert_array_equal(ema_state[name].numpy(), model.state_dict()[name].numpy(), err_msg=name)
    assert float(np.abs(model.bn._mean.numpy()).sum()) > 0


def test_ema_module_is_a_frozen_eval_copy_that_moves_only_on_update():
    model = make_net()
    ema = ModelEma(model, decay=0.5)
    before = {k: v.numpy().copy() for k, v in ema.state_dict().items()}
    perturb(model, 1.0, 0)
    assert not ema.module.training
    assert all(p.stop_gradient for p in ema.module.parameters())
    assert all(np.array_equal(v.numpy(), before[k]) for k, v in ema.state_dict().items())
    ema.update(model)
    assert not np.array_equal(ema.state_dict()['fc.weight'].numpy(), before['fc.weight'])


def test_update_accepts_a_data_parallel_style_wrapper():
    model = make_net()
    ema = ModelEma(model, decay=0.0)  # decay 0: the EMA becomes the model
    perturb(model, 1.0, 1)
    wrapper = paddle.nn.Layer()
    wrapper._layers = model  # what paddle.DataParallel holds
    ema.update(wrapper)
    np.testing.assert_array_equal(ema.module.fc.weight.numpy(), model.fc.weight.numpy())


def test_state_dict_round_trip_and_a_misfit_names_the_keys():
    model = make_net()
    ema = ModelEma(model, decay=0.5)
    perturb(model, 1.0, 2)
    ema.update(model)
    fresh = ModelEma(make_net(), decay=0.5)
    fresh.set_state_dict(ema.state_dict())
    for key, value in ema.state_dict().items():
        np.testing.assert_array_equal(fresh.state_dict()[key].numpy(), value.numpy())
    with pytest.raises(ValueError, match='fc.bias'):
        fresh.set_state_dict({k: v for k, v in ema.state_dict().items() if k != 'fc.bias'})


def test_creating_the_ema_leaves_the_names_of_later_objects_unchanged():
    def later_names(with_ema):
        with paddle.utils.unique_name.guard():
            model = Net()
            if with_ema:
                ModelEma(model)
            later = Net()
            copied = copy.deepcopy(model)
            return [p.name for p in later.parameters()] + [p.name for p in copied.parameters()]

    assert later_names(with_ema=True) == later_names(with_ema=False)


def test_optimizer_state_resumes_whether_the_ema_is_built_before_or_after_the_optimizer():
    x = paddle.randn([4, 3])

    def run(steps, ema_first, state=None):
        paddle.seed(0)
        model = make_net()
        model.train()
        ema = ModelEma(model, 0.9) if ema_first else None
        optimizer = AdamW(learning_rate=0.1, parameters=model.parameters(), weight_decay=0.05)
        ema = ema or ModelEma(model, 0.9)
        if state is not None:
            model.set_state_dict(state['model'])
            ema.set_state_dict(state['ema'])
            optimizer.set_state_dict(state['optimizer'])
        for _ in range(steps):
            (model(x) ** 2).mean().backward()
            optimizer.step()
            optimizer.clear_grad()
            ema.update(model)
        return {'model': model.state_dict(), 'ema': ema.state_dict(), 'optimizer': optimizer.state_dict()}

    straight = run(3, ema_first=True)
    resumed = run(1, ema_first=False, state=run(2, ema_first=True))
    for part in ('model', 'ema'):
        for key, value in straight[part].items():
            np.testing.assert_allclose(resumed[part][key].numpy(), value.numpy(), rtol=1e-6, atol=1e-7,
                                       err_msg=f'{part} {key}')
