"""Stop signals in one process: recorded inside deferred sections, raised outside, repeats ignored, handlers
restored; an epoch stopped after an optimizer step resumes to the same weights (the runs are in
test_signals.py)."""
import os
import signal

import numpy as np
import paddle
import pytest

import stops


def test_outside_a_deferred_section_a_signal_stops_at_once():
    with stops.handled():
        with pytest.raises(stops.StopRequested) as stop:
            os.kill(os.getpid(), signal.SIGTERM)
    assert stop.value.exit_status == 143 and str(stop.value) == 'stopped by SIGTERM'


def test_inside_a_deferred_section_the_first_signal_is_recorded_and_repeats_ignored():
    with stops.handled(), stops.deferred():
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGTERM)
        assert stops.pending() == stops.agreed() == signal.SIGINT  # one process: agreed is its own signal
    assert stops.pending() == 0


def test_the_handlers_before_are_restored():
    before = signal.getsignal(signal.SIGINT)
    with stops.handled():
        assert signal.getsignal(signal.SIGINT) != before
    assert signal.getsignal(signal.SIGINT) is before


def test_a_stop_is_not_an_error_that_error_handlers_swallow():
    with pytest.raises(stops.StopRequested):
        try:
            raise stops.StopRequested(signal.SIGINT)
        except Exception:  # what library code around the training loop may do
            pytest.fail('StopRequested was caught as an Exception')


class Batches(list):
    """Training batches as the loader yields them: len() is the whole epoch, iteration starts at `start` (the
    batch sampler skips the batches a stopped run did)."""
    start = 0

    def __iter__(self):
        return iter(self[self.start:])


def test_an_epoch_stopped_after_an_optimizer_step_and_resumed_there_ends_as_one_pass():
    from config import build_config, finalize_config, merge_opts
    from engine import TrainState, train_one_epoch
    config = finalize_config(merge_opts(build_config(), ['TRAIN.ACCUM_ITER', '2']))
    rng = np.random.RandomState(0)
    batches = Batches((paddle.to_tensor(rng.rand(4, 6).astype('float32')), paddle.to_tensor(rng.randint(0, 3, 4)),
                       paddle.to_tensor([0])) for _ in range(7))

    def fresh_state():
        paddle.seed(1)
        model = paddle.nn.Sequential(paddle.nn.Linear(6, 8), paddle.nn.Dropout(0.5), paddle.nn.Linear(8, 3))
        optimizer = paddle.optimizer.AdamW(learning_rate=0.01, parameters=model.parameters())
        return TrainState(model, optimizer, None, paddle.amp.GradScaler(enable=False), {'enable': False})

    def criterion(inputs, outputs, targets):
        return paddle.nn.functional.cross_entropy(outputs, targets)

    whole = fresh_state()
    train_one_epoch(whole, criterion, batches, 0, config)
    stopped, answers = fresh_state(), iter([False, True])
    train_one_epoch(stopped, criterion, batches, 0, config, stop=lambda: next(answers))
    assert stopped.step == 4 and stopped.progress['counts']['loss'] == 16  # after the second optimizer step
    paddle.seed(12345)  # a new process: other random streams
    batches.start = stopped.step
    stats = train_one_epoch(stopped, criterion, batches, 0, config)
    assert stopped.step == 7 and stats['images'] == 28
    for a, b in zip(whole.model.parameters(), stopped.model.parameters()):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
