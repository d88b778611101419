"""Losses: label smoothing, soft-target CE and DeiT's distillation, checked against their definitions in numpy."""
import numpy as np
import paddle
import pytest

from config import build_config, merge_opts
from losses import DistillationLoss, LabelSmoothingCrossEntropy, SoftTargetCrossEntropy, build_criterion

pytestmark = pytest.mark.usefixtures('gpu_strides')  # the plain (GPU) path as a GPU runs it: strided views

B, C = 4, 5


def log_softmax(x):
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


@pytest.fixture
def batch():
    rng = np.random.RandomState(0)
    return {'images': rng.randn(B, 3).astype(np.float32), 'cls': rng.randn(B, C).astype(np.float32),
            'dist': rng.randn(B, C).astype(np.float32), 'labels': rng.randint(0, C, size=B)}


class LinearTeacher(paddle.nn.Layer):
    """A fixed linear 'teacher' on [B, 3] inputs; records the mode it was called in."""

    def __init__(self):
        super().__init__()
        self.fc = paddle.nn.Linear(3, C)
        self.calls = []

    def forward(self, x):
        self.calls.append(self.training)
        return self.fc(x)


def t(array, **kwargs):
    return paddle.to_tensor(array, **kwargs)


def test_label_smoothing_matches_its_definition(batch):
    logp = log_softmax(batch['cls'].astype(np.float64))
    nll = -logp[np.arange(B), batch['labels']]
    expected = (0.9 * nll + 0.1 * -logp.mean(axis=1)).mean()
    loss = LabelSmoothingCrossEntropy(0.1)(t(batch['cls']), t(batch['labels']))
    np.testing.assert_allclose(float(loss), expected, rtol=1e-6)


def test_label_smoothing_equals_soft_target_ce_on_smoothed_one_hot_targets(batch):
    targets = np.full((B, C), 0.1 / C, dtype=np.float32)
    targets[np.arange(B), batch['labels']] += 0.9
    smoothed = LabelSmoothingCrossEntropy(0.1)(t(batch['cls']), t(batch['labels']).reshape([B, 1]))
    soft = SoftTargetCrossEntropy()(t(batch['cls']), t(targets))
    np.testing.assert_allclose(float(smoothed), float(soft), rtol=1e-6)


def test_soft_target_ce_matches_its_definition(batch):
    targets = np.random.RandomState(1).dirichlet(np.ones(C), size=B).astype(np.float32)
    expected = (-targets * log_softmax(batch['cls'].astype(np.float64))).sum(axis=1).mean()
    np.testing.assert_allclose(float(SoftTargetCrossEntropy()(t(batch['cls']), t(targets))), expected, rtol=1e-6)


def test_no_distillation_trains_the_mean_of_both_heads_and_never_calls_the_teacher(batch):
    teacher = LinearTeacher()
    loss = DistillationLoss(paddle.nn.CrossEntropyLoss(), teacher, 'none', 0.5, 1.0)
    value = loss(t(batch['images']), (t(batch['cls']), t(batch['dist'])), t(batch['labels']))

    def ce(logits):
        return -log_softmax(logits.astype(np.float64))[np.arange(B), batch['labels']].mean()
    np.testing.assert_allclose(float(value), ce((batch['cls'] + batch['dist']) / 2), rtol=1e-6)  # eval's logits
    single = loss(t(batch['images']), t(batch['cls']), t(batch['labels']))  # a model without head_dist
    np.testing.assert_allclose(float(single), ce(batch['cls']), rtol=1e-6)
    assert teacher.calls == []


def test_hard_distillation_mixes_base_loss_and_ce_to_teacher_argmax(batch):
    teacher = LinearTeacher()
    loss = DistillationLoss(paddle.nn.CrossEntropyLoss(), teacher, 'hard', 0.3, 1.0)
    value = loss(t(batch['images']), (t(batch['cls']), t(batch['dist'])), t(batch['labels']))
    teacher_labels = teacher(t(batch['images'])).numpy().argmax(axis=1)
    base = -log_softmax(batch['cls'].astype(np.float64))[np.arange(B), batch['labels']].mean()
    hard = -log_softmax(batch['dist'].astype(np.float64))[np.arange(B), teacher_labels].mean()
    np.testing.assert_allclose(float(value), 0.7 * base + 0.3 * hard, rtol=1e-6)


def test_soft_distillation_is_kl_with_log_targets_times_tau_squared_over_numel(batch):
    tau, alpha = 2.0, 0.4
    teacher = LinearTeacher()
    loss = DistillationLoss(paddle.nn.CrossEntropyLoss(), teacher, 'soft', alpha, tau)
    value = loss(t(batch['images']), (t(batch['cls']), t(batch['dist'])), t(batch['labels']))
    log_teacher = log_softmax(teacher(t(batch['images'])).numpy().astype(np.float64) / tau)
    log_student = log_softmax(batch['dist'].astype(np.float64) / tau)
    kl = (np.exp(log_teacher) * (log_teacher - log_student)).sum() * tau * tau / (B * C)
    base = -log_softmax(batch['cls'].astype(np.float64))[np.arange(B), batch['labels']].mean()
    np.testing.assert_allclose(float(value), (1 - alpha) * base + alpha * kl, rtol=1e-6)


def test_teacher_runs_in_eval_mode_without_gradient_while_the_student_gets_one(batch):
    teacher = LinearTeacher()
    teacher.train()
    loss = DistillationLoss(paddle.nn.CrossEntropyLoss(), teacher, 'soft', 0.5, 1.0)
    cls, dist = t(batch['cls'], stop_gradient=False), t(batch['dist'], stop_gradient=False)
    loss(t(batch['images']), (cls, dist), t(batch['labels'])).backward()
    assert teacher.calls == [False]
    assert all(p.grad is None for p in teacher.parameters())
    assert np.abs(dist.grad.numpy()).sum() > 0 and np.abs(cls.grad.numpy()).sum() > 0


def test_distillation_without_dist_logits_raises_a_clear_error(batch):
    loss = DistillationLoss(paddle.nn.CrossEntropyLoss(), LinearTeacher(), 'hard', 0.5, 1.0)
    with pytest.raises(ValueError, match=r'the \(cls, dist\) logits of a distilled model'):
        loss(t(batch['images']), t(batch['cls']), t(batch['labels']))


@pytest.mark.parametrize('mixup, smoothing, base_type', [
    (True, '0.1', SoftTargetCrossEntropy),
    (False, '0.1', LabelSmoothingCrossEntropy),
    (False, '0.0', paddle.nn.CrossEntropyLoss),
])
def test_build_criterion_picks_the_base_loss_like_deit(mixup, smoothing, base_type):
    criterion = build_criterion(merge_opts(build_config(), ['TRAIN.SMOOTHING', smoothing]), mixup_active=mixup)
    assert isinstance(criterion, DistillationLoss) and criterion.distillation_type == 'none'
    assert type(criterion.base_criterion) is base_type


def test_build_criterion_passes_distillation_settings_and_needs_a_teacher():
    config = merge_opts(build_config(), ['TRAIN.DISTILLATION_TYPE', 'soft', 'TRAIN.DISTILLATION_ALPHA', '0.25',
                                       'TRAIN.DISTILLATION_TAU', '3.0'])
    criterion = build_criterion(config, LinearTeacher())
    assert (criterion.distillation_type, criterion.alpha, criterion.tau) == ('soft', 0.25, 3.0)
    with pytest.raises(ValueError, match="distillation 'soft' needs a teacher model"):
        build_criterion(config, teacher=None)
