"""Optimizers (AdamW, AdamP, SGD), the no-weight-decay rule and the learning-rate schedule of the recipe.

    lr_scheduler = build_lr_scheduler(config, steps_per_epoch=len(train_loader))
    optimizer = build_optimizer(config, model, lr_scheduler)
    for epoch in range(start_epoch, config.TRAIN.NUM_EPOCHS):
        lr_scheduler.step_to(epoch)                 # every epoch start (resume needs nothing else)
        for step, batch in enumerate(loader):
            lr_scheduler.step_to(epoch, step)       # only with TRAIN.LR_SCHEDULER.PER_STEP
            ...; optimizer.step()

Weight decay never touches 1-D parameters (norm weights, biases) nor the names in `model.no_weight_decay()`
(timm's rule). Paddle identifies parameters by their internal `param.name` (`linear_3.w_0`), so the rule is
evaluated on the model's structured names once and handed to the optimizers as a set of internal names.
All optimizers take one flat parameter list: with Paddle parameter groups, ClipGradByGlobalNorm would clip each
group by its own norm instead of the global norm over all parameters.
"""
import bisect
import math

import paddle
from paddle.optimizer.lr import LRScheduler

from cpu_kernels import PADDLE, for_model
from utils import unwrap_model


# ---------------------------------------------------------------- which parameters decay

def param_groups(model, weight_decay):
    """timm-style groups: [{'params': decayed, 'weight_decay': wd}, {'params': not decayed, 'weight_decay': 0}].

    Not decayed: parameters with ndim <= 1, names ending in '.bias', names in `model.no_weight_decay()`
    (structured names, e.g. pos_embed, cls_token). Frozen parameters (stop_gradient) are left out.
    model may be wrapped in paddle.DataParallel (the rule reads the inner model's names and no_weight_decay).
    """
    model = unwrap_model(model)
    skip = set(model.no_weight_decay()) if hasattr(model, 'no_weight_decay') else set()
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.stop_gradient:
            continue
        if param.ndim <= 1 or name.endswith('.bias') or name in skip:
            no_decay.append(param)
        else:
            decay.append(param)
    return [{'params': decay, 'weight_decay': weight_decay}, {'params': no_decay, 'weight_decay': 0.0}]


def build_optimizer(config, model, lr_scheduler):
    """TRAIN.OPTIMIZER.NAME ('AdamW', 'AdamP' or 'SGD') over the trainable parameters of model (not the
    DataParallel wrapper), LR from lr_scheduler, weight decay only on the decayed group of `param_groups`,
    and global-norm gradient clipping at TRAIN.GRAD_CLIP when set. config is checked (config.check_config)."""
    name = config.TRAIN.OPTIMIZER.NAME
    wd = config.TRAIN.WEIGHT_DECAY
    decay_names = {p.name for p in param_groups(model, wd)[0]['params']}
    clip = paddle.nn.ClipGradByGlobalNorm(config.TRAIN.GRAD_CLIP) if config.TRAIN.GRAD_CLIP else None
    common = dict(learning_rate=lr_scheduler, parameters=[p for p in model.parameters() if not p.stop_gradient],
                  weight_decay=wd, grad_clip=clip, apply_decay_param_fun=decay_names.__contains__)
    beta1, beta2 = config.TRAIN.OPTIMIZER.BETAS
    kernels = for_model(config.CPU_KERNELS)  # the kernels a model built now runs (cpu_kernels' rule)
    if name == 'AdamW':
        return AdamW(beta1=beta1, beta2=beta2, epsilon=config.TRAIN.OPTIMIZER.EPS, kernels=kernels, **common)
    if name == 'AdamP':
        return AdamP(beta1=beta1, beta2=beta2, epsilon=config.TRAIN.OPTIMIZER.EPS,
                     delta=config.TRAIN.OPTIMIZER.DELTA, wd_ratio=config.TRAIN.OPTIMIZER.WD_RATIO,
                     nesterov=config.TRAIN.OPTIMIZER.NESTEROV, kernels=kernels, **common)
    return SGD(momentum=config.TRAIN.OPTIMIZER.MOMENTUM, nesterov=config.TRAIN.OPTIMIZER.NESTEROV, **common)  # 'SGD'


# ---------------------------------------------------------------- optimizers
# Paddle names an accumulator `unique_name.generate(param.name + '_moment1')`, and optimizer.state_dict() is keyed
# by these names: the suffix counts how many such names this process generated before. They are created here under
# a fresh name scope, so they are `<param name>_moment1_0` whatever the process did before (several optimizers in
# one process, a resume in a new one), and a saved state always loads.

class AdamW(paddle.optimizer.AdamW):
    """paddle.optimizer.AdamW with accumulator names that do not depend on the process history. With `kernels`
    (cpu_kernels.Kernels; build_optimizer passes cpu_kernels.for_model's), a float32 CPU parameter takes the
    same update on all threads (pit_adamw) instead of Paddle's single-threaded op; the accumulators are Paddle's
    own."""

    def __init__(self, *args, kernels=PADDLE, **kwargs):
        super().__init__(*args, **kwargs)
        self._kernels = kernels

    def _create_accumulators(self, block, parameters):
        with paddle.utils.unique_name.guard():
            super()._create_accumulators(block, parameters)

    def _append_optimize_op(self, block, param_and_grad):
        param, grad = param_and_grad
        # Paddle 2.6's AdamW has no amsgrad (no _amsgrad attribute)
        if not (getattr(self, '_amsgrad', False) or self._lr_ratio is not None or self._multi_precision):
            decays = self._apply_decay_param_fun is None or self._apply_decay_param_fun(param.name)
            get = self._get_accumulator_master
            if self._kernels.adamw_step(param, grad, get(self._moment1_acc_str, param),
                                        get(self._moment2_acc_str, param), get(self._beta1_pow_acc_str, param),
                                        get(self._beta2_pow_acc_str, param),
                                        self.get_lr() * param.optimize_attr.get('learning_rate', 1.0),
                                        float(self._beta1), float(self._beta2), float(self._epsilon),
                                        self._weight_decay if decays else 0.0):
                return None
        return super()._append_optimize_op(block, param_and_grad)


class _FlatOptimizer(paddle.optimizer.Optimizer):
    """Base of the optimizers below: a flat parameter list, weight decay on the parameters whose internal name
    passes apply_decay_param_fun (all when None). Subclasses write `_create_accumulators` and
    `_append_optimize_op`; Paddle's step() applies gradient clipping and skips steps the GradScaler found
    non-finite, and state_dict() holds the accumulators (keyed by internal names) and the LR schedule."""

    def __init__(self, learning_rate, parameters, weight_decay, apply_decay_param_fun, grad_clip):
        parameters = list(parameters)
        if not parameters or any(isinstance(p, dict) for p in parameters):
            raise TypeError(f'{type(self).__name__} takes a non-empty flat list of parameters (no groups)')
        super().__init__(learning_rate=learning_rate, parameters=parameters, weight_decay=None,
                         grad_clip=grad_clip)
        self._decay_coeff = float(weight_decay)
        self._decays = apply_decay_param_fun or (lambda name: True)

    def _weight_decay_of(self, param):
        return self._decay_coeff if self._decays(param.name) else 0.0

    def _add_once(self, param, *accumulators):
        """Create the (name, fill value, shape) accumulators of param unless done (or restored) already."""
        created = self._created_accumulators()
        if param.name in created:
            return
        with paddle.utils.unique_name.guard():
            for name, fill, shape in accumulators:
                self._add_accumulator(name, param, fill_value=fill, shape=shape)
        created.add(param.name)

    def _created_accumulators(self):
        """Paddle's own set of the parameter names whose accumulators exist (Paddle 2.6 spells it
        `_already_create_accumulater`)."""
        created = getattr(self, '_already_create_accumulator', None)
        return created if created is not None else self._already_create_accumulater


def _channel_axis(param):
    """AdamP's output-channel axis of a parameter with ndim > 1: 1 for a Linear weight (Paddle's [in, out]),
    else 0 (conv [out, in, kh, kw])."""
    return 1 if param.ndim == 2 else 0


class AdamP(_FlatOptimizer):
    """AdamP (Heo et al., ICLR 2021; the published update of clovaai/AdamP) in Paddle dygraph.

    Adam moments with bias correction (Nesterov momentum optional) give the update direction `perturb`. For a
    parameter with ndim > 1, the cosine similarity between gradient and weight is measured per output channel
    (channel view) and over the whole tensor (layer view); for the first view (channel, then layer) whose largest
    |cos| is below delta / sqrt(row length), the weight is scale-invariant: perturb loses its component along the
    (per-row normalised) weight and weight decay is scaled by wd_ratio. Decoupled weight decay:
    w <- w * (1 - lr * weight_decay * ratio) - lr / (1 - beta1^t) * perturb.

    Layout: the channel view keeps axis 0 (conv [out, in, kh, kw], as in PyTorch), except for 2-D weights,
    which Paddle's Linear stores as [in, out]: there the output channel is axis 1, so the views (and so the
    updates) equal those of the PyTorch reference on the same model. Both views are computed and selected on
    the device, so no step waits for the host. With `kernels` (cpu_kernels.Kernels; build_optimizer passes
    cpu_kernels.for_model's), a float32 CPU parameter takes one fused multi-threaded step (pit_adamp) instead of
    these ops.
    """

    def __init__(self, learning_rate, parameters, beta1=0.9, beta2=0.999, epsilon=1e-8, weight_decay=0.0,
                 delta=0.1, wd_ratio=0.1, nesterov=False, apply_decay_param_fun=None, grad_clip=None, kernels=PADDLE):
        super().__init__(learning_rate, parameters, weight_decay, apply_decay_param_fun, grad_clip)
        self.type = 'adamp'
        self._beta1, self._beta2, self._epsilon = float(beta1), float(beta2), float(epsilon)
        self._delta, self._wd_ratio, self._nesterov = float(delta), float(wd_ratio), bool(nesterov)
        self._kernels = kernels  # cpu_kernels.Kernels: its fused step where it applies (CPU float32, dygraph)

    def _create_accumulators(self, block, parameters):
        for p in parameters:
            self._add_once(p, ('moment1', 0.0, None), ('moment2', 0.0, None),
                           ('beta1_pow_acc', 1.0, [1]), ('beta2_pow_acc', 1.0, [1]))

    def _append_optimize_op(self, block, param_and_grad):
        param, grad = param_and_grad
        beta1, beta2 = self._beta1, self._beta2
        exp_avg = self._get_accumulator('moment1', param)
        exp_avg_sq = self._get_accumulator('moment2', param)
        beta1_pow = self._get_accumulator('beta1_pow_acc', param)
        beta2_pow = self._get_accumulator('beta2_pow_acc', param)
        channel_axis = _channel_axis(param) if param.ndim > 1 else -1
        if self._kernels.adamp_step(param, grad, exp_avg, exp_avg_sq, beta1_pow, beta2_pow, self.get_lr(), beta1,
                                    beta2, self._epsilon, self._weight_decay_of(param), self._delta,
                                    self._wd_ratio, self._nesterov, channel_axis):
            return
        # in place, few kernels: lerp(a, b, w) = a + w * (b - a) = (1 - w) * a + w * b
        exp_avg.lerp_(grad, 1 - beta1)
        exp_avg_sq.lerp_(grad * grad, 1 - beta2)
        beta1_pow.scale_(beta1)
        beta2_pow.scale_(beta2)
        denom = exp_avg_sq.sqrt() / (1 - beta2_pow).sqrt() + self._epsilon
        momentum = paddle.lerp(exp_avg, grad, 1 - beta1) if self._nesterov else exp_avg
        perturb = momentum / denom
        ratio = 1.0
        if param.ndim > 1:
            perturb, ratio = self._projection(param, grad, perturb)
        lr = self.get_lr()
        paddle.assign(param * (1 - lr * self._weight_decay_of(param) * ratio) - perturb * (lr / (1 - beta1_pow)),
                      output=param)

    def _projection(self, param, grad, perturb):
        """(perturb, weight-decay ratio) after the scale-invariance test of the channel, then the layer view.

        Everything comes from four per-channel sums (the layer view's are their totals), and removing the radial
        part, perturb - unit * <unit, perturb> with unit = w / (|w| + eps), is perturb - w * <w, perturb> /
        (|w| + eps)^2 with a per-channel (or one layer-wide) coefficient: five passes over the tensor in all.
        """
        channel_axis = _channel_axis(param)
        axes = [a for a in range(param.ndim) if a != channel_axis]
        channel_sums = [(x * y).sum(axis=axes, keepdim=True)
                        for x, y in ((grad, param), (grad, grad), (param, param), (param, perturb))]
        channel_passes, channel_coef = self._view_test(*channel_sums, param.size // param.shape[channel_axis])
        layer_passes, layer_coef = self._view_test(*[s.sum() for s in channel_sums], param.size)
        by_channel = channel_passes.astype(param.dtype)
        by_layer = paddle.logical_and(layer_passes, paddle.logical_not(channel_passes)).astype(param.dtype)
        coef = channel_coef * by_channel + layer_coef * by_layer
        ratio = 1.0 + (self._wd_ratio - 1.0) * (by_channel + by_layer)
        return perturb - param * coef, ratio

    def _view_test(self, grad_param, grad_grad, param_param, param_perturb, row_length):
        """(max over rows of |cos(grad, w)| < delta / sqrt(row length), <w, perturb> / (|w| + eps)^2) from the
        rows' sums of products; cos as torch's cosine_similarity, each norm clamped to >= eps."""
        eps = self._epsilon
        param_norm = param_param.sqrt()
        cosine = grad_param.abs() / (grad_grad.sqrt().clip(min=eps) * param_norm.clip(min=eps))
        passes = cosine.max() < self._delta / math.sqrt(row_length)
        return passes, param_perturb / (param_norm + eps) ** 2


class SGD(_FlatOptimizer):
    """SGD with momentum (dampening 0) and coupled L2 weight decay, as torch.optim.SGD / timm's 'sgd':
    g = grad + wd * w; v = momentum * v + g; w <- w - lr * (g + momentum * v if nesterov else v)."""

    def __init__(self, learning_rate, parameters, momentum=0.9, nesterov=True, weight_decay=0.0,
                 apply_decay_param_fun=None, grad_clip=None):
        super().__init__(learning_rate, parameters, weight_decay, apply_decay_param_fun, grad_clip)
        self.type = 'sgd_momentum'
        self._momentum, self._nesterov = float(momentum), bool(nesterov)

    def _create_accumulators(self, block, parameters):
        for p in parameters:
            self._add_once(p, ('velocity', 0.0, None))

    def _append_optimize_op(self, block, param_and_grad):
        param, grad = param_and_grad
        velocity = self._get_accumulator('velocity', param)
        wd = self._weight_decay_of(param)
        if wd:
            grad = grad + param * wd
        paddle.assign(velocity * self._momentum + grad, output=velocity)
        update = grad + velocity * self._momentum if self._nesterov else velocity
        paddle.assign(param - update * self.get_lr(), output=param)


# ---------------------------------------------------------------- learning-rate schedule

class EpochLRScheduler(LRScheduler):
    """LR as a function of the (fractional) epoch t, set directly by `step_to(epoch, step)`.

    t = epoch, or with per_step t = epoch + step / steps_per_epoch. With deit_lag, t is lowered by one epoch
    (not below 0): DeiT sets the LR of epoch e by calling step(e - 1) after finishing epoch e - 1, so its first
    value is used twice and the curve lags by an epoch. Warmup (t < warmup_epochs): linear from warmup_start_lr
    at t = 0 towards base_lr at t = warmup_epochs (timm's warmup_lr_init + t * (base - init) / warmup_t);
    afterwards `decayed_lr(t)` of the subclass. Paddle's constructor calls step() once, which sets epoch 0, so
    the first epoch runs at warmup_start_lr.
    """

    def __init__(self, base_lr, warmup_start_lr, warmup_epochs, steps_per_epoch=1, per_step=False,
                 deit_lag=False):
        if steps_per_epoch < 1:
            raise ValueError(f'steps_per_epoch must be >= 1, got {steps_per_epoch}')
        self.warmup_start_lr = float(warmup_start_lr)
        self.warmup_epochs = warmup_epochs
        self.steps_per_epoch = steps_per_epoch
        self.per_step = per_step
        self.deit_lag = deit_lag
        self.t = 0.0
        super().__init__(learning_rate=float(base_lr))

    def lr_at(self, t):
        """The LR at fractional epoch t (before the DeiT lag is applied)."""
        if t < self.warmup_epochs:
            return self.warmup_start_lr + t * (self.base_lr - self.warmup_start_lr) / self.warmup_epochs
        return self.decayed_lr(t)

    def decayed_lr(self, t):
        raise NotImplementedError

    def step_to(self, epoch, step=0):
        """Set the LR for `step` (0 .. steps_per_epoch - 1) of `epoch` (0-based); step counts only with
        per_step. Returns the LR."""
        t = epoch + step / self.steps_per_epoch if self.per_step else float(epoch)
        self.last_epoch = epoch
        self.t = max(t - 1.0, 0.0) if self.deit_lag else t
        self.last_lr = self.get_lr()
        return self.last_lr

    def step(self, epoch=None):
        """Paddle's interface: the next epoch (or `epoch`), at its first step."""
        self.step_to(self.last_epoch + 1 if epoch is None else epoch)

    def get_lr(self):
        return self.lr_at(self.t)

    def state_keys(self):
        self.keys = ['last_epoch', 'last_lr', 't']


class WarmupCosineLR(EpochLRScheduler):
    """timm's CosineLRScheduler as DeiT configures it (t_initial = decay_epochs, one cycle, warmup_prefix off):
    after warmup, lr(t) = end_lr + (base_lr - end_lr) * (1 + cos(pi * t / decay_epochs)) / 2, with t counted
    from 0 (not from the end of warmup); end_lr from t = decay_epochs on (the cooldown)."""

    def __init__(self, base_lr, warmup_start_lr, warmup_epochs, end_lr, decay_epochs, **kwargs):
        self.end_lr = float(end_lr)
        self.decay_epochs = decay_epochs
        super().__init__(base_lr, warmup_start_lr, warmup_epochs, **kwargs)

    def decayed_lr(self, t):
        if t >= self.decay_epochs:
            return self.end_lr
        return self.end_lr + 0.5 * (self.base_lr - self.end_lr) * (1 + math.cos(math.pi * t / self.decay_epochs))


class WarmupMultiStepLR(EpochLRScheduler):
    """After warmup, base_lr * decay_rate ** (number of milestones <= t): epoch m is the first at the lower LR,
    milestones counted from epoch 0 (as Paddle's MultiStepDecay and torch's MultiStepLR; timm's multistep instead
    counts milestones after the warmup and applies each one epoch early)."""

    def __init__(self, base_lr, warmup_start_lr, warmup_epochs, milestones, decay_rate, **kwargs):
        self.milestones = list(milestones)
        self.decay_rate = float(decay_rate)
        super().__init__(base_lr, warmup_start_lr, warmup_epochs, **kwargs)

    def decayed_lr(self, t):
        return self.base_lr * self.decay_rate ** bisect.bisect_right(self.milestones, t)


def build_lr_scheduler(config, steps_per_epoch):
    """The schedule of TRAIN.LR_SCHEDULER over TRAIN.NUM_EPOCHS epochs of steps_per_epoch steps each.

    warmupcosine: the cosine reaches END_LR at NUM_EPOCHS - COOLDOWN_EPOCHS and stays there (the cooldown lies
    inside NUM_EPOCHS). DeiT's recipe is COOLDOWN_EPOCHS 0: t_initial = epochs, the last epoch still above
    END_LR (DeiT's --cooldown-epochs only extends timm's own loop, which DeiT does not use). config is checked
    (config.check_config: the warmup and cooldown fit NUM_EPOCHS, the milestones increase).
    """
    common = dict(base_lr=config.TRAIN.BASE_LR, warmup_start_lr=config.TRAIN.WARMUP_START_LR,
                  warmup_epochs=config.TRAIN.WARMUP_EPOCHS, steps_per_epoch=steps_per_epoch,
                  per_step=config.TRAIN.LR_SCHEDULER.PER_STEP, deit_lag=config.TRAIN.LR_SCHEDULER.DEIT_LAG)
    if config.TRAIN.LR_SCHEDULER.NAME == 'warmupcosine':
        return WarmupCosineLR(end_lr=config.TRAIN.END_LR,
                              decay_epochs=config.TRAIN.NUM_EPOCHS - config.TRAIN.COOLDOWN_EPOCHS, **common)
    return WarmupMultiStepLR(milestones=list(config.TRAIN.LR_SCHEDULER.MILESTONES),
                             decay_rate=config.TRAIN.LR_SCHEDULER.DECAY_RATE, **common)
