"""
One health probe of one backend: a short connection made the way a game
session makes one, through C{backend.endpoint.connect}.

  1. B{Connect.}  A plain TCP connection is ready when it is made; a C{tls:}
     backend's connection is ready once its TLS handshake is done (its
     certificate and host name verified).
  2. B{Send and expect}, when the backend's L{HealthCheck} says so: write
     C{send}, then wait until C{expect} appears somewhere in what the backend
     sends (split across reads or not).  Only the last C{len(expect) - 1}
     bytes are kept between reads, so a chatty backend cannot make the probe
     buffer without bound.
  2'. B{Or an HTTP request}, when the check has an C{http_path}: send
     C{GET path} (see L{gateway.pool.httpcheck} for the request and how its
     answer is read), and pass if the answer's status is the expected one
     (any 2xx or 3xx when none is given).  A garbled answer, a connection
     closed before the status line, or another status fails the probe, with
     the reason in the log (C{"HTTP 503 (expected 2xx or 3xx)"}).
  3. B{Close}: the probe's connection is closed cleanly (a FIN, or a TLS
     close_notify), and aborted if that has not finished by the deadline.

Everything must be done within the probe's timeout, which runs from the start
of the connection attempt: an attempt still connecting is cancelled, an open
connection is aborted, and the probe has failed.  A probe that cannot be made
for want of the gateway's own resources (see
L{gateway.session.backendlink.LOCAL_ERRNOS}) has no result.  What the results
mean for the backend's state is L{gateway.pool.health}'s business.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol as Structural
from typing import cast

from twisted.internet.defer import CancelledError, Deferred, maybeDeferred
from twisted.internet.error import ConnectingCancelledError, ConnectionDone
from twisted.internet.interfaces import (
    IDelayedCall,
    IHandshakeListener,
    IProtocol,
    IReactorTime,
)
from twisted.logger import Logger
from twisted.python.failure import Failure
from typing_extensions import override
from zope.interface import implementer

from gateway.connection import OneShotFactory, ReadinessMixin
from gateway.pool.backends import Backend
from gateway.pool.httpcheck import (
    StatusLineError,
    StatusLineReader,
    host_header,
    http_request,
    passes,
    valid_host,
    valid_path,
)
from gateway.session.backendlink import describe_failure, local_shortage

__all__ = ["HealthCheck", "Probe", "quote_bytes"]

_SHOWN = 32
"""Bytes of an unexpected answer quoted in a failed probe's reason."""

_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(char: str) -> str:
    code = ord(char)
    if 0xDC80 <= code <= 0xDCFF:  # a byte that is not UTF-8 (surrogateescape)
        return f"\\x{code - 0xDC00:02x}"
    if code < 0x80:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def quote_bytes(data: bytes) -> str:
    """
    Bytes of a wire exchange as text for a reason an operator reads (the
    log, the dashboard): in double quotes, UTF-8 decoded, with C{\\n},
    C{\\r}, C{\\t} escapes, and C{\\xNN} for another control character or a
    byte that is not UTF-8, C{\\uNNNN} for a character that does not print.  Not
    Python's C{repr} of bytes (C{b'PONG\\r\\n'}), which is a programmer's
    notation.

    @return: for example C{"ERR busy\\n"}.
    """
    # surrogateescape turns each byte that is not UTF-8 into one code point
    # (U+DC80 to U+DCFF), escaped below as that byte.
    text = data.decode("utf-8", "surrogateescape")
    shown = (_ESCAPES.get(c) or (c if c.isprintable() else _escape(c)) for c in text)
    return '"' + "".join(shown) + '"'


@dataclass(frozen=True, slots=True)
class HealthCheck:
    """
    What a probe of one backend does once connected.

    @ivar send: bytes written once the connection is ready (none if empty).
    @ivar expect: bytes that must then appear in what the backend sends; when
        empty, connecting (TLS handshake included) is the whole check.
    @ivar timeout: seconds for the whole probe, connect included; L{None} for
        the checker's timeout.
    @ivar preamble: bytes written first (a PROXY header for a backend that
        expects one); L{None} for the checker's preamble.
    @ivar http_path: for an HTTP check, the path (and query) of the request
        sent instead of C{send} (which must then be empty, as C{expect}).
    @ivar http_status: the status an HTTP check wants; L{None} for any 2xx
        or 3xx.
    @ivar http_host: the C{Host} an HTTP check sends; L{None} for the
        backend's host as its endpoint string says (or its name).
    """

    send: bytes = b""
    expect: bytes = b""
    timeout: float | None = None
    preamble: bytes | None = None
    http_path: bytes | None = None
    http_status: int | None = None
    http_host: bytes | None = None

    def __post_init__(self) -> None:
        """
        @raise ValueError: the timeout is not a positive number of seconds,
            or the HTTP settings do not make a check.
        """
        if self.timeout is not None and not self.timeout > 0:
            raise ValueError(f"health check timeout must be positive, not {self.timeout!r}")
        if self.http_path is None:
            if self.http_status is not None or self.http_host is not None:
                raise ValueError("an HTTP health check's status or host needs its path")
            return
        if self.send or self.expect:
            raise ValueError("a health check sends an HTTP request or bytes, not both")
        if not valid_path(self.http_path):
            raise ValueError(f"not a path for an HTTP health check: {self.http_path!r}")
        if self.http_status is not None and not 100 <= self.http_status <= 599:
            raise ValueError(f"not an HTTP status: {self.http_status!r}")
        if self.http_host is not None and not valid_host(self.http_host):
            raise ValueError(f"not a Host for an HTTP health check: {self.http_host!r}")


class _Connection(Structural):
    """
    What a probe uses of its connected transport (TCP and TLS transports both
    have these, though ITransport lacks C{abortConnection}).
    """

    def write(self, data: bytes) -> None: ...
    def loseConnection(self) -> None: ...
    def abortConnection(self) -> None: ...


@implementer(IHandshakeListener)
class Probe(ReadinessMixin):
    """
    One health check of one backend, from the connection attempt to the close.

    It provides L{IHandshakeListener} only: Twisted's client endpoints copy
    just the last of a protocol's interfaces onto their wrapper (see
    C{_restore_half_close} in L{gateway.session.backendlink}), and a probe has no use for
    half-closes anyway (a backend's end of stream ends the probe).

    @ivar backend: the backend probed.
    @ivar check: what to do once connected.
    @ivar timeout: seconds for the whole probe.
    @ivar passed: the result once decided (L{None} before).
    @ivar finished: whether the probe is over (its connection gone, aborted,
        or never made); the checker may then start the next one.
    @ivar short: why the probe could not be made, if it could not for want
        of the gateway's own resources (then it has no result).
    """

    _log = Logger()

    def __init__(
        self,
        backend: Backend,
        check: HealthCheck,
        timeout: float,
        clock: IReactorTime,
        report: Callable[[Probe, bool, str], None],
        finish: Callable[[Probe], None],
        preamble: bytes = b"",
    ) -> None:
        """
        @param clock: for the timeout.
        @param preamble: bytes written first on the connection (the PROXY
            header of a backend that expects one).
        @param report: called once with the probe, its result and, for a
            failure, the reason (never for a probe stopped by L{abort}, nor
            for one that could not be made for want of the gateway's own
            resources: that says nothing about the backend).
        @param finish: called once with the probe when it is over.
        """
        self.backend = backend
        self.check = check
        self.preamble = preamble
        self.timeout = timeout
        self._clock = clock
        self._report = report
        self._finish = finish
        self.passed: bool | None = None
        self.finished = False
        self.short: str | None = None
        self._silent = False
        self._ready = False
        self._attempt: Deferred[IProtocol] | None = None
        self._deadline: IDelayedCall | None = None
        self._tail = b""
        self._received = 0
        self._head = b""
        self._reader = StatusLineReader() if check.http_path is not None else None

    def start(self) -> None:
        """
        Begin the connection attempt.
        """
        self._deadline = self._clock.callLater(self.timeout, self._timed_out)
        # maybeDeferred: an endpoint that raises is a failed probe too.
        attempt: Deferred[IProtocol] = maybeDeferred(
            self.backend.endpoint.connect, OneShotFactory(self)
        )
        if self.transport is None and not self.finished:
            # Still connecting (the endpoint did not answer synchronously).
            self._attempt = attempt
        attempt.addErrback(self._connect_failed)

    def abort(self) -> None:
        """
        Stop the probe without a result (the checker is stopping, or the
        backend left the pool).
        """
        self._silent = True
        self._close(abort=True)

    # Steps

    def _connect_failed(self, failure: Failure) -> None:
        self._attempt = None
        if failure.check(CancelledError, ConnectingCancelledError):
            reason = f"no connection within {self.timeout:g} s"
        elif local_shortage(failure):
            # The gateway is out of descriptors (or buffers, memory, local
            # ports): no result, so the backend's record is not touched (the
            # checker logs it).
            if not self._silent:
                self.short = describe_failure(failure)
            self._silent = True
            self._end()
            return
        else:
            reason = describe_failure(failure)
        self._decide(False, reason)
        self._end()

    @override
    def transport_connected(self, tls: bool) -> None:
        self._attempt = None

    @override
    def transport_ready(self) -> None:
        if self.passed is not None or self.finished:
            return
        self._ready = True
        if self.preamble:
            self._connection().write(self.preamble)
        if self.check.send:
            self._connection().write(self.check.send)
        if self.check.http_path is not None:
            self._connection().write(self._request(self.check.http_path))
        elif not self.check.expect:
            self._decide(True, "")
            self._close()

    def _request(self, path: bytes) -> bytes:
        host = self.check.http_host
        if host is None:
            host = host_header(self.backend.description, self.backend.name)
        return http_request(path, host)

    @override
    def dataReceived(self, data: bytes) -> None:
        expect = self.check.expect
        if not self._ready or self.passed is not None:
            return
        if self._reader is None and not expect:
            return
        if len(self._head) < _SHOWN:
            self._head += data[: _SHOWN - len(self._head)]
        self._received += len(data)
        if self._reader is not None:
            self._read_status(self._reader, data)
            return
        window = self._tail + data
        if expect in window:
            self._decide(True, "")
            self._close()
            return
        # Keep just enough to find the expected bytes split across reads.
        keep = len(expect) - 1
        self._tail = window[len(window) - keep :] if keep else b""

    def _read_status(self, reader: StatusLineReader, data: bytes) -> None:
        """
        Read more of an HTTP check's answer, and decide once its status
        line is there (or cannot be).
        """
        try:
            status = reader.feed(data)
        except StatusLineError as error:
            self._decide(False, str(error) + self._answer())
            self._close()
            return
        if status is None:
            return
        wanted = self.check.http_status
        if passes(status, wanted):
            self._decide(True, "")
        else:
            expected = "2xx or 3xx" if wanted is None else str(wanted)
            self._decide(False, f"HTTP {status} (expected {expected})")
        self._close()

    @override
    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:  # noqa: B008
        if self.passed is None:
            if self._ready:
                text = f"connection closed before {self._awaited()} arrived"
                text += self._answer()
            else:
                text = describe_failure(reason)
            self._decide(False, text)
        self._end()

    def _timed_out(self) -> None:
        self._deadline = None
        if self.passed is None:
            if self.transport is None:
                reason = f"no connection within {self.timeout:g} s"
            elif not self._ready:
                reason = f"TLS handshake not done within {self.timeout:g} s"
            else:
                reason = f"{self._awaited()} not received within {self.timeout:g} s"
                reason += self._answer()
            self._decide(False, reason)
        # Decided but still closing: the peer has had its time.
        self._close(abort=True)

    def _awaited(self) -> str:
        if self._reader is not None:
            return "an HTTP status line"
        return quote_bytes(self.check.expect)

    def _answer(self) -> str:
        if not self._received:
            return " (nothing received)"
        return f" (received {self._received} bytes: {quote_bytes(self._head)})"

    # Ending

    def _connection(self) -> _Connection:
        return cast(_Connection, self.transport)

    def _decide(self, passed: bool, reason: str) -> None:
        """
        Record the result, once, and report it unless the probe was aborted.
        """
        if self.passed is not None or self._silent:
            return
        self.passed = passed
        self._report(self, passed, reason)

    def _close(self, abort: bool = False) -> None:
        """
        Close the probe's connection (cleanly, or by aborting it, which also
        ends the probe), or cancel its connection attempt.
        """
        if self.finished:
            return
        if self.transport is not None:
            if not abort:
                # The probe ends when connectionLost arrives, or at the deadline.
                self._connection().loseConnection()
                return
            self._connection().abortConnection()
        elif self._attempt is not None:
            attempt, self._attempt = self._attempt, None
            # Fails the attempt at once (its errback is _connect_failed).
            attempt.cancel()
        self._end()

    def _end(self) -> None:
        if self.finished:
            return
        self.finished = True
        if self._deadline is not None:
            if self._deadline.active():
                self._deadline.cancel()
            self._deadline = None
        self._finish(self)
