"""Train or evaluate PiT in one process (one GPU, or the CPU). main_multi_gpu.py runs the same `main` in N.

    python main_single_gpu.py -cfg configs/pit_ti.yaml -data_path /dataset/imagenet -resume auto
    python main_single_gpu.py -cfg configs/pit_ti.yaml -data_path /dataset/imagenet -eval -pretrained pit_ti_730
"""
import warnings
warnings.filterwarnings('ignore', message='No ccache found')  # paddle's import-time warning

import argparse
import os
import sys

import paddle
import paddle.distributed as dist

import checkpoint
import cpu_kernels
from config import ConfigError, finalize_config, get_config, update_config
from datasets import DatasetError, build_dataloader, build_dataset
from engine import NonFiniteLossError, evaluate, train_one_epoch
from losses import build_criterion
from mixup import build_mixup
from model_ema import ModelEma
from optim import build_lr_scheduler, build_optimizer
from pit import build_pit
from utils import epoch_seed, get_rank, get_world_size, seed_everything, setup_logger
from weights import WeightsError, load_pretrained


def get_arguments(description=__doc__):
    """The seed's single-dash flags, plus -opts KEY VALUE ... (any config key) and -device."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('-cfg', type=str, default=None, help='yaml config, e.g. configs/pit_ti.yaml')
    parser.add_argument('-dataset', type=str, default=None, help='DATA.DATASET')
    parser.add_argument('-batch_size', type=int, default=None, help='DATA.BATCH_SIZE (per process)')
    parser.add_argument('-image_size', type=int, default=None, help='DATA.IMAGE_SIZE')
    parser.add_argument('-data_path', type=str, default=None, help='DATA.DATA_PATH')
    parser.add_argument('-save_path', '-output', dest='save_path', type=str, default=None, help='SAVE')
    parser.add_argument('-ngpus', type=int, default=None, help='NGPUS: processes for main_multi_gpu.py')
    parser.add_argument('-pretrained', type=str, default=None, help='MODEL.PRETRAINED: weights to start from')
    parser.add_argument('-resume', type=str, default=None, help="MODEL.RESUME: checkpoint path or 'auto'")
    parser.add_argument('-last_epoch', type=int, default=None, help='TRAIN.LAST_EPOCH (weights-only resume)')
    parser.add_argument('-teacher_model', type=str, default=None, help='TRAIN.TEACHER_MODEL')
    parser.add_argument('-device', type=str, default=None, help="DEVICE: 'auto', 'gpu' or 'cpu'")
    parser.add_argument('-eval', action='store_true', help='evaluate only')
    parser.add_argument('-amp', action='store_true', help='mixed precision training (GPU)')
    parser.add_argument('-opts', nargs='+', default=None, metavar='KEY VALUE', help='override config keys')
    return parser.parse_args()


def fail(error):
    """Bad input: one line on stderr, exit status 2, no traceback."""
    print(f'error: {error}', file=sys.stderr)
    sys.exit(2)


def load_config(args):
    """Config from the command line (not yet finalized); exits with one line on a config error."""
    try:
        return update_config(get_config(), args)
    except ConfigError as e:
        fail(e)


def setup_process(config):
    """Pick the device, join the process group when there are several processes, seed, log. Returns logger."""
    use_gpu = config.DEVICE == 'gpu' or (config.DEVICE == 'auto' and paddle.device.is_compiled_with_cuda()
                                         and paddle.device.cuda.device_count() > 0)
    if config.DEVICE == 'gpu' and not paddle.device.is_compiled_with_cuda():
        raise ConfigError("DEVICE='gpu' but this paddle build has no CUDA; install paddlepaddle-gpu or use -device cpu")
    local_rank = int(os.environ.get('PADDLE_LOCAL_RANK', os.environ.get('FLAGS_selected_gpus', '0')).split(',')[0])
    paddle.set_device(f'gpu:{local_rank}' if use_gpu else 'cpu')
    if int(os.environ.get('PADDLE_TRAINERS_NUM', '1')) > 1:
        dist.init_parallel_env()
    if not use_gpu:
        cpu_kernels.configure_cpu(config.CPU_THREADS, kernels=config.CPU_KERNELS)
    finalize_config(config, get_world_size())
    logger = setup_logger(config.SAVE, get_rank())
    logger.info(f'device {paddle.get_device()}, {get_world_size()} process(es), paddle {paddle.__version__}')
    if not use_gpu and config.CPU_KERNELS:
        log = logger.info if cpu_kernels.in_use() else logger.warning
        log(cpu_kernels.status())
    return logger


def build_model(config):
    """The PiT of config, built under a fresh name scope: its parameter names (which key the optimizer state)
    are the same whatever was built before it, so a checkpoint resumes with EMA and teacher in any order."""
    with paddle.utils.unique_name.guard():
        return build_pit(config)


def build_teacher(config, logger):
    if config.TRAIN.DISTILLATION_TYPE == 'none':
        return None
    from regnet import load_teacher  # only distillation runs need the teacher code
    with paddle.utils.unique_name.guard('teacher_'):
        teacher = load_teacher(config.TRAIN.TEACHER_MODEL, num_classes=config.MODEL.NUM_CLASSES)
    logger.info(f'teacher {config.TRAIN.TEACHER_MODEL}, distillation {config.TRAIN.DISTILLATION_TYPE}')
    return teacher


def amp_settings(config, logger):
    """auto_cast arguments and a GradScaler kept for the whole run (pass-through when AMP is off)."""
    on_gpu = paddle.get_device().startswith('gpu')
    enable = bool(config.AMP and on_gpu and not config.EVAL)
    if config.AMP and not on_gpu:
        logger.info('AMP requested but running on CPU: training in float32')
    amp = {'enable': enable, 'dtype': config.AMP_DTYPE, 'level': 'O1'}
    scaler = paddle.amp.GradScaler(enable=enable and config.AMP_DTYPE == 'float16', init_loss_scaling=2.0 ** 16)
    return amp, scaler


def main(config):
    """Train (or with EVAL, evaluate) as config says; the same function runs in every process."""
    logger = setup_process(config)
    seed_everything(config.SEED)  # same initial weights on every rank and in every run of this config
    model = build_model(config)
    if config.MODEL.PRETRAINED:
        logger.info(str(load_pretrained(model, config.MODEL.PRETRAINED)))
    val_set = build_dataset(config, 'val')
    val_loader = build_dataloader(config, val_set, 'val', get_world_size(), get_rank())
    amp, scaler = amp_settings(config, logger)
    model_ddp = paddle.DataParallel(model) if get_world_size() > 1 else model
    if config.EVAL:
        if config.MODEL.RESUME:
            model.set_state_dict(checkpoint.load_checkpoint(config.MODEL.RESUME)['model'])
        return report_eval(evaluate(model_ddp, val_loader, config, amp), 'model', config, logger)

    train_set = build_dataset(config, 'train')
    train_loader = build_dataloader(config, train_set, 'train', get_world_size(), get_rank())
    model_ema = ModelEma(model, config.TRAIN.MODEL_EMA_DECAY) if config.TRAIN.MODEL_EMA else None
    mixup_fn = build_mixup(config)
    criterion = build_criterion(config, build_teacher(config, logger), mixup_active=mixup_fn is not None)
    lr_scheduler = build_lr_scheduler(config, len(train_loader))
    optimizer = build_optimizer(config, model, lr_scheduler)
    state = {'start_epoch': 0, 'best_acc1': 0.0, 'best_epoch': -1}
    if config.MODEL.RESUME:
        state = resume(config, model, model_ema, optimizer, lr_scheduler, scaler, logger)
    writer = scalar_writer(config)
    logger.info(f'training {config.MODEL.NAME} for {config.TRAIN.NUM_EPOCHS} epochs from epoch '
                f'{state["start_epoch"] + 1}, lr {config.TRAIN.BASE_LR:.3e}, {len(train_set)} train images')
    for epoch in range(state['start_epoch'], config.TRAIN.NUM_EPOCHS):
        seed_everything(epoch_seed(config, epoch, get_rank()))
        if mixup_fn is not None:
            mixup_fn.seed(epoch_seed(config, epoch, get_rank()))
        train_loader.batch_sampler.set_epoch(epoch)
        lr_scheduler.step_to(epoch)
        train_set.reset_bad_images()
        stats = train_one_epoch(model_ddp, criterion, train_loader, optimizer, scaler, lr_scheduler, epoch,
                                config, amp, mixup_fn, model_ema)
        logger.info(f'Epoch {epoch + 1} done: loss {stats["loss"]:.4f}, {stats["images"]} images in '
                    f'{stats["seconds"]:.0f}s, undecodable train images replaced: {count_bad(train_set)}')
        is_best = False
        scalars = {'train/loss': stats['loss'], 'train/lr': optimizer.get_lr()}
        if (epoch + 1) % config.VALIDATE_FREQ == 0 or epoch + 1 == config.TRAIN.NUM_EPOCHS:
            acc1 = report_eval(evaluate(model_ddp, val_loader, config, amp), 'model', config, logger)['acc1']
            scalars['val/acc1'] = acc1
            if model_ema is not None:
                scalars['val/acc1_ema'] = report_eval(evaluate(model_ema.module, val_loader, config, amp), 'EMA',
                                                      config, logger)['acc1']
            is_best = acc1 > state['best_acc1']
            if is_best:
                state.update(best_acc1=acc1, best_epoch=epoch + 1)
        save(config, epoch, state, model, model_ema, optimizer, lr_scheduler, scaler, train_set, is_best)
        if writer is not None:
            for tag, value in scalars.items():
                writer.add_scalar(tag, value, epoch + 1)
    logger.info(f'best Acc@1 {state["best_acc1"]:.4f} at epoch {state["best_epoch"]}')
    return state


def scalar_writer(config):
    """A VisualDL LogWriter (SAVE/vdl) on rank 0 when config.VISUALDL and visualdl is installed, else None."""
    if not config.VISUALDL or get_rank() != 0:
        return None
    try:
        from visualdl import LogWriter
    except ImportError:
        return None
    return LogWriter(logdir=os.path.join(config.SAVE, 'vdl'))


def count_bad(dataset):
    """Undecodable images replaced this epoch, summed over ranks."""
    count = paddle.to_tensor([dataset.bad_images], dtype='int64')
    if get_world_size() > 1:
        dist.all_reduce(count)
    return int(count.numpy()[0])


class BadImagesError(RuntimeError):
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


def save(config, epoch, state, model, model_ema, optimizer, lr_scheduler, scaler, train_set, is_best):
    """Rank 0 writes latest (+ best, + numbered every SAVE_FREQ epochs), all atomically."""
    if get_rank() != 0:
        return
    checkpoint.save_training_state(config.SAVE, {
        'version': checkpoint.FORMAT_VERSION, 'epoch': epoch + 1, 'model': model.state_dict(),
        'model_ema': model_ema.state_dict() if model_ema is not None else None,
        'optimizer': optimizer.state_dict(), 'lr_scheduler': lr_scheduler.state_dict(),
        'scaler': scaler.state_dict(), 'best_acc1': state['best_acc1'], 'best_epoch': state['best_epoch'],
        'rng': checkpoint.rng_state(), 'classes': list(train_set.classes), 'config': config.dump(),
        'model_name': config.MODEL.NAME,
    }, is_best, (epoch + 1) % config.SAVE_FREQ == 0, config.KEEP_CHECKPOINTS)


def resume(config, model, model_ema, optimizer, lr_scheduler, scaler, logger):
    """Restore everything a checkpoint holds; returns the loop state to continue from."""
    if config.MODEL.RESUME == 'auto':
        path, ckpt = checkpoint.find_resume_checkpoint(config.SAVE)
    else:
        path = config.MODEL.RESUME
        try:
            ckpt = checkpoint.load_checkpoint(path)
        except checkpoint.CheckpointError:
            if config.TRAIN.LAST_EPOCH <= 0:
                raise
            return resume_weights_only(config, model, optimizer, logger)
    if ckpt is None:
        logger.info(f'-resume auto: no checkpoint in {config.SAVE} yet, starting from scratch')
        return {'start_epoch': 0, 'best_acc1': 0.0, 'best_epoch': -1}
    load_pretrained(model, path)  # validates keys/shapes with a readable report before anything is touched
    if model_ema is not None and ckpt.get('model_ema') is not None:
        model_ema.set_state_dict(ckpt['model_ema'])
    optimizer.set_state_dict(ckpt['optimizer'])
    lr_scheduler.set_state_dict(ckpt['lr_scheduler'])
    scaler.load_state_dict(ckpt['scaler'])
    logger.info(f'resumed from {path}: {ckpt["epoch"]} epoch(s) done, best Acc@1 {ckpt["best_acc1"]:.4f}')
    return {'start_epoch': ckpt['epoch'], 'best_acc1': ckpt['best_acc1'], 'best_epoch': ckpt['best_epoch']}


def resume_weights_only(config, model, optimizer, logger):
    """Seed-style resume: weights (+ optimizer from PATH.pdopt if present), epoch count from -last_epoch."""
    logger.info(str(load_pretrained(model, config.MODEL.RESUME)))
    opt_path = os.path.splitext(config.MODEL.RESUME)[0] + '.pdopt'
    if os.path.isfile(opt_path):
        optimizer.set_state_dict(paddle.load(opt_path))
    logger.info(f'resumed weights from {config.MODEL.RESUME} at epoch {config.TRAIN.LAST_EPOCH} (-last_epoch); '
                'LR schedule restarts from that epoch, best Acc@1 from 0')
    return {'start_epoch': config.TRAIN.LAST_EPOCH, 'best_acc1': 0.0, 'best_epoch': -1}


def run(main_fn, args):
    """Entry point shared by the launchers: config from args, one-line errors and exit 2 on bad input."""
    config = load_config(args)
    try:
        main_fn(config)
    except (ConfigError, WeightsError, checkpoint.CheckpointError, DatasetError, FileNotFoundError) as e:
        fail(e)
    except (NonFiniteLossError, BadImagesError) as e:  # the run itself failed: one line, exit 1
        print(f'error: {e}', file=sys.stderr)
        sys.exit(1)


if __name__ == '__main__':
    run(main, get_arguments())
