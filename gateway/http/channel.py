"""
The HTTP/1.x connection of the public front and of the admin endpoint:
L{GatewayHTTPChannel}, Twisted's C{HTTPChannel} with the limits a public
server needs (see the class), and the pump that sends a response's pull
producer (a file's parts) on the site's clock.

The channel reads its settings from the site that built it (L{ChannelSite}:
its clock, timeouts and refusal log), so it does not depend on which site
class that is.
"""

from __future__ import annotations

from typing import Any, Protocol

from twisted.internet.interfaces import (
    IDelayedCall,
    IPullProducer,
    IPushProducer,
    IReactorTime,
)
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel
from twisted.web.server import Request
from typing_extensions import override
from zope.interface import implementer

from gateway.connection import describe_peer
from gateway.front.limits import Refusal
from gateway.http.routes import origin_form
from gateway.ops.registry import RefusalLog

__all__ = [
    "HEADER_TIMEOUT",
    "HTTP_IDLE_TIMEOUT",
    "MAX_BODY",
    "SEND_TIMEOUT",
    "ChannelSite",
    "GatewayHTTPChannel",
]

HTTP_IDLE_TIMEOUT = 60.0
"""Seconds an HTTP keep-alive connection may sit idle between requests."""

MAX_BODY = 64 * 1024
"""The largest request body accepted (static files need none)."""

HEADER_TIMEOUT = 10.0
"""Default seconds a request (line, headers and body) may take to arrive (slowloris)."""

SEND_TIMEOUT = 60.0
"""Seconds a response may make no progress (nothing written: a stuck producer,
a client that does not read) before its connection is aborted; also the
time a closing connection gets to take its last bytes (nginx's C{send_timeout})."""


class ChannelSite(Protocol):
    """
    What a L{GatewayHTTPChannel} reads from the site that built it
    (L{gateway.http.site.HTTPSite}).
    """

    @property
    def reactor(self) -> IReactorTime:
        """
        The clock of the channel's timers and of its pull producers' pump.
        """

    @property
    def header_timeout(self) -> float:
        """
        Seconds a request's line, headers and body may take.
        """

    @property
    def send_timeout(self) -> float:
        """
        Seconds a response may make no progress (see L{SEND_TIMEOUT}).
        """

    @property
    def refusals(self) -> RefusalLog | None:
        """
        Where timeouts and bad requests are counted, or L{None}.
        """


@implementer(IPushProducer)
class _PullPump:
    """
    Drives a pull producer (a file's parts) for an HTTP channel: one
    C{resumeProducing} per reactor turn while the transport takes data.

    Twisted's own adapter (C{_PullToPush}) runs on the global cooperator and,
    when the producer raises, only unregisters it: the response then never
    ends and its connection is never closed.  This one takes the channel's
    clock, and a producer that raises is reported to C{failed}, once.
    """

    def __init__(
        self,
        producer: IPullProducer,
        clock: IReactorTime,
        failed: Any,
    ) -> None:
        """
        @param failed: called with the L{Failure} when the producer raises.
        """
        self._producer = producer
        self._clock = clock
        self._failed = failed
        self._call: IDelayedCall | None = None
        self._paused = False
        self._stopped = False
        self._producer_stopped = False

    def startStreaming(self) -> None:  # noqa: N802 - what HTTPChannel calls
        """
        Start pulling.
        """
        self._schedule()

    def stopStreaming(self) -> None:  # noqa: N802 - what HTTPChannel calls
        """
        The producer was unregistered: pull no more.
        """
        self._stopped = True
        self._cancel()

    def _schedule(self) -> None:
        if self._call is None and not self._paused and not self._stopped:
            self._call = self._clock.callLater(0, self._pull)

    def _cancel(self) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    def _pull(self) -> None:
        self._call = None
        try:
            self._producer.resumeProducing()
        except Exception:
            failure = Failure()
            self.stopProducing()  # close its file now
            self._failed(failure)
            return
        self._schedule()

    def pauseProducing(self) -> None:  # noqa: N802 - IPushProducer
        """
        The transport is full: pull no more until resumed.
        """
        self._paused = True
        self._cancel()

    def resumeProducing(self) -> None:  # noqa: N802 - IPushProducer
        """
        The transport takes data again: pull.
        """
        self._paused = False
        self._schedule()

    def stopProducing(self) -> None:  # noqa: N802 - IPushProducer
        """
        The connection is gone: stop, and stop the producer (once).
        """
        if self._producer_stopped:
            return
        self._producer_stopped = True
        self.stopStreaming()
        self._producer.stopProducing()


def _tokens(values: list[bytes] | None) -> set[bytes]:
    """
    The lower-cased tokens of a comma-separated header (C{Connection}).
    """
    return {token.strip().lower() for value in values or [] for token in value.split(b",")} - {b""}


class GatewayHTTPChannel(HTTPChannel):
    """
    Twisted's HTTP/1.x channel, hardened against slow and oversized requests
    and against responses that cannot finish:

      - a request's line, headers and body must all arrive within the
        site's C{header_timeout} from its first byte (slowloris, slow
        bodies), else the client gets C{408 Request Timeout} and the
        connection is closed;
      - a request line longer than the line limit gets C{414 URI Too Long},
        a header line longer than it C{431 Request Header Fields Too Large},
        and the connection is closed (Twisted closes without an answer);
      - a request body over L{MAX_BODY} bytes, or a chunked one, gets
        C{413 Content Too Large} at once (the site serves files, it takes no
        uploads), so no client can fill the disk;
      - every such case, and Twisted's own 400 answers, are counted refusals;
      - a response producer that fails mid-response aborts the connection
        (its slots are freed at once); a response that makes no progress for
        the site's C{send_timeout} aborts it too, and so does a closing
        connection whose client does not take its last bytes in that time;
      - HTTP/1.0 keep-alive (C{Connection: keep-alive}) is honoured for
        responses that have a length: they say C{Connection: keep-alive}.
    """

    site: ChannelSite
    _log = Logger()
    websocket_upgrade: Any = None
    """What answers a request on a C{--websocket} path (L{serve_front}; the
    admin endpoint's channels have none)."""
    pass_through: Any = None
    """What passes a WebSocket upgrade through to a proxied pool
    (L{serve_front})."""
    trusted_forwarded: bool = False
    """Whether the connection comes through a trusted proxy, whose
    C{Forwarded} fields are kept (L{serve_front})."""

    def serve_front(
        self, *, websocket_upgrade: Any, pass_through: Any, trusted_forwarded: bool
    ) -> None:
        """
        This channel serves a public front's connection (the front door's):
        what answers WebSocket upgrades, and whether its client comes
        through a trusted proxy.
        """
        self.websocket_upgrade = websocket_upgrade
        self.pass_through = pass_through
        self.trusted_forwarded = trusted_forwarded

    def __init__(self) -> None:
        super().__init__()
        self._header_call: IDelayedCall | None = None
        self.bytes_out = 0
        self._headers_done = False
        self._request_received = False
        self._request_lines = 0
        self._writes = 0
        self._watch_call: IDelayedCall | None = None
        self._watch_mark = 0
        self._watch_since = 0.0
        self._closing_call: IDelayedCall | None = None
        self._refused = False
        self._body_limit = MAX_BODY
        self._body_seen = 0

    @property
    def receiving(self) -> bool:
        """
        Whether a request has begun to arrive and is not complete yet.
        """
        return self._header_call is not None

    @override
    def dataReceived(self, data: bytes) -> None:
        if self.transport is None or self.transport.disconnecting:  # type: ignore[attr-defined]
            return  # answered (408, 414, ...) and closing: nothing more to parse
        self._start_header_timer()
        super().dataReceived(data)

    def _start_header_timer(self) -> None:
        if self._header_call is None and not self._request_received:
            self._header_call = self.callLater(self.site.header_timeout, self._header_timed_out)

    @override
    def lineReceived(self, line: bytes) -> None:
        self._request_lines += 1
        super().lineReceived(line)

    @override
    def allHeadersReceived(self) -> None:
        # The request timer goes on until the body is in too (a body sent
        # one byte at a time must not hold the connection for ever).
        self._headers_done = True
        self._request_lines = 0
        limit = self._route_body_limit()
        if self._body_too_large(limit):
            # Files take no request bodies, a proxied route up to its
            # max-body: refuse a larger one (or a chunked one for files)
            # before Twisted spools it to a temporary file.
            self._refuse(Refusal.BAD_REQUEST, b"413 Content Too Large", "request body too large")
            return
        self._body_limit = MAX_BODY if limit is None else limit
        self._body_seen = 0
        super().allHeadersReceived()

    def _route_body_limit(self) -> int | None:
        """
        The largest body the request's route takes (a proxied route's
        C{max-body}), or L{None} for files (L{MAX_BODY}, not chunked).
        """
        limit_of = getattr(self.site, "body_limit", None)
        if limit_of is None or not self.requests:
            return None
        host = self.requests[-1].requestHeaders.getRawHeaders(b"host", [None])[0]
        target, host = origin_form(getattr(self, "_path", b""), host)
        limit: int | None = limit_of(host, target.split(b"?", 1)[0])
        return limit

    def body_received(self, size: int) -> bool:
        """
        C{size} more bytes of the request's body arrived (counted for a
        chunked body, whose length is not known beforehand).

        @return: whether to keep them (else the request was refused with a
            413 and the connection is closing).
        """
        self._body_seen += size
        if self._body_seen > self._body_limit and not self._refused:
            self._refuse(Refusal.BAD_REQUEST, b"413 Content Too Large", "request body too large")
        return not self._refused

    @override
    def allContentReceived(self) -> None:
        if self._refused:
            return  # its body went over the limit: answered 413, closing
        self._stop_header_timer()
        self._request_received = True
        self._headers_done = False
        self._start_watch()
        super().allContentReceived()

    @override
    def checkPersistence(self, request: Any, version: bytes) -> bool:
        if version == b"HTTP/1.0":
            # Twisted never keeps an HTTP/1.0 connection; HTTP/1.0 servers
            # do when asked, if the response has a length (GatewayRequest
            # decides that when it writes the headers).
            tokens = _tokens(request.requestHeaders.getRawHeaders(b"connection"))
            return b"keep-alive" in tokens and b"close" not in tokens
        return bool(super().checkPersistence(request, version))

    def _body_too_large(self, limit: int | None) -> bool:
        headers = self.requests[-1].requestHeaders if self.requests else None
        if headers is None:
            return False
        if headers.getRawHeaders(b"transfer-encoding") and limit is None:
            return True
        for value in headers.getRawHeaders(b"content-length") or []:
            try:
                if int(value) > (MAX_BODY if limit is None else limit):
                    return True
            except ValueError:
                return False  # Twisted answers a malformed length with its 400
        return False

    @override
    def requestDone(self, request: Request) -> None:
        self.bytes_out += request.sentLength
        # The next request gets its own time limit, from its first byte; if
        # it was pipelined (already buffered), from now.
        self._request_received = False
        super().requestDone(request)
        if not self._handlingRequest:
            self._stop_watch()
        if self.persistent and self._buffer and self.transport is not None:
            if not self.transport.disconnecting:  # type: ignore[attr-defined]
                self._start_header_timer()

    def _header_timed_out(self) -> None:
        self._header_call = None
        part = "body" if self._headers_done else "headers"
        self._refuse(
            Refusal.TIMEOUT,
            b"408 Request Timeout",
            f"request {part} not complete within {self.site.header_timeout:g} s",
        )

    @override
    def lineLengthExceeded(self, line: bytes) -> None:
        if self._request_lines == 0:
            self._refuse(Refusal.BAD_REQUEST, b"414 URI Too Long", "request line too long")
        else:
            self._refuse(
                Refusal.BAD_REQUEST,
                b"431 Request Header Fields Too Large",
                "header line too long",
            )

    def _respondToBadRequestAndDisconnect(self) -> None:  # noqa: N802 - Twisted's name
        # Twisted's single exit for malformed requests and oversized headers.
        self._count(Refusal.BAD_REQUEST, "bad request")
        super()._respondToBadRequestAndDisconnect()

    def _refuse(self, reason: Refusal, status: bytes, detail: str) -> None:
        self._refused = True
        self._count(reason, detail)
        body = status + b"\n"
        assert self.transport is not None
        self.transport.write(
            b"HTTP/1.1 "
            + status
            + b"\r\nContent-Type: text/plain\r\nContent-Length: "
            + str(len(body)).encode()
            + b"\r\nConnection: close\r\n\r\n"
            + body
        )
        self.loseConnection()

    def _count(self, reason: Refusal, detail: str) -> None:
        self._stop_header_timer()
        refusals = self.site.refusals
        if refusals is not None and self.transport is not None:
            refusals.refused(reason, describe_peer(self.transport.getPeer()), detail)

    def _stop_header_timer(self) -> None:
        if self._header_call is not None and self._header_call.active():
            self._header_call.cancel()
        self._header_call = None

    # Responses that cannot finish -------------------------------------------

    @override
    def write(self, data: bytes) -> None:
        self._writes += 1
        super().write(data)

    @override
    def writeSequence(self, iovec: list[bytes]) -> None:
        self._writes += 1
        super().writeSequence(iovec)

    @override
    def registerProducer(self, producer: Any, streaming: bool) -> None:
        if streaming:
            super().registerProducer(producer, streaming)
            return
        if self._requestProducer is not None:
            raise RuntimeError(f"a producer is already registered: {self._requestProducer!r}")
        pump = _PullPump(producer, self.site.reactor, self.response_failed)
        self._requestProducer = pump
        self._requestProducerStreaming = False
        pump.startStreaming()

    def response_failed(self, failure: Failure) -> None:
        """
        The response's producer raised (or its file could not be sent): the
        response can never be completed, so the connection is aborted (the
        client sees it cut short, and the connection's slots are freed).
        """
        self._log.failure(
            "response to {peer} failed mid-response; connection aborted",
            failure,
            peer=self._peer(),
        )
        self._abort()

    def lend_transport(self, producer: IPullProducer) -> None:
        """
        Let C{producer} write the response's body to the transport itself
        (L{gateway.http.sendfile}): it becomes the transport's pull producer,
        asked for more each time the transport's buffer has been sent, in
        the channel's place until L{take_back_transport}.
        """
        transport: Any = self.transport
        transport.unregisterProducer()
        transport.registerProducer(producer, False)

    def take_back_transport(self) -> None:
        """
        The producer given the transport by L{lend_transport} is done: the
        channel produces for its transport again (as C{connectionMade} set
        it), with nothing waiting to be sent.
        """
        transport: Any = self.transport
        if transport is None:
            return
        transport.unregisterProducer()
        transport.registerProducer(self, True)
        # Nothing is queued: whatever paused the channel before is over.
        self.resumeProducing()

    def response_progress(self) -> None:
        """
        A lent transport's producer sent some of the body: the response is
        making progress (see L{SEND_TIMEOUT}).
        """
        self._writes += 1

    def _peer(self) -> str:
        return describe_peer(self.transport.getPeer()) if self.transport is not None else "-"

    def _abort(self) -> None:
        self._stop_watch()
        transport = self.transport
        if transport is not None:
            transport.abortConnection()  # type: ignore[attr-defined]

    def _start_watch(self) -> None:
        if self._watch_call is None:
            self._watch_mark = self._writes
            self._watch_since = self.site.reactor.seconds()
            self._watch_call = self.callLater(self.site.send_timeout / 4, self._watch)

    def _stop_watch(self) -> None:
        if self._watch_call is not None and self._watch_call.active():
            self._watch_call.cancel()
        self._watch_call = None

    def _watch(self) -> None:
        # Progress by a counter checked every S/4 (no timer reset per write):
        # a response that wrote nothing for S seconds is stuck, whether its
        # producer stalled or its client stopped reading.
        self._watch_call = None
        now = self.site.reactor.seconds()
        if self._writes != self._watch_mark or self._awaiting_backend():
            # (A proxied request waiting for its backend's answer is bounded
            # by its route's timeout, which may be longer: a 504 then.)
            self._watch_mark, self._watch_since = self._writes, now
        elif now - self._watch_since >= self.site.send_timeout:
            self._log.info(
                "response to {peer} made no progress for {timeout:g} s; connection aborted",
                peer=self._peer(),
                timeout=self.site.send_timeout,
            )
            self._abort()
            return
        self._watch_call = self.callLater(self.site.send_timeout / 4, self._watch)

    def _awaiting_backend(self) -> bool:
        """
        Whether the response under way is a proxied one whose backend has
        not answered yet.
        """
        request = self.requests[0] if self.requests else None
        return (
            request is not None
            and not request.startedWriting
            and getattr(request, "gateway_backend", None) is not None
        )

    @override
    def loseConnection(self) -> None:
        # A connection being closed waits for its buffered bytes to be
        # taken; a client that never reads them would hold it for ever.
        if self._closing_call is None and self.transport is not None:
            self._closing_call = self.callLater(self.site.send_timeout, self._abort)
        super().loseConnection()

    def let_go(self, request: Request) -> bytes:
        """
        Stop serving this connection: its last request (C{request}) made it
        something else (a WebSocket).  The timers stop, the request is
        forgotten (it never gets a response, and is not logged as one), and
        nothing here reads or writes the connection again.

        @return: the bytes read past the request, in order.
        """
        self._stop_header_timer()
        self._stop_watch()
        self.setTimeout(None)
        self._savedTimeOut = None
        if request in self.requests:
            self.requests.remove(request)
        leftover = self._buffer + b"".join(self._dataBuffer)
        self._buffer = b""
        self._dataBuffer = []
        self.dataReceived = lambda data: None  # type: ignore[method-assign]
        if self.transport is not None:
            # The channel produces for its transport (HTTPChannel's
            # connectionMade registers it): the session's producers come next.
            self.transport.unregisterProducer()  # type: ignore[attr-defined]
        self.transport = None
        return leftover

    @override
    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._stop_header_timer()
        self._stop_watch()
        if self._closing_call is not None and self._closing_call.active():
            self._closing_call.cancel()
        self._closing_call = None
        super().connectionLost(reason)
