"""Stochastic depth (drop path): drop a residual branch for whole samples during training."""
import paddle
import paddle.nn as nn


class DropPath(nn.Layer):
    """The drop path of one residual branch, fused by the model into its residual add:
    `x + branch * sample_scale(branch)[b]` (cpu_kernels.Kernels.add). A Layer so that train()/eval() reach it;
    no scale (the plain add) in eval mode or when drop_prob is 0."""

    def __init__(self, drop_prob=0.0):
        super().__init__()
        self.drop_prob = float(drop_prob)

    def sample_scale(self, x):
        """The per-sample factor of the branch x ([B, ...]) as a [B] tensor: one Bernoulli(1 - drop_prob) draw per
        sample, 0 for a dropped sample and 1 / keep_prob for a kept one, so the expectation of the scaled branch
        is x (timm's drop_path, scale_by_keep=True); None where the drop path is the identity."""
        if self.drop_prob == 0.0 or not self.training:
            return None
        keep_prob = 1.0 - self.drop_prob
        return paddle.floor(keep_prob + paddle.rand([x.shape[0]], dtype=x.dtype)) / keep_prob

    def extra_repr(self):
        return f'drop_prob={self.drop_prob}'
