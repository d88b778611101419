"""Exponential moving average of the model weights (timm's ModelEmaV2 semantics), evaluated and saved with it."""
import copy

import paddle

from utils import unwrap_model


class ModelEma:
    """A frozen copy of the model whose trained parameters follow ema = decay * ema + (1 - decay) * model after
    each optimizer step; everything else is copied: buffers, and the BatchNorm statistics, which Paddle keeps as
    parameters with stop_gradient. PiT has only trained parameters, so this equals DeiT's timm ModelEma, which
    averaged every state entry.

    `module` is the averaged model (eval mode) to evaluate; `state_dict()` / `set_state_dict()` use its
    structured names. The copy is made under a fresh name scope: deep-copying a Paddle layer generates a new
    name for every parameter, and doing that in the global scope would shift the names (and so the optimizer
    state keys) of anything built later.
    """

    def __init__(self, model, decay=0.9999):
        self.decay = float(decay)
        with paddle.utils.unique_name.guard():
            self.module = copy.deepcopy(unwrap_model(model))
        self.module.eval()
        for param in self.module.parameters():
            param.stop_gradient = True
        self._scratch = self._rate = None  # made at the first update

    @paddle.no_grad()
    def update(self, model):
        """Move the average towards model (the trained model, or its DataParallel wrapper). The trained
        parameters move in one op: Paddle's merged_momentum_ (2.6 and 3.x) with momentum 0, the model's weights w
        as the gradients, L2 coefficient -1 on the average and learning rate decay - 1 computes
        ema + (1 - decay) * (w - ema) for every parameter at once; frozen parameters and buffers are copied."""
        model = unwrap_model(model)
        averaged, weights = [], []
        for ema_param, param in zip(self.module.parameters(), model.parameters()):
            if param.stop_gradient:
                paddle.assign(param.detach(), output=ema_param)
            else:
                averaged.append(ema_param)
                weights.append(param.detach())
        if averaged:
            if self._scratch is None:  # merged_momentum_ writes its velocity output here (momentum 0: unused)
                self._scratch = [paddle.zeros_like(p) for p in averaged]
                self._rate = paddle.full([1], self.decay - 1.0, dtype=averaged[0].dtype)
            paddle._C_ops.merged_momentum_(averaged, weights, self._scratch, [self._rate], None, 0.0, False,
                                           ['l2_decay'] * len(averaged), [-1.0] * len(averaged), False, 1.0)
        for ema_buffer, buffer in zip(self.module.buffers(), model.buffers()):
            paddle.assign(buffer.detach(), output=ema_buffer)

    def state_dict(self):
        return self.module.state_dict()

    def set_state_dict(self, state_dict):
        """Load an EMA state; ValueError if its keys are not exactly the model's (e.g. another variant)."""
        missing = sorted(set(self.module.state_dict()) - set(state_dict))
        unexpected = sorted(set(state_dict) - set(self.module.state_dict()))
        if missing or unexpected:
            raise ValueError(f'EMA state does not fit the model: missing {missing[:3]}, unexpected {unexpected[:3]}')
        self.module.set_state_dict(state_dict)
