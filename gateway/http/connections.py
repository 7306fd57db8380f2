"""
The keep-alive connections from the HTTP reverse proxy to its backends:
L{BackendConnections}, one per process, shared by every proxy route.

It holds Twisted's C{HTTPConnectionPool} (idle connections kept per backend,
closed after L{IDLE_TIMEOUT}) and gives each backend a synthetic host name,
C{b-<n>.pool.invalid}, which is what the pool files its connections under
and what the agent's endpoint factory (L{BackendEndpoints}) maps back to the
backend's endpoint.  The name depends on the backend's name and endpoint
string, not on the L{Backend} object: a reload that rebuilds an unchanged
backend keeps its connections, one that changes the endpoint gets fresh ones
(the old name's idle connections time out).  The name never reaches a
backend: the proxy sets C{Host} itself.  (C{.invalid} is reserved by RFC 2606
and never resolves.)

Twisted's client keeps a response's connection fields (C{Connection},
C{Content-Length}, C{Transfer-Encoding}...) out of C{response.headers}, and
with them the options C{Connection} names, which a proxy must drop from what
it forwards (RFC 9110 7.6.1).  The pool's protocol here
(L{_OptionsClientProtocol}) notes them on each response
(L{connection_options}).  It subclasses Twisted's private
C{HTTP11ClientProtocol} factory and reads its parser's C{connHeaders}: the one
place the proxy depends on the client's internals, checked by
C{test_hop_by_hop_fields_removed_both_ways}.

A connection attempt is bounded by its pool's C{connect-timeout}
(L{TimedEndpoint}); a failed or timed-out attempt fails with
L{BackendConnectError}, so that the proxy can tell "never reached the
backend" (any request may go to another backend) from a failure after the
request was sent (only an idempotent one may).
"""

from __future__ import annotations

import itertools
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IAddress,
    IProtocolFactory,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.internet.task import Cooperator
from twisted.python.failure import Failure
from twisted.web._newclient import HTTP11ClientProtocol
from twisted.web._newclient import Request as ClientRequest
from twisted.web.client import URI, Agent, HTTPConnectionPool, _HTTP11ClientFactory
from twisted.web.iweb import IAgent, IAgentEndpointFactory, IResponse
from typing_extensions import override
from zope.interface import implementer

from gateway.http.forwarded import connection_tokens
from gateway.pool.backend import Backend

__all__ = [
    "IDLE_TIMEOUT",
    "PER_BACKEND",
    "BackendConnectError",
    "BackendConnections",
    "BackendEndpoints",
    "TimedEndpoint",
    "connection_options",
]

IDLE_TIMEOUT = 30.0
"""Seconds an idle keep-alive connection to a backend is kept (nginx's
upstream C{keepalive_timeout} is 60 s; a backend that closes sooner costs a
retried request for idempotent methods, see L{gateway.http.proxy})."""

PER_BACKEND = 32
"""Idle connections kept per backend (more may be open while busy)."""

_DOMAIN = b".pool.invalid"

_OPTIONS = "_gateway_connection_options"


def connection_options(response: IResponse) -> frozenset[bytes]:
    """
    The lower-cased options the C{Connection} field of C{response} named.
    """
    options: frozenset[bytes] = getattr(response, _OPTIONS, frozenset())
    return options


class _OptionsClientProtocol(HTTP11ClientProtocol):
    """
    Twisted's HTTP/1.1 client connection, noting on each response the
    options its C{Connection} field named.
    """

    @override
    def request(self, request: ClientRequest) -> Deferred[IResponse]:
        result: Deferred[IResponse] = super().request(request)
        parser = self._parser
        if parser is not None:

            def note(response: IResponse) -> IResponse:
                setattr(response, _OPTIONS, connection_tokens(parser.connHeaders))
                return response

            result.addCallback(note)
        return result


class _OptionsClientFactory(_HTTP11ClientFactory):
    """
    The pool's factory of L{_OptionsClientProtocol}s.
    """

    noisy = False  # one "Starting factory" line per backend connection otherwise

    @override
    def buildProtocol(self, addr: IAddress | None) -> HTTP11ClientProtocol:
        return _OptionsClientProtocol(self._quiescentCallback)


class BackendConnectError(Exception):
    """
    A connection to a backend could not be made (refused, unreachable, timed
    out): the request never reached it.

    @ivar reason: what went wrong.
    """

    def __init__(self, reason: Failure) -> None:
        super().__init__(reason.getErrorMessage())
        self.reason = reason


@implementer(IStreamClientEndpoint)
class TimedEndpoint:
    """
    A backend's endpoint whose connection attempts give up after a timeout
    and fail with L{BackendConnectError}.
    """

    def __init__(self, endpoint: IStreamClientEndpoint, timeout: float, clock: IReactorTime):
        self._endpoint = endpoint
        self._timeout = timeout
        self._clock = clock

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[Any]:  # noqa: N803
        """
        Connect, within the timeout.
        """
        attempt: Deferred[Any] = self._endpoint.connect(protocolFactory)
        attempt.addTimeout(self._timeout, self._clock)

        def failed(reason: Failure) -> Failure:
            return Failure(BackendConnectError(reason))

        return attempt.addErrback(failed)


class BackendConnections:
    """
    The process's keep-alive connections to HTTP backends, and the synthetic
    host name of each backend.

    @ivar pool: Twisted's connection pool (persistent connections).
    @ivar cooperator: what sends request bodies (on the process's reactor).
    """

    def __init__(
        self,
        reactor: IReactorTime,
        *,
        per_backend: int = PER_BACKEND,
        idle_timeout: float = IDLE_TIMEOUT,
    ) -> None:
        self.reactor = reactor
        self.pool = HTTPConnectionPool(reactor, persistent=True)
        self.pool._factory = _OptionsClientFactory
        self.pool.maxPersistentPerHost = per_backend
        self.pool.cachedConnectionTimeout = idle_timeout  # type: ignore[assignment]
        self._numbers = itertools.count(1)
        self._hosts: dict[tuple[str, str], bytes] = {}
        self._backends: dict[bytes, Backend] = {}
        self.cooperator = Cooperator(scheduler=lambda work: reactor.callLater(0, work))

    def host_of(self, backend: Backend) -> bytes:
        """
        The synthetic host name requests to C{backend} are addressed to.
        """
        key = (backend.name, backend.description)
        host = self._hosts.get(key)
        if host is None:
            host = b"b-%d%s" % (next(self._numbers), _DOMAIN)
            self._hosts[key] = host
        # The newest object of that name and endpoint is the one to dial.
        self._backends[host] = backend
        return host

    def backend_at(self, host: bytes) -> Backend | None:
        """
        The backend a synthetic host name stands for, if any.
        """
        return self._backends.get(host)

    def agent(self, connect_timeout: float) -> IAgent:
        """
        An agent that reaches backends by their synthetic names through the
        shared pool, its connection attempts bounded by C{connect_timeout}.
        """
        endpoints = BackendEndpoints(self, connect_timeout)
        agent: IAgent = Agent.usingEndpointFactory(self.reactor, endpoints, pool=self.pool)
        return agent

    def close(self) -> Deferred[None]:
        """
        Close the idle connections (the process is stopping).
        """
        self.cooperator.stop()
        done: Deferred[None] = self.pool.closeCachedConnections()
        return done


@implementer(IAgentEndpointFactory)
class BackendEndpoints:
    """
    The agent's endpoint factory: a synthetic host name to its backend's
    endpoint, with a connect timeout.
    """

    def __init__(self, connections: BackendConnections, connect_timeout: float) -> None:
        self._connections = connections
        self._connect_timeout = connect_timeout

    def endpointForURI(self, uri: URI) -> IStreamClientEndpoint:  # noqa: N802 - IAgentEndpointFactory
        """
        The endpoint of the backend C{uri} is addressed to.

        @raise BackendConnectError: no backend has that name (it was removed).
        """
        backend = self._connections.backend_at(uri.host)
        if backend is None:
            raise BackendConnectError(Failure(LookupError(f"no backend at {uri.host!r}")))
        return TimedEndpoint(backend.endpoint, self._connect_timeout, self._connections.reactor)
