"""PiT: Pooling-based Vision Transformer (Heo et al., ICCV 2021), faithful to naver-ai/pit.

One model class for all variants; sizes are data (configs/*.yaml) and `distilled` adds the second class token
and `head_dist` of the DeiT-style distilled models. Parameter names follow the official checkpoints
(`transformers.{s}.blocks.{j}...`, `pools.{s}.{conv,fc}`), so converted weights load one to one.

Shapes: images [B, 3, H, W] -> patch embedding [B, C0, W0, W0] -> stages of transformer blocks over
[class tokens; W_s*W_s patch tokens], with a depthwise-conv pooling (and a Linear on the class tokens)
halving the grid and doubling the channels between stages -> LayerNorm on the class tokens -> heads.
As a backbone, `PiTFeatures` (or `build_pit(config, features_only=True)`) gives the three stage outputs as maps
[B, C_s, H_s, W_s] at any input size, declared by `feature_info` as timm declares them.
"""
import inspect
import math
import re

import paddle
import paddle.nn as nn
import paddle.nn.functional as F
from paddle.incubate.nn.memory_efficient_attention import memory_efficient_attention
from paddle.nn.functional.flash_attention import flash_attention

from compat import parse_version
from cpu_kernels import PADDLE, Conv2D, LayerNorm, Linear, for_model
from droppath import DropPath
from gpu import attention_backend, dtype_name, gpu_capability

PADDLE_VERSION = parse_version(paddle.__version__)


def _torch_default_uniform(fan_in):
    """PyTorch's default Linear/Conv init (kaiming_uniform(a=sqrt(5)) and its bias rule): U(-1/sqrt(fan_in), +)."""
    bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
    return nn.initializer.Uniform(-bound, bound)


def _linear(in_features, out_features, kernels=PADDLE, gelu=False):
    """Linear with PyTorch's default init, as the official code keeps it (Paddle's default is Xavier)."""
    init = _torch_default_uniform(in_features)
    return Linear(in_features, out_features, kernels, gelu, weight_attr=paddle.ParamAttr(initializer=init),
                  bias_attr=paddle.ParamAttr(initializer=init))


def _conv(in_channels, out_channels, kernel_size, stride, padding, groups=1, kernels=PADDLE):
    """Conv2D with PyTorch's default init (fan_in = in_channels / groups * k * k)."""
    init = _torch_default_uniform(in_channels // groups * kernel_size * kernel_size)
    return Conv2D(in_channels, out_channels, kernel_size, stride, padding, groups, kernels,
                  weight_attr=paddle.ParamAttr(initializer=init), bias_attr=paddle.ParamAttr(initializer=init))


def _trunc_normal(std=0.02):
    """timm's trunc_normal_(std): normal(0, std) truncated to [-2, 2] (absolute, i.e. +-100 std). Paddle 2.6's
    TruncatedNormal has no bounds (it cuts at 2 std): there a plain normal is the same distribution, since a draw
    beyond 100 std never happens in float32."""
    if 'a' in inspect.signature(nn.initializer.TruncatedNormal).parameters:
        return nn.initializer.TruncatedNormal(mean=0.0, std=std, a=-2.0, b=2.0)
    return nn.initializer.Normal(mean=0.0, std=std)


class Mlp(nn.Layer):
    """fc1 -> exact GELU -> dropout -> fc2 -> dropout. fc1 applies the GELU itself (one kernel on CPU), so its
    output (and a forward hook's view of it) is the activation; `act` stays, as the identity, where the
    official model has its GELU."""

    def __init__(self, dim, hidden_dim, drop=0.0, kernels=PADDLE):
        super().__init__()
        self.fc1 = _linear(dim, hidden_dim, kernels, gelu=True)
        self.act = nn.Identity()
        self.fc2 = _linear(hidden_dim, dim, kernels)
        self.drop = nn.Dropout(drop)

    def forward(self, x):
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class Attention(nn.Layer):
    """Multi-head self-attention with a qkv bias; [B, N, C] -> [B, N, C].

    Each call takes the kernel gpu.attention_backend names for its device, Paddle, dtype and dropout: on CPU
    (float32) the fused kernel of `kernels` (cpu_kernels.Kernels) when it has one, except in training with
    attention dropout, which the fused kernel does not draw (then `_attend_plain`); on GPU, Paddle >= 3.3's
    scaled_dot_product_attention, or on older Paddle flash or memory-efficient attention called directly where
    the GPU and dtype allow, else `_attend_plain`. Traced for export: `_attend_fusable`, the pattern
    paddle.inference fuses.

    `recorded`: None, or a list to which each call appends its softmax weights [B, heads, N, N] (before the
    attention dropout, in the autograd graph); while it is a list, every call takes `_attend_plain`, the one path
    that forms them (the fused kernels never do). explain.recording_attention sets and clears it.
    """

    def __init__(self, dim, num_heads, attn_drop=0.0, proj_drop=0.0, kernels=PADDLE):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.qkv = _linear(dim, dim * 3, kernels)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = _linear(dim, dim, kernels)
        self.proj_drop = nn.Dropout(proj_drop)
        self.kernels = kernels
        self.recorded = None

    def forward(self, x):
        B, N, C = x.shape
        qkv = self.qkv(x)
        x = self.attend(qkv, B, N, 'plain' if self.recorded is not None else self.backend_for(qkv))
        return self.proj_drop(self.proj(x.reshape([B, N, C])))

    def backend_for(self, qkv):
        """The attention kernel of this call: 'fusable' when traced for export, else gpu.attention_backend of the
        device, Paddle version, dtype and attention dropout of qkv."""
        if not paddle.in_dynamic_mode():
            return 'fusable'
        on_gpu = qkv.place.is_gpu_place()
        return attention_backend(PADDLE_VERSION, 'gpu' if on_gpu else 'cpu', gpu_capability() if on_gpu else None,
                                 dtype_name(qkv.dtype), self.head_dim, self._dropout(), self.kernels.applies(qkv))

    def attend(self, qkv, B, N, backend):
        """softmax(scale q k^T) v of the qkv Linear's output [B, N, 3C] by `backend` (one of backend_for's
        names) -> [B, N, heads, head_dim] (or [B, N, C], the same memory)."""
        return getattr(self, '_attend_' + backend)(qkv, B, N)

    def _attend_cpu_kernels(self, qkv, B, N):
        """cpu_kernels' fused attention and its backward (float32 CPU tensors, no dropout)."""
        return self.kernels.attention(qkv, self.num_heads, self.scale)

    def _heads_last(self, qkv, B, N):
        """q, k, v [B, N, heads, head_dim]: the layout of Paddle's fused attention kernels."""
        q, k, v = paddle.split(qkv.reshape([B, N, 3, self.num_heads, self.head_dim]), 3, axis=2)
        shape = [B, N, self.num_heads, self.head_dim]
        return q.reshape(shape), k.reshape(shape), v.reshape(shape)

    def _dropout(self):
        """The attention dropout this call draws: the layer's rate in training, none in eval."""
        return self.attn_drop.p if self.training else 0.0

    def _attend_sdpa(self, qkv, B, N):
        """paddle's scaled_dot_product_attention (Paddle >= 3.3 picks flash, memory-efficient or math attention;
        dropout on the attention weights in training). No `scale` is passed: sdpa's default is ours,
        head_dim^-0.5, and any given scale rules the flash backend out (Paddle's sdpa.py); Paddle < 3.3 has no
        such argument."""
        q, k, v = self._heads_last(qkv, B, N)
        return F.scaled_dot_product_attention(q, k, v, dropout_p=self._dropout(), training=self.training)

    def _attend_flash(self, qkv, B, N):
        """Flash attention called directly (Paddle < 3.3 on a GPU of capability >= 8.0, float16/bfloat16):
        flash_attention(query, key, value, dropout, causal, return_softmax, *, ..., training) in
        nn/functional/flash_attention.py of 2.6 and 3.x; its scale is head_dim^-0.5, ours."""
        q, k, v = self._heads_last(qkv, B, N)
        return flash_attention(q, k, v, dropout=self._dropout(), causal=False, training=self.training)[0]

    def _attend_memory_efficient(self, qkv, B, N):
        """The CUTLASS memory-efficient attention called directly (Paddle < 3.3 on a GPU of capability >= 5.0,
        float32 or float16): memory_efficient_attention(query, key, value, attn_bias, p, scale, training) in
        incubate/nn/memory_efficient_attention.py of 2.6 and 3.x, [B, N, heads, head_dim] layout; scale None is
        head_dim^-0.5, ours."""
        q, k, v = self._heads_last(qkv, B, N)
        return memory_efficient_attention(q, k, v, attn_bias=None, p=self._dropout(), scale=None,
                                          training=self.training)

    def _attend_plain(self, qkv, B, N):
        """Plain dygraph form. [B, N, 3C] -> [B, 3 * heads, N, head_dim] -> q, k, v [B, heads, N, head_dim]: one
        transpose, and a split (whose backward is a concat) rather than three slices (each of whose backward
        writes a full zero tensor). Returns [B, N, heads, head_dim]."""
        qkv = qkv.reshape([B, N, 3 * self.num_heads, self.head_dim]).transpose([0, 2, 1, 3])
        q, k, v = paddle.split(qkv, 3, axis=1)
        attn = self.kernels.softmax(paddle.matmul(q * self.scale, k, transpose_y=True))
        if self.recorded is not None:
            self.recorded.append(attn)
        return paddle.matmul(self.attn_drop(attn), v).transpose([0, 2, 1, 3])

    def _query_scale_factor(self, dtype):
        """[3C]: the scale over the q part of qkv, 1 over k and v."""
        dim = self.num_heads * self.head_dim
        return paddle.concat([paddle.full([dim], self.scale, dtype), paddle.ones([2 * dim], dtype)])

    def fold_query_scale(self):
        """Multiply the q part of the qkv Linear (weight columns and bias) by the attention scale and set the
        scale to 1: the same attention, one multiply fewer per call. For the copy of a model that is traced for
        export (tools/export_model.py), whose fused attention pattern would otherwise keep a multiply of the
        whole qkv tensor. Changes the parameters: not for a model that is trained or saved afterwards."""
        factor = self._query_scale_factor(self.qkv.weight.dtype)
        with paddle.no_grad():
            self.qkv.weight.set_value(self.qkv.weight * factor)
            self.qkv.bias.set_value(self.qkv.bias * factor)
        self.scale = 1.0

    def _attend_fusable(self, qkv, B, N):
        """The same values in the op pattern that paddle.inference's self_attention_fuse_pass turns into one
        fused CPU attention kernel (oneDNN, AVX-512): q is scaled before the [B, N, 3, heads, head_dim] ->
        [3, B, heads, N, head_dim] transpose (k and v times 1.0, exact; nothing after fold_query_scale), k is
        transposed explicitly, and softmax follows the first matmul directly. Used when the model is traced for
        export. The matmuls are written `@`, which also traces into a legacy (.pdmodel) program on Paddle 3 (an
        int8 export: quantize.py); paddle.matmul there takes PIR values only."""
        if self.scale != 1.0:
            qkv = qkv * self._query_scale_factor(qkv.dtype)
        qkv = qkv.reshape([B, N, 3, self.num_heads, self.head_dim]).transpose([2, 0, 3, 1, 4])
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = self.attn_drop(F.softmax(q @ k.transpose([0, 1, 3, 2]), axis=-1))
        return (attn @ v).transpose([0, 2, 1, 3])


class Block(nn.Layer):
    """Pre-norm transformer block: x + DropPath(Attn(LN(x))), then x + DropPath(MLP(LN(x)))."""

    def __init__(self, dim, num_heads, mlp_ratio, drop=0.0, attn_drop=0.0, drop_path=0.0, kernels=PADDLE):
        super().__init__()
        self.norm1 = LayerNorm(dim, epsilon=1e-6, kernels=kernels)
        self.attn = Attention(dim, num_heads, attn_drop=attn_drop, proj_drop=drop, kernels=kernels)
        self.drop_path = DropPath(drop_path)
        self.norm2 = LayerNorm(dim, epsilon=1e-6, kernels=kernels)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=drop, kernels=kernels)
        self.kernels = kernels

    def forward(self, x):
        branch = self.attn(self.norm1(x))
        x = self.kernels.add(x, branch, self.drop_path.sample_scale(branch))  # the drop path fused into the add
        branch = self.mlp(self.norm2(x))
        return self.kernels.add(x, branch, self.drop_path.sample_scale(branch))


class Transformer(nn.Layer):
    """One stage: flattens the grid [B, C, H, W] behind the class tokens [B, T, C], runs the blocks, splits back."""

    def __init__(self, dim, depth, num_heads, mlp_ratio, drop, attn_drop, drop_path_rates, kernels=PADDLE):
        super().__init__()
        self.blocks = nn.LayerList([
            Block(dim, num_heads, mlp_ratio, drop=drop, attn_drop=attn_drop, drop_path=rate, kernels=kernels)
            for rate in drop_path_rates])
        self.kernels = kernels

    def forward(self, x, cls_tokens):
        B, C, H, W = x.shape
        num_tokens = cls_tokens.shape[1]
        x = paddle.concat([cls_tokens, self.kernels.swap_last2(x.flatten(2))], axis=1)
        for block in self.blocks:
            x = block(x)
        cls_tokens = x[:, :num_tokens]
        x = self.kernels.swap_last2(x[:, num_tokens:]).reshape([B, C, H, W])
        return x, cls_tokens


class ConvHeadPooling(nn.Layer):
    """Between stages: depthwise conv (k 3, s 2, p 1, groups C_in, C_out = 2 C_in) on the grid, Linear on tokens."""

    def __init__(self, in_dim, out_dim, stride=2, kernels=PADDLE):
        super().__init__()
        self.conv = _conv(in_dim, out_dim, stride + 1, stride=stride, padding=stride // 2, groups=in_dim,
                          kernels=kernels)
        self.fc = _linear(in_dim, out_dim, kernels)

    def forward(self, x, cls_tokens):
        return self.conv(x), self.fc(cls_tokens)


class ConvEmbedding(nn.Layer):
    """Overlapping patch embedding: conv with kernel = patch size, the given stride, padding 0."""

    def __init__(self, in_channels, out_channels, patch_size, stride, kernels=PADDLE):
        super().__init__()
        self.conv = _conv(in_channels, out_channels, patch_size, stride=stride, padding=0, kernels=kernels)

    def forward(self, x):
        return self.conv(x)


class PoolingTransformer(nn.Layer):
    """PiT. In training, distilled models return (cls_logits, dist_logits); in eval, their mean.

    Args:
        image_size: input side; the pos_embed grid is floor((image_size - patch_size) / stride + 1).
        base_dims, depth, heads: per stage; the stage width is base_dims[s] * heads[s].
        drop_path_rate: block i of N (counted over all stages) drops with drop_path_rate * i / N.
        cpu_kernels: run cpu_kernels' fused attention and multi-threaded kernels on CPU; decided now, by
            cpu_kernels.for_model (built on CPU, the model loads them, or warns why it cannot).
    """

    def __init__(self, image_size=224, patch_size=16, stride=8, base_dims=(32, 32, 32), depth=(2, 6, 4),
                 heads=(2, 4, 8), mlp_ratio=4.0, num_classes=1000, in_chans=3, distilled=False,
                 drop_rate=0.0, attn_drop_rate=0.0, drop_path_rate=0.0, cpu_kernels=True):
        super().__init__()
        kernels = self.kernels = for_model(cpu_kernels)
        self.distilled = distilled
        self.num_classes = num_classes
        self.patch_size = patch_size
        self.stride = stride
        widths = [b * h for b, h in zip(base_dims, heads)]
        self.embed_dim = widths[-1]
        grid = (image_size - patch_size) // stride + 1
        num_tokens = 2 if distilled else 1

        self.patch_embed = ConvEmbedding(in_chans, widths[0], patch_size, stride, kernels)
        self.pos_embed = self.create_parameter([1, widths[0], grid, grid], default_initializer=_trunc_normal())
        self.cls_token = self.create_parameter([1, num_tokens, widths[0]], default_initializer=_trunc_normal())
        self.pos_drop = nn.Dropout(drop_rate)

        total = sum(depth)
        rates = [drop_path_rate * i / total for i in range(total)]
        self.transformers = nn.LayerList()
        self.pools = nn.LayerList()
        for s in range(len(depth)):
            start = sum(depth[:s])
            self.transformers.append(Transformer(widths[s], depth[s], heads[s], mlp_ratio, drop_rate,
                                                 attn_drop_rate, rates[start:start + depth[s]], kernels))
            if s < len(depth) - 1:
                self.pools.append(ConvHeadPooling(widths[s], widths[s + 1], stride=2, kernels=kernels))

        self.norm = LayerNorm(self.embed_dim, epsilon=1e-6, kernels=kernels)
        self.reset_classifier(num_classes)
        # timm's declaration of the stage outputs, values included: its `reduction` is (stride - 1) * 2**s
        # (7/14/28 for stride 8). The maps' cells step by stride * 2**s input pixels (8/16/32), kept as `stride`.
        self.feature_info = FeatureInfo(
            dict(num_chs=widths[s], reduction=(stride - 1) * 2 ** s, module=f'transformers.{s}', stride=stride * 2 ** s)
            for s in range(len(depth)))

    def reset_classifier(self, num_classes):
        """Replace the head (and head_dist) by new ones of num_classes outputs, PyTorch default init; 0: none
        (forward then returns the normalised class token). Used to fine-tune on another label set."""
        self.num_classes = num_classes
        self.head = _linear(self.embed_dim, num_classes, self.kernels) if num_classes > 0 else nn.Identity()
        if self.distilled:
            self.head_dist = _linear(self.embed_dim, num_classes, self.kernels) if num_classes > 0 else nn.Identity()

    def checkpoint_filter(self, state):
        """Map an official (naver-ai, timm) or own state dict onto this model; see checkpoint_filter_fn."""
        return checkpoint_filter_fn(state, self)

    def no_weight_decay(self):
        """Structured names of parameters that must never be decayed (the optimizer also skips 1-D params)."""
        return {'pos_embed', 'cls_token'}

    def classifier_names(self):
        """Structured names of the classifier layers (timm's pretrained_cfg['classifier']): fine-tuning to another
        class count re-initialises them (weights.fit_state_dict)."""
        return ('head', 'head_dist') if self.distilled else ('head',)

    def forward_stages(self, x):
        """[B, 3, H, W], any H, W of at least one patch -> (the stage outputs [B, C_s, H_s, W_s] for each stage s,
        the class tokens [B, 1 or 2, C_last] before the final norm). pos_embed is resized (bicubic) to the patch
        grid of x. A smaller input raises ValueError naming its size."""
        check_input_size(x.shape, self.patch_size)
        x = self.patch_embed(x)
        pos_embed = self.pos_embed
        if pos_embed.shape[2:] != x.shape[2:]:
            pos_embed = resize_pos_embed(pos_embed, x.shape[2:])
        # Expanded to the batch: paddle.inference's oneDNN add has no fast kernel for a [1, C, H, W] operand
        # beside the conv's NHWC output (31 ms -> 1.7 ms for pit_ti at batch 32). Same values.
        x = self.pos_drop(x + pos_embed.expand([x.shape[0], -1, -1, -1]))
        cls_tokens = self.cls_token.expand([x.shape[0], -1, -1])
        maps = []
        for stage, transformer in enumerate(self.transformers):
            if stage > 0:
                x, cls_tokens = self.pools[stage - 1](x, cls_tokens)
            x, cls_tokens = transformer(x, cls_tokens)
            maps.append(x)
        return maps, cls_tokens

    def forward_features(self, x):
        """[B, 3, H, W] -> normalised class tokens [B, 1 or 2, C_last]."""
        return self.norm(self.forward_stages(x)[1])

    def forward(self, x):
        tokens = self.forward_features(x)
        logits = self.head(tokens[:, 0])
        if not self.distilled:
            return logits
        logits_dist = self.head_dist(tokens[:, 1])
        if self.training:
            return logits, logits_dist
        return (logits + logits_dist) / 2


def check_input_size(shape, patch_size):
    """ValueError naming the sizes when an input [B, C, H, W] is smaller than one patch on either side (the patch
    embedding would have no output there). Sizes unknown until run time (-1 in a traced graph) pass."""
    height, width = (int(s) for s in shape[-2:])
    if 0 <= height < patch_size or 0 <= width < patch_size:
        raise ValueError(f'input of {height}x{width} pixels is smaller than one patch of {patch_size}x{patch_size} '
                         '(MODEL.TRANS.PATCH_SIZE): both sides must be at least the patch size')


def resize_pos_embed(pos_embed, grid_hw):
    """Bicubic (align_corners=False) resize of a [1, C, H, W] pos_embed to grid_hw = (H', W')."""
    grid_hw = [int(s) for s in grid_hw]
    if list(pos_embed.shape[2:]) == grid_hw:
        return pos_embed
    return F.interpolate(pos_embed, size=grid_hw, mode='bicubic', align_corners=False)


_TIMM_POOL = re.compile(r'^transformers\.(\d+)\.pool\.')


def pooling_layout(keys):
    """'timm>=0.9', 'timm<=0.8' or 'native' (naver-ai and this repo: `pools.{s}`) for a set of state keys.

    timm >= 0.9 keeps the pooling before stage s+1 as `transformers.{s+1}.pool`, timm <= 0.8 after stage s as
    `transformers.{s}.pool`: told apart by whether stage 0 holds a pool.
    """
    stages = {int(m.group(1)) for m in map(_TIMM_POOL.match, keys) if m}
    if not stages:
        return 'native'
    return 'timm<=0.8' if 0 in stages else 'timm>=0.9'


def checkpoint_filter_fn(state, model):
    """(state under this repo's names, notes) for a naver-ai / timm / own PiT state dict of numpy arrays.

    timm pools move to `pools.{s}`; a [1, C, H, W] pos_embed of another grid is resized (bicubic) to the
    model's. notes: layout, resized ((H, W) -> (H', W')), duplicates (source keys naming a parameter that
    another key already gave: mixed layouts), sources (new name -> source key, for error messages).
    """
    layout = pooling_layout(state)
    shift = 1 if layout == 'timm>=0.9' else 0
    out, notes = {}, {'layout': layout, 'duplicates': [], 'sources': {}}
    for key, value in state.items():
        name = _TIMM_POOL.sub(lambda m: f'pools.{int(m.group(1)) - shift}.', key)
        if name in out:
            notes['duplicates'].append(key)
            continue
        out[name] = value
        notes['sources'][name] = key
    target = list(model.pos_embed.shape)
    pos = out.get('pos_embed')
    if pos is not None and pos.ndim == 4 and list(pos.shape[:2]) == target[:2] and list(pos.shape[2:]) != target[2:]:
        notes['resized'] = (tuple(pos.shape[2:]), tuple(target[2:]))
        out['pos_embed'] = resize_pos_embed(paddle.to_tensor(pos, dtype='float32'), target[2:]).numpy()
    return out, notes


class FeatureInfo(list):
    """Per-stage dicts (num_chs, reduction, module, stride) with timm's FeatureInfo accessors."""

    def channels(self):
        return [info['num_chs'] for info in self]

    def reduction(self):
        return [info['reduction'] for info in self]

    def module_name(self):
        return [info['module'] for info in self]


class PiTFeatures(nn.Layer):
    """PiT as a backbone: forward(x) gives the stage outputs [[B, C_s, H_s, W_s] for each stage] at any input
    size. Holds the trunk of a PoolingTransformer (the same layers, parameters and parameter names, so its
    weights load as they are), without the final norm and heads, which nothing here depends on."""

    def __init__(self, model):
        super().__init__()
        self.patch_embed = model.patch_embed
        self.patch_size = model.patch_size
        self.pos_embed = model.pos_embed
        self.cls_token = model.cls_token
        self.pos_drop = model.pos_drop
        self.transformers = model.transformers
        self.pools = model.pools
        self.feature_info = model.feature_info

    forward_stages = PoolingTransformer.forward_stages
    no_weight_decay = PoolingTransformer.no_weight_decay
    checkpoint_filter = PoolingTransformer.checkpoint_filter

    def forward(self, x):
        return self.forward_stages(x)[0]


def build_pit(config, features_only=False):
    """Build the PiT that config describes (MODEL.TRANS sizes, MODEL.DISTILL, dropouts, DATA.IMAGE_SIZE,
    CPU_KERNELS); features_only: its PiTFeatures (stage maps, no classifier)."""
    model = PoolingTransformer(
        image_size=config.DATA.IMAGE_SIZE,
        patch_size=config.MODEL.TRANS.PATCH_SIZE,
        stride=config.MODEL.TRANS.STRIDE,
        base_dims=list(config.MODEL.TRANS.BASE_DIMS),
        depth=list(config.MODEL.TRANS.DEPTH),
        heads=list(config.MODEL.TRANS.HEADS),
        mlp_ratio=config.MODEL.TRANS.MLP_RATIO,
        num_classes=config.MODEL.NUM_CLASSES,
        distilled=config.MODEL.DISTILL,
        drop_rate=config.MODEL.DROPOUT,
        attn_drop_rate=config.MODEL.ATTENTION_DROPOUT,
        drop_path_rate=config.MODEL.DROP_PATH,
        cpu_kernels=config.CPU_KERNELS,
    )
    return PiTFeatures(model) if features_only else model


MODEL_BUILDERS = {'PiT': build_pit}  # MODEL.TYPE -> builder(config)


def build_model(config):
    """The model of config (MODEL.TYPE), built under a fresh name scope: its parameter names (which key the
    optimizer state) are the same whatever was built before it, so a checkpoint resumes with EMA and teacher in
    any order."""
    with paddle.utils.unique_name.guard():
        return MODEL_BUILDERS[config.MODEL.TYPE](config)
