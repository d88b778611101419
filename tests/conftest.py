"""Shared test setup: the repo root on sys.path, quiet Paddle, small deterministic defaults."""
import contextlib
import io
import logging
import os
import subprocess
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
import paddle  # noqa: E402

cpu_kernels.configure_cpu()

from demo_data import write_dataset  # noqa: E402

# The tiny PiT the command-line tests train (three stages of one block, 32-pixel images, 10 classes): an epoch on
# the digits takes seconds on a CPU. Test files add the schedule they need; TINY_ONE_EPOCH is the common one.
TINY_MODEL = ['DATA.IMAGE_SIZE', '32', 'MODEL.NUM_CLASSES', '10', 'MODEL.TRANS.PATCH_SIZE', '4',
              'MODEL.TRANS.STRIDE', '2', 'MODEL.TRANS.BASE_DIMS', '[8, 8, 8]', 'MODEL.TRANS.DEPTH', '[1, 1, 1]']
TINY_ONE_EPOCH = TINY_MODEL + ['TRAIN.NUM_EPOCHS', '1', 'TRAIN.WARMUP_EPOCHS', '0']


@pytest.fixture
def gpu_strides():
    """Paddle's stride kernels on for the test, as a GPU run has them (configure_cpu turns them off for CPU
    speed): transpose, split and unbind then return strided views, which the plain (GPU) paths must handle."""
    paddle.set_flags({'FLAGS_use_stride_kernel': True})
    yield
    paddle.set_flags({'FLAGS_use_stride_kernel': False})


@pytest.fixture(scope='session')
def digits(tmp_path_factory):
    """A 10-class ImageNet-layout data set of 32-pixel digits (4 train and 2 val images a class, plus heldout/),
    made once per session; tests only read it. A test file that needs another size defines its own `digits`."""
    root = str(tmp_path_factory.mktemp('digits'))
    write_dataset(root, source='digits', image_size=32, train_per_class=4, val_per_class=2)
    return root


def one_line_error(result, status):
    """The last stderr line of a command that failed with `status`: its one 'error:' line, with no traceback."""
    assert result.returncode == status, (result.returncode, result.stderr[-3000:])
    assert 'Traceback' not in result.stderr, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith('error: ') and sum(line.startswith('error:') for line in lines) == 1, lines
    return lines[-1]


@contextlib.contextmanager
def tmpfs(path, size='64k', readonly=False):
    """A tmpfs of `size` (read-only with readonly) mounted at path for the block, to make a full or read-only disk;
    skips the test where mounting needs a root this process does not have."""
    os.makedirs(path, exist_ok=True)
    options = f'size={size}' + (',ro' if readonly else '')
    if subprocess.run(['mount', '-t', 'tmpfs', '-o', options, 'tmpfs', str(path)], capture_output=True).returncode:
        pytest.skip('cannot mount a tmpfs here (needs root): the full/read-only disk cases need one')
    try:
        yield path
    finally:
        subprocess.run(['umount', str(path)], capture_output=True)

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
