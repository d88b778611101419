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
    updates) equal those of the PyTorch reference on the same model. With `kernels` (cpu_kernels.Kernels;
    build_optimizer passes cpu_kernels.for_model's), a float32 CPU parameter takes one fused multi-threaded step
    (pit_adamp). Every other parameter (a GPU run, or CPU_KERNELS False) is updated by AdamPGroups: a few
    dozen ops per group of same-shaped parameters instead of about twenty per parameter, all on the device
    (no step waits for the host). The per-parameter accumulators (moment1, moment2, beta pows) stay what
    state_dict() holds, so a state saved on either path resumes on the other.
    """

    def __init__(self, learning_rate, parameters, beta1=0.9, beta2=0.999, epsilon=1e-8, weight_decay=0.0,
                 delta=0.1, wd_ratio=0.1, nesterov=False, apply_decay_param_fun=None, grad_clip=None, kernels=PADDLE):
        super().__init__(learning_rate, parameters, weight_decay, apply_decay_param_fun, grad_clip)
        self.type = 'adamp'
        self._beta1, self._beta2, self._epsilon = float(beta1), float(beta2), float(epsilon)
        self._delta, self._wd_ratio, self._nesterov = float(delta), float(wd_ratio), bool(nesterov)
        self._kernels = kernels  # cpu_kernels.Kernels: its fused step where it applies (CPU float32, dygraph)
        self._pending = []  # (param, grad) of this step for the grouped update
        self._groups = None  # AdamPGroups of the last step's parameters (holding their moments), or None

    def _create_accumulators(self, block, parameters):
        for p in parameters:
            self._add_once(p, ('moment1', 0.0, None), ('moment2', 0.0, None),
                           ('beta1_pow_acc', 1.0, [1]), ('beta2_pow_acc', 1.0, [1]))

    def _accumulators_of(self, param):
        return [self._get_accumulator(name, param) for name in ('moment1', 'moment2', 'beta1_pow_acc',
                                                                  'beta2_pow_acc')]

    def _append_optimize_op(self, block, param_and_grad):
        """The fused CPU step where it applies; otherwise the pair waits for the grouped update (_finish_update)."""
        param, grad = param_and_grad
        channel_axis = _channel_axis(param) if param.ndim > 1 else -1
        if self._kernels.adamp_step(param, grad, *self._accumulators_of(param), self.get_lr(), self._beta1,
                                    self._beta2, self._epsilon, self._weight_decay_of(param), self._delta,
                                    self._wd_ratio, self._nesterov, channel_axis):
            return
        self._pending.append((param, grad))

    def _finish_update(self, block, parameters_and_grads):
        """Paddle's hook after the per-parameter loop (also when the GradScaler skipped the step, which
        appended nothing): the grouped update of the pending parameters."""
        pending, self._pending = self._pending, []
        if not pending:
            return
        params = [p for p, _ in pending]
        if self._groups is None or [p for g in self._groups for p in g.params] != params:
            self._store_groups()
            self._groups = [AdamPGroups(self, same) for same in self._by_step_count(params)]
        grads = {id(p): g for p, g in pending}
        for groups in self._groups:
            groups.step([grads[id(p)] for p in groups.params], self.get_lr())

    def _by_step_count(self, params):
        """params split by their beta powers (read back once per new list): those that stepped together."""
        powers = paddle.concat([paddle.concat(self._accumulators_of(p)[2:]) for p in params]).numpy().reshape(-1, 2)
        split = {}
        for param, power in zip(params, map(tuple, powers)):
            split.setdefault(power, []).append(param)
        return list(split.values())

    def _store_groups(self):
        """Write the grouped state back into the per-parameter accumulators (what state_dict() saves)."""
        for groups in self._groups or ():
            groups.store()

    def state_dict(self):
        self._store_groups()
        return super().state_dict()

    def set_state_dict(self, state_dict):
        super().set_state_dict(state_dict)
        self._groups = None  # rebuilt from the loaded accumulators at the next step


class AdamPGroups:
    """AdamP's update of a fixed list of parameters that have stepped equally often (one pair of beta powers),
    as a few ops per group of parameters instead of about twenty per parameter.

    Parameters with ndim <= 1 (norms, biases: no projection) form one segment per weight decay, concatenated;
    the others one segment per (shape, weight decay), stacked and seen as rows (output channels: [G, R, K]).
    The Adam moments of all segments live here as two flat buffers in that layout (`store` copies them into the
    per-parameter accumulators). A step computes the moments and the directions of all parameters at once, the
    view tests of all row segments at once (RowViews), and writes every update into its parameter in place with
    one merged_momentum_ call (momentum 0, learning rate 1: w <- w - update). Nothing is read back to the host.
    """

    def __init__(self, optimizer, params):
        self.optimizer, self.params = optimizer, params
        keys = {}
        for index, param in enumerate(params):
            decay = optimizer._weight_decay_of(param)
            key = (decay, tuple(param.shape)) if param.ndim > 1 else (decay,)
            keys.setdefault(key, []).append(index)
        self.segments = [Segment(indices, key[0], params) for key, indices in keys.items()]
        self.ordered = [params[i] for segment in self.segments for i in segment.indices]
        state = [optimizer._accumulators_of(p) for p in params]
        self.moment1, self.moment2 = [paddle.concat([s.gather([acc[which] for acc in state]).reshape([-1])
                                                     for s in self.segments]) for which in (0, 1)]
        self.beta1_pow, self.beta2_pow = state[0][2].clone(), state[0][3].clone()
        rows = [s for s in self.segments if s.rows]
        self.views = RowViews(rows, optimizer._delta, optimizer._wd_ratio, optimizer._epsilon) if rows else None
        self.one = paddle.ones([1], dtype=params[0].dtype)
        self.no_regularization = ([''] * len(params), [0.0] * len(params))

    def store(self):
        """Copy the moments and beta powers into the per-parameter accumulators (what state_dict() saves)."""
        sizes = [s.size for s in self.segments]
        for which, buffer in ((0, self.moment1), (1, self.moment2)):
            for segment, piece in zip(self.segments, paddle.split(buffer, sizes)):
                for i, value in zip(segment.indices, segment.scatter(piece.reshape(segment.rows_shape))):
                    paddle.assign(value, output=self.optimizer._accumulators_of(self.params[i])[which])
        for param in self.params:
            state = self.optimizer._accumulators_of(param)
            paddle.assign(self.beta1_pow, output=state[2])
            paddle.assign(self.beta2_pow, output=state[3])

    def step(self, grads, lr):
        """One AdamP step of self.params with grads (in the same order) at learning rate lr."""
        opt = self.optimizer
        beta1, beta2, eps = opt._beta1, opt._beta2, opt._epsilon
        grad_rows = [s.gather(grads) for s in self.segments]
        param_rows = [s.gather(self.params) for s in self.segments]
        grad = paddle.concat([g.reshape([-1]) for g in grad_rows])
        self.moment1.lerp_(grad, 1 - beta1)
        self.moment2.lerp_(grad * grad, 1 - beta2)
        self.beta1_pow.scale_(beta1)
        self.beta2_pow.scale_(beta2)
        denom = self.moment2.sqrt() / (1 - self.beta2_pow).sqrt() + eps
        momentum = paddle.lerp(self.moment1, grad, 1 - beta1) if opt._nesterov else self.moment1
        perturbs = [p.reshape(rows.shape) for p, rows in
                    zip(paddle.split(momentum / denom, [s.size for s in self.segments]), param_rows)]
        views = iter(self.views(*[[x for x, s in zip(xs, self.segments) if s.rows]
                                  for xs in (grad_rows, param_rows, perturbs)])) if self.views else None
        step_size = lr / (1 - self.beta1_pow)
        updates = []
        for segment, param, perturb in zip(self.segments, param_rows, perturbs):
            ratio = None
            if segment.rows:
                coef, ratio = next(views)
                perturb = perturb - param * coef
            update = perturb * step_size
            if segment.decay:
                decay = param * (lr * segment.decay)
                update = update + (decay * ratio if ratio is not None else decay)
            updates += segment.scatter(update)
        paddle._C_ops.merged_momentum_(self.ordered, updates, updates, [self.one], None, 0.0, False,
                                       *self.no_regularization, False, 1.0)


class Segment:
    """Parameters (their positions `indices` in a list) updated as one tensor: ndim <= 1 ones concatenated
    ([n]), same-shaped ones with ndim > 1 stacked as rows [G, R, K] (R output channels, see _channel_axis, of
    row length K; a Linear weight [in, out] transposed)."""

    def __init__(self, indices, decay, params):
        self.indices, self.decay = indices, decay
        first = params[indices[0]]
        self.rows = first.ndim > 1
        if not self.rows:
            self.sizes = [max(1, params[i].size) for i in indices]
            self.size = sum(self.sizes)
            self.rows_shape = [self.size]
            self.shapes = [list(params[i].shape) for i in indices]
            return
        self.shape, self.count = list(first.shape), len(indices)
        self.transposed = first.ndim == 2
        rows = self.shape[_channel_axis(first)]
        self.rows_shape = [self.count, rows, first.size // rows]
        self.size = self.count * first.size

    def gather(self, tensors):
        """The segment's tensors of a per-parameter list: [n], or [G, R, K]."""
        picked = [tensors[i] for i in self.indices]
        if not self.rows:
            return paddle.concat([t if t.ndim == 1 else t.reshape([-1]) for t in picked])
        stacked = paddle.stack(picked)
        return stacked.transpose([0, 2, 1]) if self.transposed else stacked.reshape(self.rows_shape)

    def scatter(self, tensor):
        """gather's inverse: the per-parameter tensors (in `indices` order) of a segment tensor."""
        if not self.rows:
            pieces = paddle.split(tensor, self.sizes)
            return [p if list(p.shape) == shape else p.reshape(shape) for p, shape in zip(pieces, self.shapes)]
        # contiguous: Paddle 3's transpose is a strided view, and merged_momentum_ refuses a non-contiguous
        # update as its in-place velocity (it copies it first, then finds velocity and velocity out differ)
        whole = tensor.transpose([0, 2, 1]).contiguous() if self.transposed else tensor.reshape(
            [self.count] + self.shape)
        return paddle.unbind(whole, axis=0)


class RowViews:
    """AdamP's scale-invariance test of every parameter of some row segments at once (AdamP._projection's
    per-parameter form, batched).

    Per segment one matmul of [g, w, perturb] rows with themselves gives each row's sums of products; padded
    to the longest segment's rows and stacked, with the layer view (the sum over rows) as one more column, they
    form a [parameters, rows + 1] table on which the cosines, the two tests and the coefficients of all
    parameters are a few ops. Returns per segment (coef [G, R, 1]: perturb -= w * coef, weight-decay ratio
    [G, 1, 1])."""

    PICK = [0, 4, 1, 5]  # of a flattened 3x3 Gram of (g, w, perturb): g.g, w.w, g.w, w.perturb

    def __init__(self, segments, delta, wd_ratio, eps):
        self.segments, self.wd_ratio, self.eps = segments, wd_ratio, eps
        self.longest = max(s.rows_shape[1] for s in segments)
        self.padding = [paddle.zeros([s.count, self.longest - s.rows_shape[1], 9])
                        if s.rows_shape[1] < self.longest else None for s in segments]
        thresholds = [[delta / math.sqrt(s.rows_shape[2])] * self.longest + [delta / math.sqrt(s.size / s.count)]
                      for s in segments for _ in range(s.count)]
        self.thresholds = paddle.to_tensor(thresholds, dtype='float32')
        self.pick = paddle.to_tensor(self.PICK, dtype='int64')

    def __call__(self, grad_rows, param_rows, perturbs):
        """(coef, ratio) per segment from its [G, R, K] gradients, weights and update directions."""
        tables = []
        for segment, padding, g, w, u in zip(self.segments, self.padding, grad_rows, param_rows, perturbs):
            stacked = paddle.stack([g, w, u], axis=2)
            table = paddle.matmul(stacked, stacked, transpose_y=True).reshape(segment.rows_shape[:2] + [9])
            tables.append(table if padding is None else paddle.concat([table, padding], axis=1))
        table = paddle.concat(tables)
        table = paddle.concat([table, table.sum(axis=1, keepdim=True)], axis=1)
        grad_grad, param_param, grad_param, param_perturb = paddle.unbind(paddle.index_select(table, self.pick,
                                                                                             axis=2), axis=2)
        param_norm = param_param.sqrt()
        cosine = grad_param.abs() / (grad_grad.sqrt().clip(min=self.eps) * param_norm.clip(min=self.eps))
        passes = cosine < self.thresholds
        by_channel = paddle.all(passes[:, :self.longest], axis=1)
        by_layer = paddle.logical_and(passes[:, self.longest], paddle.logical_not(by_channel))
        by_channel, by_layer = by_channel.astype('float32'), by_layer.astype('float32')
        coef = param_perturb / (param_norm + self.eps) ** 2
        coef = coef[:, :self.longest] * by_channel.unsqueeze(1) + coef[:, self.longest:] * by_layer.unsqueeze(1)
        ratio = (by_channel + by_layer) * (self.wd_ratio - 1.0) + 1.0
        counts = [s.count for s in self.segments]
        return [(c[:, :s.rows_shape[1]].unsqueeze(-1), r.reshape([s.count, 1, 1]))
                for s, c, r in zip(self.segments, paddle.split(coef, counts), paddle.split(ratio, counts))]


class SGD(_FlatOptimizer):
    """SGD with momentum (dampening 0) and coupled L2 weight decay, as torch.optim.SGD / timm's 'sgd':
    g = grad + wd * w; v = momentum * v + g; w <- w - lr * (g + momentum * v if nesterov else v). Paddle's
    merged_momentum_ is exactly this update: one op for every parameter of a step (2.6 and 3.x)."""

    def __init__(self, learning_rate, parameters, momentum=0.9, nesterov=True, weight_decay=0.0,
                 apply_decay_param_fun=None, grad_clip=None):
        super().__init__(learning_rate, parameters, weight_decay, apply_decay_param_fun, grad_clip)
        self.type = 'sgd_momentum'
        self._momentum, self._nesterov = float(momentum), bool(nesterov)
        self._pending = []

    def _create_accumulators(self, block, parameters):
        for p in parameters:
            self._add_once(p, ('velocity', 0.0, None))

    def _append_optimize_op(self, block, param_and_grad):
        self._pending.append(param_and_grad)

    def _finish_update(self, block, parameters_and_grads):
        """Paddle's hook after the per-parameter loop: one merged update of the pending parameters (none when
        the GradScaler skipped the step)."""
        pending, self._pending = self._pending, []
        if not pending:
            return
        params, grads = [p for p, _ in pending], [g for _, g in pending]
        decays = [self._weight_decay_of(p) for p in params]
        lr = paddle.full([1], self.get_lr(), dtype=params[0].dtype)
        paddle._C_ops.merged_momentum_(params, grads, [self._get_accumulator('velocity', p) for p in params],
                                       [lr], None, self._momentum, self._nesterov,
                                       ['l2_decay' if d else '' for d in decays], decays, False, 1.0)


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
