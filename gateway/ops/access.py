"""
The access log: one structured event per finished game session and per
finished HTTP request, in the C{gateway.ops.access} namespace of
C{twisted.logger}, so that twistd's own logging (C{--logfile}, C{twist}'s
stdout) receives it like every other event.

L{AccessLogFile} (C{--access-log FILE}) writes the same events as JSON lines
for log shippers: one JSON object per line, with only the fields of
L{ACCESS_FIELDS} and a C{time} (seconds since the epoch).

The events (see the README's table):

  - a game session, once it has ended (the first of its two connections to
    be lost, or a timeout): C{kind="game"}, C{peer}, C{backend} (L{None} if
    it never reached one), C{bytes_in} (client to backend), C{bytes_out}
    (backend to client), C{duration} (seconds), C{reason} (a
    L{gateway.session.relay.CloseReason} value);
  - an HTTP request, once its response was written or its client left:
    C{kind="http"}, C{peer}, C{backend=None}, C{method}, C{path}, C{status},
    C{bytes_in} (the request body), C{bytes_out} (the response body),
    C{duration} (from the request line to the last byte written),
    C{reason} (L{HTTP_COMPLETE} or L{HTTP_CLIENT_LEFT});
  - with C{--access-log-starts}, a game or WebSocket session once it has
    reached its backend: C{event="start"}, C{kind}, C{peer}, C{backend},
    C{duration} (seconds from the client's arrival to its backend's
    connection).  The events above have no C{event} field: an event
    without one is an end.

An event costs one dictionary when a session or request ends, never anything
per chunk.  The file's lines are written once per reactor turn
(L{gateway.ops.logbuffer.LineBuffer}), and all of them before the file is
closed, reopened or the reactor stops.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import IO, Any

from twisted.application.service import Service
from twisted.internet.interfaces import IReactorTime
from twisted.logger import ILogObserver, Logger, LogLevel, LogPublisher, globalLogPublisher
from typing_extensions import override
from zope.interface import implementer

from gateway.ops.logbuffer import LineBuffer
from gateway.ownership import user_name
from gateway.process.errors import StartupError

__all__ = [
    "ACCESS_FIELDS",
    "ACCESS_NAMESPACE",
    "HTTP_CLIENT_LEFT",
    "HTTP_COMPLETE",
    "AccessLogFile",
    "JsonLinesObserver",
    "ACCESS_ONLY",
    "access_log",
    "access_log_only",
    "access_log_starts",
    "log_session_start",
    "log_game_session",
    "log_http_request",
]

ACCESS_NAMESPACE = "gateway.access"
"""The log namespace of access events."""

ACCESS_FIELDS = (
    "event",
    "kind",
    "peer",
    "backend",
    "route",
    "method",
    "path",
    "status",
    "bytes_in",
    "bytes_out",
    "duration",
    "reason",
    "relay",
)
"""The fields of an access event written as JSON (those an event has)."""

HTTP_COMPLETE = "complete"
"""An HTTP request whose whole response was written."""

HTTP_CLIENT_LEFT = "client-left"
"""An HTTP request whose client left before the response was written."""

access_log = Logger(namespace=ACCESS_NAMESPACE)
"""The access log's logger (one namespace for both kinds, as documented)."""

ACCESS_ONLY = LogPublisher()
"""Where access events go instead, with C{--access-log-only}: only the
access log file listens here (and, in a worker process, the channel to the
acceptor), so twistd's own log does not format and write a line per session."""

_access_only_log = Logger(namespace=ACCESS_NAMESPACE, observer=ACCESS_ONLY)
_route = [access_log]
_starts = [False]


def access_log_only(enabled: bool) -> None:
    """
    Send the access events only to the access log file (C{True}), or to
    twistd's log as well (C{False}, the default).
    """
    _route[0] = _access_only_log if enabled else access_log


def access_log_starts(enabled: bool) -> None:
    """
    Log a start event for each game and WebSocket session (C{True}), or
    only their ends (C{False}, the default).
    """
    _starts[0] = enabled


def log_session_start(*, peer: str, backend: str, kind: str, duration: float) -> None:
    """
    A game or WebSocket session has reached its backend: log its start
    event, if C{--access-log-starts} asks for them.

    @param duration: seconds from the client's arrival to now.
    """
    if not _starts[0]:
        return
    _route[0].info(
        "{log_text}",
        log_text=f"{kind} session from {peer} to {backend} started ({duration:.3f} s to connect)",
        event="start",
        kind=kind,
        peer=peer,
        backend=backend,
        duration=duration,
    )


def log_game_session(
    *,
    peer: str,
    backend: str | None,
    bytes_in: int,
    bytes_out: int,
    duration: float,
    reason: str,
    relay: str = "copy",
    kind: str = "game",
) -> None:
    """
    Log the end of a game session.

    @param relay: C{splice} if its bytes moved with splice(2), else C{copy}.
    @param kind: C{game} (a TCP client), or C{websocket} (a browser's).
    """
    # The text is made here, once, with an f-string (as Twisted's own bridge
    # for old-style events does): formatting the fields through the log
    # system's formatter costs about 20 us more per session, on every
    # session of a churning gateway (docs/performance.md).
    _info(
        {
            "log_text": f"{kind} session from {peer} to "
            f"{backend if backend is not None else '-'} ended ({reason}): {bytes_in} bytes in, "
            f"{bytes_out} bytes out, {duration:.3f} s, {relay}",
            "kind": kind,
            "peer": peer,
            "backend": backend,
            "bytes_in": bytes_in,
            "bytes_out": bytes_out,
            "duration": duration,
            "reason": reason,
            "relay": relay,
        }
    )


def _info(event: dict[str, Any]) -> None:
    """
    Log C{event} (its C{log_text} first, then its fields) as
    C{Logger.info("{log_text}", **event)} does on the access route: the
    same event, keys in the same order, without C{Logger.emit}'s check that
    C{info} is a level (a walk over every level, on every HTTP request).
    """
    logger = _route[0]
    event["log_logger"] = logger
    event["log_level"] = LogLevel.info
    event["log_namespace"] = logger.namespace
    event["log_source"] = logger.source
    event["log_format"] = "{log_text}"
    event["log_time"] = time.time()
    logger.observer(event)


def log_http_request(
    *,
    peer: str,
    method: str,
    path: str,
    status: int,
    bytes_in: int,
    bytes_out: int,
    duration: float,
    reason: str,
    route: str | None = None,
    backend: str | None = None,
) -> None:
    """
    Log a finished HTTP request (answered, or left by its client).

    @param route: the name of the route it took (L{None}: the default one,
        C{--http-root}).
    @param backend: the backend a proxied request went to (the last one
        tried), if any.
    """
    via = ""
    if route is not None:
        via = f" via route {route}" + (f" to {backend}" if backend is not None else "")
    _info(
        {
            "log_text": f'http request from {peer}: "{method} {path}" {status} ({reason}){via}: '
            f"{bytes_in} bytes in, {bytes_out} bytes out, {duration:.3f} s",
            "kind": "http",
            "peer": peer,
            "route": route,
            "backend": backend,
            "method": method,
            "path": path,
            "status": status,
            "bytes_in": bytes_in,
            "bytes_out": bytes_out,
            "duration": duration,
            "reason": reason,
        }
    )


@implementer(ILogObserver)
class JsonLinesObserver:
    """
    Writes the access events it sees as JSON lines to a text stream and
    ignores every other event: with a clock, once per turn of that clock's
    reactor (L{LineBuffer}); without one, each at once.

    @ivar lines: the lines not yet written.
    """

    _log = Logger()

    def __init__(self, stream: IO[str], clock: IReactorTime | None = None) -> None:
        self.lines = LineBuffer(stream, failed=self._failed, written=self._written)
        if clock is not None:
            self.lines.hold(clock)
        self.failing: str | None = None
        self.lost = 0

    def __call__(self, event: dict[str, Any]) -> None:
        if event.get("log_namespace") != ACCESS_NAMESPACE:
            return
        self.lines.write(self._line(event))

    def _failed(self, error: OSError, lines: int) -> None:
        # A full disk (or a file gone bad) loses access lines, counted, and
        # is reported once, not per event: twistd's own log may be on the
        # same disk.
        self.lost += lines
        if self.failing is None:
            self.failing = error.strerror or str(error)
            self._log.error(
                "cannot write the access log: {error}; access events are lost "
                "until writing works again",
                error=self.failing,
            )

    def _written(self) -> None:
        if self.failing is not None:
            self._log.info(
                "the access log is written again; {lost} access events were lost",
                lost=self.lost,
            )
            self.failing, self.lost = None, 0

    def _line(self, event: dict[str, Any]) -> str:
        record: dict[str, Any] = {"time": round(float(event.get("log_time", 0.0)), 6)}
        for name in ACCESS_FIELDS:
            if name in event:
                record[name] = event[name]
        duration = record.get("duration")
        if isinstance(duration, float):
            record["duration"] = round(duration, 6)
        return json.dumps(record, separators=(",", ":")) + "\n"


def _listen(observer: ILogObserver) -> None:
    """
    Have C{observer} see the access events, wherever they are sent.
    """
    globalLogPublisher.addObserver(observer)
    ACCESS_ONLY.addObserver(observer)


def _unlisten(observer: ILogObserver) -> None:
    globalLogPublisher.removeObserver(observer)
    ACCESS_ONLY.removeObserver(observer)


def _open(path: str) -> IO[str]:
    """
    The access log's stream: C{path} opened to append, or standard output for C{-}.
    """
    return sys.stdout if path == "-" else open(path, "a", encoding="utf-8")  # noqa: SIM115


def _same_file(stream: IO[str], path: str) -> bool:
    """
    Whether C{path} is the file C{stream} writes to (not renamed away by
    log rotation, nor replaced).
    """
    if path == "-":
        return True
    try:
        opened, named = os.fstat(stream.fileno()), os.stat(path)
    except (OSError, ValueError):
        return False
    return (opened.st_dev, opened.st_ino) == (named.st_dev, named.st_ino)


class AccessLogFile(Service):
    """
    C{--access-log}: while running, appends the access events to a file as
    JSON lines (C{-}: standard output).

    The file is opened in C{privilegedStartService}, before twistd drops
    privileges, so it may live where only root can write.  With a clock,
    its lines are written once per turn of the clock's reactor, and the
    lines held are written before the file is reopened or closed.
    """

    _log = Logger()

    def __init__(self, path: str, clock: IReactorTime | None = None) -> None:
        """
        @param path: the file (C{-}: standard output).
        @param clock: the reactor's clock; without one, each line is
            written at once.
        """
        self.path = path
        self._clock = clock
        self._stream: IO[str] | None = None
        self._observer: JsonLinesObserver | None = None
        self.setName("access-log")

    @override
    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        if self._stream is not None:
            return
        try:
            self._stream = _open(self.path)
        except OSError as error:
            raise StartupError(
                f"gateway: error: --access-log {self.path}: {error.strerror or error}"
            ) from None
        self._observer = JsonLinesObserver(self._stream, self._clock)
        _listen(self._observer)

    @override
    def startService(self) -> None:
        self.privilegedStartService()
        super().startService()

    def reopen(self, path: str) -> None:
        """
        Close the file and open C{path} (the same one after log rotation, or
        a new one from a reload); nothing to do while C{path} is still the
        open file.  If it cannot be opened (after C{twistd -u}, the folder
        may not be writable by the user the gateway runs as), the open file
        is kept and one line says what is needed.
        """
        if self._stream is None or self._observer is None:
            self.path = path
            return
        if path == self.path and _same_file(self._stream, path):
            return
        try:
            stream = _open(path)
        except OSError as error:
            folder = os.path.dirname(os.path.abspath(path))
            self._log.error(
                "cannot open the access log {path} as user {user}: {error}; still writing "
                "to the file opened before ({old}, renamed if it was rotated): make {folder} "
                "writable by {user}, or rotate with copytruncate",
                path=path,
                user=user_name(),
                error=error.strerror or str(error),
                old=self.path,
                folder=folder,
            )
            return
        old, old_path = self._stream, self.path
        _unlisten(self._observer)
        self._observer.lines.release()
        self._stream, self.path = stream, path
        self._observer = JsonLinesObserver(stream, self._clock)
        _listen(self._observer)
        if old_path != "-":
            try:
                old.close()
            except OSError as error:
                self._log.error(
                    "closing the access log {path}: {error}", path=old_path, error=error
                )

    @override
    def stopService(self) -> None:
        super().stopService()
        if self._observer is not None:
            _unlisten(self._observer)
            self._observer.lines.release()
            self._observer = None
        stream, self._stream = self._stream, None
        if stream is not None and self.path != "-":
            try:
                stream.close()
            except OSError as error:
                self._log.error(
                    "closing the access log {path}: {error}", path=self.path, error=error
                )
