"""
Unit tests of L{gateway.front.proxyheader.proxy_header}: the PROXY header the
gateway writes to a backend (C{--proxy-protocol v1|v2}).

Every header is read back by Twisted's own parsers (an independent reader),
and a few are compared byte for byte with headers written by hand from
HAProxy's C{doc/proxy-protocol.txt}.  The short headers that carry no address
are also given to our own reader, L{ProxyHeaderProtocol}, which a gateway
behind another gateway would use.
"""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.interfaces import IAddress
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.protocols.haproxy._exceptions import InvalidNetworkProtocol
from twisted.protocols.haproxy._info import ProxyInfo
from twisted.protocols.haproxy._v1parser import V1Parser
from twisted.protocols.haproxy._v2parser import V2Parser
from typing_extensions import override

from gateway.front.proxyheader import (
    PROXY_VERSIONS,
    V1_MAX,
    ProxyHeaderFactory,
    proxy_header,
)
from gateway.ops.registry import Counters, RefusalLog

PAYLOAD = b"payload"
"""The client's first bytes, written right after the header."""

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"

TCPAddress = IPv4Address | IPv6Address


def parse(version: str, data: bytes) -> tuple[ProxyInfo, bytes]:
    """
    Parse C{data} (a header and what follows) with Twisted's parser for
    C{version}, which must find a whole header in it.
    """
    parser = V1Parser() if version == "v1" else V2Parser()
    info, remaining = parser.feed(data)
    assert info is not None and remaining is not None
    return info, remaining


def endpoint(
    address: IAddress | None,
) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]:
    """
    The IP address and port of a parsed address.  Version 2's parser writes
    IPv6 without zero compression, so addresses are compared as values.
    """
    assert isinstance(address, IPv4Address | IPv6Address)
    assert address.type == "TCP"
    return ipaddress.ip_address(address.host), address.port


versions = st.sampled_from(["v1", "v2"])
ports = st.integers(min_value=0, max_value=65535)
ipv4_hosts = st.ip_addresses(v=4).map(str)
ipv6_hosts = st.ip_addresses(v=6).map(str)
ipv4_addresses = st.builds(IPv4Address, st.just("TCP"), ipv4_hosts, ports)
ipv6_addresses = st.builds(IPv6Address, st.just("TCP"), ipv6_hosts, ports)


def unmapped(address: TCPAddress) -> bool:
    """
    Whether C{address} is not an IPv4-mapped IPv6 address.
    """
    ip = ipaddress.ip_address(address.host)
    return isinstance(ip, ipaddress.IPv4Address) or ip.ipv4_mapped is None


same_family = st.one_of(
    st.tuples(ipv4_addresses, ipv4_addresses),
    st.tuples(ipv6_addresses.filter(unmapped), ipv6_addresses.filter(unmapped)),
)
"""A source and a destination of one family, neither an IPv4-mapped address."""


# Round trips through Twisted's parsers


@given(versions, same_family)
def test_round_trip(version: str, ends: tuple[TCPAddress, TCPAddress]) -> None:
    """
    A header for two addresses of one family, read by Twisted's parser, gives
    back the same hosts and ports, of the same family, and leaves the bytes
    that follow it untouched.
    """
    source, destination = ends
    info, remaining = parse(version, proxy_header(version, source, destination) + PAYLOAD)
    assert remaining == PAYLOAD
    assert type(info.source) is type(source)
    assert type(info.destination) is type(destination)
    assert endpoint(info.source) == (ipaddress.ip_address(source.host), source.port)
    assert endpoint(info.destination) == (
        ipaddress.ip_address(destination.host),
        destination.port,
    )
    if version == "v1" or isinstance(source, IPv4Address):
        # the same text, too (version 2's parser spells IPv6 out uncompressed)
        assert (info.source.host, info.destination.host) == (source.host, destination.host)


@given(st.one_of(ipv4_addresses, ipv6_addresses), st.one_of(ipv4_addresses, ipv6_addresses))
def test_v1_text(source: TCPAddress, destination: TCPAddress) -> None:
    """
    A version 1 header, whatever the addresses, is one line of at most 107
    bytes, its IPv4 hosts in plain dotted decimal, its IPv6 hosts in
    hexadecimal groups only (no dotted tail, which the specification does not
    allow).
    """
    header = proxy_header("v1", source, destination)
    assert len(header) <= V1_MAX
    assert header.endswith(b"\r\n") and header.count(b"\r\n") == 1
    words = header[:-2].decode("ascii").split(" ")
    assert words[:2] in (["PROXY", "TCP4"], ["PROXY", "TCP6"])
    if words[1] == "TCP6":
        assert all(set(host) <= set("0123456789abcdef:") for host in words[2:4])
    else:
        assert all(str(ipaddress.IPv4Address(host)) == host for host in words[2:4])


# Exact bytes, written by hand from the specification


V4_SOURCE = IPv4Address("TCP", "192.168.0.1", 56324)
V4_DESTINATION = IPv4Address("TCP", "192.168.0.11", 443)
V6_SOURCE = IPv6Address("TCP", "2001:db8::1", 56324)
V6_DESTINATION = IPv6Address("TCP", "2001:db8::b", 443)


def test_v1_tcp4_bytes() -> None:
    """
    Version 1 over IPv4 is the specification's own example line.
    """
    assert (
        proxy_header("v1", V4_SOURCE, V4_DESTINATION)
        == b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n"
    )


def test_v1_tcp6_bytes() -> None:
    """
    Version 1 over IPv6 writes the compressed hexadecimal form.
    """
    assert (
        proxy_header("v1", V6_SOURCE, V6_DESTINATION)
        == b"PROXY TCP6 2001:db8::1 2001:db8::b 56324 443\r\n"
    )


def test_v2_tcp4_bytes() -> None:
    """
    Version 2 over IPv4: signature, 0x21 (version 2, PROXY), 0x11 (TCP over
    IPv4), length 12, then source and destination addresses and ports.
    """
    assert proxy_header("v2", V4_SOURCE, V4_DESTINATION) == (
        b"\x0d\x0a\x0d\x0a\x00\x0d\x0a\x51\x55\x49\x54\x0a"
        b"\x21\x11\x00\x0c"
        b"\xc0\xa8\x00\x01"  # 192.168.0.1
        b"\xc0\xa8\x00\x0b"  # 192.168.0.11
        b"\xdc\x04"  # 56324
        b"\x01\xbb"  # 443
    )


def test_v2_tcp6_bytes() -> None:
    """
    Version 2 over IPv6: signature, 0x21 (version 2, PROXY), 0x21 (TCP over
    IPv6), length 36, then source and destination addresses and ports.
    """
    expected = (
        b"\x0d\x0a\x0d\x0a\x00\x0d\x0a\x51\x55\x49\x54\x0a"
        b"\x21\x21\x00\x24"
        b"\x20\x01\x0d\xb8\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x01"  # 2001:db8::1
        b"\x20\x01\x0d\xb8\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x0b"  # 2001:db8::b
        b"\xdc\x04"  # 56324
        b"\x01\xbb"  # 443
    )
    assert proxy_header("v2", V6_SOURCE, V6_DESTINATION) == expected


# Mapped addresses and mixed families


def mapped(host: str) -> str:
    """
    The IPv4-mapped IPv6 form of an IPv4 host, as a dual-stack socket reports it.
    """
    return f"::ffff:{host}"


@given(versions, ipv4_hosts, ports, ipv4_addresses)
def test_mapped_source_ipv4_destination(
    version: str, host: str, port: int, destination: IPv4Address
) -> None:
    """
    A client reported as IPv4-mapped IPv6, connected to an IPv4 address, is
    sent as TCP4 with its IPv4 address.
    """
    source = IPv6Address("TCP", mapped(host), port)
    info, remaining = parse(version, proxy_header(version, source, destination) + PAYLOAD)
    assert remaining == PAYLOAD
    assert isinstance(info.source, IPv4Address)
    assert (info.source.host, info.source.port) == (host, port)
    assert isinstance(info.destination, IPv4Address)
    assert (info.destination.host, info.destination.port) == (destination.host, destination.port)


@given(versions, ipv4_hosts, ports, ipv4_hosts, ports)
def test_both_mapped(version: str, host: str, port: int, to_host: str, to_port: int) -> None:
    """
    A dual-stack listener reports both ends as IPv4-mapped: both go as IPv4.
    """
    source = IPv6Address("TCP", mapped(host), port)
    destination = IPv6Address("TCP", mapped(to_host), to_port)
    info, _ = parse(version, proxy_header(version, source, destination))
    assert isinstance(info.source, IPv4Address)
    assert isinstance(info.destination, IPv4Address)
    assert (info.source.host, info.source.port) == (host, port)
    assert (info.destination.host, info.destination.port) == (to_host, to_port)


@given(
    versions,
    st.one_of(
        st.tuples(ipv4_addresses, ipv6_addresses.filter(unmapped)),
        st.tuples(ipv6_addresses.filter(unmapped), ipv4_addresses),
    ),
)
def test_mixed_families(version: str, ends: tuple[TCPAddress, TCPAddress]) -> None:
    """
    Addresses of two families (which one header cannot hold) go as TCP6, the
    IPv4 one mapped into IPv6; the source still reads back as the client.
    """
    source, destination = ends
    header = proxy_header(version, source, destination)
    assert len(header) <= (V1_MAX if version == "v1" else 16 + 36)
    info, remaining = parse(version, header + PAYLOAD)
    assert remaining == PAYLOAD
    assert isinstance(info.source, IPv6Address)
    assert isinstance(info.destination, IPv6Address)
    for sent, read in ((source, info.source), (destination, info.destination)):
        ip = ipaddress.IPv6Address(read.host)
        assert (ip.ipv4_mapped or ip, read.port) == (ipaddress.ip_address(sent.host), sent.port)


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_zone_dropped(version: str) -> None:
    """
    The zone of a link-local address names one of our interfaces, and is left
    out of the header.
    """
    source = IPv6Address("TCP", "fe80::1%eth0", 40000)
    destination = IPv6Address("TCP", "fe80::2%eth0", 22)
    header = proxy_header(version, source, destination)
    assert b"%" not in header and b"eth0" not in header
    info, _ = parse(version, header)
    assert endpoint(info.source) == (ipaddress.IPv6Address("fe80::1"), 40000)
    assert endpoint(info.destination) == (ipaddress.IPv6Address("fe80::2"), 22)


# Addresses a header cannot carry


UNDESCRIBABLE: list[tuple[IAddress, IAddress]] = [
    (UNIXAddress(None), UNIXAddress(b"/run/gateway.sock")),
    (UNIXAddress(b"/tmp/client"), V4_DESTINATION),
    (V4_SOURCE, UNIXAddress(b"/run/gateway.sock")),
    (IPv4Address("UDP", "192.168.0.1", 53), IPv4Address("UDP", "192.168.0.11", 53)),
    (IPv4Address("TCP", "localhost", 1234), V4_DESTINATION),
]


@pytest.mark.parametrize(("source", "destination"), UNDESCRIBABLE)
def test_v1_unknown(source: IAddress, destination: IAddress) -> None:
    """
    Version 1 sends the short C{PROXY UNKNOWN} line for anything but TCP over
    IP.  Twisted's own parser refuses this form (it wants a space after
    C{UNKNOWN}), though the specification allows it and HAProxy accepts it.
    """
    header = proxy_header("v1", source, destination)
    assert header == b"PROXY UNKNOWN\r\n"
    with pytest.raises(InvalidNetworkProtocol):
        V1Parser().feed(header + PAYLOAD)


@pytest.mark.parametrize(("source", "destination"), UNDESCRIBABLE)
def test_v2_unspec(source: IAddress, destination: IAddress) -> None:
    """
    Version 2 sends a LOCAL command with an unspecified family and no
    addresses (as HAProxy does), which Twisted's parser reads as "no
    addresses".
    """
    header = proxy_header("v2", source, destination)
    assert header == V2_SIGNATURE + b"\x20\x00\x00\x00"
    info, remaining = parse("v2", header + PAYLOAD)
    assert (info.source, info.destination, remaining) == (None, None, PAYLOAD)


class Recorder(Protocol):
    """
    Records the bytes that reach it, behind our header reader.
    """

    def __init__(self) -> None:
        self.received = b""

    @override
    def dataReceived(self, data: bytes) -> None:
        self.received += data


class RecorderFactory(Factory):
    """
    Builds one L{Recorder} and keeps the address it was built for.
    """

    def __init__(self) -> None:
        self.protocol_built = Recorder()
        self.address: IAddress | None = None

    @override
    def buildProtocol(self, addr: IAddress | None) -> Recorder:
        self.address = addr
        return self.protocol_built


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_own_reader_accepts_unknown(version: str) -> None:
    """
    Our own reader takes the address-less header of either version and keeps
    the connection's own address, as a gateway behind this one would.
    """
    balancer = IPv4Address("TCP", "10.0.0.2", 50000)
    clock = MemoryReactorClock()
    inner = RecorderFactory()
    factory = ProxyHeaderFactory(
        inner, clock=clock, timeout=5.0, refusals=RefusalLog(clock, Counters())
    )
    protocol = factory.buildProtocol(balancer)
    transport = StringTransport(peerAddress=balancer)
    protocol.makeConnection(transport)
    protocol.dataReceived(proxy_header(version, UNIXAddress(None), UNIXAddress(None)) + PAYLOAD)
    assert not transport.disconnecting
    assert inner.address == balancer
    assert inner.protocol_built.received == PAYLOAD


# The option's values


def test_versions() -> None:
    """
    C{--proxy-protocol} takes C{off}, C{v1} or C{v2}; only the last two are
    header versions, and anything else is refused.
    """
    assert PROXY_VERSIONS == ("off", "v1", "v2")
    for version in ("off", "v3", "V1", ""):
        with pytest.raises(ValueError, match="PROXY header"):
            proxy_header(version, V4_SOURCE, V4_DESTINATION)
