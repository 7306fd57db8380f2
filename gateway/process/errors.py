"""
The start-up error: one line on standard error and exit status 2, like a bad
option's, for what stops a start after the options were accepted (a front
that cannot be bound, a hand-over refused, an access log that cannot be
opened).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["StartupError", "startup_errors"]


class StartupError(SystemExit, Exception):
    """
    Start-up cannot go on (a front cannot be bound).

    A SystemExit, so that C{twistd -n} exits without a traceback; also an
    Exception, so that a daemonizing twistd (which catches Exception in the
    child) reports it to the parent process, which then exits non-zero
    instead of waiting forever.  The service writes its one line to standard
    error and makes the exit status 2 (L{startup_errors}), like a bad
    option's.
    """


@contextmanager
def startup_errors() -> Iterator[None]:
    """
    A L{StartupError} leaving this block is written to standard error (one
    line; twistd's log has it too) and ends the process with status 2.
    """
    try:
        yield
    except StartupError as error:
        if error.code != 2:
            sys.stderr.write(f"{error}\n")
            sys.stderr.flush()
            error.code = 2
        raise
