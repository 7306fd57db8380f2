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
a counted refusal.  Twisted's version 1 parser takes ports and addresses that
the specification does not (anything C{int()} reads, an IPv6 address in a
C{TCP4} line), so each line is first checked field by field (L{check_v1_line}).
Version 2 carries addresses and ports in binary, sized by their family:
Twisted's parser refuses a header too short for its family.

Only once the header is parsed is the rest of the chain built, with the
address from the header: so the per-address limits (L{gateway.front.admission})
count the real client, and C{getPeer()} reports it everywhere.  A C{LOCAL}
header (a balancer's health check) or C{UNKNOWN} leaves the balancer's own
address.
"""

from __future__ import annotations

import ipaddress
import re
import struct
from typing import Any

from twisted.internet.address import IPv4Address, IPv6Address
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

from gateway.connection import CloseHooks, describe_peer
from gateway.front.limits import Refusal
from gateway.front.pending import Pending
from gateway.interfaces import IRefusal
from gateway.ops.registry import RefusalLog

__all__ = [
    "HAPROXY_PREFIX",
    "MAX_V2_HEADER",
    "PROXY_VERSIONS",
    "V1_MAX",
    "check_v1_line",
    "ProxyHeaderFactory",
    "ProxyHeaderProtocol",
    "proxy_header",
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


_IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_V1_PORT = re.compile(rb"0|[1-9][0-9]{0,4}")
_V1_HOSTS: dict[bytes, tuple[re.Pattern[bytes], type[_IPAddress]]] = {
    b"TCP4": (re.compile(rb"[0-9.]{7,15}"), ipaddress.IPv4Address),
    b"TCP6": (re.compile(rb"[0-9A-Fa-f:]{2,39}"), ipaddress.IPv6Address),
}


def check_v1_line(line: bytes) -> None:
    """
    Check a version 1 C{TCP4} or C{TCP6} header line (without its CRLF)
    field by field, as the specification writes it: C{PROXY}, the family,
    two addresses of that family and two ports, separated by single spaces
    and nothing after.  An IPv4 address is four decimal numbers of 0 to 255
    without leading zeros; an IPv6 address is hexadecimal groups separated
    by colons with at most one C{::} (no dotted IPv4 tail, no zone); a port
    is a decimal number of 0 to 65535 without a sign, separator or leading
    zero.

    @raise InvalidProxyHeader: the line is anything else.
    """
    fields = line.split(b" ")
    if len(fields) != 6 or fields[0] != V1Parser.PROXYSTR or fields[1] not in _V1_HOSTS:
        raise InvalidProxyHeader()
    pattern, family = _V1_HOSTS[fields[1]]
    for host in fields[2:4]:
        if pattern.fullmatch(host) is None:
            raise InvalidProxyHeader()
        try:
            family(host.decode("ascii"))
        except ValueError as error:
            raise InvalidProxyHeader() from error
    for port in fields[4:6]:
        if _V1_PORT.fullmatch(port) is None or int(port) > 0xFFFF:
            raise InvalidProxyHeader()


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
        self.header = b""
        """The PROXY header as received, for a process the connection is
        handed to (which reads it again)."""

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
            if isinstance(parser, V1Parser):
                # Twisted's parser takes what int() and any host text take
                # (ports -1, 99999, +55, 5_5; TCP4 with an IPv6 address);
                # the line must be the specification's, field by field.
                check_v1_line(buffer[: buffer.index(b"\r\n")])
            try:
                info, remaining = parser.feed(buffer)
            except ValueError as error:  # Twisted's v1 parser: int() of a bad port
                raise InvalidProxyHeader() from error
            if info is None:
                raise InvalidProxyHeader()
            rest = remaining or b""
            source, destination = info.source, info.destination
        self.header = buffer[: len(buffer) - len(rest)]
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
        if IRefusal.providedBy(inner):
            # Refused by a per-address policy: give back the total-cap slot
            # this connection holds (the close hooks) now, not at its close.
            self.run_close_hooks()
        elif isinstance(inner, Pending):
            # The same, if the cluster's shared limits refuse it.
            inner.when_refused(self.run_close_hooks)
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


# The writer: the header the gateway sends to a backend (--proxy-protocol)

PROXY_VERSIONS = ("off", "v1", "v2")
"""
The values of C{--proxy-protocol}: send no header to the backends, or a
version 1 (text) or version 2 (binary) header before any byte of the client's.
"""

_V1_UNKNOWN_LINE = b"PROXY UNKNOWN\r\n"
_V2_PROXY = 0x21  # version 2, command PROXY
_V2_LOCAL = 0x20  # version 2, command LOCAL
_V2_TCP4 = 0x11  # AF_INET, STREAM
_V2_TCP6 = 0x21  # AF_INET6, STREAM
_V2_UNSPEC = 0x00  # AF_UNSPEC, UNSPEC


def proxy_header(version: str, source: IAddress, destination: IAddress) -> bytes:
    """
    The PROXY header that tells a backend where its connection really comes
    from, to be written before any byte of the client's.

    A TCP connection over IPv4 or IPv6 gives a C{TCP4} or C{TCP6} header
    (families C{0x11} and C{0x21} in version 2).  An IPv4-mapped IPv6 address
    (C{::ffff:a.b.c.d}, as a dual-stack socket reports an IPv4 client) is sent
    as IPv4; if the two addresses still differ in family, the IPv4 one is sent
    mapped into IPv6 (as HAProxy does), since a header has one family for both.
    The zone of a link-local address (C{fe80::1%eth0}) is dropped: it names an
    interface of this host, which means nothing to the backend.

    Anything else (a UNIX socket, a UDP or unparsable address) cannot be
    described, and gets the header that tells the backend to use the
    connection's own addresses: C{PROXY UNKNOWN\\r\\n} in version 1 (the
    short form the specification allows; HAProxy and our own reader accept it,
    but Twisted's C{V1Parser} refuses it), and in version 2 a LOCAL command
    (C{0x20}) with family C{0x00} (C{AF_UNSPEC}) and no address bytes, as
    HAProxy's own sender does (the specification lets a receiver refuse a
    PROXY command without addresses, but it must accept LOCAL).

    @param version: C{"v1"} or C{"v2"}.
    @param source: the client's address (C{getPeer()} of the client's
        connection, which a PROXY header on the front may have set).
    @param destination: the address the client connected to (C{getHost()}).
    @return: the header's bytes: at most L{V1_MAX} for version 1, 16, 28 or
        52 for version 2.
    @raise ValueError: if C{version} is neither C{"v1"} nor C{"v2"}.
    """
    if version not in ("v1", "v2"):
        raise ValueError(f"no PROXY header of version {version!r}")
    source_end, destination_end = _tcp_endpoint(source), _tcp_endpoint(destination)
    if source_end is None or destination_end is None:
        return _V1_UNKNOWN_LINE if version == "v1" else _v2_prefix(_V2_UNSPEC, 0, _V2_LOCAL)
    (source_ip, source_port), (destination_ip, destination_port) = source_end, destination_end
    if source_ip.version != destination_ip.version:
        source_ip, destination_ip = _as_ipv6(source_ip), _as_ipv6(destination_ip)
    if version == "v1":
        family = "TCP4" if source_ip.version == 4 else "TCP6"
        line = (
            f"PROXY {family} {_v1_host(source_ip)} {_v1_host(destination_ip)}"
            f" {source_port} {destination_port}\r\n"
        )
        return line.encode("ascii")
    body = (
        source_ip.packed
        + destination_ip.packed
        + struct.pack("!HH", source_port, destination_port)
    )
    return _v2_prefix(_V2_TCP4 if source_ip.version == 4 else _V2_TCP6, len(body)) + body


def _tcp_endpoint(address: IAddress) -> tuple[_IPAddress, int] | None:
    """
    The IP address (an IPv4-mapped one as IPv4, without a zone) and port of a
    TCP address, or L{None} for anything a PROXY header cannot carry.
    """
    if not isinstance(address, IPv4Address | IPv6Address) or address.type != "TCP":
        return None
    if not 0 <= address.port <= 0xFFFF:
        return None
    try:
        ip = ipaddress.ip_address(address.host.partition("%")[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped, address.port
    return ip, address.port


def _as_ipv6(ip: _IPAddress) -> ipaddress.IPv6Address:
    """
    C{ip} as IPv6: an IPv4 address mapped into C{::ffff:0:0/96}.
    """
    if isinstance(ip, ipaddress.IPv6Address):
        return ip
    return ipaddress.IPv6Address(0xFFFF_0000_0000 | int(ip))


def _v1_host(ip: _IPAddress) -> str:
    """
    C{ip} as version 1 writes it: IPv4 in dotted decimal, IPv6 in groups of
    hexadecimal digits with at most one C{::}.
    """
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        # The specification wants hexadecimal groups only, but Python 3.13
        # writes a mapped address with a dotted tail (::ffff:1.2.3.4).
        value = int(ip)
        return f"::ffff:{value >> 16 & 0xFFFF:x}:{value & 0xFFFF:x}"
    return ip.compressed


def _v2_prefix(family: int, length: int, command: int = 0x21) -> bytes:
    """
    The fixed 16 bytes of a version 2 PROXY header: the signature, version and
    command, family and transport, and the length of what follows.
    """
    return _V2_START + struct.pack("!BBH", command, family, length)
