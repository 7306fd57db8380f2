"""
The public HTTP side of the front: static files from C{--http-root}, served by
C{twisted.web}.

L{StaticRoot} is C{twisted.web.static.File} (content types, HEAD, ranges, files
streamed by a pull producer 64 KiB at a time, so memory stays bounded for any
file size) with the defaults a public server wants:

  - no folder listing unless asked (C{--http-listing});
  - nothing outside the root: C{..} segments are refused by C{FilePath}, and a
    symbolic link inside the root that resolves outside it is a 404;
  - hidden files (a segment starting with C{.}, such as C{.git} or C{.env})
    are a 404, except C{.well-known}; a listing does not show them either, nor
    links that leave the root;
  - a path segment with a NUL byte or invalid UTF-8 is a 404 (not a 500, and
    no traceback in the log per request);
  - methods other than GET and HEAD get a 405 with C{Allow: GET, HEAD}, and
    so does C{OPTIONS *} (Twisted answers it 200);
  - C{Range} requests follow the policy of L{gateway.http.ranges} (invalid or
    more than 64 ranges: the whole file; overlapping ones merged), and every
    response body is read from its file 64 KiB at a time, ranges or not;
  - content types come from a pinned table for the common web types (so they
    do not depend on the host's C{/etc/mime.types}), then the host's table,
    and unknown extensions are C{application/octet-stream}, never HTML.

L{make_site} builds the C{Site} whose channels the front door attaches to
connections it classified as HTTP.
"""

from __future__ import annotations

import os
from typing import IO, Any, cast

from twisted.internet.interfaces import (
    IDelayedCall,
    IPullProducer,
    IPushProducer,
    IReactorTime,
)
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http, pages, resource
from twisted.web.http import NO_BODY_CODES, HTTPChannel
from twisted.web.iweb import IRequest
from twisted.web.server import Request, Site
from twisted.web.static import File
from typing_extensions import override
from zope.interface import implementer

from gateway.connection import describe_peer
from gateway.front.limits import Refusal
from gateway.http.ranges import FileParts, Multipart, ResponseConsumer, select_ranges
from gateway.ops.access import HTTP_CLIENT_LEFT, HTTP_COMPLETE, log_http_request
from gateway.ops.registry import RefusalLog

__all__ = [
    "HEADER_TIMEOUT",
    "MAX_BODY",
    "HTTP_IDLE_TIMEOUT",
    "SEND_TIMEOUT",
    "GatewayHTTPChannel",
    "GatewayRequest",
    "HTTPSite",
    "StaticRoot",
    "make_site",
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

_NOT_FOUND = pages.notFound("No Such Resource", "No such file.")

WEB_TYPES = {
    ".html": "text/html",
    ".htm": "text/html",
    ".css": "text/css",
    ".js": "text/javascript",
    ".mjs": "text/javascript",
    ".json": "application/json",
    ".map": "application/json",
    ".wasm": "application/wasm",
    ".txt": "text/plain",
    ".xml": "application/xml",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".gif": "image/gif",
    ".webp": "image/webp",
    ".avif": "image/avif",
    ".ico": "image/vnd.microsoft.icon",
    ".woff": "font/woff",
    ".woff2": "font/woff2",
    ".ttf": "font/ttf",
    ".otf": "font/otf",
    ".mp3": "audio/mpeg",
    ".ogg": "audio/ogg",
    ".wav": "audio/wav",
    ".mp4": "video/mp4",
    ".webm": "video/webm",
    ".pdf": "application/pdf",
    ".zip": "application/zip",
}
"""Content types pinned for the files a game's web site serves."""

_ALLOWED_METHODS = (b"GET", b"HEAD")


def _is_hidden(name: str) -> bool:
    return name.startswith(".") and name != ".well-known"


class StaticRoot(File):
    """
    A folder of static files that never serves anything outside its root.

    @ivar root_real: the resolved (symlink-free) path of the root folder.
    @ivar listing: whether folders without an index file are listed.
    """

    childNotFound = _NOT_FOUND  # type: ignore[assignment]
    contentTypes = {**File.contentTypes, **WEB_TYPES}

    def __init__(self, path: str, *, listing: bool = False, root_real: str | None = None) -> None:
        """
        @param path: the folder (or, for children, the file) this resource serves.
        @param listing: list folders that have no index file.
        @param root_real: the resolved root; L{None} for the root itself.
        """
        super().__init__(path, defaultType="application/octet-stream")
        # Only real HTML index files: File's default list also has "index" and
        # "index.rpy", and this server runs no resource scripts.
        self.indexNames = ["index.html", "index.htm"]
        self.listing = listing
        self.root_real = root_real if root_real is not None else os.path.realpath(path)

    @override
    def getChild(self, path: bytes, request: IRequest) -> resource.IResource:
        try:
            name = path.decode("utf-8")
        except UnicodeDecodeError:
            return self.childNotFound
        if "\x00" in name or _is_hidden(name):
            return self.childNotFound
        return super().getChild(path, request)  # type: ignore[no-any-return]

    @override
    def render(self, request: IRequest) -> bytes | int:
        if request.method not in _ALLOWED_METHODS:
            request.setResponseCode(405)
            request.setHeader(b"allow", b", ".join(_ALLOWED_METHODS))
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return b"405 Method Not Allowed: this server only serves files (GET, HEAD).\n"
        return super().render(request)  # type: ignore[no-any-return]

    @override
    def makeProducer(self, request: IRequest, fileForReading: IO[bytes]) -> FileParts:  # noqa: N803
        # Instead of Twisted's producers: its multi-range one reads a whole
        # file at once once part headers pass 64 KiB (a negative read size),
        # or fails mid-response; and none of them notices a file cut short.
        size = self.getFileSize()
        spans = select_ranges(request.getHeader(b"range"), size)
        consumer = cast(ResponseConsumer, request)
        if spans is None:
            self._setContentHeaders(request)
            request.setResponseCode(http.OK)
            return FileParts(consumer, fileForReading, [(0, size)] if size else [])
        if not spans:
            request.setResponseCode(http.REQUESTED_RANGE_NOT_SATISFIABLE)
            request.setHeader(b"content-range", b"bytes */%d" % size)
            request.setHeader(b"content-length", b"0")
            return FileParts(consumer, fileForReading, [])
        request.setResponseCode(http.PARTIAL_CONTENT)
        if len(spans) == 1:
            start, stop = spans[0]
            self._setContentHeaders(request, stop - start)
            request.setHeader(b"content-range", b"bytes %d-%d/%d" % (start, stop - 1, size))
            return FileParts(consumer, fileForReading, spans)
        multipart = Multipart((self.type or "application/octet-stream").encode("ascii"), size)
        request.setHeader(b"content-type", multipart.content_type)
        request.setHeader(b"content-length", b"%d" % multipart.length(spans))
        return FileParts(consumer, fileForReading, spans, multipart)

    @override
    def listNames(self) -> list[str]:
        names = super().listNames()
        folder = self.path
        return [
            name
            for name in names
            if not _is_hidden(name) and self._inside(os.path.realpath(os.path.join(folder, name)))
        ]

    def _inside(self, real: str) -> bool:
        """
        Whether a resolved path is the root or below it.
        """
        return real == self.root_real or real.startswith(self.root_real + os.sep)

    @override
    def createSimilarFile(self, path: str) -> resource.IResource:
        if not self._inside(os.path.realpath(path)):
            # A symbolic link that leaves the root.
            return self.childNotFound
        return StaticRoot(path, listing=self.listing, root_real=self.root_real)

    @override
    def directoryListing(self) -> resource.IResource:
        if self.listing:
            return super().directoryListing()  # type: ignore[no-any-return]
        return self.childNotFound


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

    site: HTTPSite
    _log = Logger()

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
        if self._body_too_large():
            # A static site takes no request bodies: refuse a large or chunked
            # one before Twisted spools it to a temporary file.
            self._refuse(Refusal.BAD_REQUEST, b"413 Content Too Large", "request body too large")
            return
        super().allHeadersReceived()

    @override
    def allContentReceived(self) -> None:
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

    def _body_too_large(self) -> bool:
        headers = self.requests[-1].requestHeaders if self.requests else None
        if headers is None:
            return False
        if headers.getRawHeaders(b"transfer-encoding"):
            return True
        for value in headers.getRawHeaders(b"content-length") or []:
            try:
                if int(value) > MAX_BODY:
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
        pump = _PullPump(producer, self.site.reactor, self._producer_failed)
        self._requestProducer = pump
        self._requestProducerStreaming = False
        pump.startStreaming()

    def _producer_failed(self, failure: Failure) -> None:
        """
        The response's producer raised: the response can never be completed,
        so the connection is aborted (the client sees it cut short, and the
        connection's slots are freed).
        """
        self._log.failure(
            "response to {peer} failed mid-response; connection aborted",
            failure,
            peer=self._peer(),
        )
        self._abort()

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
        if self._writes != self._watch_mark:
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

    @override
    def loseConnection(self) -> None:
        # A connection being closed waits for its buffered bytes to be
        # taken; a client that never reads them would hold it for ever.
        if self._closing_call is None and self.transport is not None:
            self._closing_call = self.callLater(self.site.send_timeout, self._abort)
        super().loseConnection()

    @override
    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._stop_header_timer()
        self._stop_watch()
        if self._closing_call is not None and self._closing_call.active():
            self._closing_call.cancel()
        self._closing_call = None
        super().connectionLost(reason)


LOGGED_PATH_LIMIT = 1024
"""Characters of a request's path kept in its access log event."""


class GatewayRequest(Request):
    """
    A request that notes when its request line arrived, for the access log,
    and is logged also when its client leaves before the response is done.
    """

    def __init__(self, channel: HTTPChannel, *args: object, **kwargs: object) -> None:
        super().__init__(channel, *args, **kwargs)
        site = getattr(channel, "site", None)
        self.received_at = site.reactor.seconds() if site is not None else 0.0
        self.dispatched = False

    @override
    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        # The whole request is in: from here on it is served, and logged.
        # (A request refused earlier, e.g. a 413 or a cut header, is a
        # counted refusal instead.)
        self.dispatched = True
        super().requestReceived(command, path, version)

    @override
    def write(self, data: bytes) -> None:
        channel = self.channel
        if not self.startedWriting and self.clientproto == b"HTTP/1.0" and channel is not None:
            # HTTP/1.0 keep-alive (asked for, see checkPersistence): only a
            # response whose end the client can tell keeps the connection.
            if channel.persistent and (
                self.method == b"HEAD"
                or self.code in NO_BODY_CODES
                or self.responseHeaders.hasHeader(b"content-length")
            ):
                self.responseHeaders.setRawHeaders(b"connection", [b"keep-alive"])
            else:
                channel.persistent = False
        super().write(data)

    def _handleStar(self) -> None:  # noqa: N802 - Twisted's name
        # Twisted answers OPTIONS * with 200 (and other methods with 405
        # "Allow: OPTIONS"), though OPTIONS on any resource is a 405: a
        # server that serves only some methods says which, everywhere.
        # Other methods cannot name "*" (RFC 9112 3.2.4): a 400.
        if self.method == b"OPTIONS":
            self.setResponseCode(http.NOT_ALLOWED)
            methods = getattr(self.site, "methods", _ALLOWED_METHODS)
            self.setHeader(b"allow", b", ".join(methods))
        else:
            self.setResponseCode(http.BAD_REQUEST)
        self.setHeader(b"content-length", b"0")
        self.finish()

    @override
    def connectionLost(self, reason: Failure) -> None:
        channel = self.channel
        super().connectionLost(reason)
        site = getattr(channel, "site", None)
        if self.dispatched and not self.finished and isinstance(site, HTTPSite):
            site.log_request(self, HTTP_CLIENT_LEFT, channel)


class HTTPSite(Site):
    """
    A C{Site} that builds L{GatewayHTTPChannel}s (plain HTTP/1.x).

    The front door needs the channel itself (not Twisted's generic wrapper that
    can switch to HTTP/2 after TLS ALPN) to finish a response for a client that
    half-closed its side.

    @ivar header_timeout: seconds a request's line, headers and body may take.
    @ivar send_timeout: seconds a response may make no progress (see
        L{SEND_TIMEOUT}).
    @ivar refusals: where timeouts and bad requests are counted, or L{None}.
    @ivar methods: the methods the site serves (named in C{Allow}).
    """

    protocol = GatewayHTTPChannel  # type: ignore[assignment]
    requestFactory = GatewayRequest  # noqa: N815 - twisted.web's name
    displayTracebacks = False
    methods: tuple[bytes, ...] = _ALLOWED_METHODS
    reactor: IReactorTime

    def __init__(
        self,
        resource: resource.IResource,
        *,
        reactor: IReactorTime,
        header_timeout: float = HEADER_TIMEOUT,
        send_timeout: float = SEND_TIMEOUT,
        refusals: RefusalLog | None = None,
    ) -> None:
        super().__init__(resource, timeout=HTTP_IDLE_TIMEOUT, reactor=reactor)
        self.header_timeout = header_timeout
        self.send_timeout = send_timeout
        self.refusals = refusals

    @override
    def log(self, request: http.Request) -> None:
        """
        The access log event of a request whose response was written
        (instead of Twisted's common log format line).
        """
        self.log_request(request, HTTP_COMPLETE, request.channel)

    def log_request(self, request: http.Request, reason: str, channel: HTTPChannel | None) -> None:
        """
        Emit the access log event of C{request}.

        @param reason: C{HTTP_COMPLETE} or C{HTTP_CLIENT_LEFT}.
        @param channel: the request's channel (a request that lost its
            connection no longer has one).
        """
        transport = getattr(channel, "transport", None)
        peer = describe_peer(transport.getPeer()) if transport is not None else "-"
        try:
            bytes_in = int(request.getHeader(b"content-length") or 0)
        except ValueError:
            bytes_in = 0
        started = getattr(request, "received_at", None)
        method = request.method or b"-"
        log_http_request(
            peer=peer,
            method=method.decode("ascii", "backslashreplace"),
            path=(request.uri or b"-").decode("utf-8", "backslashreplace")[:LOGGED_PATH_LIMIT],
            status=int(request.code),
            bytes_in=bytes_in,
            bytes_out=request.sentLength,
            duration=self.reactor.seconds() - started if started is not None else 0.0,
            reason=reason,
        )


def make_site(
    http_root: str | None,
    *,
    listing: bool,
    reactor: IReactorTime,
    header_timeout: float = HEADER_TIMEOUT,
    refusals: RefusalLog | None = None,
) -> HTTPSite:
    """
    Build the public HTTP site.

    @param http_root: the folder to serve, or L{None} to answer 404 to everything.
    @param listing: list folders without an index file.
    @param reactor: the reactor for the channels' timeouts.
    @param header_timeout: seconds a request's line, headers and body may take.
    @param refusals: where timeouts and bad requests are counted.
    """
    root: resource.IResource
    if http_root is None:
        root = pages.notFound(
            "No Such Resource", "This gateway serves no HTTP content (no --http-root)."
        )
    else:
        root = StaticRoot(http_root, listing=listing)
    return HTTPSite(root, reactor=reactor, header_timeout=header_timeout, refusals=refusals)
