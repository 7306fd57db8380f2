"""
What stands between a front's transport and the protocol that serves it.

Every process builds a front's chain from the same parts, in the same order:
the PROXY header reader of a C{haproxy:} front (L{ProxyHeaderFactory}: the
real client's address, before anything else reads the connection), then TLS
where this process speaks it.  The admission factories (total cap, address
gate) and the end of the chain (the front door, or the hand-off to a worker)
differ by role and are given by the caller: see L{gateway.process.assemble}
(one process, or the acceptor of C{--workers}) and
L{gateway.process.workerproc} (a worker adopting an admitted connection).
"""

from __future__ import annotations

from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Factory
from twisted.protocols.tls import TLSMemoryBIOFactory

from gateway.front.proxyheader import HAPROXY_PREFIX, ProxyHeaderFactory
from gateway.front.tls import SNICertificates
from gateway.ops.registry import RefusalLog

__all__ = ["connection_chain", "split_front"]


def split_front(description: str) -> tuple[bool, str]:
    """
    A front's string as configured: whether it reads a PROXY header
    (C{haproxy:} prefix), and the endpoint string under it.
    """
    if description.startswith(HAPROXY_PREFIX):
        return True, description[len(HAPROXY_PREFIX) :]
    return False, description


def connection_chain(
    end: Factory,
    *,
    proxy: bool,
    tls: SNICertificates | None,
    clock: IReactorTime,
    header_timeout: float,
    refusals: RefusalLog,
) -> Factory:
    """
    The factory a front's transport is given: C{end}, under the PROXY header
    reader of a C{haproxy:} front (our own reader, see
    L{gateway.front.proxyheader}, instead of Twisted's C{haproxy:} endpoint
    wrapper, so that refusals read the header too and name the real client),
    under TLS when C{tls} is given.

    @param tls: the connection creator of a C{tls:} front whose TLS this
        chain speaks (L{None} where the endpoint speaks it, or no TLS).
    @param header_timeout: seconds the PROXY header may take to arrive.
    @param refusals: where a bad or late PROXY header is counted.
    """
    factory = end
    if proxy:
        factory = ProxyHeaderFactory(
            factory, clock=clock, timeout=header_timeout, refusals=refusals
        )
    if tls is not None:
        factory = TLSMemoryBIOFactory(tls, False, factory)  # type: ignore[assignment]
    return factory
