"""One process of a training or evaluation run: the wiring of the builders around the model, as Swin's main.

main_single_gpu.py runs `main` in one process, main_multi_gpu.py in each of N (cli.run_training, cli.launch);
every process runs the same code. The policy lives where its data does: resuming and what -eval evaluates in
checkpoint.py, the epoch loop in engine.py, the process set-up in cli.py.
"""
import logging

import paddle

import checkpoint
import cli
import engine
import stops
from datasets import build_dataloader, build_dataset, check_same_classes, check_weights_classes
from gpu import amp_settings
from losses import build_criterion
from metrics import RunRecords, eval_result, write_eval_arrays, write_eval_result
from mixup import build_mixup
from pit import build_model
from regnet import build_teacher
from utils import get_rank, get_world_size, seed_everything

logger = logging.getLogger('pit')


def main(config, weights=None):
    """Train as config says, or with EVAL evaluate weights (the checkpoint.WeightsFile of cli.command_config); the
    same in every process. A training run holds SAVE's run lock from before its first log line to its end."""
    use_gpu = cli.setup_process(config)
    with cli.hold_save_folder(config) as lock:
        cli.start_logging(config, use_gpu, lock)
        seed_everything(config.SEED)  # same initial weights on every rank and in every run of this config
        model = build_model(config)
        val_loader = build_dataloader(config, build_dataset(config, 'val'), 'val', get_world_size(), get_rank())
        if config.EVAL:
            with stops.deferred():
                return evaluate(config, model, val_loader, weights)
        return train(config, model, val_loader)


def train(config, model, val_loader):
    """Build what training needs around model, start from -pretrained or resume if asked, run the epochs
    (engine.fit); returns the TrainState."""
    checkpoint.guard_existing_run(config)
    if config.MODEL.PRETRAINED:
        report = checkpoint.read_weights(config.MODEL.PRETRAINED).load_into(model, finetune=True,
                                                                            prefer_ema=config.MODEL.EMA_WEIGHTS)
        logger.info(str(report))
    train_loader = build_dataloader(config, build_dataset(config, 'train'), 'train', get_world_size(), get_rank())
    check_same_classes(train_loader.dataset, val_loader.dataset)
    state = engine.build_train_state(config, model, len(train_loader))
    mixup_fn = build_mixup(config)
    criterion = build_criterion(config, build_teacher(config), mixup_active=mixup_fn is not None)
    if config.MODEL.RESUME:
        checkpoint.resume(config, state)
    checkpoint.check_ranks_agree(state, config)
    records = RunRecords(config, get_rank())
    records.truncate_after(state.epoch)
    try:
        return engine.fit(engine.TrainingRun(config, state, criterion, mixup_fn, train_loader, val_loader, records))
    finally:
        records.close()


def evaluate(config, model, val_loader, weights):
    """-eval: Acc@1/Acc@5 of weights (-pretrained, -resume PATH or the newest checkpoint of SAVE) on DATA.EVAL_SET,
    logged and written to SAVE/eval.json (metrics.eval_result: also the preprocessing, per-class accuracy, the
    most frequent confusions, ReaL accuracy), with EVAL_SAVE_LOGITS the logits and labels beside it
    (metrics.write_eval_arrays); -ema takes the file's EMA weights. Returns the stats of engine.evaluate."""
    check_weights_classes(weights.classes, weights.path, val_loader.dataset)
    report = weights.load_into(model, prefer_ema=config.MODEL.EMA_WEIGHTS)
    if config.MODEL.EMA_WEIGHTS and report.entry not in ('model_ema', 'state_dict_ema'):
        raise checkpoint.WeightsError(f"'{weights.path}' holds no EMA weights (model_ema); evaluate it without -ema")
    logger.info(str(report))
    amp, _ = amp_settings(config)
    model_ddp = paddle.DataParallel(model) if get_world_size() > 1 else model
    name = 'EMA' if config.MODEL.EMA_WEIGHTS else 'model'
    stats = engine.evaluate(model_ddp, val_loader, config, amp, name, stop=stops.pending, per_sample=True)
    if stats['stopped']:
        signum = stops.agreed()
        raise stops.StopRequested(signum, f'stopped by {stops.signal_name(signum)} while evaluating {weights.path}')
    engine.report_eval(stats, name, config)
    result = eval_result(stats, config, val_loader.dataset, weights.path)
    if 'acc1_real' in result:
        logger.info(f'Eval {name}: ReaL Acc@1 {result["acc1_real"]:.4f} on {result["images_real"]} images')
    if get_rank() == 0:
        write_eval_result(config.SAVE, result)
        if config.EVAL_SAVE_LOGITS:
            write_eval_arrays(config.SAVE, stats['samples'])
    return stats
