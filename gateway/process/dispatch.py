"""
Every core in use (C{--workers N}): the acceptor's end of the admission chain.

With more than one worker, the twistd process is the I{acceptor}.  It listens
on the fronts and runs the same admission chain as a single gateway (total
cap, per-address cap and rate, the PROXY header of a C{haproxy:} front), so
the limits stay exact however many processes serve the connections.  The end
of that chain is a L{Dispatcher}, whose L{Handoff} stops reading the admitted
socket and gives it to the workers' pool (L{gateway.process.supervisor}),
which passes it, with the bytes the acceptor has read from it (a PROXY
header), to the least-loaded worker; the acceptor then closes its own copy
and the L{Handoff} holds the connection's slots until the worker reports its
end.  On a C{tls:} front, L{TLSRefusals} answers refused connections over TLS
while admitted ones pass untouched (their worker does TLS).
"""

from __future__ import annotations

import dataclasses
from typing import Any
from typing import Protocol as Structural

from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import (
    IAddress,
    IHalfCloseableProtocol,
    IProtocol,
    IReactorTime,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from typing_extensions import override
from zope.interface import alsoProvides, implementer

from gateway.config import BackendSpec, GatewayConfig
from gateway.connection import CloseHooks, describe_peer
from gateway.front.pending import Pending
from gateway.interfaces import IRefusal
from gateway.pool.pools import Pools

__all__ = [
    "Dispatcher",
    "Handoff",
    "Holder",
    "TLSRefusals",
    "Workers",
    "worker_config",
]


class Holder(Structural):
    """
    The worker a connection was sent to (a
    L{gateway.process.supervisor.WorkerProcess}).
    """

    @property
    def index(self) -> int:
        """
        The worker's number, from 1.
        """


class Workers(Structural):
    """
    What a L{Handoff} needs of the workers' pool (a
    L{gateway.process.workerpool.WorkerPool}).
    """

    @property
    def clock(self) -> IReactorTime:
        """
        The reactor's time.
        """

    def next_number(self) -> int:
        """
        A number no connection has had.
        """

    def dispatch(self, handoff: Handoff) -> None:
        """
        Pass an admitted connection to a worker (or keep it until one runs).
        """

    def forget(self, handoff: Handoff) -> None:
        """
        A connection went away before it was passed on.
        """


def worker_config(config: GatewayConfig, pools: Pools) -> GatewayConfig:
    """
    The configuration a worker runs: the same, with the acceptor's backends
    (the demo's game servers run in the acceptor, on ports it chose).
    """
    backends = list(config.backends)
    http_root = config.http_root
    if config.demo:
        named = {spec.name for spec in backends}
        for backend in pools.game.backends:
            if backend.name not in named:
                backends.append(
                    BackendSpec(name=backend.name, endpoint=backend.description, weight=1)
                )
        if http_root is None:
            from gateway.demo import SITE_DIR

            http_root = SITE_DIR
    # The fronts, admin endpoint, hand-over and access log file are the
    # acceptor's: a worker must never take them over or open them.
    return dataclasses.replace(
        config,
        backends=tuple(backends),
        http_root=http_root,
        demo=False,
        admin=None,
        admin_token=None,
        handover=None,
        access_log=None,
    )


def _raw(transport: Any) -> Any:
    """
    The socket transport under a connection's protocol wrappers (the PROXY
    header reader acts as a transport).
    """
    while isinstance(transport, Protocol):
        transport = transport.transport
    return transport


@implementer(IProtocol, IHalfCloseableProtocol)
class Handoff(CloseHooks, Protocol):
    """
    An admitted connection in the acceptor: sent to a worker, and kept (as
    the holder of its slots) until the worker reports its end.

    @ivar number: the connection's number, unique across workers (its
        session's id on the admin endpoint).
    @ivar front: the index of its front in C{--listen} order.
    @ivar worker: the worker it went to, once sent.
    """

    def __init__(self, dispatcher: Dispatcher, number: int) -> None:
        CloseHooks.__init__(self)
        self._dispatcher = dispatcher
        self.number = number
        self.front = dispatcher.front
        self.worker: Holder | None = None
        self.received: list[bytes] = []
        self.raw: Any = None
        self.ended = False

    @override
    def connectionMade(self) -> None:
        self.raw = _raw(self.transport)
        self.raw.stopReading()
        header = getattr(self.transport, "header", b"")
        if header:
            self.received.append(header)
        # Sent on the next turn: the PROXY header reader and the queue of
        # held connections hand over bytes right after connectionMade.
        self._dispatcher.workers.clock.callLater(0, self._dispatcher.workers.dispatch, self)

    @override
    def dataReceived(self, data: bytes) -> None:
        if self.worker is None:
            self.received.append(data)

    def assign(self, worker: Holder | None) -> None:
        """
        Whose this connection is now: the worker it is sent to, or L{None}
        while it waits for another.
        """
        self.worker = worker

    def data(self) -> bytes:
        """
        Every byte read from the connection here, in order.
        """
        return b"".join(self.received)

    def detach(self) -> None:
        """
        The worker holds the socket now: close the acceptor's descriptor
        without shutting the connection down (a shutdown would end it for
        the worker too).
        """
        raw = self.raw
        raw.stopReading()
        raw.stopWriting()
        raw.socket.close()

    def close(self) -> None:
        """
        Close a connection that was never passed on (its slots are freed as
        it closes).
        """
        self.ended = True
        self.raw.loseConnection()

    def peer(self) -> str:
        """
        The client's address, for logs.
        """
        transport = self.transport
        return describe_peer(transport.getPeer()) if transport is not None else "-"

    def readConnectionLost(self) -> None:
        """
        The client ended its stream before the socket was passed on: the
        worker reads that end of stream again.
        """

    def writeConnectionLost(self) -> None:
        """
        Never happens here (nothing is written).
        """

    def end(self) -> None:
        """
        The connection ended (its worker said so, or died): free its slots,
        through the close hooks of every protocol on the connection.
        """
        if self.ended:
            return
        self.ended = True
        outer = getattr(self.raw, "protocol", None)
        reason = Failure(ConnectionDone())
        if outer is not None and outer is not self:
            outer.connectionLost(reason)
        else:
            self.connectionLost(reason)

    @override
    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:  # noqa: B008
        self.ended = True
        if self.worker is None:
            self._dispatcher.workers.forget(self)
        self.run_close_hooks()


class Dispatcher(Factory):
    """
    The end of a front's admission chain in the acceptor: builds a
    L{Handoff} per admitted connection.

    @ivar front: the front's index in C{--listen} order.
    """

    noisy = False

    def __init__(self, workers: Workers, front: int) -> None:
        self.workers = workers
        self.front = front

    @override
    def buildProtocol(self, addr: IAddress | None) -> Handoff:
        return Handoff(self, self.workers.next_number())


class TLSRefusals(Factory):
    """
    On a C{tls:} front of the acceptor: admitted connections pass untouched
    (their worker does TLS), a refused one is answered over TLS.
    """

    noisy = False

    def __init__(self, wrapped: Factory, creator: Any) -> None:
        self.wrapped = wrapped
        self._tls = TLSMemoryBIOFactory(creator, False, wrapped)

    @override
    def buildProtocol(self, addr: IAddress | None) -> IProtocol | None:  # type: ignore[override]
        protocol = self.wrapped.buildProtocol(addr)
        if isinstance(protocol, Pending):
            # The cluster's shared limits decide later: a refusal then is
            # answered over TLS too.
            protocol.answer_through(self._over_tls)
            return protocol
        if protocol is None or not IRefusal.providedBy(protocol):
            return protocol
        return self._over_tls(protocol)

    def _over_tls(self, refusal: IProtocol) -> IProtocol:
        tls = TLSMemoryBIOProtocol(self._tls, refusal)
        alsoProvides(tls, IRefusal)
        return tls
