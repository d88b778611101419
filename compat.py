"""Which Paddle versions this repo supports, checked once where a run or a set-up starts.

Supported: Paddle 2.6 (the last 2.x line, still offered by AI Studio images, whose Paddle run.sh keeps) and 3.x.
CI runs the whole test suite on both (scripts/test.sh). Where the two differ, the code that meets the difference
handles it in place and says why (pit.py: TruncatedNormal bounds, sdpa; optim.py: accumulator bookkeeping;
losses.py: kl_div's log_target; quiet.py: Pillow's zlib; export.py: paddle2onnx 2 needs Paddle 3).

    python compat.py      # one line: the installed paddle and whether it is supported (exit 2 when it is not)
"""
import re

from errors import UserError

MINIMUM = (2, 6)  # oldest supported release
NEWEST_MAJOR = 3  # newest supported major version
SUPPORTED = 'Paddle 2.6 or 3.x'


class PaddleVersionError(UserError):
    """The installed Paddle is not a version this repo supports; the message names it and what is needed."""


def parse_version(text):
    """(major, minor, patch) of a Paddle version string ('3.3.1', '2.6.2', '3.0.0rc1', '3.1.0.post118');
    None for development builds ('0.0.0'), which have no release number."""
    match = re.match(r'(\d+)\.(\d+)(?:\.(\d+))?', str(text))
    if not match:
        return None
    version = tuple(int(part or 0) for part in match.groups())
    return None if version == (0, 0, 0) else version


def unsupported_reason(text):
    """Why Paddle `text` is not supported (one line), or None when it is. Development builds pass."""
    version = parse_version(text)
    if version is None:
        return None
    if version[:2] < MINIMUM or version[0] > NEWEST_MAJOR:
        return (f'paddle {text} is not supported: this repo needs {SUPPORTED} (pip install paddlepaddle==3.3.1, '
                'or paddlepaddle-gpu for your CUDA)')
    return None


def check_paddle():
    """Raise PaddleVersionError when the installed Paddle is not supported; return its version string."""
    import paddle
    reason = unsupported_reason(paddle.__version__)
    if reason:
        raise PaddleVersionError(reason)
    return paddle.__version__


if __name__ == '__main__':
    import sys

    import quiet  # noqa: F401  (before paddle)
    try:
        print(f'paddle {check_paddle()}: supported ({SUPPORTED})')
    except ImportError:
        print(f'error: paddle is not installed; this repo needs {SUPPORTED}', file=sys.stderr)
        sys.exit(2)
    except PaddleVersionError as e:
        print(f'error: {e}', file=sys.stderr)
        sys.exit(2)
