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
  - methods other than GET and HEAD get a 405 with C{Allow: GET, HEAD};
  - content types come from a pinned table for the common web types (so they
    do not depend on the host's C{/etc/mime.types}), then the host's table,
    and unknown extensions are C{application/octet-stream}, never HTML.

L{make_site} builds the C{Site} whose channels the front door attaches to
connections it classified as HTTP.
"""

from __future__ import annotations

import os

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure
from twisted.web import http, pages, resource
from twisted.web.http import HTTPChannel
from twisted.web.iweb import IRequest
from twisted.web.server import Request, Site
from twisted.web.static import File
from typing_extensions import override

from gateway.access import HTTP_CLIENT_LEFT, HTTP_COMPLETE, log_http_request
from gateway.connection import describe_peer
from gateway.limits import Refusal
from gateway.registry import RefusalLog

__all__ = [
    "HEADER_TIMEOUT",
    "MAX_BODY",
    "HTTP_IDLE_TIMEOUT",
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
"""Default seconds a request's line and headers may take to arrive (slowloris)."""

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


class GatewayHTTPChannel(HTTPChannel):
    """
    Twisted's HTTP/1.x channel, hardened against slow and oversized requests:

      - a request's line and headers must all arrive within the site's
        C{header_timeout} from its first byte (slowloris), else the client
        gets C{408 Request Timeout} and the connection is closed;
      - a request line longer than the line limit gets C{414 URI Too Long},
        a header line longer than it C{431 Request Header Fields Too Large},
        and the connection is closed (Twisted closes without an answer);
      - a request body over L{MAX_BODY} bytes, or a chunked one, gets
        C{413 Content Too Large} at once (the site serves files, it takes no
        uploads), so no client can fill the disk or hold a connection with a
        slow upload;
      - every such case, and Twisted's own 400 answers, are counted refusals.
    """

    site: HTTPSite

    def __init__(self) -> None:
        super().__init__()
        self._header_call: IDelayedCall | None = None
        self.bytes_out = 0
        self._headers_done = False
        self._request_lines = 0

    @override
    def dataReceived(self, data: bytes) -> None:
        if self.transport is None or self.transport.disconnecting:  # type: ignore[attr-defined]
            return  # answered (408, 414, ...) and closing: nothing more to parse
        self._start_header_timer()
        super().dataReceived(data)

    def _start_header_timer(self) -> None:
        if self._header_call is None and not self._headers_done:
            self._header_call = self.callLater(self.site.header_timeout, self._header_timed_out)

    @override
    def lineReceived(self, line: bytes) -> None:
        self._request_lines += 1
        super().lineReceived(line)

    @override
    def allHeadersReceived(self) -> None:
        self._headers_done = True
        self._request_lines = 0
        self._stop_header_timer()
        if self._body_too_large():
            # A static site takes no request bodies: refuse a large or chunked
            # one before Twisted spools it to a temporary file (and a slow one
            # before it ties the connection up).
            self._refuse(Refusal.BAD_REQUEST, b"413 Content Too Large", "request body too large")
            return
        super().allHeadersReceived()

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
        # The next request's headers get their own time limit, from its first
        # byte; if it was pipelined (already buffered), from now.
        self._headers_done = False
        super().requestDone(request)
        if self.persistent and self._buffer and self.transport is not None:
            if not self.transport.disconnecting:  # type: ignore[attr-defined]
                self._start_header_timer()

    def _header_timed_out(self) -> None:
        self._header_call = None
        self._refuse(
            Refusal.TIMEOUT,
            b"408 Request Timeout",
            f"request headers not complete within {self.site.header_timeout:g} s",
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

    @override
    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._stop_header_timer()
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

    @ivar header_timeout: seconds a request's line and headers may take.
    @ivar refusals: where timeouts and bad requests are counted, or L{None}.
    """

    protocol = GatewayHTTPChannel  # type: ignore[assignment]
    requestFactory = GatewayRequest  # noqa: N815 - twisted.web's name
    displayTracebacks = False

    def __init__(
        self,
        resource: resource.IResource,
        *,
        reactor: IReactorTime,
        header_timeout: float = HEADER_TIMEOUT,
        refusals: RefusalLog | None = None,
    ) -> None:
        super().__init__(resource, timeout=HTTP_IDLE_TIMEOUT, reactor=reactor)
        self.header_timeout = header_timeout
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
    @param header_timeout: seconds a request's line and headers may take.
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
