"""RegNetY-16GF, the DeiT/PiT distillation teacher (timm `regnety_160`), in Paddle.

The architecture is generated from timm's RegNet parameters exactly as timm does (float32 arithmetic included):
per-block widths w_j = w0 + wa * j quantised to w0 * wm^round(log(w_j / w0) / log(wm)) (multiples of 8),
blocks of equal width form a stage; bottleneck widths are rounded to multiples of the group width.
RegNetY-16GF: w0 200, wa 106.23, wm 2.48, depth 18, group width 112, SE ratio 0.25, stem 32
-> stage widths 224, 448, 1232, 3024, depths 2, 4, 11, 1, 83.59M parameters.

Parameter names are timm's (`stem.conv`, `s{i}.b{j}.conv{1,2,3}.{conv,bn}`, `s{i}.b{j}.se.fc{1,2}`,
`s{i}.b{j}.downsample.{conv,bn}`, `head.fc`), so a timm state dict maps one to one:
    *.bn.running_mean -> *.bn._mean, *.bn.running_var -> *.bn._variance, *.num_batches_tracked dropped,
    head.fc.weight transposed ([out, in] -> Paddle Linear's [in, out]); everything else as is.
`load_teacher` reads a converted `.pdparams` file (tools/convert_regnet.py) or timm/DeiT's `.pth` directly.
Initialisation is Paddle's default: the teacher is always loaded from trained weights.
"""
import logging
import os

import numpy as np
import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from checkpoint import atomic_save
from weights import read_checkpoint, resolve_weights_path, to_paddle_state_dict

logger = logging.getLogger('pit')

REGNETY_160 = dict(w0=200, wa=106.23, wm=2.48, depth=18, group_size=112, se_ratio=0.25, stem_width=32,
                   bottle_ratio=1.0)


def stage_plan(w0, wa, wm, depth, group_size, bottle_ratio=1.0):
    """[(width, blocks, group width)] per stage, computed like timm's generate_regnet and
    adjust_widths_groups_comp (float32, round half to even, quantum 8)."""
    if not (wa >= 0 and w0 > 0 and wm > 1 and w0 % 8 == 0):
        raise ValueError(f'invalid RegNet parameters w0={w0} wa={wa} wm={wm} (need wa >= 0, wm > 1, w0 % 8 == 0)')
    widths_cont = np.arange(depth, dtype=np.float32) * np.float32(wa) + np.float32(w0)
    exps = np.round(np.log(widths_cont / np.float32(w0)) / np.float32(np.log(wm)))
    widths = (np.round(np.float32(w0) * np.power(np.float32(wm), exps) / 8) * 8).astype(int).tolist()
    stage_widths = sorted(set(widths))
    plan = []
    for width in stage_widths:
        bottleneck = int(width * bottle_ratio)
        groups = min(group_size, bottleneck)
        bottleneck = int(round(bottleneck / groups) * groups)
        plan.append((int(bottleneck / bottle_ratio), widths.count(width), groups))
    return plan


class ConvNormAct(nn.Layer):
    """Conv (no bias, 'same' padding for odd kernels) -> BatchNorm -> optional ReLU."""

    def __init__(self, in_chs, out_chs, kernel_size, stride=1, groups=1, act=True):
        super().__init__()
        self.conv = nn.Conv2D(in_chs, out_chs, kernel_size, stride=stride, padding=kernel_size // 2,
                              groups=groups, bias_attr=False)
        self.bn = nn.BatchNorm2D(out_chs, momentum=0.9, epsilon=1e-5)  # torch's momentum 0.1, eps 1e-5
        self.act = act

    def forward(self, x):
        x = self.bn(self.conv(x))
        return F.relu(x) if self.act else x


class SqueezeExcite(nn.Layer):
    """x * sigmoid(fc2(relu(fc1(mean over H, W of x)))), fc as 1x1 convs with bias."""

    def __init__(self, channels, reduced):
        super().__init__()
        self.fc1 = nn.Conv2D(channels, reduced, 1)
        self.fc2 = nn.Conv2D(reduced, channels, 1)

    def forward(self, x):
        scale = self.fc2(F.relu(self.fc1(x.mean(axis=[2, 3], keepdim=True))))
        return x * F.sigmoid(scale)


class Bottleneck(nn.Layer):
    """RegNetY block: 1x1 -> grouped 3x3 (stride) -> SE -> 1x1, plus a 1x1 conv+BN shortcut when the shape
    changes, then ReLU. The SE width is se_ratio * in_chs (the block input), as in timm."""

    def __init__(self, in_chs, out_chs, stride, group_size, se_ratio, bottle_ratio):
        super().__init__()
        bottleneck = int(round(out_chs * bottle_ratio))
        self.conv1 = ConvNormAct(in_chs, bottleneck, 1)
        self.conv2 = ConvNormAct(bottleneck, bottleneck, 3, stride=stride, groups=bottleneck // group_size)
        self.se = SqueezeExcite(bottleneck, int(round(in_chs * se_ratio))) if se_ratio else None
        self.conv3 = ConvNormAct(bottleneck, out_chs, 1, act=False)
        self.downsample = (ConvNormAct(in_chs, out_chs, 1, stride=stride, act=False)
                           if in_chs != out_chs or stride != 1 else None)

    def forward(self, x):
        shortcut = x if self.downsample is None else self.downsample(x)
        x = self.conv2(self.conv1(x))
        if self.se is not None:
            x = self.se(x)
        return F.relu(self.conv3(x) + shortcut)


class ClassifierHead(nn.Layer):
    """Global average pool -> Linear."""

    def __init__(self, in_features, num_classes):
        super().__init__()
        self.fc = nn.Linear(in_features, num_classes)

    def forward(self, x):
        return self.fc(x.mean(axis=[2, 3]))


class RegNet(nn.Layer):
    """RegNet(Y) of timm's layout: images [B, 3, H, W] -> logits [B, num_classes]; stride 2 in the stem and in
    the first block of each stage (output stride 32)."""

    def __init__(self, num_classes=1000, stem_width=32, se_ratio=0.25, bottle_ratio=1.0, **regnet_params):
        super().__init__()
        self.stem = ConvNormAct(3, stem_width, 3, stride=2)
        self.stage_names = []
        in_chs = stem_width
        for i, (width, blocks, group_size) in enumerate(stage_plan(bottle_ratio=bottle_ratio, **regnet_params)):
            self.stage_names.append(f's{i + 1}')
            self.add_sublayer(self.stage_names[-1], nn.Sequential(*[
                (f'b{j + 1}', Bottleneck(in_chs if j == 0 else width, width, 2 if j == 0 else 1, group_size,
                                         se_ratio, bottle_ratio))
                for j in range(blocks)]))
            in_chs = width
        self.head = ClassifierHead(in_chs, num_classes)

    def forward(self, x):
        x = self.stem(x)
        for name in self.stage_names:
            x = getattr(self, name)(x)
        return self.head(x)


def build_regnet(cfg=None, num_classes=1000):
    """RegNet of cfg (a dict like REGNETY_160, the default)."""
    return RegNet(num_classes=num_classes, **(cfg or REGNETY_160))


def timm_to_paddle_names(state):
    """A timm RegNet state dict under this module's names (BatchNorm statistics renamed, counters dropped)."""
    renamed = {}
    for key, value in state.items():
        if key.endswith('.num_batches_tracked'):
            continue
        key = key.replace('.running_mean', '._mean').replace('.running_var', '._variance')
        renamed[key] = value
    return renamed


def teacher_state_dict(path, model):
    """{name: array} for model from a converted .pdparams file or a timm/DeiT .pth/.safetensors (any key misfit
    raises weights.WeightsError naming the file)."""
    from_torch = not path.endswith('.pdparams')
    state = read_checkpoint(path)
    if from_torch:
        state = timm_to_paddle_names(state)
    return to_paddle_state_dict(state, model, from_torch=from_torch, source=path)


def load_teacher(path, num_classes=1000, cfg=None):
    """The RegNet teacher with the weights of path ('.pdparams' may be left out), in eval mode.

    FileNotFoundError when path does not exist; weights.WeightsError when the file does not fit the model.
    """
    resolved = resolve_weights_path(path)
    if not os.path.isfile(resolved):
        raise FileNotFoundError(f"teacher weights '{path}' not found (TRAIN.TEACHER_MODEL / -teacher_model); "
                                "convert timm's regnety_160 weights with tools/convert_regnet.py")
    model = build_regnet(cfg, num_classes)
    model.set_state_dict(teacher_state_dict(resolved, model))
    model.eval()
    return model


def build_teacher(config):
    """The distillation teacher of config (load_teacher of TRAIN.TEACHER_MODEL), built under its own name scope so
    that the student's parameter names do not depend on it; None without distillation."""
    if config.TRAIN.DISTILLATION_TYPE == 'none':
        return None
    with paddle.utils.unique_name.guard('teacher_'):
        teacher = load_teacher(config.TRAIN.TEACHER_MODEL, num_classes=config.MODEL.NUM_CLASSES)
    logger.info(f'teacher {config.TRAIN.TEACHER_MODEL}, distillation {config.TRAIN.DISTILLATION_TYPE}')
    return teacher


def convert_teacher(src, dst, cfg=None, num_classes=1000):
    """Convert timm's / DeiT's weights at src into dst (.pdparams added when missing) for build_regnet(cfg,
    num_classes), every key and shape checked (WeightsError naming src otherwise), written atomically; returns a
    one-line summary."""
    dst = dst if dst.endswith('.pdparams') else dst + '.pdparams'
    with paddle.utils.unique_name.guard():
        model = build_regnet(cfg, num_classes)
    model.set_state_dict(teacher_state_dict(src, model))
    atomic_save(model.state_dict(), dst)
    params = sum(int(p.size) for p in model.parameters() if not p.stop_gradient)
    return f"converted '{src}' -> '{dst}' (RegNet, {params / 1e6:.2f}M params)"
