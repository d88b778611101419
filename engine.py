"""The training state, the epoch loop (`fit` over a TrainingRun) and the training and evaluation loops, shared by
1..N processes, AMP on/off and distillation on/off.

AMP off is a GradScaler that passes through; distillation off is a criterion that only calls the base loss;
EMA off is `None`. Metrics are sums over samples, reduced over ranks once at the end (utils.MetricSums).
"""
import contextlib
import logging
import math
import os
import signal
import time
from dataclasses import dataclass

import numpy as np
import paddle
import paddle.nn.functional as F

import checkpoint
import stops
from errors import RunFailed
from gpu import amp_settings
from model_ema import ModelEma
from optim import build_lr_scheduler, build_optimizer
from utils import MetricSums, format_seconds, gather_strided, get_rank, get_world_size, seed_everything, step_seed

logger = logging.getLogger('pit')


class NonFiniteLossError(RunFailed):
    """The loss became NaN/inf: training stops, the last checkpoint on disk stays the good one."""


class TrainState:
    """What a training run updates and a checkpoint holds: the model (and its DataParallel wrapper when there
    are several processes), the EMA (or None), optimizer, LR schedule, AMP scaler and auto_cast settings, and the
    loop's counters: epochs completed, best Acc@1 and its epoch, and inside an epoch (a run stopped mid-epoch) the
    batches of the next epoch already trained (`step`) with their metric sums over all ranks (`progress`)."""

    def __init__(self, model, optimizer, lr_scheduler, scaler, amp, model_ema=None):
        self.model = model
        self.model_ddp = paddle.DataParallel(model) if get_world_size() > 1 else model
        self.optimizer, self.lr_scheduler, self.scaler, self.amp = optimizer, lr_scheduler, scaler, amp
        self.model_ema = model_ema
        self.epoch, self.best_acc1, self.best_epoch = 0, 0.0, -1
        self.step, self.progress = 0, None

    def update_best(self, acc1, epoch):
        """Record the Acc@1 of epoch (1-based, just trained); True when it is a new best."""
        if acc1 <= self.best_acc1:
            return False
        self.best_acc1, self.best_epoch = acc1, epoch
        return True


def build_train_state(config, model, steps_per_epoch):
    """TrainState of a fresh run: EMA of the (pretrained) model, optimizer, LR schedule, AMP scaler and auto_cast
    settings (gpu.amp_settings)."""
    amp, scaler = amp_settings(config)
    model_ema = ModelEma(model, config.TRAIN.MODEL_EMA_DECAY) if config.TRAIN.MODEL_EMA else None
    lr_scheduler = build_lr_scheduler(config, steps_per_epoch)
    optimizer = build_optimizer(config, model, lr_scheduler)
    return TrainState(model, optimizer, lr_scheduler, scaler, amp, model_ema)


@dataclass
class TrainingRun:
    """What the epoch loop works with: the config (finalized), the TrainState a checkpoint keeps, the loss
    (criterion(images, outputs, targets)), the batch mixing (mixup.Mixup or None), the train and val loaders and
    the run's records (metrics.RunRecords)."""
    config: object
    state: TrainState
    criterion: object
    mixup_fn: object
    train_loader: object
    val_loader: object
    records: object


def fit(run):
    """Train from run.state (the epoch, and the step inside it, where a resumed run continues) to TRAIN.NUM_EPOCHS
    epochs: each one trained, evaluated when due, recorded and saved (run_epoch). Inside the epochs a stop signal
    is acted on at the next optimizer step or eval batch (stops.deferred). Returns run.state."""
    config, state = run.config, run.state
    logger.info(f'training {config.MODEL.NAME} for {config.TRAIN.NUM_EPOCHS} epochs from epoch {state.epoch + 1}'
                f'{resumed_inside(state, len(run.train_loader))}, lr {config.TRAIN.BASE_LR:.3e}, '
                f'{len(run.train_loader.dataset)} train images')
    with stops.deferred():
        for epoch in range(state.epoch, config.TRAIN.NUM_EPOCHS):
            run_epoch(run, epoch)
    logger.info(f'best Acc@1 {state.best_acc1:.4f} at epoch {state.best_epoch}')
    return state


def run_epoch(run, epoch):
    """Train epoch `epoch` (0-based; from batch state.step on where a stopped run left it), evaluate when due,
    record it, save the checkpoint. A stop signal ends the run inside it (stop_inside_epoch)."""
    config, state, train_loader, val_loader = run.config, run.state, run.train_loader, run.val_loader
    steps, since = len(train_loader), time.time()
    train_loader.batch_sampler.set_epoch(epoch, start=state.step)
    state.lr_scheduler.step_to(epoch)
    lr = state.optimizer.get_lr()
    stats = train_one_epoch(state, run.criterion, train_loader, epoch, config, run.mixup_fn, run.records,
                            stop=stops.agreed)
    if state.step < steps:
        stop_inside_epoch(run, since, f'at epoch {epoch + 1}, step {state.step}/{steps}')
    logger.info(f'Epoch {epoch + 1} done: loss {stats["loss"]:.4f}, {stats["images"]} images in '
                f'{stats["seconds"]:.0f}s, undecodable train images replaced: {stats["skipped"]}, '
                f'steps skipped for non-finite gradients: {stats["skipped_steps"]}')
    val = ema = None
    is_best = False
    if (epoch + 1) % config.VALIDATE_FREQ == 0 or epoch + 1 == config.TRAIN.NUM_EPOCHS:
        val = evaluate(state.model_ddp, val_loader, config, state.amp, stop=stops.pending)
        if state.model_ema is not None and not val['stopped']:
            ema = evaluate(state.model_ema.module, val_loader, config, state.amp, 'EMA', stop=stops.pending)
        if val['stopped'] or (ema is not None and ema['stopped']):
            stop_inside_epoch(run, since, f'in the evaluation after epoch {epoch + 1}')
        report_eval(val, 'model', config)
        if ema is not None:
            report_eval(ema, 'EMA', config)
        is_best = state.update_best(val['acc1'], epoch + 1)
    state.epoch, state.step, state.progress = epoch + 1, 0, None
    run.records.epoch(state.epoch, stats, lr, val, ema, state.best_acc1)
    if get_rank() == 0:
        checkpoint.save(config.SAVE, state, config, train_loader.dataset.classes, is_best)


def stop_inside_epoch(run, since, where):
    """End a run that a signal stopped inside an epoch (every process calls this at the same point). After SIGTERM
    with SAVE_ON_SIGTERM_AFTER seconds or more trained since this process started the epoch (or resumed inside
    it), rank 0 first writes the state to checkpoint-latest, so a re-run continues at this step; SIGINT (Ctrl-C)
    never saves. Raises StopRequested with the one line that says what was kept."""
    config, state = run.config, run.state
    signum, trained = stops.agreed(), time.time() - since
    stopped = f'stopped by {stops.signal_name(signum)} {where}'
    if signum == signal.SIGTERM and trained >= config.SAVE_ON_SIGTERM_AFTER:
        if get_rank() == 0:
            checkpoint.save(config.SAVE, state, config, run.train_loader.dataset.classes)
        raise stops.StopRequested(signum, f'{stopped}: saved in {os.path.join(config.SAVE, checkpoint.LATEST)}; '
                                          're-run with -resume auto to continue from there')
    why = ('SIGINT does not save' if signum != signal.SIGTERM else
           f'{trained:.0f} s trained since the last checkpoint < SAVE_ON_SIGTERM_AFTER={config.SAVE_ON_SIGTERM_AFTER}')
    then = ('re-run with -resume auto to continue from the last checkpoint' if checkpoint.latest_path(config.SAVE)
            else 'no checkpoint yet: a re-run starts over')
    raise stops.StopRequested(signum, f'{stopped}, not saved ({why}); {then}')


def resumed_inside(state, steps):
    """Where a run resumed inside an epoch starts in it ('' at an epoch boundary)."""
    if not state.step:
        return ''
    return f', step {state.step + 1}' if state.step < steps else ', at its evaluation'


class BadImagesError(RunFailed):
    """Val images that could not be decoded, without DATA.SKIP_BAD_EVAL_IMAGES."""


def report_eval(stats, name, config):
    """Log the Acc@1/Acc@5 line of an evaluation (stats of evaluate) of `name`; val images that could not be
    decoded fail the run (BadImagesError) unless DATA.SKIP_BAD_EVAL_IMAGES. Returns stats."""
    if stats['bad']:
        message = f'{stats["bad"]} val image(s) could not be decoded (paths in the log above)'
        if not config.DATA.SKIP_BAD_EVAL_IMAGES:
            raise BadImagesError(message + '; fix them or set DATA.SKIP_BAD_EVAL_IMAGES True to skip them')
        logger.warning(message + '; skipped (DATA.SKIP_BAD_EVAL_IMAGES)')
    logger.info(f'Eval {name}: Acc@1 {stats["acc1"]:.4f} Acc@5 {stats["acc5"]:.4f} loss {stats["loss"]:.4f} '
                f'on {stats["images"]} images')
    return stats


def topk_correct(logits, labels, ks=(1, 5)):
    """Number of samples whose label is among the top-k logits, for each k (k capped at the class count)."""
    maxk = min(max(ks), logits.shape[-1])
    pred = paddle.topk(logits, k=maxk, axis=-1)[1]
    hits = (pred == labels.unsqueeze(-1)).astype('float32')
    return [float(hits[:, :min(k, maxk)].sum()) for k in ks]


def accumulation_scale(step, steps, accum):
    """Loss factor of batch `step` of `steps` when gradients of `accum` batches make one optimizer step: 1/accum,
    and 1/r for the r batches of a last, shorter group, so every optimizer step averages its batches."""
    last_group_start = steps - steps % accum if steps % accum else steps
    return 1.0 / (steps - last_group_start) if step >= last_group_start else 1.0 / accum


def train_one_epoch(state, criterion, loader, epoch, config, mixup_fn=None, records=None, stop=None):
    """Train on batch state.step (0, or where a stopped run left epoch `epoch`, 0-based) to the end of `loader`
    (batches of (images, labels, skipped undecodable files)); returns {'loss', 'acc1' (nan with mixup), 'images',
    'skipped', 'seconds'} of the batches of this epoch trained so far, over all ranks, and 'skipped_steps': the
    optimizer steps the GradScaler skipped for non-finite gradients (float16 AMP) in this pass.

    The host never waits for the device between report steps: each step's loss (and top-1 hits) stays on the
    device until every REPORT_FREQ steps (and the last step, and a stop) reads the steps since the last report
    back at once (ReportWindow). So a NaN/inf loss is found there, at the latest REPORT_FREQ - 1 steps after it
    happened, and raises NonFiniteLossError naming its step before anything is logged or saved: the checkpoint
    on disk stays the last good one. With TRAIN.ACCUM_ITER > 1 the gradients of a group's micro-batches are
    all-reduced once, after its last one (DataParallel.no_sync for the others).

    After an optimizer step, `stop()` (a collective: every rank calls it at the same steps) may end the pass
    early: it is asked after every optimizer step in one process (where it communicates nothing), and in
    several after the first optimizer step at or after each report step, and every STOP_CHECK_STEPS optimizer
    steps in between (stop_due). Either way state.step is the number of batches of the epoch done and
    state.progress their sums over all ranks (what a mid-epoch checkpoint keeps), so the caller tells a stop by
    state.step < len(loader).

    Each step is seeded by (SEED, epoch, rank, step): python, numpy, paddle (drop path) and mixup draw the same
    at a step whether or not the run was stopped before it. The optimizer steps every TRAIN.ACCUM_ITER batches
    (and after the last batch), so a stop never drops accumulated gradients; the EMA follows each optimizer step;
    with LR_SCHEDULER.PER_STEP the LR moves every step. Every REPORT_FREQ steps rank 0 logs progress (with the
    ETA of the epoch and of the run) and records the step's loss and LR (`records`).
    """
    state.model_ddp.train()
    accum, steps, first = config.TRAIN.ACCUM_ITER, len(loader), state.step
    sums, start = epoch_sums(state), time.time()
    window = ReportWindow(sums, epoch)
    skipped_total = 0  # device tensors after the first batch / step: read once at the end
    skipped_steps = 0  # this rank's count is every rank's: each checks the same all-reduced gradients
    reported, unasked = False, 0  # a report step passed / optimizer steps done since stop() was last asked
    state.optimizer.clear_grad()
    for step, (images, labels, skipped) in enumerate(loader if first < steps else (), first):
        seed = step_seed(config, epoch, get_rank(), step)
        seed_everything(seed)
        skipped_total = skipped_total + skipped.sum()
        if config.TRAIN.LR_SCHEDULER.PER_STEP:
            state.lr_scheduler.step_to(epoch, step)
        targets = labels
        if mixup_fn is not None:
            mixup_fn.seed(seed)
            images, targets = mixup_fn(images, labels)
        boundary = (step + 1) % accum == 0 or step + 1 == steps
        loss, outputs = forward_backward(state, criterion, images, targets, boundary,
                                         accumulation_scale(step, steps, accum))
        if boundary:
            skipped_steps = skipped_steps + optimizer_step(state)
        logits = None if mixup_fn is not None else outputs[0] if isinstance(outputs, (tuple, list)) else outputs
        window.add(step, loss, images.shape[0], None if logits is None else top1_hits(logits, labels))
        state.step = step + 1
        if (step + 1) % config.REPORT_FREQ == 0 or step + 1 == steps:
            loss_value = window.flush()
            reported = True
            log_progress(sums, epoch, step, steps, step + 1 - first, start, state.optimizer.get_lr(), config)
            if records is not None:
                records.step(epoch * steps + step + 1, loss=loss_value, lr=state.optimizer.get_lr())
        unasked += boundary
        if boundary and step + 1 < steps and stop is not None and stop_due(reported, unasked):
            reported, unasked = False, 0
            if stop():
                break
    window.flush()
    return epoch_result(state, sums, skipped_total, skipped_steps, start)


def forward_backward(state, criterion, images, targets, boundary, scale):
    """One micro-batch: the forward under the run's autocast and the backward of its loss times `scale` through
    the loss scaler, its gradients all-reduced only at an accumulation `boundary` (gradient_sync). Returns (loss,
    outputs), left on the device."""
    with gradient_sync(state.model_ddp, boundary):
        with paddle.amp.auto_cast(**state.amp):
            outputs = state.model_ddp(images)
            loss = criterion(images, outputs, targets)
        state.scaler.scale(loss * scale).backward()
    return loss, outputs


def epoch_result(state, sums, skipped_total, skipped_steps, start):
    """The pass's statistics over all ranks (the one read-back of the counts kept on the device), with
    state.progress updated to them: what a mid-epoch checkpoint keeps."""
    sums.add('skipped', float(skipped_total), 0)
    sums.synchronize()
    seconds = (state.progress or {}).get('seconds', 0.0) + time.time() - start
    state.progress = {'sums': dict(sums.sums), 'counts': dict(sums.counts), 'seconds': seconds}
    return {'loss': sums.avg('loss'), 'acc1': sums.avg('acc1'), 'images': sums.count('loss'),
            'skipped': int(sums.total('skipped')), 'seconds': seconds, 'skipped_steps': int(skipped_steps)}


STOP_CHECK_STEPS = 10  # in several processes, the most optimizer steps between two stop() questions


def stop_due(reported, unasked):
    """Whether train_one_epoch asks stop() after this optimizer step: always in one process (stops.agreed reads
    a flag there), and in several when a report step passed since it last asked or after STOP_CHECK_STEPS
    optimizer steps (`unasked`) without asking, since there it is an all-reduce read on the host: one device
    sync every min(REPORT_FREQ, STOP_CHECK_STEPS) optimizer steps, not one per step. A signal then ends a
    multi-process run within STOP_CHECK_STEPS optimizer steps (seconds, even for pit_b on a V100)."""
    return reported or unasked >= STOP_CHECK_STEPS or get_world_size() == 1


def gradient_sync(model, boundary):
    """The context a micro-batch's forward and backward run in: DataParallel.no_sync() for every micro-batch
    but the last of an accumulation group (its gradients then all-reduce once, summed over the group, for the
    optimizer step), else nothing."""
    if boundary or not isinstance(model, paddle.DataParallel):
        return contextlib.nullcontext()
    return model.no_sync()


def top1_hits(logits, labels):
    """Number of samples whose top logit is the label, as a device scalar (read back at report steps)."""
    return (paddle.argmax(logits.astype('float32'), axis=-1) == labels.reshape([-1])).astype('float32').sum()


class ReportWindow:
    """The steps since the last report: their loss (and top-1 hits) tensors kept on the device, read back in one
    transfer by `flush()`, which adds them to the epoch's sums in step order (the sums are those a per-step read
    would give) and raises NonFiniteLossError naming the first step whose loss is NaN or infinite."""

    def __init__(self, sums, epoch):
        self.sums, self.epoch, self.steps, self.values, self.sizes, self.has_hits = sums, epoch, [], [], [], None

    def add(self, step, loss, batch, hits=None):
        """One step's loss (a device scalar), its batch size, and its top-1 hits (None with mixup)."""
        self.steps.append(step)
        self.sizes.append(batch)
        self.has_hits = hits is not None
        scalar = loss.detach().astype('float32').reshape([1])
        self.values.append(scalar if hits is None else paddle.concat([scalar, hits.reshape([1])]))

    def flush(self):
        """Read the window back (one device sync), add it to the sums, empty it; returns the last step's loss
        (None when empty)."""
        if not self.steps:
            return None
        values = paddle.stack(self.values).numpy().astype('float64')
        for step, row, batch in zip(self.steps, values, self.sizes):
            if not math.isfinite(row[0]):
                raise NonFiniteLossError(f'loss is {row[0]} at epoch {self.epoch + 1} step {step} on rank '
                                         f'{get_rank()}; stopping (the last checkpoint on disk is untouched)')
            self.sums.add('loss', row[0] * batch, batch)
            if self.has_hits:
                self.sums.add('acc1', row[1], batch)
        last = float(values[-1, 0])
        self.steps, self.values, self.sizes = [], [], []
        return last


def epoch_sums(state):
    """The metric sums an epoch starts from: empty, or on rank 0 those of a run stopped inside it (sums over
    all ranks: after the final all-reduce every rank's batches are counted once)."""
    sums = MetricSums('loss', 'acc1', 'skipped')
    if state.step and state.progress and get_rank() == 0:
        sums.sums.update(state.progress['sums'])
        sums.counts.update(state.progress['counts'])
    return sums


def optimizer_step(state):
    """Apply the accumulated gradients (through the AMP scaler), clear them, move the EMA. Returns whether the
    scaler skipped the update (inf/NaN in the float16 gradients; the loss scale then shrinks), 1 or 0, or an
    int64 device scalar where the optimizer left the finding on the device (never read here)."""
    state.scaler.step(state.optimizer)
    skipped = step_was_skipped(state.optimizer)
    state.scaler.update()
    state.optimizer.clear_grad()
    if state.model_ema is not None:
        state.model_ema.update(state.model)
    return skipped


def step_was_skipped(optimizer):
    """Whether optimizer's last step() left the parameters alone because the GradScaler found inf/NaN, without a
    device sync of its own: 0 without loss scaling (the finding is never set), the finding as an int64 device
    scalar where it is still a tensor, else as 0/1. GradScaler.step hands its finding to the optimizer as the
    auxiliary variable 'found_inf', and Paddle's Optimizer (_create_optimization_pass, 2.6 and 3.x) skips the
    update when it is set and stores True/False back (reading it on the host: Paddle's GradScaler.update reads it
    there too); this repo's AdamP and SGD inherit that step."""
    found = optimizer._get_auxiliary_var('found_inf')
    if found is None:
        return 0
    if isinstance(found, paddle.Tensor):
        return found.astype('int64')
    return int(bool(found))


def log_progress(sums, epoch, step, steps, done, start, lr, config):
    """One line: epoch/step, running loss (and accuracy without mixup), LR, images/s of this rank, ETA of the
    epoch and of the whole run (the remaining epochs at the pace of the `done` steps since `start`, evaluation
    not counted)."""
    elapsed = time.time() - start
    per_step, rate = elapsed / done, done * config.DATA.BATCH_SIZE / max(elapsed, 1e-9)
    epoch_left = (steps - step - 1) * per_step
    run_left = epoch_left + (config.TRAIN.NUM_EPOCHS - epoch - 1) * steps * per_step
    acc = f'acc {sums.avg("acc1"):.4f} ' if sums.count('acc1') else ''
    logger.info(f'Epoch[{epoch + 1:03d}/{config.TRAIN.NUM_EPOCHS:03d}] Step[{step + 1:04d}/{steps:04d}] '
                f'loss {sums.avg("loss"):.4f} {acc}lr {lr:.3e} {rate:.1f} img/s '
                f'ETA epoch {format_seconds(epoch_left)} run {format_seconds(run_left)}')


@paddle.no_grad()
def evaluate(model, loader, config, amp, name='model', stop=None, per_sample=False):
    """Loss, Acc@1, Acc@5 over every val image of all ranks exactly once (weighted by counts); a rank may have
    no image at all (a val set smaller than the number of processes). Where the dataset names a class_subset
    (DATA.EVAL_SET a, r), the logits of the other classes are -inf for every metric.

    Samples with label -1 are images the dataset could not decode: excluded from the metrics and counted in
    'bad' (synced over ranks); the caller decides whether that fails the run (DATA.SKIP_BAD_EVAL_IMAGES).
    `stop()` (local, no communication) is asked before each batch: when it says so this rank stops evaluating
    and 'stopped' is True on every rank (the one all-reduce at the end carries it). Rank 0 logs progress every
    REPORT_FREQ batches (its images so far, img/s, ETA).

    per_sample: also 'samples' (PerSample.gather), every image's label and top-1 prediction, and with
    EVAL_SAVE_LOGITS its logits, in dataset order on every rank; they stay on the device until the end, so this
    adds no host sync per batch.
    """
    model.eval()
    sums, start, batches = MetricSums('loss', 'acc1', 'acc5', 'bad', 'stopped'), time.time(), len(loader)
    mask = logit_mask(loader.dataset, config.MODEL.NUM_CLASSES)
    kept = PerSample(config.MODEL.NUM_CLASSES, config.EVAL_SAVE_LOGITS) if per_sample else None
    for index, (images, labels) in enumerate(loader):
        if stop is not None and stop():
            sums.add('stopped', 1, 0)
            break
        labels = labels.reshape([-1])
        valid = labels >= 0
        n_valid = int(valid.astype('int64').sum())
        sums.add('bad', labels.shape[0] - n_valid, 1)
        logits = None
        if n_valid:
            with paddle.amp.auto_cast(**amp):
                logits = model(images)
            logits = logits.astype('float32')
            masked = logits if mask is None else logits + mask
            if kept is not None:
                kept.add(labels, logits, masked)
            if n_valid < labels.shape[0]:
                keep = paddle.nonzero(valid).reshape([-1])
                masked, labels = paddle.gather(masked, keep), paddle.gather(labels, keep)
            correct1, correct5 = topk_correct(masked, labels)
            sums.add('loss', float(F.cross_entropy(masked, labels, reduction='sum')), n_valid)
            sums.add('acc1', correct1, n_valid)
            sums.add('acc5', correct5, n_valid)
        elif kept is not None:
            kept.add(labels)
        if (index + 1) % config.REPORT_FREQ == 0 and index + 1 < batches:
            elapsed = time.time() - start
            logger.info(f'Eval {name}: batch {index + 1}/{batches}, {sums.count("acc1")} images on this process, '
                        f'{sums.count("acc1") / max(elapsed, 1e-9):.1f} img/s, '
                        f'ETA {format_seconds((batches - index - 1) * elapsed / (index + 1))}')
    sums.synchronize()
    stats = {'loss': sums.avg('loss'), 'acc1': sums.avg('acc1'), 'acc5': sums.avg('acc5'),
             'images': sums.count('acc1'), 'bad': int(sums.total('bad')), 'stopped': sums.total('stopped') > 0}
    if kept is not None and not stats['stopped']:  # every rank knows 'stopped': all gather, or none
        stats['samples'] = kept.gather(len(loader.dataset))
    return stats


def logit_mask(dataset, num_classes):
    """None, or where the dataset restricts evaluation to a class_subset (labels), a float32 [num_classes]
    tensor, 0 on those classes and -inf elsewhere, to add to the logits."""
    subset = getattr(dataset, 'class_subset', None)
    if subset is None:
        return None
    mask = np.full([num_classes], -np.inf, dtype=np.float32)
    mask[subset] = 0.0
    return paddle.to_tensor(mask)


class PerSample:
    """Per-image results of this rank's evaluation batches, kept on the device and read back once (gather)."""

    def __init__(self, num_classes, keep_logits):
        self.num_classes, self.keep_logits = num_classes, keep_logits
        self.labels, self.predictions, self.logits = [], [], []

    def add(self, labels, logits=None, masked=None):
        """One batch: labels int64 [B] (-1: undecodable), the model's logits float32 [B, C] and the masked ones
        the top-1 prediction is taken from (None, None: no image of the batch could be decoded)."""
        self.labels.append(labels)
        if logits is None:
            logits = masked = paddle.full([labels.shape[0], self.num_classes], float('nan'), dtype='float32')
        self.predictions.append(paddle.argmax(masked, axis=-1).astype('int64'))
        if self.keep_logits:
            self.logits.append(logits)

    def gather(self, total):
        """{'labels' int64 [total], 'predictions' int64 [total] (-1 for undecodable images), and with
        keep_logits 'logits' float32 [total, C] (NaN rows for undecodable images)}: the rows of all ranks in
        dataset order (utils.gather_strided; a collective). The model's logits, before any class_subset mask."""
        def rows(tensors, shape, dtype):
            return paddle.concat(tensors).numpy() if tensors else np.zeros(shape, dtype=dtype)
        labels = rows(self.labels, [0], 'int64')
        result = {'labels': labels, 'predictions': np.where(labels < 0, -1, rows(self.predictions, [0], 'int64'))}
        if self.keep_logits:
            logits = rows(self.logits, [0, self.num_classes], 'float32')
            logits[labels < 0] = np.nan
            result['logits'] = logits
        return {key: gather_strided(value, total) for key, value in result.items()}
