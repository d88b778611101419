"""LR schedule: timm's warmup + cosine (as DeiT sets it up) and multistep, per epoch and per step, and resume."""
import math

import paddle
import pytest

from config import ConfigError, build_config, merge_opts
from optim import build_lr_scheduler

BASE, START, END = 1e-3, 1e-6, 1e-5


def schedule_config(*opts):
    """The curve as timm defines it (DEIT_LAG off); the lag is tested on its own."""
    return merge_opts(build_config(), ['TRAIN.NUM_EPOCHS', '20', 'TRAIN.WARMUP_EPOCHS', '3', 'TRAIN.BASE_LR', f'{BASE:f}',
                                     'TRAIN.WARMUP_START_LR', f'{START:.6f}', 'TRAIN.END_LR', f'{END:.5f}',
                                     'TRAIN.LR_SCHEDULER.DEIT_LAG', 'False', *opts])


def test_the_default_recipe_runs_the_lr_curve_deit_ran():
    assert build_config().TRAIN.LR_SCHEDULER.DEIT_LAG is True


def cosine_formula(t, warmup=3, decay_epochs=20):
    """timm CosineLRScheduler (t_initial = decay_epochs, cycle_limit 1, warmup_prefix False) at epoch t."""
    if t < warmup:
        return START + t * (BASE - START) / warmup
    if t >= decay_epochs:
        return END
    return END + 0.5 * (BASE - END) * (1 + math.cos(math.pi * t / decay_epochs))


def test_first_epoch_runs_at_the_warmup_start_lr():
    scheduler = build_lr_scheduler(schedule_config(), steps_per_epoch=10)
    assert scheduler() == START
    assert scheduler.step_to(0) == START


def test_per_epoch_curve_is_linear_warmup_then_cosine_to_end_lr():
    scheduler = build_lr_scheduler(schedule_config(), steps_per_epoch=10)
    for epoch in range(20):
        for step in (0, 5):  # without PER_STEP, the step does not move the LR
            assert scheduler.step_to(epoch, step) == pytest.approx(cosine_formula(epoch), rel=1e-12), (epoch, step)
    assert scheduler.step_to(3) > scheduler.step_to(4) and scheduler.step_to(19) > END  # the peak is at warmup end


def test_per_step_curve_uses_fractional_epochs():
    scheduler = build_lr_scheduler(schedule_config('TRAIN.LR_SCHEDULER.PER_STEP', 'True'), steps_per_epoch=4)
    for epoch in range(20):
        for step in range(4):
            expected = cosine_formula(epoch + step / 4)
            assert scheduler.step_to(epoch, step) == pytest.approx(expected, rel=1e-12), (epoch, step)
    assert scheduler.step_to(1, 2) == pytest.approx(START + 1.5 * (BASE - START) / 3)


def test_cooldown_epochs_stay_at_end_lr_after_the_shortened_cosine():
    scheduler = build_lr_scheduler(schedule_config('TRAIN.COOLDOWN_EPOCHS', '5'), steps_per_epoch=1)
    for epoch in range(20):
        assert scheduler.step_to(epoch) == pytest.approx(cosine_formula(epoch, decay_epochs=15), rel=1e-12)
    assert [scheduler.step_to(e) for e in range(15, 20)] == [END] * 5


def test_deit_lag_repeats_the_first_lr_and_shifts_the_curve_by_one_epoch():
    scheduler = build_lr_scheduler(schedule_config('TRAIN.LR_SCHEDULER.DEIT_LAG', 'True'), steps_per_epoch=1)
    assert scheduler() == START
    for epoch in range(20):
        assert scheduler.step_to(epoch) == pytest.approx(cosine_formula(max(epoch - 1, 0)), rel=1e-12)


def test_multistep_decays_at_each_milestone_after_warmup():
    config = schedule_config('TRAIN.LR_SCHEDULER.NAME', 'multistep', 'TRAIN.LR_SCHEDULER.MILESTONES', '[8, 12]',
                             'TRAIN.LR_SCHEDULER.DECAY_RATE', '0.5')
    scheduler = build_lr_scheduler(config, steps_per_epoch=1)
    for epoch in range(20):
        expected = START + epoch * (BASE - START) / 3 if epoch < 3 else BASE * 0.5 ** ((epoch >= 8) + (epoch >= 12))
        assert scheduler.step_to(epoch) == pytest.approx(expected, rel=1e-12), epoch


def test_optimizer_reads_the_lr_the_scheduler_set():
    scheduler = build_lr_scheduler(schedule_config(), steps_per_epoch=1)
    optimizer = paddle.optimizer.SGD(learning_rate=scheduler, parameters=paddle.nn.Linear(2, 2).parameters())
    scheduler.step_to(7)
    assert optimizer.get_lr() == pytest.approx(cosine_formula(7), rel=1e-12)


def test_state_dict_restores_epoch_and_lr_in_a_new_scheduler():
    config = schedule_config('TRAIN.LR_SCHEDULER.PER_STEP', 'True')
    scheduler = build_lr_scheduler(config, steps_per_epoch=4)
    scheduler.step_to(5, 3)
    restored = build_lr_scheduler(config, steps_per_epoch=4)
    restored.set_state_dict(scheduler.state_dict())
    assert (restored.last_epoch, restored(), restored.t) == (5, scheduler(), 5.75)
    restored.step()  # Paddle's interface: the next epoch, first step
    assert restored() == pytest.approx(cosine_formula(6), rel=1e-12)


@pytest.mark.parametrize('opts, key', [
    (['TRAIN.COOLDOWN_EPOCHS', '20'], 'TRAIN.COOLDOWN_EPOCHS'),
    (['TRAIN.WARMUP_EPOCHS', '25'], 'TRAIN.WARMUP_EPOCHS'),
    (['TRAIN.LR_SCHEDULER.NAME', 'multistep', 'TRAIN.LR_SCHEDULER.MILESTONES', '[9, 4]'],
     'TRAIN.LR_SCHEDULER.MILESTONES'),
])
def test_an_impossible_schedule_is_refused_by_the_config_naming_the_key(opts, key):
    with pytest.raises(ConfigError, match=key):
        build_config(opts=['TRAIN.NUM_EPOCHS', '20', *opts])


def test_lrs_written_with_exponents_reach_the_schedule_as_floats():
    # yaml 1.1 alone would read 1e-3 (no dot) as a string
    config = schedule_config('TRAIN.BASE_LR', '1e-3', 'TRAIN.WARMUP_START_LR', '1E-6', 'TRAIN.WARMUP_EPOCHS', '0')
    assert build_lr_scheduler(config, steps_per_epoch=1).step_to(0) == pytest.approx(1e-3)
