"""Train or evaluate PiT in one process (one GPU, or the CPU). main_multi_gpu.py runs the same `main` in N.

    python main_single_gpu.py -cfg configs/pit_ti.yaml -data_path /dataset/imagenet -resume auto
    python main_single_gpu.py -eval -pretrained output/train/checkpoint-best -data_path /dataset/imagenet
    python main_single_gpu.py -eval -resume auto -save_path output/train -data_path /dataset/imagenet -ema

A checkpoint of this repo (or converted official weights) describes its model and preprocessing, so -eval
needs no -cfg; a given -cfg/-opts still applies, and one that contradicts the checkpoint's model is an error.
"""
import quiet  # noqa: F401  (first: quiets paddle's import in this and every child process)

import argparse
import contextlib
import io
import os
import signal
import sys
import time

import paddle
import paddle.distributed as dist

import checkpoint
import cpu_kernels
import gpu
import runlock
import stops
from cli import fail, run_command
from compat import check_paddle
from config import (MODEL_KEYS, ConfigError, build_config, contradicting_key, finalize_config,
                    get_key, total_batch_size)
from datasets import build_dataloader, build_dataset
from engine import TrainState, evaluate, train_one_epoch
from losses import build_criterion
from metrics import RunRecords
from mixup import build_mixup
from model_ema import ModelEma
from optim import build_lr_scheduler, build_optimizer
from pit import build_model
from utils import get_rank, get_world_size, seed_everything, setup_logger
from errors import RunFailed
from weights import WeightsError, load_pretrained, read_paddle_file, resolve_weights_path


def get_arguments(description=__doc__, extra=None):
    """The seed's single-dash flags, plus -opts KEY VALUE ... (any config key), -device and -ema; extra:
    {flag: (type, default, help)} of a tool that takes the training flags and its own."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    for flag, (kind, default, text) in (extra or {}).items():
        parser.add_argument(flag, type=kind, default=default, help=text)
    parser.add_argument('-cfg', type=str, default=None, help='yaml config, e.g. configs/pit_ti.yaml')
    parser.add_argument('-dataset', type=str, default=None, choices=['imagenet2012'],
                        help='accepted for PaddleViT command lines; the layout is detected under -data_path')
    parser.add_argument('-batch_size', type=int, default=None, help='DATA.BATCH_SIZE (per process)')
    parser.add_argument('-image_size', type=int, default=None, help='DATA.IMAGE_SIZE')
    parser.add_argument('-data_path', type=str, default=None, help='DATA.DATA_PATH')
    parser.add_argument('-save_path', '-output', dest='save_path', type=str, default=None, help='SAVE')
    parser.add_argument('-ngpus', type=int, default=None, help='NGPUS: processes for main_multi_gpu.py')
    parser.add_argument('-pretrained', type=str, default=None,
                        help='MODEL.PRETRAINED: weights to start from (fine-tuning) or to evaluate')
    parser.add_argument('-resume', type=str, default=None, help="MODEL.RESUME: checkpoint path or 'auto'")
    parser.add_argument('-last_epoch', type=int, default=None, help='TRAIN.LAST_EPOCH (weights-only resume)')
    parser.add_argument('-teacher_model', type=str, default=None, help='TRAIN.TEACHER_MODEL')
    parser.add_argument('-device', type=str, default=None, help="DEVICE: 'auto', 'gpu' or 'cpu'")
    parser.add_argument('-eval', action='store_true', help='evaluate only')
    parser.add_argument('-ema', action='store_true', help="MODEL.EMA_WEIGHTS: use the file's EMA weights")
    parser.add_argument('-amp', action='store_true', help='mixed precision training (GPU)')
    parser.add_argument('-opts', nargs='+', default=None, metavar='KEY VALUE', help='override config keys')
    return parser.parse_args()


# ---------------------------------------------------------------- config

def load_config(args):
    """The run's config from the command line (checked, not yet finalized); exits with one line on bad input.
    For -eval without -cfg, the evaluated checkpoint describes the model and preprocessing."""
    check_paddle()
    config = build_config(args=args)
    if config.EVAL and (config.MODEL.PRETRAINED or config.MODEL.RESUME):
        path = eval_weights_path(config)
        described = checkpoint.described_keys(read_paddle_file(path)) if path.endswith('.pdparams') else {}
        if described:
            config = build_config(args=args, described=described, described_by=path)
        if config.MODEL.RESUME == 'auto' and not config.MODEL.PRETRAINED:  # found once, not again in main
            config.MODEL.RESUME = path
    return config


def check_config(config, world_size):
    """Finalize a copy for world_size processes (scaled LR, checks): bad input fails here, before any work."""
    finalize_config(config.clone(), world_size)


def eval_weights_path(config):
    """The file -eval evaluates: -pretrained, else -resume PATH, else (-resume auto) the newest in SAVE."""
    if config.MODEL.PRETRAINED:
        return resolve_weights_path(config.MODEL.PRETRAINED)
    if config.MODEL.RESUME != 'auto':
        return resolve_weights_path(config.MODEL.RESUME)
    path, _ = checkpoint.find_resume(config.SAVE)
    if path is None:
        raise checkpoint.CheckpointError(f"-eval -resume auto: no checkpoint in '{config.SAVE}' (SAVE)")
    return path


# ---------------------------------------------------------------- process set-up

def setup_process(config):
    """Set up the device and process group (setup_device) and check SAVE. Returns whether this process runs on a
    GPU."""
    use_gpu = setup_device(config)
    prepare_save_dir(config.SAVE)
    return use_gpu


def setup_device(config):
    """Pick the device, join the process group when there are several processes, set up the CPU (threads,
    kernels), finalize config for the number of processes. True when the device is a GPU."""
    use_gpu = config.DEVICE == 'gpu' or (config.DEVICE == 'auto' and paddle.device.is_compiled_with_cuda()
                                         and paddle.device.cuda.device_count() > 0)
    if config.DEVICE == 'gpu' and not paddle.device.is_compiled_with_cuda():
        raise ConfigError("DEVICE='gpu' but this paddle build has no CUDA; install paddlepaddle-gpu or use -device cpu")
    local_rank = int(os.environ.get('PADDLE_LOCAL_RANK', os.environ.get('FLAGS_selected_gpus', '0')).split(',')[0])
    paddle.set_device(f'gpu:{local_rank}' if use_gpu else 'cpu')
    if int(os.environ.get('PADDLE_TRAINERS_NUM', '1')) > 1:
        init_process_group()
    if not use_gpu:
        cpu_kernels.configure_cpu(config.CPU_THREADS, kernels=config.CPU_KERNELS)
    finalize_config(config, get_world_size())
    return use_gpu


def hold_save_folder(config):
    """The run lock of SAVE (runlock.py) for a training run, taken by the process that starts it: a single
    process, rank 0 under paddle.distributed.launch, main_multi_gpu's launcher (its rank 0 then finds the lock held
    by its parent). Nothing for -eval, which writes no checkpoint, or for the other ranks."""
    if config.EVAL or get_rank() != 0:
        return contextlib.nullcontext()
    return runlock.RunLock(config.SAVE)


def start_logging(config, use_gpu, lock):
    """The run's logger (SAVE/log.txt), with the device line and the lock taken over from a dead run if any."""
    logger = setup_logger(config.SAVE, get_rank())
    logger.info(f'device {paddle.get_device()}, {get_world_size()} process(es), paddle {paddle.__version__}')
    if not use_gpu and config.CPU_KERNELS:
        warning = cpu_kernels.take_warning()  # once per process: the model's build then says nothing more
        if warning:
            logger.warning(warning)
        else:
            logger.info(cpu_kernels.status())
    if lock is not None and lock.note:
        logger.warning(lock.note)
    return logger


def init_process_group():
    """dist.init_parallel_env without its banner of modified FLAGS (paddle's own flags; printed by every
    process of every run); anything else it writes to stderr is passed on."""
    captured = io.StringIO()
    with contextlib.redirect_stderr(captured):
        dist.init_parallel_env()
    text, kept, banner = captured.getvalue(), [], False
    for line in text.splitlines(keepends=True):
        if 'Modified FLAGS detected' in line:
            banner = True
        elif banner and line.startswith('====='):
            banner = False
        elif not banner:
            kept.append(line)
    sys.stderr.write(''.join(kept))


def prepare_save_dir(save_dir):
    """Create SAVE and prove it writable now, so a bad -save_path fails in one line before any work."""
    if os.path.exists(save_dir) and not os.path.isdir(save_dir):
        raise ConfigError(f"save path '{save_dir}' is a file, not a folder (SAVE / -save_path)")
    probe = os.path.join(save_dir, f'.write_test{os.getpid()}')
    try:
        os.makedirs(save_dir, exist_ok=True)
        with open(probe, 'w') as f:
            f.write('ok')
        os.remove(probe)
    except OSError as e:
        raise ConfigError(f"save folder '{save_dir}' is not writable: {e.strerror or e} (SAVE / -save_path)") from e


# ---------------------------------------------------------------- builders


def build_teacher(config, logger):
    if config.TRAIN.DISTILLATION_TYPE == 'none':
        return None
    from regnet import load_teacher  # only distillation runs need the teacher code
    with paddle.utils.unique_name.guard('teacher_'):
        teacher = load_teacher(config.TRAIN.TEACHER_MODEL, num_classes=config.MODEL.NUM_CLASSES)
    logger.info(f'teacher {config.TRAIN.TEACHER_MODEL}, distillation {config.TRAIN.DISTILLATION_TYPE}')
    return teacher


def amp_settings(config, logger):
    """auto_cast arguments and a GradScaler kept for the whole run (pass-through without float16 loss scaling),
    from the precision this device allows (gpu.amp_precision: a bfloat16 request the GPU cannot honour is a
    ConfigError). Logs the effective precision and the attention kernel once. Evaluation runs in float32."""
    facts = gpu.device_facts()
    training_amp = config.AMP and not config.EVAL
    precision, reason = gpu.amp_precision(training_amp, config.AMP_DTYPE, facts.kind, facts.capability, facts.cuda)
    if config.AMP and config.EVAL:
        reason = '-amp applies to training; evaluation runs in float32'
    refused_on_gpu = training_amp and facts.kind == 'gpu' and precision == 'float32'
    log = logger.warning if refused_on_gpu else logger.info
    log(f'precision {precision} ({reason})')
    if facts.kind == 'gpu':
        logger.info(gpu.attention_note(facts, precision, config.MODEL.TRANS.BASE_DIMS,
                                       0.0 if config.EVAL else config.MODEL.ATTENTION_DROPOUT))
    scaler = paddle.amp.GradScaler(enable=gpu.loss_scaling(precision), init_loss_scaling=2.0 ** 16)
    return gpu.autocast_kwargs(precision), scaler


def build_state(config, model, steps_per_epoch, logger):
    """TrainState of a fresh run: EMA of the (pretrained) model, optimizer, LR schedule, AMP scaler."""
    amp, scaler = amp_settings(config, logger)
    model_ema = ModelEma(model, config.TRAIN.MODEL_EMA_DECAY) if config.TRAIN.MODEL_EMA else None
    lr_scheduler = build_lr_scheduler(config, steps_per_epoch)
    optimizer = build_optimizer(config, model, lr_scheduler)
    return TrainState(model, optimizer, lr_scheduler, scaler, amp, model_ema)


# ---------------------------------------------------------------- the run

def main(config):
    """Train (or with EVAL, evaluate) as config says; the same function runs in every process. A training run
    holds SAVE's run lock from before its first log line to its end."""
    use_gpu = setup_process(config)
    with hold_save_folder(config) as lock:
        logger = start_logging(config, use_gpu, lock)
        seed_everything(config.SEED)  # same initial weights on every rank and in every run of this config
        model = build_model(config)
        val_loader = build_dataloader(config, build_dataset(config, 'val'), 'val', get_world_size(), get_rank())
        if config.EVAL:
            with stops.deferred():
                return evaluate_weights(config, model, val_loader, logger)
        return train(config, model, val_loader, logger)


def train(config, model, val_loader, logger):
    """Build what training needs around model, resume if asked, run the epochs; returns the TrainState. Inside the
    epochs a stop signal is acted on at the next optimizer step or eval batch (stops.deferred)."""
    guard_existing_run(config)
    if config.MODEL.PRETRAINED:
        logger.info(str(load_pretrained(model, config.MODEL.PRETRAINED, finetune=True,
                                        prefer_ema=config.MODEL.EMA_WEIGHTS)))
    train_set = build_dataset(config, 'train')
    train_loader = build_dataloader(config, train_set, 'train', get_world_size(), get_rank())
    state = build_state(config, model, len(train_loader), logger)
    mixup_fn = build_mixup(config)
    criterion = build_criterion(config, build_teacher(config, logger), mixup_active=mixup_fn is not None)
    if config.MODEL.RESUME:
        resume(config, state, logger)
    check_ranks_agree(state, config)
    records = RunRecords(config, get_rank())
    records.truncate_after(state.epoch)
    logger.info(f'training {config.MODEL.NAME} for {config.TRAIN.NUM_EPOCHS} epochs from epoch {state.epoch + 1}'
                f'{resumed_inside(state, len(train_loader))}, lr {config.TRAIN.BASE_LR:.3e}, {len(train_set)} train '
                'images')
    try:
        with stops.deferred():
            for epoch in range(state.epoch, config.TRAIN.NUM_EPOCHS):
                run_epoch(config, state, epoch, criterion, train_loader, val_loader, mixup_fn, records, logger)
    finally:
        records.close()
    logger.info(f'best Acc@1 {state.best_acc1:.4f} at epoch {state.best_epoch}')
    return state


def resumed_inside(state, steps):
    """Where a run resumed inside an epoch starts in it ('' at an epoch boundary)."""
    if not state.step:
        return ''
    return f', step {state.step + 1}' if state.step < steps else ', at its evaluation'


def run_epoch(config, state, epoch, criterion, train_loader, val_loader, mixup_fn, records, logger):
    """Train epoch `epoch` (0-based; from batch state.step on where a stopped run left it), evaluate when due,
    record it, save the checkpoint. A stop signal ends the run inside it (stop_inside_epoch)."""
    steps, since = len(train_loader), time.time()
    train_loader.batch_sampler.set_epoch(epoch, start=state.step)
    state.lr_scheduler.step_to(epoch)
    lr = state.optimizer.get_lr()
    stats = train_one_epoch(state, criterion, train_loader, epoch, config, mixup_fn, records, stop=stops.agreed)
    if state.step < steps:
        stop_inside_epoch(config, state, train_loader, since, f'at epoch {epoch + 1}, step {state.step}/{steps}')
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
            stop_inside_epoch(config, state, train_loader, since, f'in the evaluation after epoch {epoch + 1}')
        report_eval(val, 'model', config, logger)
        if ema is not None:
            report_eval(ema, 'EMA', config, logger)
        is_best = state.update_best(val['acc1'], epoch + 1)
    state.epoch, state.step, state.progress = epoch + 1, 0, None
    records.epoch(state.epoch, stats, lr, val, ema, state.best_acc1)
    if get_rank() == 0:
        checkpoint.save(config.SAVE, state, config, train_loader.dataset.classes, is_best)


def stop_inside_epoch(config, state, train_loader, since, where):
    """End a run that a signal stopped inside an epoch (every process calls this at the same point). After SIGTERM
    with SAVE_ON_SIGTERM_AFTER seconds or more trained since this process started the epoch (or resumed inside
    it), rank 0 first writes the state to checkpoint-latest, so a re-run continues at this step; SIGINT (Ctrl-C)
    never saves. Raises StopRequested with the one line that says what was kept."""
    signum, trained = stops.agreed(), time.time() - since
    stopped = f'stopped by {stops.signal_name(signum)} {where}'
    if signum == signal.SIGTERM and trained >= config.SAVE_ON_SIGTERM_AFTER:
        if get_rank() == 0:
            checkpoint.save(config.SAVE, state, config, train_loader.dataset.classes)
        raise stops.StopRequested(signum, f'{stopped}: saved in {os.path.join(config.SAVE, checkpoint.LATEST)}; '
                                          're-run with -resume auto to continue from there')
    why = ('SIGINT does not save' if signum != signal.SIGTERM else
           f'{trained:.0f} s trained since the last checkpoint < SAVE_ON_SIGTERM_AFTER={config.SAVE_ON_SIGTERM_AFTER}')
    then = ('re-run with -resume auto to continue from the last checkpoint' if checkpoint.latest_path(config.SAVE)
            else 'no checkpoint yet: a re-run starts over')
    raise stops.StopRequested(signum, f'{stopped}, not saved ({why}); {then}')


def evaluate_weights(config, model, val_loader, logger):
    """-eval: Acc@1/Acc@5 of -pretrained, -resume PATH or the newest checkpoint (-resume auto); -ema takes the
    file's EMA weights."""
    path = eval_weights_path(config)
    report = load_pretrained(model, path, prefer_ema=config.MODEL.EMA_WEIGHTS)
    if config.MODEL.EMA_WEIGHTS and report.entry not in ('model_ema', 'state_dict_ema'):
        raise WeightsError(f"'{path}' holds no EMA weights (model_ema); evaluate it without -ema")
    logger.info(str(report))
    amp, _ = amp_settings(config, logger)
    model_ddp = paddle.DataParallel(model) if get_world_size() > 1 else model
    name = 'EMA' if config.MODEL.EMA_WEIGHTS else 'model'
    stats = evaluate(model_ddp, val_loader, config, amp, name, stop=stops.pending)
    if stats['stopped']:
        signum = stops.agreed()
        raise stops.StopRequested(signum, f'stopped by {stops.signal_name(signum)} while evaluating {path}')
    return report_eval(stats, name, config, logger)


def guard_existing_run(config):
    """Never overwrite the checkpoints of another run: training into a SAVE that holds some needs -resume."""
    found = checkpoint.latest_path(config.SAVE)
    if found and not config.MODEL.RESUME:
        raise ConfigError(f"save folder '{config.SAVE}' already holds checkpoints ({os.path.basename(found)}); "
                          'add -resume auto to continue that run, or choose another -save_path')
    if get_rank() == 0:
        checkpoint.remove_stale_temporaries(config.SAVE)


def resume(config, state, logger):
    """Restore everything a checkpoint holds into state; -resume auto with an empty SAVE starts from scratch."""
    if config.MODEL.RESUME == 'auto':
        path, ckpt = checkpoint.find_resume(config.SAVE)
        if ckpt is None:
            logger.info(f'-resume auto: no checkpoint in {config.SAVE} yet, starting from scratch')
            return state
    else:
        path = resolve_weights_path(config.MODEL.RESUME)
        try:
            ckpt = checkpoint.load(path)
        except checkpoint.CheckpointError:
            if config.TRAIN.LAST_EPOCH <= 0:
                raise
            return resume_weights_only(config, state, logger)
    check_same_model(config, ckpt, path)
    checkpoint.restore(ckpt, state, path)
    inside = f' and {state.step} batch(es) of epoch {state.epoch + 1}' if state.step else ''
    logger.info(f'resumed from {path}: {ckpt["epoch"]} epoch(s){inside} done, best Acc@1 {ckpt["best_acc1"]:.4f}'
                + changed_keys_note(config, ckpt))
    for note in (batch_change_note(config, ckpt), repair_best(config, path, ckpt)):
        if note:
            logger.warning(note)
    return state


def batch_change_note(config, ckpt):
    """The line that says the total batch (and with it the linearly scaled LR) differs from the checkpoint's
    run, e.g. when it resumes with another number of processes; None when it does not (or the file predates
    the record)."""
    old_batch, new_batch = ckpt.get('total_batch'), total_batch_size(config, get_world_size())
    old = checkpoint.run_config_of(ckpt)
    if old_batch is None or old is None or old_batch == new_batch:
        return None
    old_lr, new_lr = old.TRAIN.BASE_LR, config.TRAIN.BASE_LR
    lr = f'the LR changes from {old_lr:.3e} to {new_lr:.3e}' if old_lr != new_lr else f'the LR stays {new_lr:.3e}'
    return (f'total batch {old_batch} ({ckpt.get("processes")} process(es)) in the checkpoint, {new_batch} '
            f'({get_world_size()} process(es)) now: {lr} (TRAIN.BASE_LR scaled by total batch / '
            f'TRAIN.LINEAR_SCALED_LR)')


def repair_best(config, path, ckpt):
    """Rank 0 makes SAVE's checkpoint-best hold the resumed state's best epoch when a save was cut short
    (checkpoint.repair_best); only for a file of SAVE itself (a checkpoint from elsewhere says nothing about
    SAVE's best file). Returns the log line, or None."""
    same_folder = os.path.dirname(os.path.abspath(path)) == os.path.abspath(config.SAVE)
    return checkpoint.repair_best(config.SAVE, path, ckpt) if same_folder and get_rank() == 0 else None


def check_same_model(config, ckpt, path):
    """A checkpoint of another model is an error naming the first differing key (before any tensor moves)."""
    described = checkpoint.described_keys(ckpt)
    key = contradicting_key(config, described, [k for k in MODEL_KEYS if k != 'MODEL.NAME'])
    if key:
        raise checkpoint.CheckpointError(f"'{path}' holds a model with {key}={described[key]!r}, but this run "
                                         f'has {key}={get_key(config, key)!r}')


def changed_keys_note(config, ckpt):
    """'; keys changed since the checkpoint: ...' for recipe keys that differ from the checkpoint's config."""
    old = checkpoint.run_config_of(ckpt)
    if old is None:
        return ''
    changes = []
    for key in ('TRAIN.NUM_EPOCHS', 'TRAIN.BASE_LR', 'DATA.BATCH_SIZE', 'TRAIN.ACCUM_ITER', 'TRAIN.OPTIMIZER.NAME',
                'TRAIN.WEIGHT_DECAY', 'TRAIN.WARMUP_EPOCHS', 'AUG.AUTO_AUGMENT', 'AUG.MIXUP', 'AUG.CUTMIX',
                'MODEL.DROP_PATH', 'TRAIN.MODEL_EMA_DECAY', 'SEED'):
        if get_key(old, key) != get_key(config, key):
            changes.append(f'{key} {get_key(old, key)!r} -> {get_key(config, key)!r}')
    return f'; keys changed since the checkpoint: {", ".join(changes)}' if changes else ''


def resume_weights_only(config, state, logger):
    """Seed-style resume: weights (+ optimizer from PATH.pdopt if present), epoch count from -last_epoch."""
    logger.info(str(load_pretrained(state.model, config.MODEL.RESUME)))
    opt_path = os.path.splitext(resolve_weights_path(config.MODEL.RESUME))[0] + '.pdopt'
    if os.path.isfile(opt_path):
        state.optimizer.set_state_dict(read_paddle_file(opt_path))
    if state.model_ema is not None:
        state.model_ema.set_state_dict(state.model.state_dict())
    logger.info(f'resumed weights from {config.MODEL.RESUME} at epoch {config.TRAIN.LAST_EPOCH} (-last_epoch); '
                'LR schedule restarts from that epoch, best Acc@1 from 0')
    state.epoch = config.TRAIN.LAST_EPOCH
    return state


def check_ranks_agree(state, config):
    """Every process must continue from the same epoch and step (each reads SAVE itself): a multi-node run whose
    SAVE is not one shared folder would otherwise hang or train different models."""
    if get_world_size() == 1:
        return
    low = paddle.to_tensor([state.epoch, state.step], dtype='int64')
    high = paddle.to_tensor([state.epoch, state.step], dtype='int64')
    dist.all_reduce(low, op=dist.ReduceOp.MIN)
    dist.all_reduce(high, op=dist.ReduceOp.MAX)
    low, high = tuple(low.numpy().tolist()), tuple(high.numpy().tolist())
    if low != high:
        raise checkpoint.CheckpointError(
            f'the processes would continue from different points (epoch, step) {low} and {high}: '
            f'SAVE={config.SAVE} must be one folder that every node sees (shared storage)')


class BadImagesError(RunFailed):
    """Val images that could not be decoded, without DATA.SKIP_BAD_EVAL_IMAGES."""


def report_eval(stats, name, config, logger):
    if stats['bad']:
        message = f'{stats["bad"]} val image(s) could not be decoded (paths in the log above)'
        if not config.DATA.SKIP_BAD_EVAL_IMAGES:
            raise BadImagesError(message + '; fix them or set DATA.SKIP_BAD_EVAL_IMAGES True to skip them')
        logger.warning(message + '; skipped (DATA.SKIP_BAD_EVAL_IMAGES)')
    logger.info(f'Eval {name}: Acc@1 {stats["acc1"]:.4f} Acc@5 {stats["acc5"]:.4f} loss {stats["loss"]:.4f} '
                f'on {stats["images"]} images')
    return stats


def run(main_fn, args):
    """Entry point shared by the launchers: config from args, one-line errors for user and environment faults
    (cli.run_command: exit 2 bad input, 1 the run failed), clean stops on SIGTERM/SIGINT (exit 128 + the signal,
    one line from the first process); programming errors keep their traceback."""
    with stops.handled():
        try:
            run_command(lambda: main_fn(load_config(args)))
        except stops.StopRequested as e:
            report_stop(e)


def report_stop(stop):
    """Exit 128 + signal for a stopped run; the first process (rank 0) says where it stopped and what it kept:
    every process of a run stops at the same point, one line is enough."""
    if os.environ.get('PADDLE_TRAINER_ID', '0') == '0':
        fail(stop, stop.exit_status)
    sys.exit(stop.exit_status)


if __name__ == '__main__':
    run(main, get_arguments())
