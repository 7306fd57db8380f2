"""
Twisted's HTTP client as the reverse proxy uses it: the keep-alive pool of
connections to backends and the agent that sends requests through it.

Kept apart from L{gateway.http.connections} so that C{twisted.web.client}
is imported only when a proxied route first sends a request (start-up
memory, issue 18): a configuration without proxied routes never loads it.

Twisted's client keeps a response's connection fields (C{Connection},
C{Content-Length}, C{Transfer-Encoding}...) out of C{response.headers}, and
with them the options C{Connection} names, which a proxy must drop from what
it forwards (RFC 9110 7.6.1).  The pool's protocol here
(L{_OptionsClientProtocol}) notes them on each response
(L{connection_options}).  It subclasses Twisted's private
C{HTTP11ClientProtocol} factory and reads its parser's C{connHeaders}: the one
place the proxy depends on the client's internals, checked by
C{test_hop_by_hop_fields_removed_both_ways}.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IAddress, IReactorTime
from twisted.web._newclient import HTTP11ClientProtocol
from twisted.web._newclient import Request as ClientRequest
from twisted.web.client import Agent, HTTPConnectionPool, _HTTP11ClientFactory
from twisted.web.iweb import IAgent, IAgentEndpointFactory, IResponse
from typing_extensions import override

from gateway.http.forwarded import connection_tokens

__all__ = ["backend_agent", "connection_options", "connection_pool"]

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


def connection_pool(
    reactor: IReactorTime, *, per_backend: int, idle_timeout: float
) -> HTTPConnectionPool:
    """
    A pool of persistent connections whose responses note their
    connection options.

    @param per_backend: idle connections kept per backend.
    @param idle_timeout: seconds an idle connection is kept.
    """
    pool = HTTPConnectionPool(reactor, persistent=True)
    pool._factory = _OptionsClientFactory
    pool.maxPersistentPerHost = per_backend
    pool.cachedConnectionTimeout = idle_timeout  # type: ignore[assignment]
    return pool


def backend_agent(
    reactor: IReactorTime, endpoints: IAgentEndpointFactory, pool: HTTPConnectionPool
) -> IAgent:
    """
    An agent that connects through C{endpoints} and keeps its connections
    in C{pool}.
    """
    agent: IAgent = Agent.usingEndpointFactory(reactor, endpoints, pool=pool)
    return agent
