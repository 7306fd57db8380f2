"""
The public HTTP site: what the front door attaches to connections it
classified as HTTP (L{make_site}), and the base of the admin endpoint's site.

L{HTTPSite} is a C{twisted.web} C{Site} that builds the hardened channels of
L{gateway.http.channel} and L{GatewayRequest}s, which are timed from their
request line and logged as access events (L{gateway.ops.access}) instead of
Twisted's common-log lines, also when their client leaves before the
response is done; C{OPTIONS *} is a 405 (Twisted answers it 200).  The
files it serves are a L{StaticRoot} (L{gateway.http.static}).
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure
from twisted.web import http, pages, resource
from twisted.web.http import NO_BODY_CODES, HTTPChannel
from twisted.web.server import Request, Site
from typing_extensions import override

from gateway.connection import describe_peer
from gateway.http.channel import (
    HEADER_TIMEOUT,
    HTTP_IDLE_TIMEOUT,
    SEND_TIMEOUT,
    GatewayHTTPChannel,
)
from gateway.http.static import ALLOWED_METHODS, StaticRoot
from gateway.ops.access import HTTP_CLIENT_LEFT, HTTP_COMPLETE, log_http_request
from gateway.ops.registry import RefusalLog

__all__ = [
    "LOGGED_PATH_LIMIT",
    "GatewayRequest",
    "HTTPSite",
    "make_site",
]

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
            methods = getattr(self.site, "methods", ALLOWED_METHODS)
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


class _WebSocketPath(resource.Resource):
    """
    A C{--websocket} path: the connection's front door answers the upgrade
    (L{gateway.front.websocket}); a connection without one (the admin
    endpoint's) has no bridge.
    """

    isLeaf = True  # noqa: N815 - twisted.web's name

    @override
    def render(self, request: Request) -> bytes | int:
        upgrade = getattr(request.channel, "websocket_upgrade", None)
        if upgrade is None:
            request.setResponseCode(http.NOT_FOUND)
            return b""
        result: bytes | int = upgrade(request)
        return result


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
    @ivar websocket_paths: the request paths of the WebSocket bridge.
    """

    protocol = GatewayHTTPChannel  # type: ignore[assignment]
    requestFactory = GatewayRequest  # noqa: N815 - twisted.web's name
    displayTracebacks = False
    methods: tuple[bytes, ...] = ALLOWED_METHODS
    reactor: IReactorTime

    def __init__(
        self,
        resource: resource.IResource,
        *,
        reactor: IReactorTime,
        header_timeout: float = HEADER_TIMEOUT,
        send_timeout: float = SEND_TIMEOUT,
        refusals: RefusalLog | None = None,
        websocket_paths: frozenset[bytes] = frozenset(),
    ) -> None:
        super().__init__(resource, timeout=HTTP_IDLE_TIMEOUT, reactor=reactor)
        self.header_timeout = header_timeout
        self.send_timeout = send_timeout
        self.refusals = refusals
        self.websocket_paths = websocket_paths
        self._websocket = _WebSocketPath()

    def reconfigure(
        self,
        *,
        header_timeout: float,
        root: resource.IResource | None = None,
        websocket_paths: frozenset[bytes] | None = None,
    ) -> None:
        """
        New settings for the requests that come next (a reload).

        @param root: a new resource to serve (a changed folder), or L{None}
            to keep the current one.
        @param websocket_paths: the bridge's new paths, or L{None} to keep them.
        """
        self.header_timeout = header_timeout
        if root is not None:
            self.resource = root
        if websocket_paths is not None:
            self.websocket_paths = websocket_paths

    @override
    def getResourceFor(self, request: Any) -> Any:  # noqa: N802 - Site's name
        """
        The bridge for a C{--websocket} path (matched exactly, before any
        file of the same name), else what the root resource finds.
        """
        if request.path in self.websocket_paths:
            request.site = self
            request.sitepath = list(request.prepath or [])
            return self._websocket
        return super().getResourceFor(request)

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
    websocket_paths: frozenset[bytes] = frozenset(),
) -> HTTPSite:
    """
    Build the public HTTP site.

    @param http_root: the folder to serve, or L{None} to answer 404 to everything.
    @param listing: list folders without an index file.
    @param reactor: the reactor for the channels' timeouts.
    @param header_timeout: seconds a request's line, headers and body may take.
    @param refusals: where timeouts and bad requests are counted.
    @param websocket_paths: the request paths of the WebSocket bridge.
    """
    root: resource.IResource
    if http_root is None:
        root = pages.notFound(
            "No Such Resource", "This gateway serves no HTTP content (no --http-root)."
        )
    else:
        root = StaticRoot(http_root, listing=listing)
    return HTTPSite(
        root,
        reactor=reactor,
        header_timeout=header_timeout,
        refusals=refusals,
        websocket_paths=websocket_paths,
    )
