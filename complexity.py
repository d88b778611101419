"""Parameters and multiply-accumulates (MACs) of a PiT, counted the way fvcore does, which is how the published PiT
figures (0.70 / 1.40 / 2.88 / 12.42 GMACs for ti / xs / s / b at 224 px) come out: one per multiply-accumulate
of every convolution, Linear and the two attention matmuls (q k^T and attn v), plus 5 per LayerNorm element
(normalise and affine); softmax, GELU, additions and dropout count 0. One FLOP count is two MACs.
tools/model_info.py prints them, by kind and by part of the model (macs_by_part); tools/benchmark.py reports
them beside its figures.
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
    """{'conv', 'linear', 'attention', 'layernorm', 'total'}: MACs for one image_size x image_size image
    (layer_macs summed by kind)."""
    counts = dict.fromkeys(KINDS.values(), 0)
    for _, kind, macs in layer_macs(model, image_size):
        counts[kind] += macs
    counts['total'] = sum(counts.values())
    return counts


def macs_by_part(model, image_size):
    """{part: {'conv', 'linear', 'attention', 'layernorm', 'total'}} for one image, parts in forward order:
    'patch embedding', 'stage s' (its blocks), 'pooling s->s+1' (the depthwise conv and the class-token Linear
    between two stages), 'head' (final LayerNorm and classifier(s)); s counts from 1."""
    parts = {}
    for name, kind, macs in layer_macs(model, image_size):
        counts = parts.setdefault(part_of(name), dict.fromkeys(list(KINDS.values()) + ['total'], 0))
        counts[kind] += macs
        counts['total'] += macs
    return parts


def part_of(name):
    """The part (macs_by_part) of the PiT sublayer `name` (e.g. 'transformers.1.blocks.0.attn' -> 'stage 2')."""
    top, _, rest = name.partition('.')
    stage = int(rest.split('.')[0]) + 1 if rest and rest[0].isdigit() else None
    if top == 'transformers':
        return f'stage {stage}'
    if top == 'pools':
        return f'pooling {stage}->{stage + 1}'
    return 'patch embedding' if top == 'patch_embed' else 'head'


KINDS = {nn.Conv2D: 'conv', nn.Linear: 'linear', Attention: 'attention', nn.LayerNorm: 'layernorm'}


def layer_macs(model, image_size):
    """[(sublayer name, kind, MACs)] of one eval forward of a zero image_size x image_size image, in call order,
    for each Conv2D, Linear, Attention (its two matmuls only: qkv and proj are Linears) and LayerNorm call;
    the model's train/eval mode is restored afterwards."""
    def kind_of(layer):
        return next((kind for cls, kind in KINDS.items() if isinstance(layer, cls)), None)

    calls = []

    def hook_for(name, kind):
        def hook(layer, inputs, output):
            calls.append((name, kind, _per_image_macs(layer, inputs, output)))
        return hook

    handles = [layer.register_forward_post_hook(hook_for(name, kind_of(layer)))
               for name, layer in model.named_sublayers() if kind_of(layer)]
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
    return calls
