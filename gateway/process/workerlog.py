"""
Every core in use (C{--workers N}): a worker process's log, sent to the
acceptor.

A worker writes no log of its own: a L{LogForwarder} observes its events and
sends each (info and above) over the control channel as a
L{gateway.process.wire.LogEvent}, which the acceptor writes with its own
events (twistd's log, the access log file).  Before the channel is up, or
after it is gone, events go to standard error.
"""

from __future__ import annotations

import sys
from typing import Any

from twisted.logger import (
    FileLogObserver,
    ILogObserver,
    LogLevel,
    formatEvent,
    formatEventAsClassicLogText,
)
from zope.interface import implementer

from gateway.process.wire import Framed, LogEvent

__all__ = ["LogForwarder"]


@implementer(ILogObserver)
class LogForwarder:
    """
    Sends log events (info and above) to the acceptor; before the channel
    is up, or after it is gone, writes them to standard error.

    @ivar control: the worker's end of its control channel, while it is up.
    @ivar finished: the worker has drained: only problems are still written.
    """

    def __init__(self) -> None:
        self.control: Framed | None = None
        self.finished = False
        self._stderr = FileLogObserver(sys.stderr, formatEventAsClassicLogText)

    def attach(self, control: Framed) -> None:
        """
        The control channel is up: send events to the acceptor through it.
        """
        self.control = control

    def detach(self, *, finished: bool = False) -> None:
        """
        The control channel is closing or gone: write to standard error
        instead (after a drain, C{finished}: only problems).
        """
        self.control = None
        if finished:
            self.finished = True

    def access_only(self, event: dict[str, Any]) -> None:
        """
        An access event kept out of the main log (--access-log-only): to the
        acceptor's access log file only, without its text.
        """
        control = self.control
        if control is not None and control.transport is not None:
            fields = {key: value for key, value in event.items() if type(value) in _PLAIN}
            control.send(LogEvent(level="info", text="", fields=fields, access_only=True))

    def __call__(self, event: dict[str, Any]) -> None:
        """
        One log event of the worker.
        """
        level = event.get("log_level")
        least = LogLevel.warn if self.finished else LogLevel.info
        if level is not None and level < least:
            # Once drained and disconnected, only problems are worth stderr
            # (not the reactor's "Main loop terminated").
            return
        control = self.control
        if control is None or control.transport is None:
            self._stderr(event)
            return
        # The text as this process would write it (Twisted's JSON form of an
        # event loses format specifications), and the plain fields, which
        # the access log reads.
        failure = event.get("log_failure")
        control.send(
            LogEvent(
                level=level.name if level is not None else "info",
                text=formatEvent(event),
                traceback=failure.getTraceback() if failure is not None else None,
                fields={key: value for key, value in event.items() if type(value) in _PLAIN},
            )
        )


_PLAIN = (str, int, float, bool, type(None))
