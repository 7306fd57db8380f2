"""
The wire format of an HTTP health check: the request a probe sends and the
reader of the status line it gets back.

The request is one line and three header fields, and asks the backend to
close once it has answered::

    GET /healthz HTTP/1.1\\r\\n
    Host: 127.0.0.1:8001\\r\\n
    User-Agent: gateway-health\\r\\n
    Connection: close\\r\\n
    \\r\\n

C{Host} is the backend's host (and port, unless 80, or 443 for a C{tls:} or
C{ssl:} backend) as its endpoint string says, or the backend's name for an
endpoint without one (C{unix:}).

The answer's status line, C{HTTP/1.1 200 OK}, decides the check: it passes
when its status is the expected one, or any 2xx or 3xx when none is given.
Interim C{1xx} answers (C{103 Early Hints}) are skipped, up to the final
one.  The reader looks at the first L{MAX_READ} bytes at most, and decides as
soon as it can: an answer that does not begin like C{HTTP/} fails at once, so
a backend that speaks another protocol fails without waiting for a line end.
A line may end in CRLF or a bare LF.  Each way an answer can fail is a
L{StatusLineError}, whose text is the reason the log shows.
"""

from __future__ import annotations

import re

from twisted.internet.endpoints import _parse

__all__ = [
    "MAX_READ",
    "GarbledStatusLineError",
    "StatusLineError",
    "StatusLineReader",
    "StatusTooLateError",
    "host_header",
    "http_request",
    "passes",
    "valid_host",
    "valid_path",
]

MAX_READ = 4096
"""Bytes of an answer the reader looks at, at most, to find its final status line."""

USER_AGENT = b"gateway-health"
"""What a probe says it is."""

_PREFIX = b"HTTP/"
_STATUS_LINE = re.compile(rb"HTTP/[0-9]\.[0-9] ([0-9]{3})(?: [^\r\n]*)?\r?")
_PATH = re.compile(r"/[!-~]*")
_HOST = re.compile(r"[!-~]+")
_DEFAULT_PORTS = {"tcp": "80", "tls": "443", "ssl": "443"}


class StatusLineError(Exception):
    """
    The answer does not give a final status: its text says why.
    """


class GarbledStatusLineError(StatusLineError):
    """
    The answer does not begin with an HTTP status line.
    """

    def __init__(self) -> None:
        super().__init__("no HTTP status line")


class StatusTooLateError(StatusLineError):
    """
    No final status line within the first L{MAX_READ} bytes.
    """

    def __init__(self) -> None:
        super().__init__(f"no HTTP status line in the first {MAX_READ} bytes")


class StatusLineReader:
    """
    Finds the final status of an HTTP answer, fed in pieces as they arrive.

    The verdict depends on the bytes only, never on how they were split
    between reads.  Once it has one, the reader is done: feed it no more.

    @ivar consumed: bytes of the answer looked at so far (at most L{MAX_READ}).
    """

    def __init__(self) -> None:
        self._buffer = b""
        self._interim = False
        self.consumed = 0

    def feed(self, data: bytes) -> int | None:
        """
        Read more of the answer.

        @return: the final status once its line is complete, else L{None}.
        @raise StatusLineError: the answer cannot give one.
        """
        data = data[: MAX_READ - self.consumed]
        self.consumed += len(data)
        self._buffer += data
        while True:
            if self._interim and not self._skip_interim():
                break
            status = self._status()
            if status is None:
                break
            if not 100 <= status < 200 or status == 101:
                return status
            self._interim = True
        if self.consumed >= MAX_READ:
            raise StatusTooLateError()
        return None

    def _status(self) -> int | None:
        """
        Take a complete status line off the buffer.

        @return: its status, or L{None} if the line is not complete yet.
        @raise GarbledStatusLineError: the buffer does not begin with one.
        """
        buffer = self._buffer
        if not buffer[: len(_PREFIX)] == _PREFIX[: len(buffer)]:
            raise GarbledStatusLineError()
        end = buffer.find(b"\n")
        if end < 0:
            return None
        match = _STATUS_LINE.fullmatch(buffer[:end])
        if match is None:
            raise GarbledStatusLineError()
        self._buffer = buffer[end + 1 :]
        return int(match.group(1))

    def _skip_interim(self) -> bool:
        """
        Drop an interim answer's header fields, up to the blank line after
        them.

        @return: whether the blank line has arrived.
        """
        # The status line's LF is gone: the fields end at the first empty
        # line, CRLF or LF alone.
        for blank in (b"\r\n", b"\n"):
            if self._buffer.startswith(blank):
                self._buffer = self._buffer[len(blank) :]
                self._interim = False
                return True
        ends = [at for at in (self._buffer.find(b"\n\r\n"), self._buffer.find(b"\n\n")) if at >= 0]
        if not ends:
            return False
        at = min(ends)
        skip = 3 if self._buffer[at : at + 3] == b"\n\r\n" else 2
        self._buffer = self._buffer[at + skip :]
        self._interim = False
        return True


def passes(status: int, expected: int | None) -> bool:
    """
    Whether a final status passes a check.

    @param expected: the status the check wants; L{None} for any 2xx or 3xx.
    """
    if expected is None:
        return 200 <= status < 400
    return status == expected


def valid_path(path: bytes) -> bool:
    """
    Whether C{path} can be a check's request target: C{/} followed by
    visible ASCII (a query string included; no spaces, no line ends).
    """
    try:
        return _PATH.fullmatch(path.decode("ascii")) is not None
    except UnicodeDecodeError:
        return False


def valid_host(host: bytes) -> bool:
    """
    Whether C{host} can be a C{Host} field's value: visible ASCII, no spaces.
    """
    return _HOST.fullmatch(host.decode("latin-1")) is not None


def host_header(description: str, name: str) -> bytes:
    """
    The C{Host} a probe of a backend sends.

    @param description: the backend's endpoint string (C{tcp:HOST:PORT},
        C{tcp:host=HOST:port=PORT}, C{tls:HOST:PORT}, ...).
    @param name: the backend's name, for an endpoint without a host.
    @return: C{HOST}, C{HOST:PORT} when the port is not the default one, an
        IPv6 address in brackets; C{name} without a host, or C{localhost}
        when neither can be a field value.
    """
    args: list[str] = []
    kwargs: dict[str, str] = {}
    try:
        args, kwargs = _parse(description)
    except Exception:
        pass  # not an endpoint string: no host in it
    kind = args[0] if args else ""
    host = str(kwargs.get("host", args[1] if len(args) > 1 else ""))
    port = str(kwargs.get("port", args[2] if len(args) > 2 else ""))
    if kind not in _DEFAULT_PORTS or not _HOST.fullmatch(host):
        return (name if _HOST.fullmatch(name) else "localhost").encode("ascii")
    if ":" in host:
        host = f"[{host}]"
    if port and port != _DEFAULT_PORTS[kind]:
        host = f"{host}:{port}"
    return host.encode("ascii")


def http_request(path: bytes, host: bytes) -> bytes:
    """
    The request a probe sends.

    @param path: the request target (see L{valid_path}).
    @param host: the C{Host} field's value.
    """
    return (
        b"GET " + path + b" HTTP/1.1\r\n"
        b"Host: " + host + b"\r\n"
        b"User-Agent: " + USER_AGENT + b"\r\n"
        b"Connection: close\r\n\r\n"
    )
