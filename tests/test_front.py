"""
Unit tests of the front door: classification of first bytes, however the
client splits them, and the sniff timeout, on in-memory transports and a
L{Clock}.
"""

from __future__ import annotations

import re
from typing import cast

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.base import DelayedCall
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IProtocol, IProtocolFactory, IStreamClientEndpoint
from twisted.internet.testing import MemoryReactorClock, StringTransportWithDisconnection
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET
from zope.interface import implementer

from gateway.front.door import (
    HTTP_METHODS,
    SNIFF_LIMIT,
    FrontDoor,
    GatewayFactory,
    Verdict,
    classify,
)
from gateway.http.channel import SEND_TIMEOUT
from gateway.http.site import HTTPSite, make_site
from gateway.ops.registry import Counters
from gateway.pool.backends import Backend, Pool
from gateway.pool.balance import RendezvousHash
from gateway.session.settings import SessionSettings

PEER = IPv4Address("TCP", "127.0.0.1", 40000)


def splits(data: bytes) -> st.SearchStrategy[list[bytes]]:
    """
    Every way of cutting C{data} into consecutive non-empty pieces.
    """
    if not data:
        return st.just([])
    return st.lists(
        st.integers(min_value=1, max_value=len(data) - 1), unique=True, max_size=len(data)
    ).map(
        lambda cuts: [
            data[a:b] for a, b in zip([0, *sorted(cuts)], [*sorted(cuts), len(data)], strict=True)
        ]
    )


@implementer(IStreamClientEndpoint)
class RecordingEndpoint:
    """
    A client endpoint that records connection attempts and never completes them.
    """

    def __init__(self) -> None:
        self.attempts = 0

    def connect(self, factory: IProtocolFactory) -> Deferred[IProtocol]:
        self.attempts += 1
        return Deferred()


def make_front(
    sniff_timeout: float = 2.0,
) -> tuple[FrontDoor, StringTransportWithDisconnection, MemoryReactorClock, RecordingEndpoint]:
    """
    A front door on an in-memory transport, with one backend that never answers.
    """
    reactor = MemoryReactorClock()
    endpoint = RecordingEndpoint()
    pool = Pool([Backend(name="b", description="b", endpoint=endpoint)])
    factory = GatewayFactory(
        site=make_site(None, listing=False, reactor=reactor),
        chooser=pool,
        clock=reactor,
        settings=SessionSettings(
            sniff_timeout=sniff_timeout, connect_timeout=5, idle_timeout=0, fin_timeout=60
        ),
    )
    front = factory.buildProtocol(PEER)
    transport = StringTransportWithDisconnection(peerAddress=PEER)
    transport.protocol = front
    front.makeConnection(transport)
    return front, transport, reactor, endpoint


def test_classify_known_methods() -> None:
    """
    Every known method followed by a space is HTTP, whatever follows.
    """
    for method in HTTP_METHODS:
        assert classify(method + b" ") is Verdict.HTTP
        assert classify(method + b" /index.html HTTP/1.1\r\n") is Verdict.HTTP


def test_classify_prefixes_wait() -> None:
    """
    The empty prefix and every proper prefix of "METHOD " are undecided.
    """
    assert classify(b"") is Verdict.UNDECIDED
    for method in HTTP_METHODS:
        start = method + b" "
        for end in range(len(start)):
            assert classify(start[:end]) is Verdict.UNDECIDED


def test_classify_game_bytes() -> None:
    """
    Bytes that cannot start an HTTP request line are a game, including a
    method without its space and lower-case methods.
    """
    for data in [
        b"\x00",
        b"hello",
        b"GETX",
        b"GET\r\n",
        b"get / HTTP/1.1",
        b"\x16\x03\x01",
        b"CONNECT ",
    ]:
        assert classify(data) is Verdict.GAME


@given(st.binary(max_size=40))
def test_classify_is_a_function_of_the_first_bytes(data: bytes) -> None:
    """
    The verdict never changes once decided: appending bytes to a decided
    prefix keeps the verdict, and only the first SNIFF_LIMIT bytes matter.
    """
    verdict = classify(data)
    if verdict is not Verdict.UNDECIDED:
        assert classify(data + b"more bytes") is verdict
    assert classify(data) is classify(data[:SNIFF_LIMIT])
    if len(data) >= SNIFF_LIMIT:
        assert verdict is not Verdict.UNDECIDED


def _classify_by_definition(data: bytes) -> Verdict:
    head = data[:SNIFF_LIMIT]
    if any(head.startswith(method + b" ") for method in HTTP_METHODS):
        return Verdict.HTTP
    if any((method + b" ").startswith(head) for method in HTTP_METHODS):
        return Verdict.UNDECIDED
    return Verdict.GAME


@given(
    st.one_of(
        st.binary(max_size=12),
        st.tuples(st.sampled_from(HTTP_METHODS), st.binary(max_size=3)).map(
            lambda parts: (parts[0] + b" ")[: len(parts[0]) + 1 - len(parts[1])] + parts[1]
        ),
    )
)
def test_classify_is_its_definition(data: bytes) -> None:
    """
    The verdict is what the docstring defines, for any bytes, and for bytes
    near a method (a prefix of "METHOD " with anything after it): the
    first-byte shortcut decides nothing the definition would not.
    """
    assert classify(data) is _classify_by_definition(data)


REQUEST = b"GET /missing HTTP/1.1\r\nHost: example\r\nConnection: close\r\n\r\n"


def request_for(method: bytes) -> bytes:
    """
    A complete request with C{method} and no body.
    """
    return method + b" /missing HTTP/1.1\r\nHost: example\r\nConnection: close\r\n\r\n"


@given(st.sampled_from(HTTP_METHODS).map(request_for).flatmap(splits))
def test_http_request_in_any_split_is_served(pieces: list[bytes]) -> None:
    """
    An HTTP request of any known method, cut into any pieces, is classified
    HTTP and answered exactly once (a 404 or 405: no HTTP root), and no
    backend is contacted.
    """
    front, transport, _reactor, endpoint = make_front()
    for piece in pieces:
        front.dataReceived(piece)
    assert isinstance(front.http, HTTPChannel)
    assert front.session is None
    response = transport.value()
    assert response.startswith((b"HTTP/1.1 404 ", b"HTTP/1.1 405 ", b"HTTP/1.1 501 "))
    assert response.count(b"HTTP/1.1 ") == 1
    assert endpoint.attempts == 0


GAME = b"GEThello\x00\x01 this is a game protocol\r\n" * 3


@given(splits(GAME))
def test_game_bytes_in_any_split_are_held_whole(pieces: list[bytes]) -> None:
    """
    Game bytes cut into any pieces (one byte per write included) go to the
    game session unchanged: nothing lost, duplicated or reordered, and the
    client's reading is paused while the backend connects.
    """
    front, transport, _reactor, endpoint = make_front()
    for piece in pieces:
        front.dataReceived(piece)
    session = front.session
    assert session is not None
    assert b"".join(session._held or []) == GAME
    assert endpoint.attempts == 1
    # Still reading (a client that leaves meanwhile is noticed); the hold is
    # bounded by pausing only past relay.HOLD_LIMIT bytes.
    assert transport.producerState == "producing"
    assert transport.value() == b""


def test_one_byte_per_write_http() -> None:
    """
    An HTTP request arriving one byte per write is still HTTP: the sniffer
    waits for enough bytes instead of deciding on the first read.
    """
    front, transport, reactor, endpoint = make_front()
    for byte in REQUEST:
        front.dataReceived(bytes([byte]))
        reactor.advance(0.1)
    assert front.http is not None
    assert transport.value().startswith(b"HTTP/1.1 404")
    assert endpoint.attempts == 0


def test_silent_client_becomes_a_game_session_after_the_sniff_timeout() -> None:
    """
    A client that sends nothing is a game session exactly when the sniff
    timeout expires, not before.
    """
    front, _transport, reactor, endpoint = make_front(sniff_timeout=1.5)
    reactor.advance(1.49)
    assert front.session is None and endpoint.attempts == 0
    reactor.advance(0.01)
    assert front.session is not None
    assert endpoint.attempts == 1
    assert not front.session._held


def test_partial_method_then_silence_is_a_game() -> None:
    """
    A client that sends the start of a method ("GE") and then nothing is a
    game session after the sniff timeout, and its two bytes are kept.
    """
    front, _transport, reactor, _endpoint = make_front(sniff_timeout=1)
    front.dataReceived(b"GE")
    reactor.advance(1)
    assert front.session is not None
    assert front.session._held == [b"GE"]


def test_sniff_timer_cancelled_once_decided() -> None:
    """
    Once a connection is classified, the sniff timer is gone: no delayed call
    is left behind to fire later.
    """
    front, _transport, reactor, _endpoint = make_front()
    front.dataReceived(REQUEST)
    calls = [cast(DelayedCall, c) for c in reactor.getDelayedCalls()]
    assert [c for c in calls if c.active() and c.func == front._sniff_timed_out] == []


def test_close_while_sniffing_contacts_no_backend() -> None:
    """
    A client that connects and leaves without a byte costs no backend
    connection, and leaves no timer behind.
    """
    front, transport, reactor, endpoint = make_front()
    transport.loseConnection()
    reactor.advance(10)
    assert endpoint.attempts == 0
    assert front.session is None
    assert not any(
        c.active() and cast(DelayedCall, c).func == front._sniff_timed_out
        for c in reactor.getDelayedCalls()
    )


def test_eof_while_sniffing_with_bytes_is_a_game() -> None:
    """
    A client that sends a few game bytes and half-closes at once (nc -N) is a
    game session that carries its bytes and its end of stream.
    """
    front, _transport, _reactor, endpoint = make_front()
    front.dataReceived(b"hi")
    front.readConnectionLost()
    assert front.session is not None
    assert front.session._held == [b"hi"]
    assert front.session._client_eof
    assert endpoint.attempts == 1


def test_eof_while_sniffing_without_bytes_closes() -> None:
    """
    A client that half-closes without sending anything is closed.
    """
    front, transport, _reactor, endpoint = make_front()
    front.readConnectionLost()
    assert not transport.connected
    assert endpoint.attempts == 0


def test_http_half_close_after_request_gets_response_then_close() -> None:
    """
    An HTTP client that half-closes after its request gets the response and
    then the connection is closed, even on HTTP/1.1 keep-alive.
    """
    front, transport, _reactor, _endpoint = make_front()
    front.dataReceived(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
    front.readConnectionLost()
    assert transport.value().startswith(b"HTTP/1.1 404")
    assert not transport.connected


def test_connection_lost_reaches_the_http_channel() -> None:
    """
    When the connection is lost, the HTTP channel hears about it: its idle
    timer (on the gateway's clock) is cancelled, so nothing is left scheduled.
    """
    front, _transport, reactor, _endpoint = make_front()
    front.dataReceived(b"GET /x HTTP/1.1\r\nHost: a\r\n")
    assert front.http is not None
    assert any(call.active() for call in reactor.getDelayedCalls())
    front.connectionLost(Failure(ConnectionError("gone")))
    assert not any(call.active() for call in reactor.getDelayedCalls())


def make_keyed_front(
    sniff_timeout: float = 2.0,
) -> tuple[FrontDoor, MemoryReactorClock, RecordingEndpoint, Counters]:
    """
    A front door with a hash-balanced pool and --session-key '^LOGIN (\\w+)'.
    """
    reactor = MemoryReactorClock()
    endpoint = RecordingEndpoint()
    pool = Pool([Backend(name="b", description="b", endpoint=endpoint)], RendezvousHash())
    counters = Counters()
    factory = GatewayFactory(
        site=make_site(None, listing=False, reactor=reactor),
        chooser=pool,
        clock=reactor,
        settings=SessionSettings(
            sniff_timeout=sniff_timeout,
            connect_timeout=5,
            idle_timeout=0,
            fin_timeout=60,
            session_key=re.compile(rb"^LOGIN (\w+)"),
        ),
        counters=counters,
    )
    front = factory.buildProtocol(PEER)
    transport = StringTransportWithDisconnection(peerAddress=PEER)
    transport.protocol = front
    front.makeConnection(transport)
    return front, reactor, endpoint, counters


@given(splits(b"LOGIN alice v1.2\r\n"))
def test_session_key_from_the_whole_first_line(pieces: list[bytes]) -> None:
    """
    The session key is the pattern's group in the whole first line, however
    the line is split; no backend is contacted before the line is complete.
    """
    front, _reactor, endpoint, counters = make_keyed_front()
    for piece in pieces[:-1]:
        front.dataReceived(piece)
    assert endpoint.attempts == 0 or b"\n" in b"".join(pieces[:-1])
    front.dataReceived(pieces[-1])
    assert front.session is not None
    assert front.session.key == b"alice"
    assert counters.key_fallbacks == 0


def test_cut_first_line_falls_back_to_the_address() -> None:
    """
    A first line that never ends (the wait times out) is not searched, so a
    cut key cannot send a player to the wrong backend: the key is the
    client's address, and the fallback is counted.
    """
    front, reactor, endpoint, counters = make_keyed_front(sniff_timeout=2)
    front.dataReceived(b"LOGIN al")
    reactor.advance(2.1)
    front.dataReceived(b"ice\n")
    assert front.session is not None
    assert front.session.key == PEER.host.encode()
    assert counters.key_fallbacks == 1
    assert endpoint.attempts == 1


def test_half_closed_http_with_stalled_response_is_closed() -> None:
    """
    A client that half-closed after its request whose response never makes
    progress (a producer that stopped, a client that reads nothing) is not
    waited for without bound: the connection is closed after the send
    timeout, and its close hooks (which free its slots) run.
    """

    class Stalled(Resource):
        isLeaf = True  # noqa: N815

        def render_GET(self, request: object) -> object:  # noqa: N802
            return NOT_DONE_YET

    front, transport, reactor, _endpoint = make_front()
    site = front.factory.site
    assert isinstance(site, HTTPSite)
    site.resource = Stalled()
    freed: list[bool] = []
    front.add_close_hook(lambda: freed.append(True))
    front.dataReceived(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
    front.readConnectionLost()
    assert transport.connected
    reactor.advance(SEND_TIMEOUT * 0.75)
    assert transport.connected
    reactor.pump([SEND_TIMEOUT / 4] * 3)
    assert not transport.connected
    assert freed == [True]
