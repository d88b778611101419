"""The training and evaluation loops, shared by 1..N processes, AMP on/off and distillation on/off.

AMP off is a GradScaler that passes through; distillation off is a criterion that only calls the base loss;
EMA off is `None`. Metrics are sums over samples, reduced over ranks once at the end (utils.MetricSums).
"""
import logging
import math
import time

import paddle
import paddle.nn.functional as F

from utils import MetricSums, format_seconds, get_rank

logger = logging.getLogger('pit')


class NonFiniteLossError(RuntimeError):
    """The loss became NaN/inf: training stops, the last checkpoint on disk stays the good one."""


def topk_correct(logits, labels, ks=(1, 5)):
    """Number of samples whose label is among the top-k logits, for each k (k capped at the class count)."""
    maxk = min(max(ks), logits.shape[-1])
    pred = paddle.topk(logits, k=maxk, axis=-1)[1]
    hits = (pred == labels.unsqueeze(-1)).astype('float32')
    return [float(hits[:, :min(k, maxk)].sum()) for k in ks]


def train_one_epoch(model, criterion, loader, optimizer, scaler, lr_scheduler, epoch, config,
                    amp, mixup_fn=None, model_ema=None):
    """One pass over `loader`; returns {'loss', 'acc1' (nan with mixup), 'images', 'seconds'} over all ranks.

    amp: dict(enable=bool, dtype=str) for paddle.amp.auto_cast. The optimizer steps every TRAIN.ACCUM_ITER
    batches; the EMA follows each optimizer step; with LR_SCHEDULER.PER_STEP the LR moves every step.
    """
    model.train()
    accum = config.TRAIN.ACCUM_ITER
    steps = len(loader)
    sums, start = MetricSums('loss', 'acc1'), time.time()
    optimizer.clear_grad()
    for step, (images, labels) in enumerate(loader):
        if config.TRAIN.LR_SCHEDULER.PER_STEP:
            lr_scheduler.step_to(epoch, step)
        targets = labels
        if mixup_fn is not None:
            images, targets = mixup_fn(images, labels)
        with paddle.amp.auto_cast(**amp):
            outputs = model(images)
            loss = criterion(images, outputs, targets)
        loss_value = float(loss)
        if not math.isfinite(loss_value):
            raise NonFiniteLossError(f'loss is {loss_value} at epoch {epoch + 1} step {step} on rank {get_rank()}; '
                                     'stopping (the last checkpoint on disk is untouched)')
        scaler.scale(loss / accum).backward()
        if (step + 1) % accum == 0 or step + 1 == steps:
            scaler.step(optimizer)
            scaler.update()
            optimizer.clear_grad()
            if model_ema is not None:
                model_ema.update(model)
        n = images.shape[0]
        sums.add('loss', loss_value * n, n)
        if mixup_fn is None:
            logits = outputs[0] if isinstance(outputs, (tuple, list)) else outputs
            sums.add('acc1', topk_correct(logits.astype('float32'), labels, ks=(1,))[0], n)
        if (step + 1) % config.REPORT_FREQ == 0 or step + 1 == steps:
            log_progress(sums, epoch, step, steps, start, optimizer.get_lr(), config)
    seconds = time.time() - start
    sums.synchronize()
    return {'loss': sums.avg('loss'), 'acc1': sums.avg('acc1'),
            'images': sums.count('loss'), 'seconds': seconds}


def log_progress(sums, epoch, step, steps, start, lr, config):
    """One line: epoch/step, running loss (and accuracy without mixup), LR, images/s of this rank, ETA."""
    elapsed = time.time() - start
    acc = f'acc {sums.avg("acc1"):.4f} ' if sums.count('acc1') else ''
    logger.info(f'Epoch[{epoch + 1:03d}/{config.TRAIN.NUM_EPOCHS:03d}] Step[{step + 1:04d}/{steps:04d}] '
                f'loss {sums.avg("loss"):.4f} {acc}lr {lr:.3e} {sums.count("loss") / max(elapsed, 1e-9):.1f} img/s '
                f'ETA {format_seconds((steps - step - 1) * elapsed / (step + 1))}')


@paddle.no_grad()
def evaluate(model, loader, config, amp):
    """Loss, Acc@1, Acc@5 over every val image of all ranks exactly once (weighted by counts).

    Samples with label -1 are images the dataset could not decode: excluded from the metrics and counted in
    'bad' (synced over ranks); the caller decides whether that fails the run (DATA.SKIP_BAD_EVAL_IMAGES).
    """
    model.eval()
    sums = MetricSums('loss', 'acc1', 'acc5', 'bad')
    for images, labels in loader:
        labels = labels.reshape([-1])
        valid = labels >= 0
        n_valid = int(valid.astype('int64').sum())
        sums.add('bad', labels.shape[0] - n_valid, 1)
        if n_valid == 0:
            continue
        with paddle.amp.auto_cast(**amp):
            logits = model(images)
        logits = logits.astype('float32')
        if n_valid < labels.shape[0]:
            index = paddle.nonzero(valid).reshape([-1])
            logits, labels = paddle.gather(logits, index), paddle.gather(labels, index)
        loss = F.cross_entropy(logits, labels, reduction='sum')
        correct1, correct5 = topk_correct(logits, labels)
        sums.add('loss', float(loss), n_valid)
        sums.add('acc1', correct1, n_valid)
        sums.add('acc5', correct5, n_valid)
    sums.synchronize()
    return {'loss': sums.avg('loss'), 'acc1': sums.avg('acc1'), 'acc5': sums.avg('acc5'),
            'images': sums.count('acc1'), 'bad': int(sums.total('bad'))}
