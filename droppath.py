"""Stochastic depth (drop path): drop a residual branch for whole samples during training."""
import paddle
import paddle.nn as nn


def drop_path(x, drop_prob=0.0, training=False):
    """Zero the branch x for a random drop_prob fraction of samples and rescale the rest by 1/(1-drop_prob).

    x: [B, ...]; one Bernoulli(1 - drop_prob) draw per sample, broadcast over the other dims, so the
    expectation of the output equals x (as timm's drop_path, scale_by_keep=True).
    """
    if drop_prob == 0.0 or not training:
        return x
    keep_prob = 1.0 - drop_prob
    shape = [x.shape[0]] + [1] * (x.ndim - 1)
    mask = paddle.floor(keep_prob + paddle.rand(shape, dtype=x.dtype))
    return x / keep_prob * mask


class DropPath(nn.Layer):
    """Layer form of drop_path; identity in eval mode or when drop_prob is 0."""

    def __init__(self, drop_prob=0.0):
        super().__init__()
        self.drop_prob = float(drop_prob)

    def forward(self, x):
        return drop_path(x, self.drop_prob, self.training)

    def sample_scale(self, x):
        """The per-sample factor forward(x) multiplies x by, as a [B] tensor (0 for a dropped sample,
        1 / keep_prob for a kept one; the same random draw as forward), or None where forward is the identity.
        For kernels that fuse the drop path into the residual add: x + branch * scale[b]."""
        if self.drop_prob == 0.0 or not self.training:
            return None
        keep_prob = 1.0 - self.drop_prob
        return paddle.floor(keep_prob + paddle.rand([x.shape[0]], dtype=x.dtype)) / keep_prob

    def extra_repr(self):
        return f'drop_prob={self.drop_prob}'
