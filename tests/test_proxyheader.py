"""
Unit tests of L{gateway.front.proxyheader}: the PROXY protocol reader in front of a
C{haproxy:} listener.

The headers are built by hand (version 1 as text, version 2 with L{struct}),
fed on a L{StringTransportWithDisconnection} in every possible split (by
hypothesis, one byte per write included), and the timeout runs on a
L{MemoryReactorClock}.  The wrapped factory records the address it is given
and what its protocol receives, so each test checks what the rest of the
chain would see.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IAddress, IHalfCloseableProtocol, ITransport
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import (
    EventLoggingObserver,
    MemoryReactorClock,
    StringTransportWithDisconnection,
)
from twisted.logger import formatEvent
from twisted.python.failure import Failure
from typing_extensions import override
from zope.interface import implementer

from gateway.front.admission import AddressGate, Refuser, Responder
from gateway.front.limits import AddressCap, AddressLimits, Refusal
from gateway.front.proxyheader import MAX_V2_HEADER, ProxyHeaderFactory, ProxyHeaderProtocol
from gateway.ops.registry import Counters, RefusalLog

BALANCER = IPv4Address("TCP", "10.0.0.2", 50000)
"""The address the connection really comes from: the upstream balancer."""

FRONT = IPv4Address("TCP", "10.0.0.1", 8080)
"""Our own end of the connection."""

TIMEOUT = 5.0

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"

V1_MAX = 107
"""The longest version 1 header the specification allows, CRLF included."""


def splits(data: bytes) -> st.SearchStrategy[list[bytes]]:
    """
    Every way of cutting C{data} into consecutive non-empty pieces.
    """
    if len(data) < 2:
        return st.just([data] if data else [])
    return st.lists(
        st.integers(min_value=1, max_value=len(data) - 1), unique=True, max_size=len(data)
    ).map(
        lambda cuts: [
            data[a:b] for a, b in zip([0, *sorted(cuts)], [*sorted(cuts), len(data)], strict=True)
        ]
    )


def v1_header(source: IPv4Address | IPv6Address, destination: IPv4Address | IPv6Address) -> bytes:
    """
    A version 1 header line for a TCP connection from C{source} to C{destination}.
    """
    family = "TCP6" if isinstance(source, IPv6Address) else "TCP4"
    return (
        f"PROXY {family} {source.host} {destination.host} {source.port} {destination.port}\r\n"
    ).encode()


def v2_header(
    source: IPv4Address | IPv6Address | None,
    destination: IPv4Address | IPv6Address | None,
    *,
    command: int = 0x1,
    extra: bytes = b"",
) -> bytes:
    """
    A version 2 header: the signature, version 2 with C{command} (1 PROXY,
    0 LOCAL), the family and transport, the length, then the addresses and
    ports (for PROXY) and C{extra} bytes (TLVs, never looked at).
    """
    if source is None or destination is None:
        family, body = 0x00, b""
    elif isinstance(source, IPv6Address):
        family = 0x21
        body = (
            ipaddress.IPv6Address(source.host).packed
            + ipaddress.IPv6Address(destination.host).packed
        )
    else:
        family = 0x11
        body = (
            ipaddress.IPv4Address(source.host).packed
            + ipaddress.IPv4Address(destination.host).packed
        )
    if source is not None and destination is not None:
        body += struct.pack("!HH", source.port, destination.port)
    body += extra
    return V2_SIGNATURE + bytes([0x20 | command, family]) + struct.pack("!H", len(body)) + body


class Inner(Protocol):
    """
    The protocol the wrapped factory builds: records what reaches it.

    @ivar received: every byte given to C{dataReceived}.
    @ivar lost: the reasons C{connectionLost} was called with.
    """

    def __init__(self) -> None:
        self.received = b""
        self.lost: list[Failure] = []

    @override
    def dataReceived(self, data: bytes) -> None:
        self.received += data

    @override
    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:  # noqa: B008
        self.lost.append(reason)


@implementer(IHalfCloseableProtocol)
class HalfCloseInner(Inner):
    """
    An inner protocol that takes half-closes.

    @ivar half_closes: C{"read"} and C{"write"} as they were passed on.
    """

    def __init__(self) -> None:
        super().__init__()
        self.half_closes: list[str] = []

    def readConnectionLost(self) -> None:
        """
        Record the client's half-close.
        """
        self.half_closes.append("read")

    def writeConnectionLost(self) -> None:
        """
        Record our half-close's completion.
        """
        self.half_closes.append("write")


class InnerFactory(Factory):
    """
    The factory behind the header reader.

    @ivar addresses: the address of every C{buildProtocol} call.
    @ivar built: every protocol built.
    @ivar decline: return L{None} instead of a protocol.
    """

    def __init__(self, half_close: bool = False) -> None:
        self.addresses: list[IAddress | None] = []
        self.built: list[Inner] = []
        self.decline = False
        self._kind = HalfCloseInner if half_close else Inner

    @override
    def buildProtocol(self, addr: IAddress | None) -> Inner | None:
        self.addresses.append(addr)
        if self.decline:
            return None
        protocol = self._kind()
        self.built.append(protocol)
        return protocol


@dataclass
class Reader:
    """
    A header reader on an in-memory connection, and everything around it.
    """

    protocol: ProxyHeaderProtocol
    transport: StringTransportWithDisconnection
    inner: InnerFactory
    counters: Counters
    clock: MemoryReactorClock

    def feed(self, chunks: list[bytes]) -> None:
        """
        Deliver C{chunks} one read at a time.
        """
        for chunk in chunks:
            self.protocol.dataReceived(chunk)

    @property
    def refused(self) -> dict[Refusal, int]:
        """
        The refusals counted so far, by reason (only those counted).
        """
        return {reason: n for reason, n in self.counters.refused.items() if n}


def make_reader(half_close: bool = False) -> Reader:
    """
    A L{ProxyHeaderProtocol} connected from the balancer, with a header
    timeout of L{TIMEOUT}.
    """
    clock = MemoryReactorClock()
    counters = Counters()
    inner = InnerFactory(half_close)
    factory = ProxyHeaderFactory(
        inner, clock=clock, timeout=TIMEOUT, refusals=RefusalLog(clock, counters)
    )
    protocol = factory.buildProtocol(BALANCER)
    transport = StringTransportWithDisconnection(hostAddress=FRONT, peerAddress=BALANCER)
    transport.protocol = protocol
    protocol.makeConnection(transport)
    return Reader(protocol, transport, inner, counters, clock)


# Valid headers, however they are split

octets = st.integers(min_value=0, max_value=255)
ports = st.integers(min_value=0, max_value=65535)
ipv4 = st.builds(lambda a, b, c, d: f"{a}.{b}.{c}.{d}", octets, octets, octets, octets)
ipv6 = st.builds(
    lambda n: str(ipaddress.IPv6Address(n)),
    st.integers(min_value=1, max_value=2**128 - 1),
)


@st.composite
def endpoints(
    draw: st.DrawFn,
) -> tuple[IPv4Address, IPv4Address] | tuple[IPv6Address, IPv6Address]:
    """
    A source and a destination address of the same family.
    """
    if draw(st.booleans()):
        return (
            IPv6Address("TCP", draw(ipv6), draw(ports)),
            IPv6Address("TCP", draw(ipv6), draw(ports)),
        )
    return IPv4Address("TCP", draw(ipv4), draw(ports)), IPv4Address("TCP", draw(ipv4), draw(ports))


def same_address(found: IAddress | None, expected: IPv4Address | IPv6Address) -> bool:
    """
    Whether C{found} is a TCP address of C{expected}'s family, host and port
    (an IPv6 host compared as an address, whatever its spelling).
    """
    if type(found) is not type(expected):
        return False
    assert isinstance(found, IPv4Address | IPv6Address)
    return (
        ipaddress.ip_address(found.host) == ipaddress.ip_address(expected.host)
        and found.port == expected.port
    )


def check_header_used(
    reader: Reader,
    source: IPv4Address | IPv6Address,
    destination: IPv4Address | IPv6Address,
    payload: bytes,
) -> None:
    """
    The header was read: the wrapped factory was called once, with the
    header's source; the inner protocol got exactly the payload, and sees
    the header's addresses through its transport; nothing was refused and no
    timer is left.
    """
    assert len(reader.inner.addresses) == 1
    assert same_address(reader.inner.addresses[0], source)
    (inner,) = reader.inner.built
    assert inner.received == payload
    assert same_address(reader.protocol.getPeer(), source)
    assert same_address(reader.protocol.getHost(), destination)
    transport = inner.transport
    assert isinstance(transport, ProxyHeaderProtocol)
    assert transport is reader.protocol
    assert same_address(transport.getPeer(), source)
    assert reader.refused == {}
    assert reader.transport.connected
    assert reader.clock.getDelayedCalls() == []


@settings(max_examples=200, deadline=None)
@given(data=st.data(), addresses=endpoints(), payload=st.binary(max_size=40))
@example(
    data=None,
    addresses=(IPv4Address("TCP", "1.2.3.4", 1111), IPv4Address("TCP", "5.6.7.8", 2222)),
    payload=b"GET / HTTP/1.1\r\n\r\n",
)
def test_v1_header_any_split(
    data: st.DataObject | None,
    addresses: tuple[IPv4Address, IPv4Address] | tuple[IPv6Address, IPv6Address],
    payload: bytes,
) -> None:
    """
    A version 1 header (TCP4 or TCP6) and the client's bytes after it, split
    at any byte boundaries (one byte per read when no draw is given), give
    the wrapped factory the header's source address and the inner protocol
    exactly the client's bytes.
    """
    source, destination = addresses
    stream = v1_header(source, destination) + payload
    reader = make_reader()
    chunks = data.draw(splits(stream)) if data is not None else [bytes([b]) for b in stream]
    reader.feed(chunks)
    check_header_used(reader, source, destination, payload)


@settings(max_examples=200, deadline=None)
@given(
    data=st.data(),
    addresses=endpoints(),
    payload=st.binary(max_size=40),
    tlvs=st.binary(max_size=40),
)
@example(
    data=None,
    addresses=(IPv4Address("TCP", "1.2.3.4", 1111), IPv4Address("TCP", "5.6.7.8", 2222)),
    payload=b"GET / HTTP/1.1\r\n\r\n",
    tlvs=b"",
)
def test_v2_header_any_split(
    data: st.DataObject | None,
    addresses: tuple[IPv4Address, IPv4Address] | tuple[IPv6Address, IPv6Address],
    payload: bytes,
    tlvs: bytes,
) -> None:
    """
    A version 2 PROXY header (IPv4 or IPv6, with or without TLV bytes) and
    the client's bytes after it, split at any byte boundaries (one byte per
    read when no draw is given), give the wrapped factory the header's
    source address and the inner protocol exactly the client's bytes.
    """
    source, destination = addresses
    stream = v2_header(source, destination, extra=tlvs) + payload
    reader = make_reader()
    chunks = data.draw(splits(stream)) if data is not None else [bytes([b]) for b in stream]
    reader.feed(chunks)
    check_header_used(reader, source, destination, payload)


def test_v2_header_split_inside_fixed_part() -> None:
    """
    A version 2 header cut between its signature and its length (the first
    read is 12 to 15 bytes long), with a second read long enough to be
    mistaken for a header of its own, is still read correctly.
    """
    source = IPv4Address("TCP", "1.2.3.4", 1111)
    destination = IPv4Address("TCP", "5.6.7.8", 2222)
    payload = b"GET / HTTP/1.1\r\nHost: example\r\n\r\n"
    stream = v2_header(source, destination) + payload
    for cut in range(12, 17):
        reader = make_reader()
        reader.feed([stream[:cut], stream[cut:]])
        check_header_used(reader, source, destination, payload)


def test_bytes_after_header_go_straight_through() -> None:
    """
    Once the header is read, every later read is passed on unchanged, and the
    inner protocol's writes reach the real transport.
    """
    reader = make_reader()
    reader.feed([b"PROXY TCP4 1.2.3.4 5.6.7.8 1111 2222\r\nfirst"])
    reader.feed([b"PROXY TCP4 9.9.9.9 9.9.9.9 1 2\r\n", b"more"])
    (inner,) = reader.inner.built
    assert inner.received == b"firstPROXY TCP4 9.9.9.9 9.9.9.9 1 2\r\nmore"
    assert inner.transport is not None
    inner.transport.write(b"hello ")
    inner.transport.writeSequence([b"wor", b"ld"])
    assert reader.transport.value() == b"hello world"


def test_inner_protocol_sees_a_transport() -> None:
    """
    The inner protocol's transport offers what the real transport offers
    (interfaces and methods), so it can close or pause the connection.
    """
    reader = make_reader()
    reader.feed([v1_header(IPv4Address("TCP", "1.2.3.4", 1), FRONT)])
    (inner,) = reader.inner.built
    transport = inner.transport
    assert ITransport.providedBy(transport)
    assert transport is not None
    transport.pauseProducing()  # type: ignore[attr-defined]
    assert reader.transport.producerState == "paused"
    transport.loseConnection()
    assert not reader.transport.connected
    assert len(inner.lost) == 1


def test_v2_local_keeps_real_peer() -> None:
    """
    A version 2 LOCAL header (a balancer's health check) carries no client
    address: the connection keeps the balancer's own addresses.
    """
    reader = make_reader()
    reader.feed([v2_header(None, None, command=0x0) + b"ping"])
    assert reader.inner.addresses == [BALANCER]
    assert reader.protocol.getPeer() == BALANCER
    assert reader.protocol.getHost() == FRONT
    assert reader.inner.built[0].received == b"ping"
    assert reader.refused == {}


def test_v1_unknown_with_addresses_keeps_real_peer() -> None:
    """
    A version 1 C{UNKNOWN} header (with the addresses a sender may add,
    which are ignored) keeps the balancer's own address.
    """
    reader = make_reader()
    reader.feed([b"PROXY UNKNOWN 1.2.3.4 5.6.7.8 1 2\r\n", b"hi"])
    assert reader.inner.addresses == [BALANCER]
    assert reader.protocol.getPeer() == BALANCER
    assert reader.inner.built[0].received == b"hi"
    assert reader.refused == {}


def test_v1_bare_unknown_keeps_real_peer() -> None:
    """
    The minimal version 1 C{UNKNOWN} header, C{PROXY UNKNOWN\\r\\n} (what
    HAProxy sends when it does not know the client's address), keeps the
    balancer's own address; the specification says whatever follows
    C{UNKNOWN} up to the line end is ignored.
    """
    reader = make_reader()
    reader.feed([b"PROXY UNKNOWN\r\n", b"hi"])
    assert reader.refused == {}
    assert reader.inner.addresses == [BALANCER]
    assert reader.inner.built[0].received == b"hi"


# Refusals


@pytest.mark.parametrize(
    "first",
    [
        b"GET / HTTP/1.1\r\n",
        b"G",
        b"PROXY\t",
        b"\r\n\r\n\x00X",
        b"\x16\x03\x01\x02\x00",
        b"PROXYTCP4",
    ],
)
def test_garbage_refused_at_once(first: bytes, log_events: EventLoggingObserver) -> None:
    """
    First bytes that cannot begin a PROXY header are refused as a bad
    request as soon as that is clear: the connection is closed, the refusal
    counted and logged with the balancer's address, and the wrapped factory
    never called.
    """
    reader = make_reader()
    reader.feed([first])
    assert reader.refused == {Refusal.BAD_REQUEST: 1}
    assert not reader.transport.connected
    assert reader.inner.addresses == []
    # The header timeout is cancelled, and the refusal log, having tallied
    # nothing, keeps no timer either.
    assert reader.clock.getDelayedCalls() == []
    lines = [formatEvent(e) for e in log_events if isinstance(e.get("log_source"), RefusalLog)]
    assert len(lines) == 1
    assert lines[0].startswith("refused 10.0.0.2:50000: bad-request (bad PROXY header")
    # Anything after the refusal is ignored.
    reader.feed([b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n"])
    assert reader.inner.addresses == []


@pytest.mark.parametrize(
    "header",
    [
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1111\r\n",
        b"PROXY TCP5 1.2.3.4 5.6.7.8 1111 2222\r\n",
        V2_SIGNATURE + b"\x31\x11\x00\x0c" + bytes(12),  # version 3
        V2_SIGNATURE + b"\x21\x11\x00\x04" + bytes(4),  # addresses cut short
    ],
)
def test_malformed_header_refused(header: bytes) -> None:
    """
    A complete header that does not parse is a refused bad request; the
    wrapped factory is never called.
    """
    reader = make_reader()
    reader.feed([header + b"payload"])
    assert reader.refused == {Refusal.BAD_REQUEST: 1}
    assert not reader.transport.connected
    assert reader.inner.addresses == []


@pytest.mark.parametrize(
    "header",
    [
        b"PROXY TCP4 1.2.3.4 5.6.7.8 x 2222\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1111 \r\n",
        b"PROXY TCP4 \xff 5.6.7.8 1111 2222\r\n",
    ],
)
def test_v1_bad_port_or_address_refused(header: bytes) -> None:
    """
    A version 1 header with a port that is not a number, or an address that
    is not text, is a counted bad request like any other malformed header,
    not an exception out of C{dataReceived} (which the reactor would log as
    a traceback, leaving the refusal uncounted).
    """
    reader = make_reader()
    reader.feed([header])
    assert reader.refused == {Refusal.BAD_REQUEST: 1}
    assert not reader.transport.connected
    assert reader.inner.addresses == []


def check_refused(header: bytes) -> None:
    """
    A fresh reader given C{header} and a payload refuses it as a bad
    request: counted, closed, the wrapped factory never called.
    """
    reader = make_reader()
    reader.feed([header + b"payload"])
    assert reader.refused == {Refusal.BAD_REQUEST: 1}
    assert not reader.transport.connected
    assert reader.inner.addresses == []


bad_ports = st.one_of(
    st.integers(min_value=65536, max_value=10**5 - 1).map(str),
    st.integers(min_value=10**5, max_value=10**30).map(str),
    st.integers(min_value=0, max_value=65535).map(lambda n: f"-{n}"),
    st.integers(min_value=0, max_value=65535).map(lambda n: f"+{n}"),
    st.integers(min_value=10, max_value=65535).map(lambda n: f"{str(n)[0]}_{str(n)[1:]}"),
    st.integers(min_value=0, max_value=65535).map(lambda n: f"0{n}"),
    st.integers(min_value=0, max_value=65535).map(lambda n: f"{n}\t"),
    st.integers(min_value=0, max_value=9).map(lambda n: chr(0x660 + n)),  # Arabic-Indic
    st.just(""),
)
"""Port fields the specification does not allow: out of range, signed, with an
underscore, a leading zero or whitespace, non-ASCII digits, empty."""


@settings(max_examples=200, deadline=None)
@given(addresses=endpoints(), port=bad_ports, which=st.sampled_from([4, 5]))
@example(addresses=(IPv4Address("TCP", "1.2.3.4", 1), FRONT), port="99999", which=4)
@example(addresses=(IPv4Address("TCP", "1.2.3.4", 1), FRONT), port="-1", which=4)
@example(addresses=(IPv4Address("TCP", "1.2.3.4", 1), FRONT), port="+55", which=4)
@example(addresses=(IPv4Address("TCP", "1.2.3.4", 1), FRONT), port="5_5", which=5)
def test_v1_port_out_of_spec_refused(
    addresses: tuple[IPv4Address, IPv4Address] | tuple[IPv6Address, IPv6Address],
    port: str,
    which: int,
) -> None:
    """
    A version 1 header whose source or destination port is not 1 to 5 ASCII
    digits of 0 to 65535 without a leading zero (as the specification
    writes ports), although Python's C{int()} would read it, is refused as a
    malformed header.
    """
    fields = v1_header(*addresses).decode().removesuffix("\r\n").split(" ")
    fields[which] = port
    check_refused(" ".join(fields).encode() + b"\r\n")


@settings(max_examples=200, deadline=None)
@given(addresses=endpoints(), swap=st.sampled_from(["source", "destination", "both"]))
@example(addresses=(IPv6Address("TCP", "::1", 1111), IPv6Address("TCP", "::2", 2222)), swap="both")
@example(
    addresses=(IPv4Address("TCP", "1.2.3.4", 1111), IPv4Address("TCP", "5.6.7.8", 2222)),
    swap="both",
)
def test_v1_address_of_the_other_family_refused(
    addresses: tuple[IPv4Address, IPv4Address] | tuple[IPv6Address, IPv6Address], swap: str
) -> None:
    """
    A C{TCP4} header with an IPv6 address, or a C{TCP6} header with an IPv4
    one (in either address or both), is refused as a malformed header.
    """
    source, destination = addresses
    family = "TCP6" if isinstance(source, IPv6Address) else "TCP4"
    other = "1.2.3.4" if family == "TCP6" else "2001:db8::1"
    hosts = [source.host, destination.host]
    if swap in ("source", "both"):
        hosts[0] = other
    if swap in ("destination", "both"):
        hosts[1] = other
    line = f"PROXY {family} {hosts[0]} {hosts[1]} {source.port} {destination.port}\r\n"
    check_refused(line.encode())


@pytest.mark.parametrize(
    "header",
    [
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1111 2222 extra\r\n",
        b"PROXY TCP4 1.2.3.4  5.6.7.8 1111 2222\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1111 2222 \r\n",
        b"PROXY TCP4 01.2.3.4 5.6.7.8 1111 2222\r\n",
        b"PROXY TCP4 1.2.3.256 5.6.7.8 1111 2222\r\n",
        b"PROXY TCP4 1.2.3 5.6.7.8 1111 2222\r\n",
        b"PROXY TCP4 1.2.3.4 garbage 1111 2222\r\n",
        b"PROXY TCP6 ::ffff:1.2.3.4 ::1 1111 2222\r\n",
        b"PROXY TCP6 fe80::1%eth0 ::1 1111 2222\r\n",
        b"PROXY TCP6 1::2::3 ::1 1111 2222\r\n",
        b"PROXY TCP6 ::1 ::1:: 1111 2222\r\n",
    ],
)
def test_v1_fields_out_of_spec_refused(header: bytes) -> None:
    """
    A version 1 header with a field more, a double space, an IPv4 address
    with a leading zero, a number over 255 or three numbers, a host name,
    an IPv6 address with a dotted tail, a zone or two C{::} is refused as a
    malformed header (Twisted's parser takes every one of them).
    """
    check_refused(header)


@pytest.mark.parametrize("port", [0, 65535])
def test_v1_port_bounds_accepted(port: int) -> None:
    """
    Ports 0 and 65535, the ends of the specification's range, are read.
    """
    source = IPv4Address("TCP", "1.2.3.4", port)
    destination = IPv6Address("TCP", "::1", 80)
    reader = make_reader()
    reader.feed([f"PROXY TCP4 1.2.3.4 10.0.0.1 {port} 8080\r\nhi".encode()])
    check_header_used(reader, source, FRONT, b"hi")
    reader = make_reader()
    reader.feed([f"PROXY TCP6 ::2 ::1 {port} 80\r\nhi".encode()])
    check_header_used(reader, IPv6Address("TCP", "::2", port), destination, b"hi")


V2_ADDRESS_SIZES = {0x11: 12, 0x12: 12, 0x21: 36, 0x22: 36, 0x31: 216, 0x32: 216}
"""The address block's size for each version 2 family and transport byte."""


@settings(max_examples=200, deadline=None)
@given(family=st.sampled_from(sorted(V2_ADDRESS_SIZES)), data=st.data())
def test_v2_length_short_of_its_family_refused(family: int, data: st.DataObject) -> None:
    """
    A version 2 PROXY header whose length is shorter than the addresses its
    family carries (an IPv6 family with IPv4-sized addresses, say) is
    refused as a malformed header, not read as some other address.
    """
    length = data.draw(st.integers(min_value=0, max_value=V2_ADDRESS_SIZES[family] - 1))
    check_refused(V2_SIGNATURE + bytes([0x21, family]) + struct.pack("!H", length) + bytes(length))


def test_v1_longer_than_spec_refused() -> None:
    """
    A version 1 header with no line end within the specification's 107 bytes
    is refused, even when it arrives one byte at a time; the specification's
    longest header (C{UNKNOWN} with two full IPv6 addresses, 107 bytes) is
    read.
    """
    full = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
    longest = f"PROXY UNKNOWN {full} {full} 65535 65535\r\n".encode()
    assert len(longest) == V1_MAX
    reader = make_reader()
    reader.feed([bytes([b]) for b in longest] + [b"after"])
    assert reader.refused == {}
    assert reader.inner.addresses == [BALANCER]
    assert reader.inner.built[0].received == b"after"

    too_long = longest.replace(b"65535 65535", b"65535 065535")
    reader = make_reader()
    reader.feed([bytes([b]) for b in too_long])
    assert reader.refused == {Refusal.BAD_REQUEST: 1}
    assert reader.inner.addresses == []


def test_v2_oversized_length_refused() -> None:
    """
    A version 2 header whose length field makes it longer than
    L{MAX_V2_HEADER} is refused as soon as the length is known, without
    waiting for (or buffering) its body; one of exactly the maximum is read.
    """
    reader = make_reader()
    too_long = MAX_V2_HEADER - 16 + 1
    reader.feed([V2_SIGNATURE, b"\x21\x11", struct.pack("!H", too_long)])
    assert reader.refused == {Refusal.BAD_REQUEST: 1}
    assert not reader.transport.connected
    assert reader.inner.addresses == []

    source = IPv4Address("TCP", "1.2.3.4", 1111)
    largest = v2_header(source, FRONT, extra=bytes(MAX_V2_HEADER - 16 - 12))
    assert len(largest) == MAX_V2_HEADER
    reader = make_reader()
    reader.feed([largest[:500], largest[500:], b"x"])
    assert reader.refused == {}
    assert same_address(reader.inner.addresses[0], source)
    assert reader.inner.built[0].received == b"x"


def test_timeout_refuses(log_events: EventLoggingObserver) -> None:
    """
    A header not complete within the timeout is refused with
    L{Refusal.TIMEOUT}: the connection is closed, the refusal logged, and the
    wrapped factory never called; before the timeout nothing happens.
    """
    reader = make_reader()
    reader.feed([b"PROXY TCP4 1.2.3.4 "])
    reader.clock.advance(TIMEOUT - 0.001)
    assert reader.transport.connected
    assert reader.refused == {}
    reader.clock.advance(0.001)
    assert reader.refused == {Refusal.TIMEOUT: 1}
    assert not reader.transport.connected
    assert reader.inner.addresses == []
    lines = [formatEvent(e) for e in log_events if isinstance(e.get("log_source"), RefusalLog)]
    assert lines == ["refused 10.0.0.2:50000: timeout (no PROXY header within 5 s)"]
    reader.feed([b"5.6.7.8 1 2\r\n"])
    assert reader.inner.addresses == []


def test_silent_connection_times_out() -> None:
    """
    A connection that sends nothing at all is refused at the timeout.
    """
    reader = make_reader()
    reader.clock.advance(TIMEOUT)
    assert reader.refused == {Refusal.TIMEOUT: 1}
    assert not reader.transport.connected


def test_header_in_time_cancels_timeout() -> None:
    """
    Once the header is read, the timeout no longer applies, however long the
    connection then lasts.
    """
    reader = make_reader()
    reader.feed([b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n"])
    reader.clock.advance(TIMEOUT * 10)
    assert reader.transport.connected
    assert reader.refused == {}


def test_declining_factory_closes() -> None:
    """
    When the wrapped factory declines the connection, it is closed.
    """
    reader = make_reader()
    reader.inner.decline = True
    reader.feed([b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n"])
    assert not reader.transport.connected
    assert reader.inner.built == []


# Connection end, half-close and close hooks


def test_close_hooks_run_once_before_header() -> None:
    """
    The close hooks run (once) when the connection is lost before the
    header, and the timeout is cancelled.
    """
    reader = make_reader()
    ran: list[str] = []
    reader.protocol.add_close_hook(lambda: ran.append("hook"))
    reader.feed([b"PROXY "])
    reader.transport.loseConnection()
    reader.protocol.connectionLost(Failure(ConnectionError()))
    assert ran == ["hook"]
    assert reader.clock.getDelayedCalls() == []


def test_connection_lost_forwarded_and_hooks_run() -> None:
    """
    After the header, the connection's end reaches the inner protocol, and
    then the close hooks run.
    """
    reader = make_reader()
    order: list[str] = []
    reader.feed([b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n"])
    (inner,) = reader.inner.built
    reader.protocol.add_close_hook(lambda: order.append(f"hook after {len(inner.lost)}"))
    reader.transport.loseConnection()
    assert len(inner.lost) == 1
    assert order == ["hook after 1"]


def test_half_close_forwarded() -> None:
    """
    After the header, a half-close (and its completion) reaches an inner
    protocol that takes half-closes, and the connection stays open.
    """
    reader = make_reader(half_close=True)
    reader.feed([b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n"])
    (inner,) = reader.inner.built
    assert isinstance(inner, HalfCloseInner)
    assert IHalfCloseableProtocol.providedBy(reader.protocol)
    reader.protocol.readConnectionLost()
    reader.protocol.writeConnectionLost()
    assert inner.half_closes == ["read", "write"]
    assert reader.transport.connected


def test_half_close_closes_without_half_close_inner() -> None:
    """
    A half-close closes the connection when the inner protocol cannot take
    one; its completion is ignored.
    """
    reader = make_reader()
    reader.feed([b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n"])
    reader.protocol.writeConnectionLost()
    assert reader.transport.connected
    reader.protocol.readConnectionLost()
    assert not reader.transport.connected
    assert len(reader.inner.built[0].lost) == 1


def test_half_close_before_header_closes() -> None:
    """
    A half-close before the header is complete closes the connection, and
    the wrapped factory is never called.
    """
    reader = make_reader(half_close=True)
    reader.feed([b"PROXY TCP4 1.2.3.4"])
    reader.protocol.writeConnectionLost()
    reader.protocol.readConnectionLost()
    assert not reader.transport.connected
    assert reader.inner.addresses == []
    assert reader.clock.getDelayedCalls() == []


# With the per-address gate behind it


def test_address_limits_count_header_source() -> None:
    """
    Behind the header reader, the per-address policies count the client from
    the header, not the balancer: two clients behind one balancer are both
    admitted, a second connection of one of them is refused.
    """
    clock = MemoryReactorClock()
    counters = Counters()
    refusals = RefusalLog(clock, counters)
    inner = InnerFactory()
    gate = AddressGate(
        inner,
        AddressLimits([AddressCap(1)]),
        clock=clock,
        refusals=refusals,
        responder=Responder(clock),
    )
    factory = ProxyHeaderFactory(gate, clock=clock, timeout=TIMEOUT, refusals=refusals)
    results = []
    for client in ("1.2.3.4", "5.6.7.8", "1.2.3.4"):
        protocol = factory.buildProtocol(BALANCER)
        transport = StringTransportWithDisconnection(hostAddress=FRONT, peerAddress=BALANCER)
        transport.protocol = protocol
        protocol.makeConnection(transport)
        protocol.dataReceived(f"PROXY TCP4 {client} 10.0.0.1 1000 8080\r\n".encode())
        results.append(protocol.inner)
    assert not isinstance(results[0], Refuser)
    assert not isinstance(results[1], Refuser)
    assert isinstance(results[2], Refuser)
    assert [getattr(a, "host", None) for a in inner.addresses] == ["1.2.3.4", "5.6.7.8"]
    assert counters.accepted == 2
    assert counters.refused[Refusal.ADDRESS_CAP] == 1
