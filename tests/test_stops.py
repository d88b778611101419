"""Stop signals in one process: recorded inside deferred sections, raised outside, repeats ignored, handlers
restored (the runs themselves are in test_signals.py)."""
import os
import signal

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
