"""
The PROXY protocol on the front (C{--listen haproxy:tcp:PORT}): the real client
address, sent by an upstream balancer in a header before the client's bytes.

Twisted's own wrapper (C{twisted.protocols.haproxy}) decides between version 1
and version 2 from the size of the first read and drops a client whose header
arrives in small pieces (twisted#8287).  L{ProxyHeaderProtocol} buffers until
the header's version is known and the header is complete, however it is split,
and then uses Twisted's own parsers.  The header must arrive within a timeout
and may not be larger than L{MAX_V2_HEADER} bytes (version 1 headers are at
most 107 bytes by the specification); a slow, oversized or malformed header is
a counted refusal.

Only once the header is parsed is the rest of the chain built, with the
address from the header: so the per-address limits (L{gateway.admission})
count the real client, and C{getPeer()} reports it everywhere.  A C{LOCAL}
header (a balancer's health check) or C{UNKNOWN} leaves the balancer's own
address.
"""

from __future__ import annotations

import ipaddress
import struct
from typing import Any

from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IHalfCloseableProtocol,
    IProtocol,
    IReactorTime,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.protocols.haproxy._exceptions import InvalidProxyHeader
from twisted.protocols.haproxy._v1parser import V1Parser
from twisted.protocols.haproxy._v2parser import V2Parser
from twisted.python.failure import Failure
from typing_extensions import override
from zope.interface import alsoProvides, implementer, providedBy

from gateway.front import CloseHooks, describe_peer
from gateway.limits import Refusal
from gateway.registry import RefusalLog

__all__ = [
    "HAPROXY_PREFIX",
    "MAX_V2_HEADER",
    "V1_MAX",
    "ProxyHeaderFactory",
    "ProxyHeaderProtocol",
]

HAPROXY_PREFIX = "haproxy:"
"""The endpoint prefix that marks a front receiving the PROXY protocol."""

MAX_V2_HEADER = 16 + 1024
"""The largest version 2 header accepted (16 fixed bytes, addresses and TLVs)."""

_V1_START = V1Parser.PROXYSTR + b" "
_V1_UNKNOWN = V1Parser.PROXYSTR + b" UNKNOWN"
V1_MAX = 107
"""The longest version 1 header, CRLF included (the specification's bound)."""
_V2_START = V2Parser.PREFIX


class ProxyHeaderFactory(Factory):
    """
    Builds a L{ProxyHeaderProtocol} per connection; the wrapped factory builds
    the real protocol once the header has given the client's address.
    """

    noisy = False

    def __init__(
        self,
        wrapped: Factory,
        *,
        clock: IReactorTime,
        timeout: float,
        refusals: RefusalLog,
    ) -> None:
        self.wrapped = wrapped
        self.clock = clock
        self.timeout = timeout
        self.refusals = refusals

    @override
    def buildProtocol(self, addr: IAddress | None) -> ProxyHeaderProtocol:
        return ProxyHeaderProtocol(self)


@implementer(IHalfCloseableProtocol)
class ProxyHeaderProtocol(CloseHooks, Protocol):
    """
    Reads one PROXY header, then acts as the transport of the real protocol
    (reporting the header's addresses) and forwards every event to it.
    """

    def __init__(self, factory: ProxyHeaderFactory) -> None:
        CloseHooks.__init__(self)
        self.factory = factory
        self._buffer = b""
        self._timer: IDelayedCall | None = None
        self._peer: IAddress | None = None
        self._host: IAddress | None = None
        self.inner: IProtocol | None = None
        self._done = False

    @override
    def connectionMade(self) -> None:
        self._timer = self.factory.clock.callLater(self.factory.timeout, self._timed_out)

    @override
    def dataReceived(self, data: bytes) -> None:
        inner = self.inner
        if inner is not None:
            inner.dataReceived(data)
            return
        if self._done:
            return
        self._buffer += data
        try:
            self._parse()
        except (InvalidProxyHeader, UnicodeDecodeError) as error:
            self._refuse(Refusal.BAD_REQUEST, f"bad PROXY header: {type(error).__name__}")

    def _parse(self) -> None:
        """
        Wait until the buffer holds a whole header, then parse it with
        Twisted's parser for its version (each parser is given the complete
        header at once, so how the bytes were split never matters).
        """
        buffer = self._buffer
        parser: V1Parser | V2Parser
        if buffer.startswith(_V2_START):
            if len(buffer) < 16:
                return
            (length,) = struct.unpack("!H", buffer[14:16])
            if 16 + length > MAX_V2_HEADER:
                raise InvalidProxyHeader()
            if len(buffer) < 16 + length:
                return
            parser = V2Parser()
        elif buffer.startswith(_V1_START):
            if b"\r\n" not in buffer[:V1_MAX]:
                if len(buffer) >= V1_MAX:
                    raise InvalidProxyHeader()
                return
            parser = V1Parser()
        elif _V2_START.startswith(buffer[:12]) or _V1_START.startswith(buffer[:6]):
            return  # could still become a header: wait for more bytes
        else:
            raise InvalidProxyHeader()
        source: IAddress | None = None
        destination: IAddress | None = None
        if buffer.startswith(_V1_UNKNOWN):
            # "PROXY UNKNOWN" and anything up to the line end (the minimal
            # form, which Twisted's parser refuses): keep the balancer's address.
            rest = buffer[buffer.index(b"\r\n") + 2 :]
        else:
            try:
                info, remaining = parser.feed(buffer)
            except ValueError as error:  # Twisted's v1 parser: int() of a bad port
                raise InvalidProxyHeader() from error
            if info is None:
                raise InvalidProxyHeader()
            rest = remaining or b""
            source, destination = info.source, info.destination
            host = getattr(source, "host", None)
            if host is not None:
                try:
                    ipaddress.ip_address(host)
                except ValueError as error:
                    raise InvalidProxyHeader() from error
        self._buffer = b""
        self._done = True
        self._stop_timer()
        self._peer = source
        self._host = destination
        self._start_inner(rest)

    def _start_inner(self, rest: bytes) -> None:
        inner = self.factory.wrapped.buildProtocol(self.getPeer())
        if inner is None:
            assert self.transport is not None
            self.transport.loseConnection()
            return
        self.inner = inner
        assert self.transport is not None
        # Offer what the real transport offers (as policies.ProtocolWrapper
        # does): the producer interface for HTTP's flow control, the
        # half-close descriptor for the relay.
        alsoProvides(self, *providedBy(self.transport))
        inner.makeConnection(self)
        if rest:
            inner.dataReceived(rest)

    def _timed_out(self) -> None:
        self._timer = None
        self._refuse(Refusal.TIMEOUT, f"no PROXY header within {self.factory.timeout:g} s")

    def _refuse(self, reason: Refusal, detail: str) -> None:
        self._done = True
        self._stop_timer()
        assert self.transport is not None
        self.factory.refusals.refused(reason, describe_peer(self.transport.getPeer()), detail)
        self.transport.loseConnection()

    def _stop_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    # Events from the transport, passed on once the header is read

    def readConnectionLost(self) -> None:
        """
        Pass a half-close on (or close, before the header or if the inner
        protocol cannot take one).
        """
        inner = self.inner
        if inner is not None and IHalfCloseableProtocol.providedBy(inner):
            inner.readConnectionLost()
        else:
            assert self.transport is not None
            self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        """
        Pass our half-close's completion on.
        """
        inner = self.inner
        if inner is not None and IHalfCloseableProtocol.providedBy(inner):
            inner.writeConnectionLost()

    @override
    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:  # noqa: B008
        self._stop_timer()
        if self.inner is not None:
            self.inner.connectionLost(reason)
        self.run_close_hooks()

    # The transport the inner protocol sees

    def getPeer(self) -> IAddress:
        """
        The client's address from the header (or the balancer's, for LOCAL).
        """
        if self._peer is not None:
            return self._peer
        assert self.transport is not None
        return self.transport.getPeer()

    def getHost(self) -> IAddress:
        """
        The address the client connected to, from the header.
        """
        if self._host is not None:
            return self._host
        assert self.transport is not None
        return self.transport.getHost()

    def write(self, data: bytes) -> None:
        """
        Write to the real transport.
        """
        assert self.transport is not None
        self.transport.write(data)

    def writeSequence(self, data: list[bytes]) -> None:
        """
        Write to the real transport.
        """
        assert self.transport is not None
        self.transport.writeSequence(data)

    def __getattr__(self, name: str) -> Any:
        # Everything else a transport offers (loseConnection, abortConnection,
        # loseWriteConnection, pauseProducing, registerProducer, ...) is the
        # real transport's.
        transport = self.__dict__.get("transport")
        if transport is None or name.startswith("__"):
            raise AttributeError(name)
        return getattr(transport, name)
