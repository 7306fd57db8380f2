"""
The HTTP reverse proxy of a C{pool = "NAME"} route: L{HTTPProxy}, a
C{twisted.web} resource that forwards each request to a backend of the
route's pool with Twisted's HTTP client and streams the response back.

One request, one L{_Forwarding}:

  1. The request's fields are rewritten by L{gateway.http.forwarded}
     (hop-by-hop fields out, C{X-Forwarded-*}, C{Forwarded}, C{Via} in) and
     its target gets the route's prefix stripped if the route says so.  The
     whole body is already in C{request.content} (the channel bounded it).
  2. The pool chooses a backend; the request goes to it over a keep-alive
     connection of L{gateway.http.connections}.  A connection that cannot be
     made (refused, timed out after the pool's C{connect-timeout}) means the
     request never reached the backend: any request goes on to another
     backend.  A failure after the request went out (the backend closed
     without answering) is retried elsewhere only for an idempotent method
     (RFC 9110 9.2.2), as nothing of the response has reached the client
     yet.  At most C{retries} further backends are tried; then, or when no
     backend is up, the client gets C{502 Bad Gateway}.
  3. No response head within the route's C{timeout} of the request: the
     attempt is cancelled (its connection closed) and the client gets
     C{504 Gateway Timeout}.
  4. The response's status, reason and end-to-end fields go to the client,
     and its body is streamed: each chunk is written as it arrives, and the
     backend connection is the client response's producer, so a client that
     reads slowly pauses the reading from the backend (memory stays
     bounded whatever the size).  A backend that fails mid-body cuts the
     client's response: its connection is closed before the end (short of
     its C{Content-Length}, or without the last chunk), never finished as if
     whole.  A client that leaves mid-way closes the backend connection
     (it is never returned to the pool half-read).

A backend's C{active} counts the requests in flight on it (from the choice to
the end of the response), C{total} the requests it was sent (a refused
connection is not one); the pool hears of every failed attempt (passive
health) and of every response head (C{attempt_succeeded}).  A timed-out
request counts as a failed attempt, as in nginx's C{max_fails}.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import IO, Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IAddress, IDelayedCall, IPushProducer, IReactorTime
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

# RequestNotSent (the connection was gone before the request went out) is
# not re-exported by twisted.web.client.
from twisted.web._newclient import RequestNotSent
from twisted.web.client import (
    FileBodyProducer,
    RequestTransmissionFailed,
    ResponseDone,
    ResponseFailed,
)
from twisted.web.http import NO_BODY_CODES, PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IBodyProducer, IResponse
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request
from typing_extensions import override

from gateway.http.clientpool import connection_options
from gateway.http.connections import BackendConnectError, BackendConnections
from gateway.http.forwarded import (
    backend_path,
    connection_tokens,
    request_headers,
    response_headers,
)
from gateway.interfaces import IBackendChooser
from gateway.pool.backend import Backend

__all__ = ["IDEMPOTENT", "HTTPProxy", "ProxySettings"]

IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE", b"TRACE"})
"""The methods RFC 9110 9.2.2 calls idempotent: retried on another backend
after a failure that may have reached the first one."""


@dataclass(frozen=True, slots=True)
class ProxySettings:
    """
    A proxy route's settings (read once per request: a reload changes the
    requests that come next).

    @ivar strip_prefix: the route's path, taken off the request target, or
        L{None} to pass the target as it came.
    @ivar timeout: seconds from the request to the response's head (504).
    @ivar connect_timeout: seconds a connection attempt to a backend may take.
    @ivar retries: further backends tried after a failed attempt.
    """

    strip_prefix: bytes | None
    timeout: float
    connect_timeout: float
    retries: int


class HTTPProxy(Resource):
    """
    The resource of a proxy route: every request under it goes to a backend
    of its pool (see the module's docstring).

    @ivar route_name: the route's name, for the access log.
    @ivar pool: the pool requests go to.
    @ivar settings: the route's timeouts, retries and prefix.
    """

    isLeaf = True  # noqa: N815 - twisted.web's name
    _log = Logger()

    def __init__(
        self,
        route_name: str,
        pool: IBackendChooser,
        *,
        connections: BackendConnections,
        strip_prefix: str | None,
        timeout: float,
        connect_timeout: float,
        retries: int,
    ) -> None:
        super().__init__()
        self.route_name = route_name
        self._connections = connections
        self.pool = pool
        self.settings = ProxySettings(
            strip_prefix.encode("utf-8") if strip_prefix is not None else None,
            timeout,
            connect_timeout,
            retries,
        )
        self.agent: IAgent = connections.agent(connect_timeout)

    def reconfigure(
        self,
        pool: IBackendChooser,
        *,
        strip_prefix: str | None,
        timeout: float,
        connect_timeout: float,
        retries: int,
    ) -> None:
        """
        New settings (a reload) for the requests that come next; requests in
        flight finish with the settings they started with.
        """
        self.pool = pool
        if connect_timeout != self.settings.connect_timeout:
            self.agent = self._connections.agent(connect_timeout)
        self.settings = ProxySettings(
            strip_prefix.encode("utf-8") if strip_prefix is not None else None,
            timeout,
            connect_timeout,
            retries,
        )

    @property
    def clock(self) -> IReactorTime:
        """
        The clock of the route's timeouts.
        """
        return self._connections.reactor

    def host_of(self, backend: Backend) -> bytes:
        """
        The synthetic host name requests to C{backend} are addressed to.
        """
        return self._connections.host_of(backend)

    def body_producer(self, content: IO[bytes]) -> IBodyProducer:
        """
        A producer that sends a request body (from its start, every time).
        """
        content.seek(0)
        return FileBodyProducer(_Unclosed(content), cooperator=self._connections.cooperator)

    @override
    def render(self, request: Request) -> int:
        """
        Forward C{request}; its response comes later.  A WebSocket upgrade
        is passed through to a backend as a byte stream, where the
        connection allows it (L{gateway.front.passthrough}).
        """
        request.gateway_route = self.route_name  # type: ignore[attr-defined]
        forwarding = _Forwarding(self, request)
        through = getattr(request.channel, "pass_through", None)
        if through is not None and is_websocket_upgrade(request):
            through(request, self.pool, forwarding.upgrade_head())
            return NOT_DONE_YET
        forwarding.start()
        return NOT_DONE_YET


def is_websocket_upgrade(request: Request) -> bool:
    """
    Whether C{request} asks to become a WebSocket (a GET over HTTP/1.1 with
    C{Connection: upgrade} and C{Upgrade: websocket}).
    """
    if request.method != b"GET" or request.clientproto != b"HTTP/1.1":
        return False
    upgrade = request.requestHeaders.getRawHeaders(b"upgrade") or []
    tokens = {token.strip().lower() for value in upgrade for token in value.split(b",")}
    return b"websocket" in tokens and b"upgrade" in connection_tokens(request.requestHeaders)


class _Unclosed:
    """
    A request's body file that a body producer can read, seek and "close":
    it stays open for another attempt (twisted.web closes it at the end).
    """

    def __init__(self, content: IO[bytes]) -> None:
        self._content = content

    def read(self, size: int = -1) -> bytes:
        """
        Read up to C{size} bytes.
        """
        return self._content.read(size)

    def seek(self, offset: int, whence: int = 0) -> int:
        """
        Move to C{offset}.
        """
        return self._content.seek(offset, whence)

    def tell(self) -> int:
        """
        The position.
        """
        return self._content.tell()

    def close(self) -> None:
        """
        Keep the file open.
        """


def _client_address(address: IAddress) -> str:
    """
    A client address as the forwarding fields give it.
    """
    host = getattr(address, "host", None)
    return host if isinstance(host, str) else "unknown"


def _body_length(content: IO[bytes] | None) -> int:
    """
    The size of a request body (0 without one).
    """
    if content is None:
        return 0
    content.seek(0, 2)
    size = content.tell()
    content.seek(0)
    return size


class _BodyRelay(Protocol):
    """
    Receives a response body from the HTTP client and hands it on.
    """

    def __init__(self, forwarding: _Forwarding) -> None:
        self._forwarding = forwarding
        self.ended = False

    @override
    def dataReceived(self, data: bytes) -> None:
        self._forwarding.body_received(data)

    @override
    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.ended = True
        self._forwarding.body_ended(reason)


class _Forwarding:
    """
    One request on its way to a backend and its response on the way back.
    """

    _log = Logger()

    def __init__(self, proxy: HTTPProxy, request: Request) -> None:
        self._proxy = proxy
        self._request = request
        self._settings = proxy.settings
        self._pool = proxy.pool
        self._agent = proxy.agent
        self._method: bytes = request.method
        self._tried: list[Backend] = []
        self._backend: Backend | None = None
        self._pending: Deferred[IResponse] | None = None
        self._cancelled_for: str | None = None
        self._deadline: IDelayedCall | None = None
        self._producer: IPushProducer | None = None
        self._done = False
        content: IO[bytes] | None = request.content
        # A request without a body sends none (not an empty one).
        self._body = content if _body_length(content) > 0 else None
        self._headers = Headers()
        self._target = b""

    def start(self) -> None:
        """
        Rewrite the request, then make the first attempt.
        """
        self._request.notifyFinish().addErrback(self._client_gone)
        self._rewrite()
        self._deadline = self._proxy.clock.callLater(self._settings.timeout, self._timed_out)
        self._attempt()

    def upgrade_head(self) -> bytes:
        """
        The request rewritten for a backend, as the bytes of its line and
        fields, with the upgrade's C{Connection} and C{Upgrade} put back.
        """
        self._rewrite()
        lines = [self._method + b" " + self._target + b" HTTP/1.1"]
        for name, values in self._headers.getAllRawHeaders():
            lines.extend(name + b": " + value for value in values)
        lines += [b"Connection: Upgrade", b"Upgrade: websocket", b"", b""]
        return b"\r\n".join(lines)

    def _rewrite(self) -> None:
        request = self._request
        client_host = request.requestHeaders.getRawHeaders(b"host", [None])[0]
        local = request.getHost()
        host = client_host or f"{_client_address(local)}:{getattr(local, 'port', 0)}".encode()
        self._headers = request_headers(
            request.requestHeaders,
            client=_client_address(request.getClientAddress()),
            proto=b"https" if request.isSecure() else b"http",
            host=host,
            client_host=client_host,
            version=request.clientproto,
            trusted=bool(getattr(request.channel, "trusted_forwarded", False)),
            prefix=self._settings.strip_prefix,
        )
        self._target = backend_path(request.uri, self._settings.strip_prefix)

    def _attempt(self) -> None:
        backend = self._pool.choose(exclude=self._tried)
        if backend is None:
            if not self._tried:
                self._pool.nothing_available()
            self._answer(502, b"Bad Gateway", b"no backend could take the request")
            return
        self._tried.append(backend)
        self._backend = backend
        backend.active += 1
        self._request.gateway_backend = backend.name  # type: ignore[attr-defined]
        uri = b"http://" + self._proxy.host_of(backend) + self._target
        body = self._proxy.body_producer(self._body) if self._body is not None else None
        try:
            pending = self._agent.request(self._method, uri, self._headers, body)
        except Exception:
            pending = Deferred()
            pending.errback(Failure())
        self._pending = pending
        pending.addCallbacks(self._responded, self._attempt_failed)

    def _release(self) -> Backend:
        """
        The attempt's backend no longer has this request in flight.
        """
        backend = self._backend
        assert backend is not None
        self._backend = None
        backend.active -= 1
        return backend

    def _attempt_failed(self, failure: Failure) -> None:
        self._pending = None
        backend = self._release()
        cancelled_for, self._cancelled_for = self._cancelled_for, None
        if cancelled_for == "client":
            return
        if not failure.check(BackendConnectError):
            backend.total += 1
        if cancelled_for == "timeout":
            # The route's limit, not a fault of the backend: a slow endpoint
            # must not take a backend out of service for every other route.
            self._answer(504, b"Gateway Timeout", b"the backend did not answer in time")
            return
        self._pool.attempt_failed(backend)
        self._log.info(
            "route {route}: {method} to backend {backend} failed: {reason}",
            route=self._proxy.route_name,
            method=self._method.decode("ascii", "replace"),
            backend=backend.name,
            reason=_describe(failure),
        )
        if self._may_retry(failure) and len(self._tried) <= self._settings.retries:
            self._attempt()
            return
        self._answer(502, b"Bad Gateway", b"the backend failed")

    def _may_retry(self, failure: Failure) -> bool:
        """
        Whether the request may go to another backend after C{failure}.
        """
        if failure.check(BackendConnectError, RequestNotSent):
            return True  # it never reached the backend
        return self._method in IDEMPOTENT and bool(
            failure.check(ResponseFailed, RequestTransmissionFailed)
        )

    def _responded(self, response: IResponse) -> None:
        self._pending = None
        self._stop_deadline()
        backend = self._backend
        assert backend is not None
        backend.total += 1
        self._pool.attempt_succeeded(backend)
        request = self._request
        request.setResponseCode(response.code, response.phrase)
        request.defaultContentType = None  # the backend's, or none
        headers = request.responseHeaders
        headers.removeHeader(b"server")
        for name, values in response_headers(response.headers, connection_options(response)):
            headers.setRawHeaders(name, values)
        if (
            isinstance(response.length, int)
            and response.code not in NO_BODY_CODES
            and self._method != b"HEAD"
        ):
            # Twisted's client keeps Content-Length out of the fields (not
            # a HEAD response's): the client gets the body as it came.
            headers.setRawHeaders(b"content-length", [b"%d" % response.length])
        relay = _BodyRelay(self)
        response.deliverBody(relay)
        transport = relay.transport
        if not relay.ended and not self._done and transport is not None:
            # The backend's connection produces the client's response: a
            # full client transport pauses the reading from the backend.
            self._producer = transport  # type: ignore[assignment]
            request.registerProducer(transport, True)

    def body_received(self, data: bytes) -> None:
        """
        A chunk of the response body: on to the client.
        """
        if not self._done:
            self._request.write(data)

    def body_ended(self, reason: Failure) -> None:
        """
        The response body ended, whole (C{ResponseDone}, or the end of a
        body delimited by the connection's close) or not.
        """
        backend = self._release()
        if self._done:
            return  # the client left: nothing to tell it
        request = self._request
        if self._producer is not None:
            self._producer = None
            request.unregisterProducer()
        if reason.check(ResponseDone, PotentialDataLoss):
            self._done = True
            request.finish()
            return
        self._pool.attempt_failed(backend)
        self._log.info(
            "route {route}: backend {backend} failed mid-response: {reason}",
            route=self._proxy.route_name,
            backend=backend.name,
            reason=_describe(reason),
        )
        if not request.startedWriting:
            # Nothing of it reached the client yet: it gets a 502 instead.
            self._answer(502, b"Bad Gateway", b"the backend failed")
            return
        # Cut: the client sees the response end short of its length or
        # without its last chunk.
        self._done = True
        channel = request.channel
        if channel is not None:
            channel.loseConnection()

    def _timed_out(self) -> None:
        self._deadline = None
        if self._pending is not None:
            self._cancelled_for = "timeout"
            self._pending.cancel()

    def _stop_deadline(self) -> None:
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None

    def _client_gone(self, reason: Failure) -> None:
        """
        The client's connection closed before its response was done: stop
        the attempt or the body (the backend connection is closed, not
        pooled).
        """
        if self._done:
            return
        self._done = True
        self._stop_deadline()
        if self._pending is not None:
            self._cancelled_for = "client"
            self._pending.cancel()
        # A body on its way: the backend connection is the client's
        # producer, which the client's transport stops as it closes (the
        # backend connection closes, and body_ended follows).

    def _answer(self, code: int, phrase: bytes, text: bytes) -> None:
        """
        Answer the client ourselves (502, 504) with a short text body.
        """
        self._stop_deadline()
        if self._done:
            return
        self._done = True
        request = self._request
        date = request.responseHeaders.getRawHeaders(b"date")
        request.responseHeaders = Headers()
        if date:
            request.responseHeaders.setRawHeaders(b"date", date)
        body = b"%d %s: %s\n" % (code, phrase, text)
        request.setResponseCode(code, phrase)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        request.setHeader(b"content-length", b"%d" % len(body))
        request.write(body)
        request.finish()


def _describe(failure: Failure) -> str:
    """
    A failure in a few words for the log (the first reason of Twisted's
    wrapped client failures).
    """
    value: Any = failure.value
    if isinstance(value, BackendConnectError):
        return f"connection failed: {value.reason.getErrorMessage()}"
    reasons = getattr(value, "reasons", None)
    if reasons:
        return f"{type(value).__name__}: {reasons[0].getErrorMessage()}"
    return failure.getErrorMessage() or type(value).__name__
