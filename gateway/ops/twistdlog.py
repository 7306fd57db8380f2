"""
The gateway's own log under twistd and twist, written once per reactor
turn (L{gateway.ops.logbuffer}), as text (twistd's format, byte for byte) or
as JSON lines (C{--log-format json}, L{gateway.ops.jsonlog}).

twistd gives a plugin no way to choose its log observer but one: the
application's L{ILogObserver} component, which twistd reads right after the
service tree is attached (C{twisted.application.app.AppLogger.start}).  So
L{LogRoot} is the root of the service tree: it holds the gateway's service
and, once attached, opens the log as twistd would (C{--logfile}, standard
output with C{-n}) and sets the component.  twistd's C{--syslog} and
C{--logger} keep twistd's own observer.  twist reads its options'
C{fileLogObserverFactory} once C{makeService} has returned: L{use_log}
replaces it.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable, MutableMapping
from typing import IO, Any

from twisted.application.service import IService, MultiService
from twisted.logger import ILogObserver
from twisted.python.components import Componentized
from twisted.python.logfile import LogFile
from typing_extensions import override

from gateway.ops.logbuffer import BufferedLogObserver, buffered_observer

__all__ = ["LogRoot", "rotation", "twistd_log_file", "use_log"]

LineFormat = Callable[[dict[str, Any]], str | None]
"""An event's line, with its line feed (L{None}: no line)."""


def twistd_log_file(runner: MutableMapping[str, Any]) -> IO[str] | LogFile | None:
    """
    Where twistd would write its log, opened as it would be: standard
    output for C{--logfile -} or C{-n} without C{--logfile}, else the file
    (C{twistd.log} by default), rotated by size and on SIGUSR1 (see
    L{LogRoot}).

    @return: L{None} where twistd's own choice must stand: C{--syslog},
        C{--logger}, or a daemon told to log to standard output (twistd
        refuses that itself).
    """
    if runner.get("syslog") or runner.get("logger"):
        return None
    name = runner.get("logfile") or ""
    if name == "-" or (not name and runner.get("nodaemon")):
        stdout: IO[str] | None = sys.stdout if runner.get("nodaemon") else None
        return stdout
    log_file: LogFile = LogFile.fromFullPath(name or "twistd.log")
    return log_file


def rotation(log_file: LogFile, observer: BufferedLogObserver) -> Callable[[], None]:
    """
    What SIGUSR1 does: write the lines held (they belong to the file being
    rotated away), then rotate C{log_file}.
    """

    def rotate() -> None:
        observer.lines.flush()
        log_file.rotate()

    return rotate


def _rotate_on_sigusr1(rotate: Callable[[], None], reactor: Any) -> None:
    """
    Call C{rotate} on SIGUSR1, as twistd does (unless a handler is set).
    """
    if signal.getsignal(signal.SIGUSR1):
        return

    def on_signal(number: int, frame: object) -> None:
        # As twistd does: rotate from the reactor's thread, not in the
        # middle of a write.
        reactor.callFromThread(rotate)

    signal.signal(signal.SIGUSR1, on_signal)


class LogRoot(MultiService):
    """
    Under twistd, the root of the service tree: it holds the gateway's
    service, and once twistd gives it to the application, sets the
    application's L{ILogObserver} to a buffered one (see the module's
    docstring).
    """

    def __init__(
        self,
        service: IService,
        runner: MutableMapping[str, Any],
        line: LineFormat,
        reactor: Any,
        open_log: Callable[[MutableMapping[str, Any]], Any] = twistd_log_file,
    ) -> None:
        """
        @param service: the gateway's service.
        @param runner: twistd's own options (C{--logfile}, C{--nodaemon}...).
        @param line: an event's line.
        @param reactor: the reactor the program runs (the lines are held
            while it runs).
        @param open_log: opens the log file as twistd would.
        """
        super().__init__()
        self.gateway = service
        self._runner = runner
        self._line = line
        self._reactor = reactor
        self._open_log = open_log
        service.setServiceParent(self)

    @override
    def setServiceParent(self, parent: Any) -> None:
        super().setServiceParent(parent)
        if not isinstance(parent, Componentized):
            return
        if parent.getComponent(ILogObserver, None) is not None:
            return
        stream = self._open_log(self._runner)
        if stream is None:
            return
        observer = buffered_observer(stream, self._line, self._reactor)
        if isinstance(stream, LogFile):
            _rotate_on_sigusr1(rotation(stream, observer), self._reactor)
        parent.setComponent(ILogObserver, observer)


def use_log(
    service: IService, runner: MutableMapping[str, Any] | None, line: LineFormat, reactor: Any
) -> IService:
    """
    Have the program running C{service} write its log with C{line}, once
    per reactor turn.

    @param runner: the options of the program that called C{makeService}:
        twistd's, or twist's (whose C{fileLogObserverFactory} is read once
        C{makeService} has returned); with neither, nothing changes.
    @param reactor: the reactor the program runs.
    @return: the service to give that program.
    """
    if runner is None:
        return service
    if "fileLogObserverFactory" in runner or "logFile" in runner:
        runner["fileLogObserverFactory"] = lambda stream: buffered_observer(stream, line, reactor)
        return service
    return LogRoot(service, runner, line, reactor)
