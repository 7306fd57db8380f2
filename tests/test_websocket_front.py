"""
Unit tests of the WebSocket bridge's front (L{gateway.front.websocket}): the
upgrade through a real L{FrontDoor}, whose HTTP channel hands the connection
over with the bytes it read past the request (on in-memory transports and a
L{MemoryReactorClock}; the browser is a wsproto client that parses the
C{101} and the frames after it), and the Origin check.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.testing import EventLoggingObserver, MemoryReactorClock
from wsproto import ConnectionType
from wsproto.connection import Connection
from wsproto.events import AcceptConnection, Request
from wsproto.handshake import H11Handshake

from gateway.front.door import FrontDoor, GatewayFactory
from gateway.front.websocket import answer_upgrade, origin_allowed
from gateway.http.site import make_site
from gateway.pool.backends import Backend, Pool
from gateway.session.settings import SessionSettings
from tests.test_relay import FakeTransport, HalfCloseableTransport, memory_backends
from tests.test_websocket_unit import PEER, access_reasons, closes, masked

# The upgrade, through a real front door


def make_door() -> tuple[FrontDoor, FakeTransport, MemoryReactorClock, Backend]:
    """
    A front door whose site has the bridge on C{/play}, on an in-memory
    transport, with one backend (a real endpoint on a memory reactor).
    """
    reactor = MemoryReactorClock()
    [backend] = memory_backends(reactor, 1)
    factory = GatewayFactory(
        site=make_site(
            None, listing=False, reactor=reactor, websocket_paths=frozenset({b"/play"})
        ),
        chooser=Pool([backend]),
        clock=reactor,
        settings=SessionSettings(
            sniff_timeout=2, connect_timeout=5, idle_timeout=0, fin_timeout=0
        ),
        upgrade=answer_upgrade,
    )
    door = factory.buildProtocol(PEER)
    transport = FakeTransport()
    transport.on_lost = door.connectionLost
    door.makeConnection(transport)
    return door, transport, reactor, backend


def upgrade(door: FrontDoor, reactor: MemoryReactorClock, after: bytes = b"") -> Connection:
    """
    Send an upgrade request for C{/play}, with C{after} in the same packet,
    and read the C{101}: the browser's wsproto connection, which has parsed
    whatever followed the C{101} in the gateway's bytes.
    """
    handshake = H11Handshake(ConnectionType.CLIENT)
    door.dataReceived(handshake.send(Request(host="gw.test", target="/play")) + after)
    reactor.advance(0)  # the upgrade takes the connection once the channel is done
    transport = door.transport
    assert isinstance(transport, FakeTransport)
    handshake.receive_data(transport.value())
    transport.clear()
    assert isinstance(next(handshake.events()), AcceptConnection)
    assert handshake.connection is not None
    return handshake.connection


def accept_backend(reactor: MemoryReactorClock) -> HalfCloseableTransport:
    """
    Complete the last connection attempt to a backend.
    """
    host, port, factory, _timeout, _bind = reactor.tcpClients[-1]
    protocol = factory.buildProtocol(IPv4Address("TCP", host, port))
    assert protocol is not None
    transport = HalfCloseableTransport()
    transport.on_lost = protocol.connectionLost
    protocol.makeConnection(transport)
    return transport


def test_frames_in_the_request_packet_are_relayed_in_order() -> None:
    """
    Frames sent in the same packet as the upgrade request (read by the HTTP
    channel past the request), then frames sent before the session started,
    then frames sent after, reach the backend in that order.
    """
    door, _transport, reactor, _backend = make_door()
    handshake = H11Handshake(ConnectionType.CLIENT)
    request = handshake.send(Request(host="gw.test", target="/play"))
    door.dataReceived(request + masked(0x2, b"one ") + masked(0x1, b"two "))
    door.dataReceived(masked(0x2, b"three "))  # before the upgrade took the connection
    reactor.advance(0)
    assert door.kind == "websocket"
    door.dataReceived(masked(0x2, b"four"))
    backend = accept_backend(reactor)
    assert backend.value() == b"one two three four"


def test_garbage_right_after_the_request_closes_with_1002(
    log_events: EventLoggingObserver,
) -> None:
    """
    Bytes that are no WebSocket frame, in the same packet as the upgrade
    request: the C{101}, then a close frame with 1002, the connection
    closed, and C{protocol-error} in the access log.
    """
    door, transport, reactor, backend = make_door()
    browser = upgrade(door, reactor, b"\xff\xff\xff\xff garbage")
    assert [code for code, _ in closes(list(browser.events()))] == [1002]
    assert transport.disconnecting
    transport.connection_lost()
    assert access_reasons(log_events) == ["protocol-error"]
    assert (backend.failures, backend.consecutive_failures) == (0, 0)


# Origin


HOSTS = st.from_regex(
    r"[A-Za-z0-9]([A-Za-z0-9-]{0,10}[A-Za-z0-9])?(\.[A-Za-z]{2,5}){0,2}", fullmatch=True
)
"""Host names, in any case."""

PORTS = st.one_of(st.just(""), st.integers(min_value=1, max_value=65535).map(lambda p: f":{p}"))
"""Nothing, or a port after the host."""

SCHEMES = st.sampled_from(["http", "https", "HTTP", "Https"])


def recase(text: str) -> st.SearchStrategy[str]:
    """
    C{text} with each letter's case chosen at random.
    """
    return st.lists(st.booleans(), min_size=len(text), max_size=len(text)).map(
        lambda upper: "".join(
            c.upper() if u else c.lower() for c, u in zip(text, upper, strict=True)
        )
    )


@given(st.one_of(st.none(), HOSTS), st.lists(st.text(max_size=20), max_size=3))
def test_no_origin_is_allowed(host: str | None, allowed: list[str]) -> None:
    """
    A request without C{Origin} is not a browser's: it is allowed, whatever
    the host and the allowed origins.
    """
    assert origin_allowed(None, host, tuple(allowed))


@given(st.text(max_size=40), st.one_of(st.none(), HOSTS))
def test_star_allows_any_origin(origin: str, host: str | None) -> None:
    """
    C{--websocket-origin '*'} allows any origin.
    """
    assert origin_allowed(origin, host, ("https://listed.example", "*"))


@given(st.data(), SCHEMES, HOSTS, PORTS)
def test_own_host_is_allowed_in_any_case(
    data: st.DataObject, scheme: str, host: str, port: str
) -> None:
    """
    An origin naming the request's own host (and port), in any case and
    with either scheme, is allowed without any C{--websocket-origin}.
    """
    origin = data.draw(recase(f"{scheme}://{host}{port}"))
    header = data.draw(recase(host + port))
    assert origin_allowed(origin, header, ())
    assert origin_allowed(f" {origin} ", f"{header} ", ())


@given(st.data(), SCHEMES, HOSTS, PORTS, HOSTS)
def test_listed_origin_is_allowed_in_any_case(
    data: st.DataObject, scheme: str, host: str, port: str, other: str
) -> None:
    """
    An origin given with C{--websocket-origin} (kept in lower case) is
    allowed whatever the case the browser sends it in, from a page on
    another host.
    """
    listed = f"{scheme}://{host}{port}".lower()
    origin = data.draw(recase(listed))
    assert origin_allowed(origin, f"{other}.gateway.test", ("https://else.example", listed))


@given(SCHEMES, HOSTS, PORTS, HOSTS)
def test_other_origins_are_refused(scheme: str, host: str, port: str, other: str) -> None:
    """
    An origin that is neither the request's host nor listed is refused; so
    is one whose host matches without a scheme, the C{null} origin of a
    sandboxed page, and any origin when the request has no C{Host}.
    """
    origin = f"{scheme}://{host}{port}"
    own = f"{other}.gateway.test"
    assert not origin_allowed(origin, own, ("https://listed.example",))
    assert not origin_allowed(origin, None, ())
    assert not origin_allowed(own, own, ())
    assert not origin_allowed("null", own, ())
    assert not origin_allowed(f"http://{own}.evil.example", own, ())


def test_a_connection_lost_before_the_channel_lets_go_starts_no_session() -> None:
    """
    A browser gone between the C{101} and the turn on which the HTTP channel
    lets go of the connection starts no session and dials no backend.
    """
    door, _transport, reactor, _backend = make_door()
    handshake = H11Handshake(ConnectionType.CLIENT)
    door.dataReceived(handshake.send(Request(host="gw.test", target="/play")))
    door.connectionLost()
    reactor.advance(0)
    assert door.session is None
    assert reactor.tcpClients == []
    assert door not in door.factory.pending
