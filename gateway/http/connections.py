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

The pool and the agent come from L{gateway.http.clientpool}, imported when
the first agent is asked for: without proxied routes, Twisted's HTTP client
is never loaded (start-up memory, issue 18).

A connection attempt is bounded by its pool's C{connect-timeout}
(L{TimedEndpoint}); a failed or timed-out attempt fails with
L{BackendConnectError}, so that the proxy can tell "never reached the
backend" (any request may go to another backend) from a failure after the
request was sent (only an idempotent one may).
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IProtocolFactory, IReactorTime, IStreamClientEndpoint
from twisted.internet.task import Cooperator
from twisted.python.failure import Failure
from twisted.web.iweb import IAgent, IAgentEndpointFactory
from zope.interface import implementer

from gateway.pool.backend import Backend

if TYPE_CHECKING:
    from twisted.web.client import URI, HTTPConnectionPool

__all__ = [
    "IDLE_TIMEOUT",
    "PER_BACKEND",
    "BackendConnectError",
    "BackendConnections",
    "BackendEndpoints",
    "TimedEndpoint",
]

IDLE_TIMEOUT = 30.0
"""Seconds an idle keep-alive connection to a backend is kept (nginx's
upstream C{keepalive_timeout} is 60 s; a backend that closes sooner costs a
retried request for idempotent methods, see L{gateway.http.proxy})."""

PER_BACKEND = 32
"""Idle connections kept per backend (more may be open while busy)."""

_DOMAIN = b".pool.invalid"


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
        self._per_backend = per_backend
        self._idle_timeout = idle_timeout
        self._pool: HTTPConnectionPool | None = None
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
        # Imported here, when a proxied route is made: Twisted's HTTP client
        # only where a route proxies (start-up memory, issue 18).
        from gateway.http.clientpool import backend_agent, connection_pool

        if self._pool is None:
            self._pool = connection_pool(
                self.reactor, per_backend=self._per_backend, idle_timeout=self._idle_timeout
            )
        return backend_agent(self.reactor, BackendEndpoints(self, connect_timeout), self._pool)

    def close(self) -> Deferred[None]:
        """
        Close the idle connections (the process is stopping).
        """
        self.cooperator.stop()
        if self._pool is None:
            return succeed(None)
        done: Deferred[None] = self._pool.closeCachedConnections()
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
