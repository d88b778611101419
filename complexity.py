"""Parameters and multiply-accumulates (MACs) of a PiT, counted the way fvcore does, which is how the published PiT
figures (0.70 / 1.40 / 2.88 / 12.42 GMACs for ti / xs / s / b at 224 px) come out: one per multiply-accumulate
of every convolution, Linear and the two attention matmuls (q k^T and attn v), plus 5 per LayerNorm element
(normalise and affine); softmax, GELU, additions and dropout count 0. tools/model_info.py prints them;
tools/benchmark.py reports them beside its figures.
"""
import numpy as np
import paddle
import paddle.nn as nn

from pit import Attention

LAYERNORM_MACS_PER_ELEMENT = 5  # fvcore: mean, variance, normalise (4) + affine (1)


def count_params(model):
    """Number of parameters (trainable or not) of a paddle Layer."""
    return sum(int(np.prod(p.shape)) for p in model.parameters())


def _per_image_macs(layer, inputs, output):
    """MACs of one forward of layer for one image (inputs/output carry a batch of 1)."""
    if isinstance(layer, nn.Conv2D):
        kh, kw = layer.weight.shape[2:]
        return int(np.prod(output.shape)) * layer.weight.shape[1] * kh * kw
    if isinstance(layer, nn.Linear):
        return int(np.prod(output.shape)) * layer.weight.shape[0]
    if isinstance(layer, Attention):
        _, tokens, channels = inputs[0].shape
        return 2 * tokens * tokens * channels  # q k^T and attn v over all heads
    if isinstance(layer, nn.LayerNorm):
        return LAYERNORM_MACS_PER_ELEMENT * int(np.prod(inputs[0].shape))
    return 0


def count_macs(model, image_size):
    """{'conv', 'linear', 'attention', 'layernorm', 'total'}: MACs for one image_size x image_size image.

    Runs one eval forward of a zero image with hooks on Conv2D, Linear, Attention and LayerNorm layers; the
    model's train/eval mode is restored afterwards.
    """
    kinds = {nn.Conv2D: 'conv', nn.Linear: 'linear', Attention: 'attention', nn.LayerNorm: 'layernorm'}
    counts = dict.fromkeys(kinds.values(), 0)

    def kind_of(layer):
        return next((kind for cls, kind in kinds.items() if isinstance(layer, cls)), None)

    def hook(layer, inputs, output):
        counts[kind_of(layer)] += _per_image_macs(layer, inputs, output)

    handles = [layer.register_forward_post_hook(hook) for layer in model.sublayers() if kind_of(layer)]
    was_training = model.training
    model.eval()
    try:
        with paddle.no_grad():
            model(paddle.zeros([1, model.patch_embed.conv.weight.shape[1], image_size, image_size]))
    finally:
        for handle in handles:
            handle.remove()
        if was_training:  # (Paddle 2.6's train() takes no mode)
            model.train()
    counts['total'] = sum(counts.values())
    return counts
