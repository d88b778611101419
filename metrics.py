"""Machine-readable records of a run, written by rank 0: SAVE/metrics.jsonl and VisualDL scalars (SAVE/vdl) of a
training run, SAVE/eval.json of an evaluation (-eval; eval_result lists its fields) and, with -eval_save_logits,
SAVE/eval_logits.npy and eval_labels.npy beside it.

metrics.jsonl has one JSON object per epoch, appended and flushed when the epoch ends (a resumed run appends
to the same file; `epoch` is 1-based):
    {"epoch": 3, "train_loss": 2.1, "lr": 0.0005, "train_images": 1280, "train_img_s": 410.2, "skipped_steps": 0,
     "val_acc1": 0.41, "val_acc5": 0.83, "val_loss": 1.9, "ema_acc1": ..., "ema_acc5": ..., "ema_loss": ...,
     "best_acc1": 0.41, "seconds": 12.3}
(skipped_steps: optimizer steps the float16 loss scaler skipped for inf/NaN gradients; val_* and ema_* only on
epochs that evaluated; ema_* only with TRAIN.MODEL_EMA). VisualDL, when config.VISUALDL
and the package is installed: per epoch, with the epoch number as step, train/loss, train/lr, val/acc1,
val/acc5, val/loss, val_ema/acc1, val_ema/acc5, val_ema/loss; every REPORT_FREQ steps, with the global step,
train_step/loss and train_step/lr.
"""
import json
import logging
import math
import os

import numpy as np

from errors import UserError
from transforms import eval_resize_size

METRICS_FILE = 'metrics.jsonl'
EVAL_FILE = 'eval.json'
LOGITS_FILE, LABELS_FILE = 'eval_logits.npy', 'eval_labels.npy'
logger = logging.getLogger('pit')


class RunRecords:
    """Epoch and step records of rank 0 (every method is a no-op on the other ranks)."""

    def __init__(self, config, rank):
        self.enabled = rank == 0
        self.path = os.path.join(config.SAVE, METRICS_FILE)
        self.writer = _visualdl_writer(config) if self.enabled else None

    def truncate_after(self, epoch):
        """Drop records of epochs after `epoch` (written before a crash that lost their checkpoint), so a
        resumed run's file holds each epoch once."""
        if not self.enabled or not os.path.isfile(self.path):
            return
        with open(self.path, encoding='utf-8') as f:
            lines = [line for line in f if line.strip()]
        kept = [line for line in lines if json.loads(line).get('epoch', 0) <= epoch]
        if len(kept) != len(lines):
            tmp = self.path + '.tmp'
            with open(tmp, 'w', encoding='utf-8') as f:
                f.writelines(kept)
            os.replace(tmp, self.path)

    def step(self, global_step, loss, lr):
        if self.writer is not None:
            self.writer.add_scalar('train_step/loss', loss, global_step)
            self.writer.add_scalar('train_step/lr', lr, global_step)

    def epoch(self, epoch, train, lr, val=None, ema=None, best_acc1=None):
        """Append the record of epoch (1-based): train stats, LR, and the evaluations of that epoch."""
        if not self.enabled:
            return
        record = {'epoch': epoch, 'train_loss': train['loss'], 'lr': lr, 'train_images': train['images'],
                  'train_img_s': train['images'] / max(train['seconds'], 1e-9), 'seconds': train['seconds'],
                  'skipped_steps': train['skipped_steps']}
        scalars = {'train/loss': train['loss'], 'train/lr': lr}
        for prefix, tag, stats in (('val', 'val', val), ('ema', 'val_ema', ema)):
            if stats is not None:
                for key in ('acc1', 'acc5', 'loss'):
                    record[f'{prefix}_{key}'] = stats[key]
                    scalars[f'{tag}/{key}'] = stats[key]
        if best_acc1 is not None:
            record['best_acc1'] = best_acc1
        with open(self.path, 'a', encoding='utf-8') as f:
            f.write(json.dumps({k: _finite(v) for k, v in record.items()}) + '\n')
        if self.writer is not None:
            for tag, value in scalars.items():
                self.writer.add_scalar(tag, value, epoch)
            self.writer.flush()

    def close(self):
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def _finite(value):
    """JSON has no NaN: non-finite floats become null."""
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _visualdl_writer(config):
    """A VisualDL LogWriter into SAVE/vdl, or None: VISUALDL off, the package missing, or a folder it needs
    cannot be written (its import writes ~/.visualdl: a read-only or missing HOME), which is logged once as a
    warning naming the folder. metrics.jsonl never depends on it."""
    if not config.VISUALDL:
        return None
    try:
        from visualdl import LogWriter
    except ImportError:
        logger.info('visualdl is not installed: no VisualDL scalars (SAVE/metrics.jsonl has the same figures)')
        return None
    except OSError as e:
        return _visualdl_off('~/.visualdl', e)
    logdir = os.path.join(config.SAVE, 'vdl')
    try:
        return LogWriter(logdir=logdir)
    except OSError as e:
        return _visualdl_off(logdir, e)


def _visualdl_off(folder, error):
    """Log once why VisualDL records are off (the run goes on); None."""
    logger.warning(f"cannot write {folder} ({error.strerror or error}: '{error.filename}'): VisualDL records off "
                   '(SAVE/metrics.jsonl has the same figures)')
    return None


TOP_CONFUSIONS = 20  # confusion pairs eval.json lists


def eval_result(stats, config, dataset, weights_path):
    """The content of eval.json for engine.evaluate's stats (with per-sample 'samples') of `dataset` (the
    val set, DATA.EVAL_SET) and the weights file evaluated:
      acc1, acc5, loss, images, weights (absolute path), ema (its EMA weights were evaluated), eval_set,
      preprocess: the eval transform as the config gives it (resize_short, crop, crop_pct, interpolation, mean,
        std),
      per_class: {class name: {images, acc1}} for each class with images, in label order,
      confusions: the TOP_CONFUSIONS most frequent [true, predicted] class pairs with true != predicted, as
        {true, predicted, count}, most frequent first (ties by label order),
      and with ReaL labels (DATA.EVAL_SET real) acc1_real and images_real (images with a non-empty label set).
    Undecodable images (label -1, skipped with DATA.SKIP_BAD_EVAL_IMAGES) are in none of the figures."""
    result = {key: stats[key] for key in ('acc1', 'acc5', 'loss', 'images')}
    result.update(weights=os.path.abspath(weights_path), ema=bool(config.MODEL.EMA_WEIGHTS),
                  eval_set=config.DATA.EVAL_SET, preprocess=eval_preprocess(config))
    labels, predictions = stats['samples']['labels'], stats['samples']['predictions']
    names = list(dataset.classes)
    result['per_class'] = per_class_accuracy(labels, predictions, names)
    result['confusions'] = top_confusions(labels, predictions, names)
    if dataset.real_labels is not None:
        result.update(real_accuracy(labels, predictions, dataset.real_labels))
    return result


def eval_preprocess(config):
    """The eval transform of config: short side resized to resize_short, center crop of crop pixels."""
    return {'resize_short': eval_resize_size(config.DATA.IMAGE_SIZE, config.DATA.CROP_PCT),
            'crop': config.DATA.IMAGE_SIZE, 'crop_pct': config.DATA.CROP_PCT,
            'interpolation': config.DATA.INTERPOLATION, 'mean': list(config.DATA.IMAGENET_MEAN),
            'std': list(config.DATA.IMAGENET_STD)}


def per_class_accuracy(labels, predictions, names):
    """{names[c]: {'images', 'acc1'}} of each class c with images (labels >= 0), in label order."""
    valid = labels >= 0
    images = np.bincount(labels[valid], minlength=len(names))
    hits = np.bincount(labels[valid & (labels == predictions)], minlength=len(names))
    return {names[c]: {'images': int(images[c]), 'acc1': float(hits[c] / images[c])} for c in np.flatnonzero(images)}


def top_confusions(labels, predictions, names, top=TOP_CONFUSIONS):
    """[{'true', 'predicted', 'count'}] of the `top` most frequent wrong (label, prediction) pairs."""
    wrong = (labels >= 0) & (labels != predictions)
    pairs, counts = np.unique(np.stack([labels[wrong], predictions[wrong]], axis=1), axis=0, return_counts=True)
    order = np.argsort(-counts, kind='stable')[:top]  # np.unique sorted the pairs: ties stay in label order
    return [{'true': names[pairs[i, 0]], 'predicted': names[pairs[i, 1]], 'count': int(counts[i])} for i in order]


def real_accuracy(labels, predictions, real_labels):
    """{'acc1_real', 'images_real'}: the share of images whose top-1 prediction is in their ReaL label set,
    over the decodable images whose set is not empty (the ReaL paper leaves the others out)."""
    scored = [(int(prediction), real) for label, prediction, real in zip(labels, predictions, real_labels)
              if label >= 0 and real]
    hits = sum(prediction in real for prediction, real in scored)
    return {'acc1_real': hits / len(scored) if scored else float('nan'), 'images_real': len(scored)}


def write_eval_result(save_dir, result):
    """save_dir/eval.json holding result (eval_result), written to a temporary name, then renamed. Returns its
    path."""
    path = os.path.join(save_dir, EVAL_FILE)
    with open(path + '.tmp', 'w', encoding='utf-8') as f:
        json.dump(_finite_tree(result), f, indent=1)
        f.write('\n')
    os.replace(path + '.tmp', path)
    return path


def write_eval_arrays(save_dir, samples):
    """save_dir/eval_logits.npy (float32 [N, C], NaN rows for undecodable images) and eval_labels.npy (int64
    [N], -1 for them) of evaluate's per-sample results, in dataset order; each written to a temporary name
    first, then both renamed. Returns their paths."""
    paths = []
    for name, key, dtype in ((LOGITS_FILE, 'logits', np.float32), (LABELS_FILE, 'labels', np.int64)):
        path = os.path.join(save_dir, name)
        with open(path + '.tmp', 'wb') as f:
            np.save(f, samples[key].astype(dtype))
        paths.append(path)
    for path in paths:
        os.replace(path + '.tmp', path)
    return paths


def _finite_tree(value):
    """value with every non-finite float inside dicts and lists made null (_finite)."""
    if isinstance(value, dict):
        return {k: _finite_tree(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite_tree(v) for v in value]
    return _finite(value)


class MetricsError(UserError):
    """A metrics.jsonl that is not as written here; the message names the file and line."""


def read_records(save_dir):
    """The epoch records of save_dir/metrics.jsonl, in order (tools and tests read these, not log text). Raises
    FileNotFoundError naming the file when it is missing, MetricsError naming the file and line where a line is
    not a record of the format above (a JSON object with a positive integer epoch, every value a number or null)."""
    path = os.path.join(save_dir, METRICS_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"metrics file '{path}' not found (training runs write SAVE/{METRICS_FILE})")
    with open(path, encoding='utf-8', errors='replace') as f:
        return [_record(line, path, number) for number, line in enumerate(f, 1) if line.strip()]


def _record(line, path, number):
    """The record of one line of a metrics file; MetricsError naming path and line number otherwise."""
    try:
        record = json.loads(line)
    except ValueError as e:
        raise MetricsError(f"metrics file '{path}' line {number}: not JSON ({e})") from None
    if not isinstance(record, dict):
        raise MetricsError(f"metrics file '{path}' line {number}: expected a JSON object, got {line.strip()[:80]!r}")
    epoch = record.get('epoch')
    if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 1:
        raise MetricsError(f"metrics file '{path}' line {number}: expected a positive integer 'epoch', got {epoch!r}")
    for key, value in record.items():
        if value is not None and (not isinstance(value, (int, float)) or isinstance(value, bool)):
            raise MetricsError(f"metrics file '{path}' line {number}: '{key}' must be a number or null, got {value!r}")
    return record
