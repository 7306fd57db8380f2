"""
C{--log-format json}: the gateway's own log as JSON lines with flat fields,
for log shippers.

Each event is one line holding one JSON object:

  - C{time}: when the event happened, ISO 8601 in UTC with microseconds
    (C{2026-05-04T10:11:12.345678Z});
  - C{level}: C{debug}, C{info}, C{warn}, C{error} or C{critical};
  - C{namespace}: the logger's namespace (C{gateway.access} for access
    events, C{log_legacy} for Twisted's old-style messages);
  - C{message}: the event's text, as the text log would show it;
  - C{traceback}: the failure's traceback, for an event that carries one
    (a worker's traceback is part of its C{message});
  - C{worker}: the worker's number, for an event a worker process logged;
  - then the event's own fields (C{backend}, C{peer}, C{reason}, ...):
    strings, numbers, booleans and nulls as they are, lists of those as
    lists, an exception as its text; other values, Twisted's internal
    C{log_*} keys and fields named like the ones above are left out.

Writing JSON (C{json.dumps} escapes line breaks) keeps one event on one
line whatever its text holds.  L{use_json_log} installs the observer in
twistd or twist, in place of their own text (or Twisted's internal JSON)
observer.
"""

from __future__ import annotations

import datetime
import json
import math
import signal
import sys
from collections.abc import Callable, MutableMapping
from typing import IO, Any

from twisted.application.service import IService, MultiService
from twisted.logger import FileLogObserver, ILogObserver, formatEvent
from twisted.python.components import Componentized
from twisted.python.logfile import LogFile
from typing_extensions import override

__all__ = ["FLAT_FIELDS", "JsonLogRoot", "flat_event", "json_line", "use_json_log"]

FLAT_FIELDS = ("time", "level", "namespace", "message", "traceback", "worker")
"""The fields every line has (C{traceback} and C{worker} when they apply),
which an event's own fields of the same names never replace."""

_LEGACY = frozenset({"message", "system", "time", "isError", "format", "why", "failure"})
"""Keys Twisted's old-style log adds to an event (C{log_legacy}): their
content is in C{message} already."""

_PLAIN = (str, int, float, bool, type(None))


def _iso_time(value: object) -> str | None:
    if not isinstance(value, int | float) or isinstance(value, bool):
        return None
    try:
        moment = datetime.datetime.fromtimestamp(value, datetime.UTC)
    except (OverflowError, OSError, ValueError):
        return None
    return moment.isoformat(timespec="microseconds").replace("+00:00", "Z")


def _plain(value: object) -> object:
    """
    C{value} as JSON can hold it, or C{_PLAIN} itself for a value to leave out.
    """
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if isinstance(value, _PLAIN):
        return value
    if isinstance(value, list | tuple):
        items = [_plain(item) for item in value]
        return _PLAIN if any(item is _PLAIN or isinstance(item, list) for item in items) else items
    if isinstance(value, BaseException):
        return str(value)
    return _PLAIN


def flat_event(event: dict[str, Any]) -> dict[str, object]:
    """
    The flat record of a log event (see the module's docstring).
    """
    level = getattr(event.get("log_level"), "name", None)
    namespace = event.get("log_namespace")
    record: dict[str, object] = {
        "time": _iso_time(event.get("log_time")),
        "level": level if isinstance(level, str) else None,
        "namespace": namespace if isinstance(namespace, str) else None,
        "message": formatEvent(event),
    }
    failure = event.get("log_failure")
    if failure is not None:
        try:
            record["traceback"] = failure.getTraceback()
        except Exception:  # noqa: BLE001 - a log line must not fail over a bad failure
            record["traceback"] = repr(failure)
    worker = event.get("log_worker")
    if isinstance(worker, int):
        record["worker"] = worker
    legacy = namespace == "log_legacy"
    for key, value in event.items():
        if (
            not isinstance(key, str)
            or key.startswith("log_")
            or key in FLAT_FIELDS
            or (legacy and key in _LEGACY)
        ):
            continue
        plain = _plain(value)
        if plain is not _PLAIN:
            record[key] = plain
    return record


def json_line(event: dict[str, Any]) -> str:
    """
    One log event as a JSON line (with its line feed).
    """
    return json.dumps(flat_event(event), separators=(",", ":"), allow_nan=False) + "\n"


def json_observer(stream: IO[str]) -> FileLogObserver:
    """
    An observer that writes every event to C{stream} as a JSON line (and
    flushes, as Twisted's own file observers do).
    """
    return FileLogObserver(stream, json_line)


def _twistd_log_file(runner: MutableMapping[str, Any]) -> IO[str] | LogFile | None:
    """
    Where twistd would write its log, opened as it would be: standard
    output for C{--logfile -} or C{-n} without C{--logfile}, else the file
    (C{twistd.log} by default), rotated by size and on SIGUSR1.

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
    if not signal.getsignal(signal.SIGUSR1):

        def rotate(number: int, frame: object) -> None:
            # As twistd does: rotate from the reactor's thread, not in the
            # middle of a write.  This runs once the reactor is chosen.
            from twisted.internet import reactor

            reactor.callFromThread(log_file.rotate)  # type: ignore[attr-defined]

        signal.signal(signal.SIGUSR1, rotate)
    return log_file


class JsonLogRoot(MultiService):
    """
    Under twistd, the root of the service tree when the log is JSON: it
    holds the gateway's service, and once twistd gives it to the
    application, sets the application's L{ILogObserver}, which twistd looks
    for right after (C{twisted.application.app.AppLogger.start}): there is
    no other way for a plugin to choose twistd's log observer.
    """

    def __init__(
        self,
        service: IService,
        runner: MutableMapping[str, Any],
        open_log: Callable[[MutableMapping[str, Any]], Any] = _twistd_log_file,
    ) -> None:
        """
        @param service: the gateway's service.
        @param runner: twistd's own options (C{--logfile}, C{--nodaemon}...).
        @param open_log: opens the log file as twistd would.
        """
        super().__init__()
        self.gateway = service
        self._runner = runner
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
        if stream is not None:
            parent.setComponent(ILogObserver, json_observer(stream))


def use_json_log(service: IService, runner: MutableMapping[str, Any] | None) -> IService:
    """
    Have the program running C{service} write its log as JSON lines.

    @param runner: the options of the program that called C{makeService}:
        twistd's, or twist's (whose C{fileLogObserverFactory} is read once
        C{makeService} has returned); with neither, nothing changes.
    @return: the service to give that program.
    """
    if runner is None:
        return service
    if "fileLogObserverFactory" in runner or "logFile" in runner:
        runner["fileLogObserverFactory"] = json_observer
        return service
    return JsonLogRoot(service, runner)
