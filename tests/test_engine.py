"""Engine: count-weighted metrics, bad val samples excluded, non-finite loss stops the run, AMP off passes through."""
import numpy as np
import paddle
import pytest

import engine
from config import build_config, finalize_config, merge_opts
from engine import NonFiniteLossError, TrainState, accumulation_scale, evaluate, topk_correct, train_one_epoch
from utils import MetricSums

pytestmark = pytest.mark.usefixtures('gpu_strides')  # the plain (GPU) path as a GPU runs it: strided views


def test_metric_sums_average_over_samples_not_batches():
    sums = MetricSums('acc1')
    sums.add('acc1', 3, 4)   # 3 of 4 right
    sums.add('acc1', 0, 1)   # 0 of 1 right
    assert sums.avg('acc1') == pytest.approx(3 / 5)  # a mean of batch means would say 0.375
    assert MetricSums('x').synchronize().count('x') == 0  # one process: no collective, declared names kept


def test_topk_correct_counts_hits_and_caps_k_at_the_class_count():
    logits = paddle.to_tensor([[0.1, 0.9, 0.0], [0.8, 0.1, 0.1], [0.2, 0.3, 0.5]])
    labels = paddle.to_tensor([1, 2, 0])
    assert topk_correct(logits, labels, ks=(1, 5)) == [1.0, 3.0]


class Constant(paddle.nn.Layer):
    """Logits that put all mass on `prediction` for every sample."""

    def __init__(self, prediction, classes=4):
        super().__init__()
        self.logits = paddle.nn.functional.one_hot(paddle.to_tensor([prediction]), classes) * 10

    def forward(self, x):
        return self.logits.expand([x.shape[0], -1])


def test_evaluate_excludes_and_counts_label_minus_one_samples():
    config = build_config()
    batches = Loader([(paddle.zeros([3, 3, 2, 2]), paddle.to_tensor([2, -1, 2])),
                      (paddle.zeros([2, 3, 2, 2]), paddle.to_tensor([1, 2]))])
    batches.dataset = None  # a data set without a class subset (DATA.EVAL_SET imagenet)
    stats = evaluate(Constant(2), batches, config, amp={'enable': False})
    assert stats['images'] == 4 and stats['bad'] == 1
    assert stats['acc1'] == pytest.approx(3 / 4)


class Loader(list):
    """A list of batches with the DataLoader attributes train_one_epoch and evaluate use."""


def nan_at_the_second_call(calls):
    """A criterion giving a zero loss, NaN at its second call (step 1); each call is appended to `calls`."""
    def criterion(inputs, outputs, targets):
        calls.append(1)
        loss = outputs.sum() * 0
        return loss + float('nan') if len(calls) == 2 else loss
    return criterion


def test_non_finite_loss_raises_with_epoch_and_step():
    config = finalize_config(merge_opts(build_config(), ['REPORT_FREQ', '1']))
    model = paddle.nn.Linear(2, 2)
    optimizer = paddle.optimizer.SGD(learning_rate=0.1, parameters=model.parameters())
    batches = Loader([(paddle.to_tensor([[1.0, 2.0]]), paddle.to_tensor([0]), paddle.to_tensor([0]))] * 3)
    calls = []
    criterion = nan_at_the_second_call(calls)

    state = TrainState(model, optimizer, None, paddle.amp.GradScaler(enable=False), {'enable': False})
    with pytest.raises(NonFiniteLossError, match='loss is nan at epoch 1 step 1'):
        train_one_epoch(state, criterion, batches, 0, config)


def test_training_epoch_steps_the_optimizer_every_accum_iter_batches():
    config = finalize_config(merge_opts(build_config(), ['TRAIN.ACCUM_ITER', '2', 'REPORT_FREQ', '10']))
    paddle.seed(0)
    model = paddle.nn.Linear(2, 3)
    optimizer = paddle.optimizer.SGD(learning_rate=0.1, parameters=model.parameters())
    steps = []
    original = optimizer.step
    optimizer.step = lambda: (steps.append(1), original())[1]
    x = paddle.to_tensor(np.random.rand(4, 2).astype('float32'))
    batches = Loader([(x, paddle.to_tensor([0, 1, 2, 0]), paddle.to_tensor([0, 1, 0, 0]))] * 5)
    criterion = lambda inputs, outputs, targets: paddle.nn.functional.cross_entropy(outputs, targets)
    state = TrainState(model, optimizer, None, paddle.amp.GradScaler(enable=False), {'enable': False})
    stats = train_one_epoch(state, criterion, batches, 0, config)
    assert len(steps) == 3  # after batches 2 and 4, and the last partial group
    assert stats['images'] == 20 and 0 <= stats['acc1'] <= 1 and stats['skipped'] == 5


@pytest.mark.parametrize('steps, accum', [(5, 2), (7, 3), (6, 3), (4, 1)])
def test_every_optimizer_step_averages_its_batches_also_the_last_short_group(steps, accum):
    scales = [accumulation_scale(step, steps, accum) for step in range(steps)]
    groups = [scales[i:i + accum] for i in range(0, steps, accum)]
    for group in groups:
        assert sum(group) == pytest.approx(1.0) and len(set(group)) == 1


def test_an_accumulated_step_equals_one_step_on_the_concatenated_batches():
    """5 batches, ACCUM_ITER 2: the last optimizer step sees only batch 5, at full weight (it was scaled by 1/2)."""
    config = finalize_config(merge_opts(build_config(), ['TRAIN.ACCUM_ITER', '2', 'REPORT_FREQ', '10']))
    rng = np.random.RandomState(0)
    batches = Loader([(paddle.to_tensor(rng.rand(4, 2).astype('float32')), paddle.to_tensor(rng.randint(0, 3, 4)),
                       paddle.zeros([4], 'int64')) for _ in range(5)])
    criterion = lambda inputs, outputs, targets: paddle.nn.functional.cross_entropy(outputs, targets)
    grads = []

    def recording_model():
        paddle.seed(0)
        model = paddle.nn.Linear(2, 3)
        optimizer = paddle.optimizer.SGD(learning_rate=0.0, parameters=model.parameters())
        original = optimizer.step
        optimizer.step = lambda: (grads.append(model.weight.grad.numpy().copy()), original())[1]
        return model, optimizer

    model, optimizer = recording_model()
    train_one_epoch(TrainState(model, optimizer, None, paddle.amp.GradScaler(enable=False), {'enable': False}),
                    criterion, batches, 0, config)
    reference, _ = recording_model()
    for group, grad in zip([batches[0:2], batches[2:4], batches[4:5]], grads):
        reference.clear_gradients()
        x = paddle.concat([batch[0] for batch in group])
        y = paddle.concat([batch[1] for batch in group])
        criterion(x, reference(x), y).backward()
        np.testing.assert_allclose(grad, reference.weight.grad.numpy(), rtol=1e-5, atol=1e-7)


def device_reads(monkeypatch):
    """A list that grows by one each time a tensor is read back to the host (numpy(), and float(), int(), bool()
    and item(), which go through it or are counted beside it)."""
    reads = []
    for name in ('numpy', 'item'):
        original = getattr(paddle.Tensor, name)
        monkeypatch.setattr(paddle.Tensor, name, lambda self, *a, _f=original, **k: (reads.append(1), _f(self, *a, **k))[1])
    return reads


def soft_target_loss(inputs, outputs, targets):
    """Cross-entropy on one-hot targets written out: Paddle 2.6's F.cross_entropy with hard labels reads a
    count back itself (its ignore_index check)."""
    one_hot = paddle.nn.functional.one_hot(targets, outputs.shape[-1])
    return -(paddle.nn.functional.log_softmax(outputs, axis=-1) * one_hot).sum(axis=-1).mean()


def linear_state():
    paddle.seed(0)
    model = paddle.nn.Linear(2, 3)
    optimizer = paddle.optimizer.SGD(learning_rate=0.1, parameters=model.parameters())
    return TrainState(model, optimizer, None, paddle.amp.GradScaler(enable=False), {'enable': False})


def linear_epoch(config, batches, criterion=soft_target_loss, stop=None):
    state = linear_state()
    return train_one_epoch(state, criterion, batches, 0, config, stop=stop), state


def test_the_host_reads_the_device_only_at_report_steps_and_once_at_the_end(monkeypatch):
    config = finalize_config(merge_opts(build_config(), ['REPORT_FREQ', '5']))
    rng = np.random.RandomState(0)
    batches = Loader([(paddle.to_tensor(rng.rand(4, 2).astype('float32')), paddle.to_tensor(rng.randint(0, 3, 4)),
                       paddle.zeros([4], 'int64')) for _ in range(10)])
    per_step = []
    reference, _ = linear_epoch(finalize_config(merge_opts(build_config(), ['REPORT_FREQ', '1'])), batches)
    reads = device_reads(monkeypatch)
    stats, _ = linear_epoch(config, batches, stop=lambda: per_step.append(len(reads)) or False)
    assert len(reads) == 3  # the reports after steps 5 and 10, the skipped-file count at the end
    assert per_step == [0, 0, 0, 0, 1, 1, 1, 1, 1]  # nothing read between the reports (stop asked each step)
    assert stats['loss'] == reference['loss'] and stats['acc1'] == reference['acc1']  # the same sums


@pytest.mark.parametrize('report, accum, batches, asked', [
    (4, 1, 10, [4, 8]), (4, 3, 10, [6, 9]),
    (50, 1, 25, [10, 20]), (50, 3, 40, [30])])  # at most STOP_CHECK_STEPS optimizer steps apart
def test_in_several_processes_stop_is_asked_after_the_first_optimizer_step_of_each_report(monkeypatch, report, accum,
                                                                                            batches, asked):
    """stops.agreed is an all-reduce read on the host there: asked once per report (and every STOP_CHECK_STEPS
    optimizer steps, so a signal still ends the run within seconds), not after every step."""
    config = finalize_config(merge_opts(build_config(), ['REPORT_FREQ', str(report), 'TRAIN.ACCUM_ITER', str(accum)]))
    batches = Loader([(paddle.to_tensor([[1.0, 2.0]]), paddle.to_tensor([0]), paddle.to_tensor([0]))] * batches)
    state, steps = linear_state(), []
    monkeypatch.setattr(engine, 'get_world_size', lambda: 2)  # the state is built: only the stop cadence sees it
    train_one_epoch(state, soft_target_loss, batches, 0, config, stop=lambda: steps.append(state.step) or False)
    assert steps == asked  # not after the last step: the caller asks at the epoch's end
    state = linear_state()
    train_one_epoch(state, soft_target_loss, batches, 0, config, stop=lambda: True)
    assert state.step == asked[0]  # every rank asks at the same steps, so all stop at this one


def test_a_nan_loss_between_report_steps_is_caught_at_the_next_report_naming_its_step():
    config = finalize_config(merge_opts(build_config(), ['REPORT_FREQ', '4']))
    batches = Loader([(paddle.to_tensor([[1.0, 2.0]]), paddle.to_tensor([0]), paddle.to_tensor([0]))] * 6)
    calls = []
    criterion = nan_at_the_second_call(calls)

    with pytest.raises(NonFiniteLossError, match='loss is nan at epoch 1 step 1 '):
        linear_epoch(config, batches, criterion)
    assert len(calls) == 4  # found at the report after step 4, before anything was logged or saved
