"""Import before paddle, in every entry point: keep paddle's noise that this repo causes out of the output, and
load Pillow's codecs before paddle's libraries (below).

Set in os.environ, so every process started later inherits it: DataLoader workers (spawned workers import
paddle again), dist.spawn's training processes and the cpu_kernels build. A user's own settings are kept.
- `No ccache found`: a warning paddle prints at every import (it concerns building C++ extensions).
- multiprocessing's resource tracker warning about "leaked semaphore objects" when a training process was killed
  (the tracker removes them itself).
- glog INFO lines (tcp store connects of every process of a multi-process run): GLOG_minloglevel 1 keeps
  warnings and errors.
"""
import os
import warnings

# Paddle 2.6's libpaddle exports its own, older zlib; loaded after it, Pillow's PNG decoder binds to those symbols
# and fails ("codec configuration error", or a segfault in inflateReset2 in a DataLoader worker). Pillow's C core
# loaded first keeps its own.
import PIL.Image  # noqa: F401,E402

_FILTERS = ('ignore:No ccache found', 'ignore::UserWarning:multiprocessing.resource_tracker')

warnings.filterwarnings('ignore', message='No ccache found')
for _filter in _FILTERS:
    if _filter not in os.environ.get('PYTHONWARNINGS', ''):
        os.environ['PYTHONWARNINGS'] = ','.join(filter(None, [os.environ.get('PYTHONWARNINGS'), _filter]))
os.environ.setdefault('GLOG_minloglevel', '1')
