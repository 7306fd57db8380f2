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

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure
from twisted.web import http, pages, resource
from twisted.web.http import NO_BODY_CODES, HTTPChannel
from twisted.web.server import Request, Site
from typing_extensions import override

from gateway.config import GAME_POOL, RouteSpec
from gateway.connection import describe_peer
from gateway.front.limits import AddressRate, Refusal, address_key
from gateway.http.channel import (
    HEADER_TIMEOUT,
    HTTP_IDLE_TIMEOUT,
    SEND_TIMEOUT,
    GatewayHTTPChannel,
)
from gateway.http.lean import LeanStatic
from gateway.http.routes import RouteTable, origin_form, request_host, segments
from gateway.http.static import ALLOWED_METHODS, CachePolicy, StaticRoot
from gateway.ops.access import HTTP_CLIENT_LEFT, HTTP_COMPLETE, log_http_request
from gateway.ops.registry import RefusalLog

__all__ = [
    "LOGGED_PATH_LIMIT",
    "SERVER",
    "GatewayRequest",
    "HTTPSite",
    "RouteTarget",
    "WebSocketBridge",
    "make_site",
]

LOGGED_PATH_LIMIT = 1024
"""Characters of a request's path kept in its access log event."""

SERVER = b"gateway"
"""The C{Server} header of every response: no version (Twisted's would name
its own, C{TwistedWeb/26.x}, telling a scanner which advisories apply)."""


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
    def handleContentChunk(self, data: bytes) -> None:  # noqa: N802 - Request's name
        channel = self.channel
        received = getattr(channel, "body_received", None)
        if received is None or received(len(data)):
            super().handleContentChunk(data)

    @override
    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        # The whole request is in: from here on it is served, and logged.
        # (A request refused earlier, e.g. a 413 or a cut header, is a
        # counted refusal instead.)
        self.dispatched = True
        # An absolute-form target names its host: served as if it were the
        # path with that Host (what routes, files and backends see).
        target, host = origin_form(path, None)
        if host is not None:
            self.requestHeaders.setRawHeaders(b"host", [host])
        super().requestReceived(command, target, version)

    @override
    def write(self, data: bytes) -> None:
        channel = self.channel
        if not self.startedWriting:
            # Request.process set Twisted's own before any resource ran.
            self.responseHeaders.setRawHeaders(b"server", [SERVER])
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


class WebSocketBridge(resource.Resource):
    """
    A bridge route (C{--websocket PATH}, or C{bridge = "POOL"}): the
    connection's front door answers the upgrade (L{gateway.front.websocket})
    with a session to the route's pool; a connection without one (the admin
    endpoint's) has no bridge.
    """

    isLeaf = True  # noqa: N815 - twisted.web's name

    def __init__(self, pool: str = GAME_POOL) -> None:
        super().__init__()
        self.pool = pool

    @override
    def render(self, request: Request) -> bytes | int:
        upgrade = getattr(request.channel, "websocket_upgrade", None)
        if upgrade is None:
            request.setResponseCode(http.NOT_FOUND)
            return b""
        result: bytes | int = upgrade(request, self.pool)
        return result


@dataclass(frozen=True, slots=True)
class RouteTarget:
    """
    What serves a route.

    @ivar resource: the resource (a folder's L{StaticRoot}, a proxy, a
        bridge).
    @ivar tree: the resource is a tree the rest of the path walks (a
        folder: the route's prefix is its root), not a leaf.
    @ivar rate: the route's own per-address rate, if it has one.
    @ivar body_limit: the largest request body (0: none, as for files).
    """

    resource: resource.IResource
    tree: bool = False
    rate: AddressRate | None = None
    body_limit: int = 0


class _Refused(resource.Resource):
    """
    A request its route refuses: C{429} over the route's rate (with
    C{Retry-After}), C{400} for a path with dot segments.
    """

    isLeaf = True  # noqa: N815 - twisted.web's name

    def __init__(
        self, code: int, phrase: bytes, text: bytes, retry_after: int | None = None
    ) -> None:
        super().__init__()
        self.code, self.phrase, self.text, self.retry_after = code, phrase, text, retry_after

    @override
    def render(self, request: Request) -> bytes:
        # Twisted knows no phrase for 429 (it would say "Unknown Status").
        request.setResponseCode(self.code, self.phrase)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        if self.retry_after is not None:
            request.setHeader(b"retry-after", str(self.retry_after).encode())
        return self.text


_DOT_SEGMENTS = _Refused(
    http.BAD_REQUEST, b"Bad Request", b"400 Bad Request: a path with . or .. segments\n"
)


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
    @ivar websocket_paths: the request paths of the WebSocket bridge to the
        game pool (C{--websocket}).
    @ivar routes: the routes (the file's, and the bridge's paths); a
        request no route takes gets the root resource.
    @ivar fast_path: answer plain requests for small files on the lean
        path (L{gateway.http.lean}) when the site serves only files.
    """

    protocol = GatewayHTTPChannel  # type: ignore[assignment]
    requestFactory = GatewayRequest  # noqa: N815 - twisted.web's name
    displayTracebacks = False
    # No "Starting factory <...HTTPSite object at 0x...>" lines: the front
    # logs that it listens, with its address.
    noisy = False
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
        routes: Sequence[tuple[RouteSpec, RouteTarget]] = (),
        fast_path: bool = False,
    ) -> None:
        super().__init__(resource, timeout=HTTP_IDLE_TIMEOUT, reactor=reactor)
        self.fast_path = fast_path
        self._lean: LeanStatic | None = None
        self.header_timeout = header_timeout
        self.send_timeout = send_timeout
        self.refusals = refusals
        self.websocket_paths = websocket_paths
        self._file_routes = tuple(routes)
        self.routes: RouteTable[RouteTarget] = self._table()

    def _table(self) -> RouteTable[RouteTarget]:
        bridge = RouteTarget(WebSocketBridge(GAME_POOL))
        paths = sorted(path.decode() for path in self.websocket_paths)
        return RouteTable(
            [
                *self._file_routes,
                *(
                    (RouteSpec(name=p, path=p, bridge=GAME_POOL, exact=True), bridge)
                    for p in paths
                ),
            ]
        )

    def reconfigure(
        self,
        *,
        header_timeout: float,
        root: resource.IResource | None = None,
        websocket_paths: frozenset[bytes] | None = None,
        routes: Sequence[tuple[RouteSpec, RouteTarget]] | None = None,
        fast_path: bool | None = None,
    ) -> None:
        """
        New settings for the requests that come next (a reload); the lean
        path's cache starts again.

        @param root: a new resource to serve (a changed folder), or L{None}
            to keep the current one.
        @param websocket_paths: the bridge's new paths, or L{None} to keep them.
        @param routes: the new routes, or L{None} to keep them.
        @param fast_path: the lean path on or off, or L{None} to keep it.
        """
        self.header_timeout = header_timeout
        self._lean = None
        if fast_path is not None:
            self.fast_path = fast_path
        if root is not None:
            self.resource = root
        if websocket_paths is not None:
            self.websocket_paths = websocket_paths
        if routes is not None:
            self._file_routes = tuple(routes)
        self.routes = self._table()

    def lean_static(self) -> LeanStatic | None:
        """
        The lean path of this site's files (L{gateway.http.lean}), if it is
        on and the site serves only a L{StaticRoot}: no routes, no WebSocket
        paths.
        """
        root = self.resource
        if not self.fast_path or self.routes or type(root) is not StaticRoot:
            return None
        lean = self._lean
        if lean is None or lean.root is not root:
            lean = self._lean = LeanStatic(
                root,
                self.reactor,
                server=SERVER,
                path_limit=LOGGED_PATH_LIMIT,
                send_timeout=self.send_timeout,
            )
        return lean

    def route_of(self, host: bytes | None, path: bytes) -> tuple[RouteSpec, RouteTarget] | None:
        """
        The route of a request for C{path} (without its query) on C{host}
        (its C{Host} header), if any.
        """
        if not self.routes:
            return None
        return self.routes.match(request_host(host), path)

    def body_limit(self, host: bytes | None, path: bytes) -> int | None:
        """
        The largest request body a request may send: a proxied route's
        C{max-body}; L{None} for the others (files take no bodies, see
        L{gateway.http.channel.MAX_BODY}).
        """
        found = self.route_of(host, path)
        if found is not None and found[1].body_limit:
            return found[1].body_limit
        return None

    @override
    def getResourceFor(self, request: Any) -> Any:  # noqa: N802 - Site's name
        """
        The resource of the request's route (a bridge's path matched
        exactly, before any file of the same name), else what the root
        resource finds.
        """
        found = self.route_of(request.getHeader(b"host"), request.path)
        if found is None:
            if self._file_routes and segments(request.path) is None:
                request.site = self
                return _DOT_SEGMENTS
            return super().getResourceFor(request)
        spec, target = found
        request.site = self
        request.sitepath = list(request.prepath or [])
        request.gateway_route = spec.name
        if target.rate is not None:
            refused = self._over_rate(request, target.rate)
            if refused is not None:
                return refused
        if not target.tree:
            return target.resource
        # A folder mounted at the route's prefix: the rest of the path walks
        # it (the prefix's segments, and empty ones among them, are eaten).
        prefix = len(segments(spec.path.encode()) or ())
        while prefix and request.postpath:
            part = request.postpath.pop(0)
            if part:
                request.prepath.append(part)
                prefix -= 1
        # Empty segments are dropped as the route's match dropped them (a
        # last one stays: it asks for a folder's index).
        rest = request.postpath
        request.postpath = [part for part in rest[:-1] if part] + rest[-1:]
        return resource.getChildForRequest(target.resource, request)

    def _over_rate(self, request: Any, rate: AddressRate) -> resource.IResource | None:
        """
        The 429 of a request over its route's per-address rate (counted),
        or L{None} (and the request counted against the rate).
        """
        address = request.getClientAddress()
        host = getattr(address, "host", None)
        key = address_key(host) if isinstance(host, str) else "-"
        now = self.reactor.seconds()
        if rate.allows(key, now):
            rate.acquire(key, now)
            return None
        if self.refusals is not None:
            self.refusals.refused(Refusal.ROUTE_RATE, describe_peer(address))
        wait = max(1, int(1 / rate.rate + 0.999))
        return _Refused(429, b"Too Many Requests", b"429 Too Many Requests\n", retry_after=wait)

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
            route=getattr(request, "gateway_route", None),
            backend=getattr(request, "gateway_backend", None),
        )


def make_site(
    http_root: str | None,
    *,
    listing: bool,
    reactor: IReactorTime,
    header_timeout: float = HEADER_TIMEOUT,
    refusals: RefusalLog | None = None,
    websocket_paths: frozenset[bytes] = frozenset(),
    routes: Sequence[tuple[RouteSpec, RouteTarget]] = (),
    cache: CachePolicy = CachePolicy(),  # noqa: B008 - frozen, shared on purpose
    fast_path: bool = False,
) -> HTTPSite:
    """
    Build the public HTTP site.

    @param http_root: the folder to serve, or L{None} to answer 404 to everything.
    @param listing: list folders without an index file.
    @param reactor: the reactor for the channels' timeouts.
    @param header_timeout: seconds a request's line, headers and body may take.
    @param refusals: where timeouts and bad requests are counted.
    @param websocket_paths: the request paths of the WebSocket bridge.
    @param routes: the file's routes and what serves each.
    @param cache: the caching headers of the files.
    @param fast_path: answer plain requests for small files on the lean
        path (L{gateway.http.lean}).
    """
    root: resource.IResource
    if http_root is None:
        root = pages.notFound(
            "No Such Resource", "This gateway serves no HTTP content (no --http-root)."
        )
    else:
        root = StaticRoot(http_root, listing=listing, cache=cache)
    return HTTPSite(
        root,
        reactor=reactor,
        header_timeout=header_timeout,
        refusals=refusals,
        websocket_paths=websocket_paths,
        routes=routes,
        fast_path=fast_path,
    )
