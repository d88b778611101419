"""Shared test setup: the repo root on sys.path, quiet Paddle, small deterministic defaults."""
import io
import logging
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
os.environ.setdefault('OMP_NUM_THREADS', str(os.cpu_count() or 1))

import quiet  # noqa: E402,F401  (first, as in every entry point: Pillow's codecs before paddle's libraries)

# Tests run the model under the same CPU settings as training, evaluation and prediction (threads, MKL path,
# copying transposes, malloc, cpu_kernels), so parity and gradient tests check the configuration users get.
import cpu_kernels  # noqa: E402

cpu_kernels.configure_cpu()


@pytest.fixture
def pit_log():
    """The lines logged to the 'pit' logger during a test."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    log = logging.getLogger('pit')
    log.addHandler(handler)
    level = log.level
    log.setLevel(logging.INFO)  # not `log.level =`: setLevel clears the logger's cached isEnabledFor answers
    yield stream
    log.removeHandler(handler)
    log.setLevel(level)
