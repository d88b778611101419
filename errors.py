"""The two kinds of error a command of this repo ends with, and the one line that says what went wrong.

Every error this repo raises for a user or the environment derives from exactly one of the two bases, so what a
command does with it never depends on the order of except clauses (cli.EXIT_STATUSES maps them to exit codes):
- UserError: bad input (a config key, a flag, a weights file, a data set, an export); exit status 2.
- RunFailed: the run itself failed (a NaN loss, a disk that filled up, an export that did not pass its check);
  exit status 1.
Their messages are one line that names the file, key or value and what was expected.
"""


class UserError(Exception):
    """Bad input: the message names the file, key or value and what was expected (exit status 2)."""


class RunFailed(Exception):
    """The run failed (the environment, or the training itself); what was written before is intact (exit
    status 1)."""


def error_line(error):
    """The line of an error message that says what went wrong: Paddle's span many lines around a C++ stack."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip().strip('-')]
    for i, line in enumerate(lines[:-1]):
        if line.startswith('Error Message Summary'):
            return lines[i + 1]
    return lines[0] if lines else type(error).__name__
