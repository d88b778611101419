"""Training losses: label smoothing, soft-target CE (mixup/cutmix), and DeiT's distillation wrapper.

The engine always calls `criterion(images, outputs, targets)`; with distillation 'none' the wrapper only applies
the base loss (to the mean of both heads' logits for a distilled model), so there is one code path with and without
a teacher.
"""
import math

import paddle
import paddle.nn as nn
import paddle.nn.functional as F


class LabelSmoothingCrossEntropy(nn.Layer):
    """timm's label smoothing: mean over samples of (1 - s) * NLL(target) + s * mean over classes of -log p.

    logits [B, C] (any float dtype, computed in float32), labels [B] or [B, 1] int -> scalar.
    """

    def __init__(self, smoothing=0.1):
        super().__init__()
        if not 0.0 <= smoothing < 1.0:
            raise ValueError(f'smoothing must be in [0, 1), got {smoothing}')
        self.smoothing = smoothing

    def forward(self, logits, labels):
        logprobs = F.log_softmax(logits.astype('float32'), axis=-1)
        nll = -paddle.take_along_axis(logprobs, labels.reshape([-1, 1]).astype('int64'), axis=-1).squeeze(-1)
        smooth = -logprobs.mean(axis=-1)
        return ((1.0 - self.smoothing) * nll + self.smoothing * smooth).mean()


class SoftTargetCrossEntropy(nn.Layer):
    """Cross entropy with soft targets (mixup/cutmix, smoothing already folded in): mean_b sum_c -t * log p.

    logits [B, C], targets [B, C] (rows summing to 1) -> scalar.
    """

    def forward(self, logits, targets):
        logprobs = F.log_softmax(logits.astype('float32'), axis=-1)
        return (-targets.astype('float32') * logprobs).sum(axis=-1).mean()


class DistillationLoss(nn.Layer):
    """DeiT's distillation loss around a base criterion.

    outputs: logits [B, C], or (cls_logits, dist_logits) of a distilled model in training. 'none' (no teacher,
    never called): the base criterion on the mean of the two heads' logits, what the model predicts in eval, as
    timm trains a distilled PiT outside distilled training (forward_head returns (x + x_dist) / 2). DeiT's loss
    takes the class head alone there, which leaves head_dist untrained though it is half of every prediction,
    and without a gradient, which DataParallel (find_unused_parameters=False) rejects at the second step.
    Otherwise the base criterion sees the class-token logits, the teacher (eval mode, no gradient) classifies
    `inputs` and
        loss = (1 - alpha) * base(cls, targets) + alpha * distillation
    'hard': cross entropy of dist_logits against the teacher's argmax;
    'soft': KL(softmax(teacher / tau) || softmax(dist / tau)) summed over batch and classes, divided by
            dist_logits.numel() and multiplied by tau^2 (kl_div_log_target: log-probabilities on both sides).
    """

    def __init__(self, base_criterion, teacher, distillation_type, alpha, tau):
        super().__init__()
        if distillation_type not in ('none', 'hard', 'soft'):
            raise ValueError(f"distillation_type must be 'none', 'hard' or 'soft', got {distillation_type!r}")
        if distillation_type != 'none' and teacher is None:
            raise ValueError(f'distillation {distillation_type!r} needs a teacher model')
        self.base_criterion = base_criterion
        self.distillation_type = distillation_type
        self.alpha = alpha
        self.tau = tau
        self.teacher = teacher
        if teacher is not None:
            teacher.eval()
            for param in teacher.parameters():
                param.stop_gradient = True

    def forward(self, inputs, outputs, targets):
        dist_logits = None
        if isinstance(outputs, (tuple, list)):
            outputs, dist_logits = outputs
        if self.distillation_type == 'none':
            return self.base_criterion(outputs if dist_logits is None else (outputs + dist_logits) / 2, targets)
        base_loss = self.base_criterion(outputs, targets)
        if dist_logits is None:
            raise ValueError('distillation needs the (cls, dist) logits of a distilled model in training mode')
        with paddle.no_grad():
            teacher_logits = self.teacher(inputs).astype('float32')
        dist_logits = dist_logits.astype('float32')
        if self.distillation_type == 'soft':
            tau = self.tau
            kl = kl_div_log_target(F.log_softmax(dist_logits / tau, axis=1),
                                   F.log_softmax(teacher_logits / tau, axis=1))
            distillation = kl * (tau * tau) / math.prod(dist_logits.shape)
        else:
            distillation = F.cross_entropy(dist_logits, teacher_logits.argmax(axis=1))
        return base_loss * (1 - self.alpha) + distillation * self.alpha


def kl_div_log_target(log_p, log_q):
    """sum(q * (log q - log p)) over all elements: torch's / Paddle 3's kl_div(log_p, log_q, reduction='sum',
    log_target=True), written out because Paddle 2.6's kl_div has no log_target."""
    return (log_q.exp() * (log_q - log_p)).sum()


def build_criterion(config, teacher=None, mixup_active=False):
    """The training loss, always a DistillationLoss (called as criterion(images, outputs, targets)).

    Base: soft-target CE when mixup/cutmix is active (label smoothing is then in the targets), label smoothing
    CE when TRAIN.SMOOTHING > 0, else plain CE; distillation per TRAIN.DISTILLATION_TYPE/ALPHA/TAU with teacher.
    """
    if mixup_active:
        base = SoftTargetCrossEntropy()
    elif config.TRAIN.SMOOTHING > 0:
        base = LabelSmoothingCrossEntropy(config.TRAIN.SMOOTHING)
    else:
        base = nn.CrossEntropyLoss()
    return DistillationLoss(base, teacher, config.TRAIN.DISTILLATION_TYPE, config.TRAIN.DISTILLATION_ALPHA,
                            config.TRAIN.DISTILLATION_TAU)
