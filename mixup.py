"""Mixup and CutMix on a batch, with label smoothing folded into the soft targets (timm's Mixup semantics).

Per batch ('batch'), per pair of mirrored samples ('pair') or per sample ('elem'): with probability `prob`, mix
with sample B-1-i using lambda ~ Beta(mixup_alpha) or, with probability `switch_prob` when both are on, cut a
box of area (1 - lambda) (Beta(cutmix_alpha), or sides uniform in cutmix_minmax) and paste it from sample B-1-i.
With `correct_lam` (default) lambda becomes 1 - clipped box area / image area. Targets:
lambda * smooth_onehot(y) + (1 - lambda) * smooth_onehot(y_mirrored), off = smoothing / classes,
on = 1 - smoothing + off.
"""
import numpy as np
import paddle


def smooth_one_hot(labels, num_classes, smoothing):
    off = smoothing / num_classes
    on = 1.0 - smoothing + off
    return paddle.nn.functional.one_hot(labels.reshape([-1]), num_classes) * (on - off) + off


def rand_bbox(height, width, lam, minmax=None, rng=np.random):
    """(top, bottom, left, right) of a cutmix box: sides sqrt(1 - lam) of the image around a uniform centre,
    clipped to the image; or, with minmax, sides uniform in [min, max) x image side, box fully inside."""
    if minmax is not None:
        cut_h = rng.randint(int(height * minmax[0]), int(height * minmax[1]))
        cut_w = rng.randint(int(width * minmax[0]), int(width * minmax[1]))
        top, left = rng.randint(0, height - cut_h), rng.randint(0, width - cut_w)
        return top, top + cut_h, left, left + cut_w
    ratio = np.sqrt(1.0 - lam)
    cut_h, cut_w = int(height * ratio), int(width * ratio)
    cy, cx = rng.randint(0, height), rng.randint(0, width)
    return (int(np.clip(cy - cut_h // 2, 0, height)), int(np.clip(cy + cut_h // 2, 0, height)),
            int(np.clip(cx - cut_w // 2, 0, width)), int(np.clip(cx + cut_w // 2, 0, width)))


class Mixup:
    def __init__(self, mixup_alpha=1.0, cutmix_alpha=0.0, cutmix_minmax=None, prob=1.0, switch_prob=0.5,
                 mode='batch', correct_lam=True, label_smoothing=0.1, num_classes=1000):
        self.mixup_alpha, self.cutmix_alpha = mixup_alpha, cutmix_alpha
        self.cutmix_minmax = tuple(cutmix_minmax) if cutmix_minmax is not None else None
        if self.cutmix_minmax is not None:
            if len(self.cutmix_minmax) != 2:
                raise ValueError(f'cutmix_minmax must be (min, max), got {cutmix_minmax!r}')
            self.cutmix_alpha = 1.0  # minmax replaces alpha, cutmix is on
        self.prob, self.switch_prob = prob, switch_prob
        self.mode = mode
        self.correct_lam = correct_lam
        self.label_smoothing = label_smoothing
        self.num_classes = num_classes
        self.rng = np.random.RandomState(0)

    def seed(self, seed):
        """Reseed the mixing draws. They use their own generator: with DATA.NUM_WORKERS 0 the DataLoader's
        prefetch thread runs the transforms concurrently, and sharing numpy's global state would make the draws
        depend on thread timing."""
        self.rng = np.random.RandomState(seed % 2 ** 32)

    def _draw(self):
        """(lam, use_cutmix) for one batch/pair/element."""
        if self.rng.rand() >= self.prob:
            return 1.0, False
        if self.mixup_alpha > 0 and self.cutmix_alpha > 0:
            use_cutmix = self.rng.rand() < self.switch_prob
            alpha = self.cutmix_alpha if use_cutmix else self.mixup_alpha
            return float(self.rng.beta(alpha, alpha)), use_cutmix
        if self.mixup_alpha > 0:
            return float(self.rng.beta(self.mixup_alpha, self.mixup_alpha)), False
        return float(self.rng.beta(self.cutmix_alpha, self.cutmix_alpha)), True

    def _cutmix_box(self, height, width, lam):
        top, bottom, left, right = rand_bbox(height, width, lam, self.cutmix_minmax, self.rng)
        if self.correct_lam or self.cutmix_minmax is not None:
            lam = 1.0 - (bottom - top) * (right - left) / float(height * width)
        return (top, bottom, left, right), lam

    def _mix_batch(self, x):
        lam, use_cutmix = self._draw()
        if lam == 1.0:
            return x, np.ones(x.shape[0], dtype=np.float32)
        flipped = x.flip([0])
        if use_cutmix:
            (t, b, l, r), lam = self._cutmix_box(x.shape[2], x.shape[3], lam)
            x = x.clone()
            x[:, :, t:b, l:r] = flipped[:, :, t:b, l:r]
        else:
            x = x * lam + flipped * (1.0 - lam)
        return x, np.full(x.shape[0], lam, dtype=np.float32)

    def _mix_elements(self, x, pairs):
        """elem: each i mixes with B-1-i; pair: the first half draws, the mirror takes the same lambda/box."""
        batch = x.shape[0]
        source = x.flip([0])
        out = x.clone()
        lams = np.ones(batch, dtype=np.float32)
        for i in range(batch // 2 if pairs else batch):
            lam, use_cutmix = self._draw()
            targets = [i, batch - 1 - i] if pairs else [i]
            if lam == 1.0:
                continue
            if use_cutmix:
                (t, b, l, r), lam = self._cutmix_box(x.shape[2], x.shape[3], lam)
                for j in targets:
                    out[j, :, t:b, l:r] = source[j, :, t:b, l:r]
            else:
                for j in targets:
                    out[j] = x[j] * lam + source[j] * (1.0 - lam)
            lams[targets] = lam
        return out, lams

    def __call__(self, images, labels):
        """images float [B, C, H, W], labels int [B] -> (mixed images, soft targets float32 [B, classes])."""
        if images.shape[0] % 2:
            raise ValueError(f'mixup/cutmix needs an even batch, got {images.shape[0]} (train loaders drop the last '
                             'batch; set DATA.BATCH_SIZE even)')
        if self.mode == 'batch':
            images, lams = self._mix_batch(images)
        else:
            images, lams = self._mix_elements(images, pairs=self.mode == 'pair')
        y1 = smooth_one_hot(labels, self.num_classes, self.label_smoothing)
        lam = paddle.to_tensor(lams).reshape([-1, 1])
        return images, y1 * lam + y1.flip([0]) * (1.0 - lam)


def build_mixup(config):
    """Mixup of config.AUG (with TRAIN.SMOOTHING), or None when mixup and cutmix are both off."""
    if not (config.AUG.MIXUP > 0 or config.AUG.CUTMIX > 0 or config.AUG.CUTMIX_MINMAX is not None):
        return None
    return Mixup(mixup_alpha=config.AUG.MIXUP, cutmix_alpha=config.AUG.CUTMIX,
                 cutmix_minmax=config.AUG.CUTMIX_MINMAX,
                 prob=config.AUG.MIXUP_PROB, switch_prob=config.AUG.MIXUP_SWITCH_PROB, mode=config.AUG.MIXUP_MODE,
                 label_smoothing=config.TRAIN.SMOOTHING, num_classes=config.MODEL.NUM_CLASSES)
