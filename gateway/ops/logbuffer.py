"""
Log lines written once per reactor turn: the cost of a log event is
formatting its line and appending it to a list, not a C{write(2)} and a
flush each (docs/performance.md: 40 us per event on the static-file path,
most of it the unbuffered write).

A L{LineBuffer} holds the lines given to it while the reactor runs and
writes them to its stream, joined, in one write and one flush:

  - at the start of the next reactor turn (a C{callLater(0)} scheduled by
    the first line of a turn);
  - at once when it holds L{BUFFER_LIMIT} characters or more;
  - at once for a line marked urgent (a warning, an error or a critical
    event: a crash's last words reach the disk before the crash);
  - when told to (L{LineBuffer.flush}): before log rotation, before an
    access log is reopened or closed, and when the reactor shuts down.

Before the reactor runs and after it has shut down, every line is written
and flushed at once, as Twisted's own file observers do.  What an abrupt
kill (SIGKILL, a power cut) can lose is the lines of the turn it
interrupts: at most one reactor turn's lines, and never more than
L{BUFFER_LIMIT} characters.

L{BufferedLogObserver} is twistd's (and twist's) text or JSON log observer
on top of a L{LineBuffer}; L{text_line} formats an event exactly as
twistd's own text observer does, with the formatted second cached.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Protocol

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import (
    ILogObserver,
    LogLevel,
    formatEventAsClassicLogText,
    formatTime,
    timeFormatRFC3339,
)
from zope.interface import implementer

__all__ = [
    "BUFFER_LIMIT",
    "BufferedLogObserver",
    "LineBuffer",
    "SecondCache",
    "buffered_observer",
    "text_line",
]

BUFFER_LIMIT = 64 * 1024
"""Characters a L{LineBuffer} holds before it writes at once."""


class Stream(Protocol):
    """
    Where lines go: a text file, standard output, or twistd's
    L{twisted.python.logfile.LogFile}.
    """

    def write(self, text: str, /) -> object:
        """Write C{text}."""

    def flush(self) -> object:
        """Push what was written to the operating system."""


class LineBuffer:
    """
    Lines for one stream, written once per reactor turn while the reactor
    runs (see the module's docstring), at once otherwise.

    @ivar lost: lines that could not be written (an error writing), which
        L{failed} has been told about.
    """

    def __init__(
        self,
        stream: Stream,
        *,
        limit: int = BUFFER_LIMIT,
        failed: Callable[[OSError, int], None] | None = None,
        written: Callable[[], None] | None = None,
    ) -> None:
        """
        @param stream: where the lines go.
        @param limit: characters held before writing at once.
        @param failed: called with the error and the number of lines lost
            when a write fails; without it the error is raised (Twisted's
            log publisher then reports the observer).
        @param written: called after each write that worked.
        """
        self.stream = stream
        self._limit = limit
        self._failed = failed
        self._written = written
        self._clock: IReactorTime | None = None
        self._lines: list[str] = []
        self._size = 0
        self._call: IDelayedCall | None = None

    def hold(self, clock: IReactorTime) -> None:
        """
        The reactor runs: from now on, hold the lines until the turn ends.
        """
        self._clock = clock

    def release(self) -> None:
        """
        The reactor has stopped (or the stream is about to be let go):
        write what is held and, from now on, write every line at once.
        """
        self._clock = None
        self.flush()

    def write(self, line: str, *, urgent: bool = False) -> None:
        """
        Hold C{line} until the turn ends (or write it, and what is held, now).

        @param urgent: write it now (a warning or an error).
        """
        self._lines.append(line)
        self._size += len(line)
        clock = self._clock
        if urgent or clock is None or self._size >= self._limit:
            self.flush()
        elif self._call is None:
            self._call = clock.callLater(0, self._turn_ended)

    def _turn_ended(self) -> None:
        self._call = None
        self.flush()

    def flush(self) -> None:
        """
        Write the lines held, in one write and one flush.
        """
        call, self._call = self._call, None
        if call is not None and call.active():
            call.cancel()
        if not self._lines:
            return
        lines, self._lines, self._size = self._lines, [], 0
        try:
            self.stream.write("".join(lines))
            self.stream.flush()
        except OSError as error:
            if self._failed is None:
                raise
            self._failed(error, len(lines))
            return
        if self._written is not None:
            self._written()


class SecondCache:
    """
    C{formatTime} for one time format whose text changes only with the
    second (twistd's default, C{%Y-%m-%dT%H:%M:%S%z}): the text of the last
    second formatted is kept, since computing the local time zone costs
    about as much as the rest of an event's line.
    """

    def __init__(self, time_format: str = timeFormatRFC3339) -> None:
        self._format = time_format
        self._second: int | None = None
        self._text = ""

    def __call__(self, when: float | None) -> str:
        if when is None or not math.isfinite(when):
            return formatTime(when, self._format)
        second = math.floor(when)
        if when - second >= 0.999999:
            # datetime rounds to the microsecond: this may be the next
            # second's text (found by the test against twistd's own).
            return formatTime(when, self._format)
        if second != self._second:
            self._text = formatTime(second, self._format)
            self._second = second
        return self._text


_text_time = SecondCache()


def text_line(event: dict[str, Any]) -> str | None:
    """
    An event as twistd's text log writes it (C{textFileLogObserver}'s
    format, byte for byte), or L{None} for an event with no text.

    An event whose text was made before it was logged (C{"{log_text}"}, as
    the access events are: L{gateway.ops.access}) is put together here
    without C{string.Formatter}, the same line for about half the cost.
    """
    text = event.get("log_text")
    if (
        event.get("log_format") == "{log_text}"
        and type(text) is str
        and text
        and "log_failure" not in event
    ):
        system = event.get("log_system")
        if system is None:
            level = event.get("log_level")
            namespace = event.get("log_namespace", "-")
            if type(namespace) is str and isinstance(level, type(LogLevel.info)):
                system = f"{namespace}#{level.name}"
        if type(system) is str:
            when = event.get("log_time")
            line = f"{_text_time(when)} [{system}] {text}"
            return line.replace("\n", "\n\t") + "\n"
    return formatEventAsClassicLogText(event, formatTime=_text_time)


@implementer(ILogObserver)
class BufferedLogObserver:
    """
    Formats each event into a line and gives it to a L{LineBuffer}:
    warnings and worse are written at once, with what was held before them.
    """

    def __init__(self, lines: LineBuffer, line: Callable[[dict[str, Any]], str | None]) -> None:
        """
        @param lines: where the lines go.
        @param line: an event's line (with its line feed), or L{None} to skip it.
        """
        self.lines = lines
        self._line = line

    def __call__(self, event: dict[str, Any]) -> None:
        text = self._line(event)
        if not text:
            return
        level = event.get("log_level")
        self.lines.write(text, urgent=level is not None and level >= LogLevel.warn)


def buffered_observer(
    stream: Stream, line: Callable[[dict[str, Any]], str | None], reactor: Any
) -> BufferedLogObserver:
    """
    A log observer for the program's own log: its lines are written at
    once until C{reactor} runs, once per turn while it runs, and at once
    again after it has shut down (what is held is written then).

    @param reactor: provides L{IReactorTime} and
        L{twisted.internet.interfaces.IReactorCore}.
    """
    lines = LineBuffer(stream)
    reactor.callWhenRunning(lines.hold, reactor)
    reactor.addSystemEventTrigger("after", "shutdown", lines.release)
    return BufferedLogObserver(lines, line)
