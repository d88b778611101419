"""What a PiT looks at: per stage, the attention rollout of its class token (Abnar & Zuidema 2020), and a Grad-CAM
(Selvaraju et al. 2017) of the last stage for the top-1 class. tools/visualize.py draws them.

- Rollout, per stage (its blocks attend over [class tokens; H_s * W_s patch tokens] of that stage only: the
  pooling between stages mixes tokens outside attention, so each stage is rolled out on its own): each block's
  softmax weights averaged over heads, plus the identity (the residual path), rows renormalised, multiplied
  through the blocks (later blocks on the left); the class token's row over the patch tokens, as an H_s x W_s map.
- Grad-CAM: the gradient of the top-1 logit wrt the patch tokens that enter the attention of the last block of
  the last stage (after that block's first LayerNorm); channel weights = the spatial mean of the gradients; ReLU
  of the weighted sum over channels, an H x W map. The last block's tokens, not the stage's output: the class
  token leaves the last block beside the patch tokens, computed from that block's input, so the logits do not
  depend on the output's patch tokens at all (their gradient is zero), the known case of Grad-CAM on a ViT's final
  block. After the LayerNorm, not the block's input: the logits read a patch token only through LayerNorm, which
  is blind to the token's scale, so on the block's input each token's own gradient is orthogonal to it
  (x . dlogit/dx = 0): the map would weigh a token by the other tokens' gradients only, and a last stage of one
  token would always get a map of 0.
The attention weights are recorded through Attention.recorded (pit.py): the model runs its plain attention path
while recording, the same values the fused kernels compute.
"""
import collections
import contextlib

import numpy as np
import paddle
import paddle.nn.functional as F

Explanation = collections.namedtuple('Explanation', [
    'logits',    # float32 [B, classes]
    'rollouts',  # per stage, float32 [B, H_s, W_s]: the class token's rolled-out attention over the patch tokens
    'cam',       # float32 [B, H, W]: Grad-CAM of the last stage for the top-1 class (>= 0)
])


@contextlib.contextmanager
def recording_attention(model):
    """Within the block, every attention layer of a PoolingTransformer records its softmax weights: yields one list
    per stage, of one list per block, which each forward call appends its [B, heads, N, N] weights to. Recording
    ends with the block, whatever happens in it."""
    stages = [[[] for _ in stage.blocks] for stage in model.transformers]
    pairs = [(block.attn, record) for stage, records in zip(model.transformers, stages)
             for block, record in zip(stage.blocks, records)]
    try:
        for attention, record in pairs:
            attention.recorded = record
        yield stages
    finally:
        for attention, _ in pairs:
            attention.recorded = None


@contextlib.contextmanager
def forward_inputs(layers):
    """Yields a list that gets, for each forward call of each of layers, the tuple of its inputs (forward
    pre-hooks, removed when the block ends)."""
    seen = []
    handles = [layer.register_forward_pre_hook(lambda layer, inputs: seen.append(inputs)) for layer in layers]
    try:
        yield seen
    finally:
        for handle in handles:
            handle.remove()


def rollout(attentions):
    """Attention rollout of a stage's blocks: attentions, one [B, heads, N, N] array per block in order ->
    [B, N, N], whose rows sum to 1: prod over blocks, last on the left, of rownorm(mean over heads + I)."""
    result = None
    for attention in attentions:
        mixed = np.asarray(attention, dtype=np.float64).mean(axis=1) + np.eye(attention.shape[-1])
        mixed /= mixed.sum(axis=-1, keepdims=True)
        result = mixed if result is None else mixed @ result
    return result


def class_token_map(rolled, num_tokens, grid):
    """The first class token's row of a rollout [B, N, N] over the patch tokens (those after the num_tokens class
    tokens), as maps [B, H, W] for grid (H, W)."""
    return rolled[:, 0, num_tokens:].reshape([rolled.shape[0], *grid]).astype(np.float32)


def grad_cam(features, gradients, grid):
    """Grad-CAM of patch-token features [B, H*W, C] and the gradients of a score wrt them: ReLU(sum over channels
    of features * the channel's mean gradient) -> [B, H, W]."""
    weights = gradients.mean(axis=1, keepdims=True)
    return np.maximum((features * weights).sum(axis=-1), 0).reshape([features.shape[0], *grid]).astype(np.float32)


def explain(model, images):
    """The Explanation of a PoolingTransformer in eval mode for images [B, 3, H, W] (float32 numpy, normalised as
    the model expects): logits, each stage's class-token rollout, and the Grad-CAM of the top-1 class. Runs one
    forward and one backward pass (gradients wrt the features only; the parameters' gradients are left
    untouched)."""
    num_tokens = model.cls_token.shape[1]
    with recording_attention(model) as recorded, forward_inputs(model.transformers) as stage_inputs, \
            forward_inputs([model.transformers[-1].blocks[-1].attn]) as attention_inputs:
        logits = model(paddle.to_tensor(images))
    grids = [tuple(int(s) for s in inputs[0].shape[2:]) for inputs in stage_inputs]
    tokens = attention_inputs[0][0]
    score = (logits * F.one_hot(logits.argmax(axis=-1), logits.shape[-1])).sum()
    gradients = paddle.grad(score, [tokens])[0]
    rollouts = [class_token_map(rollout([block[0].numpy() for block in stage]), num_tokens, grid)
                for stage, grid in zip(recorded, grids)]
    cam = grad_cam(tokens[:, num_tokens:].numpy(), gradients[:, num_tokens:].numpy(), grids[-1])
    return Explanation(logits.numpy(), rollouts, cam)
