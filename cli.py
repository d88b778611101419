"""What the commands of this repo share: how they end, in one line, on an error.

Every error a user or the environment causes is a UserError (bad input: exit status 2) or a RunFailed (the run
failed: exit status 1), or an OSError of the environment (a missing file: 2; a full disk, a read-only folder: 1).
EXIT_STATUSES is the one table from those classes to exit statuses; `run_command` ends a command through it with
one line `error: ...` on stderr and no traceback. Anything else is a programming error and keeps its traceback.
"""
import os
import sys

from datasets import shared_memory_note
from errors import RunFailed, UserError

# The most specific class of an error that is listed here decides its exit status, whatever order code catches
# errors in: a FileNotFoundError is bad input although every OSError else is the environment's.
EXIT_STATUSES = {UserError: 2, RunFailed: 1, FileNotFoundError: 2, OSError: 1}
BROKEN_PIPE_STATUS = 128 + 13  # what a shell reports for a tool that SIGPIPE ended, as in `yes | head -1`


def rank_prefix():
    """'[rank r] ' in a process of a multi-process run, else ''."""
    world = int(os.environ.get('PADDLE_TRAINERS_NUM', '1'))
    return f"[rank {os.environ.get('PADDLE_TRAINER_ID', '0')}] " if world > 1 else ''


def fail(error, status=2):
    """One line on stderr (with the rank when there are several processes), exit status 2 (bad input) or 1
    (the run failed), no traceback."""
    print(f'error: {rank_prefix()}{" ".join(str(error).split())}', file=sys.stderr)
    sys.exit(status)


def exit_status(error):
    """The exit status of error by EXIT_STATUSES; None for an error of no listed class (a programming error)."""
    return next((EXIT_STATUSES[kind] for kind in type(error).__mro__ if kind in EXIT_STATUSES), None)


def error_text(error):
    """The one-line message of an error of the table: an OSError of the system as its reason and file name."""
    if isinstance(error, OSError) and error.strerror:
        return error.strerror + (f" ('{error.filename}')" if error.filename else '')
    return str(error)


def run_command(command, *args):
    """command(*args); an error of EXIT_STATUSES ends the process with its one line and status. Output cut short
    by its reader (`... | head -1`) ends the process quietly, as Unix tools do."""
    try:
        result = command(*args)
        sys.stdout.flush()  # a broken pipe surfaces here when the last lines were still buffered
        return result
    except BrokenPipeError:
        # Python flushes stdout again at exit and would report the pipe once more: point it at devnull
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(BROKEN_PIPE_STATUS)
    except Exception as error:
        error = known_error(error)
        status = exit_status(error)
        if status is None:
            raise
        fail(error_text(error), status)


def known_error(error):
    """error, or the error of the table it stands for: paddle raises SystemError when a DataLoader worker dies."""
    if isinstance(error, SystemError) and any(text in str(error) for text in ('Blocking queue is killed',
                                                                              'DataLoader process')):
        return RunFailed('a DataLoader worker process died while loading data (killed, often by the out-of-memory '
                         f'killer{shared_memory_note()}); lower DATA.NUM_WORKERS or DATA.BATCH_SIZE and re-run with '
                         '-resume auto')
    return error
