"""Import before paddle, in every entry point: keep paddle's noise that this repo causes out of the output.

Set in os.environ, so every process started later inherits it: DataLoader workers (spawned workers import
paddle again), dist.spawn's training processes and the cpu_kernels build. A user's own settings are kept.
- `No ccache found`: a warning paddle prints at every import (it concerns building C++ extensions).
- glog INFO lines (tcp store connects of every process of a multi-process run): GLOG_minloglevel 1 keeps
  warnings and errors.
"""
import os
import warnings

_CCACHE = 'ignore:No ccache found'

warnings.filterwarnings('ignore', message='No ccache found')
if _CCACHE not in os.environ.get('PYTHONWARNINGS', ''):
    os.environ['PYTHONWARNINGS'] = ','.join(filter(None, [os.environ.get('PYTHONWARNINGS'), _CCACHE]))
os.environ.setdefault('GLOG_minloglevel', '1')
