"""
Unit tests of the WebSocket bridge's session side (L{gateway.session.websocket}):
L{MessageReader} and L{MessageStream} between a browser and a real
L{GameSession}, the upgrade through a real L{FrontDoor}, and
L{origin_allowed}.

No socket and no real reactor.  The browser is a wsproto client connection:
its frames are handed to the reader (or to the front door), and it parses
what the gateway wrote to the browser's in-memory transport, so every close
code checked here is read off the wire bytes.  The session's pool has real
backends, L{TCP4ClientEndpoint}s on a L{MemoryReactorClock}, which a test
connects to an in-memory transport; time moves only when a test advances the
clock.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.testing import EventLoggingObserver, MemoryReactorClock
from twisted.logger import formatEvent
from twisted.python.failure import Failure
from wsproto import ConnectionType
from wsproto.connection import Connection, ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    Message,
    Ping,
    Pong,
    Request,
    TextMessage,
)
from wsproto.handshake import H11Handshake

from gateway.pool.backends import Pool
from gateway.session.lifecycle import CloseReason
from gateway.session.relay import GameSession
from gateway.session.settings import SessionSettings
from gateway.session.websocket import (
    CLOSE_GOING_AWAY,
    CLOSE_NORMAL,
    CLOSE_TOO_BIG,
    CLOSE_TRY_LATER,
    MessageReader,
    MessageStream,
)
from tests.test_relay import FakeTransport, HalfCloseableTransport, memory_backends

PEER = IPv4Address("TCP", "192.0.2.7", 40000)
"""The browser's address."""

PING = 20.0
"""Seconds between the gateway's pings, where a test turns them on."""


def open_pair(subprotocol: str | None = None) -> tuple[Connection, Connection]:
    """
    A gateway-side and a browser-side wsproto connection, open: the opening
    handshake done in memory.
    """
    browser = H11Handshake(ConnectionType.CLIENT)
    gateway = H11Handshake(ConnectionType.SERVER)
    offered = [subprotocol] if subprotocol is not None else []
    gateway.receive_data(
        browser.send(Request(host="gw.test", target="/play", subprotocols=offered))
    )
    assert isinstance(next(gateway.events()), Request)
    browser.receive_data(gateway.send(AcceptConnection(subprotocol=subprotocol)))
    assert isinstance(next(browser.events()), AcceptConnection)
    assert gateway.connection is not None and browser.connection is not None
    return gateway.connection, browser.connection


class Browser:
    """
    The browser's side of a connection: a wsproto client.
    """

    def __init__(self, connection: Connection, transport: FakeTransport) -> None:
        """
        @param connection: its wsproto connection, open.
        @param transport: the gateway's transport to the browser, whose
            written bytes the browser reads.
        """
        self.ws = connection
        self._transport = transport

    def frames(self, *events: Event) -> bytes:
        """
        The wire bytes (masked, as a browser sends them) of C{events}.
        """
        return b"".join(self.ws.send(event) for event in events)

    def read(self) -> list[Event]:
        """
        Parse what the gateway wrote since the last read.
        """
        data = self._transport.value()
        self._transport.clear()
        if data:
            self.ws.receive_data(data)
        return list(self.ws.events())


def splits(data: bytes) -> st.SearchStrategy[list[bytes]]:
    """
    Every way of cutting C{data} into consecutive non-empty pieces.
    """
    cuts = st.sets(st.integers(min_value=1, max_value=max(1, len(data) - 1)), max_size=len(data))
    return cuts.map(
        lambda chosen: [
            data[a:b]
            for a, b in zip([0, *sorted(chosen)], [*sorted(chosen), len(data)], strict=True)
            if data[a:b]
        ]
    )


def masked(opcode: int, data: bytes, *, fin: bool = True) -> bytes:
    """
    One frame as a browser sends it, written by hand (a short payload, masked
    with the zero key, so the payload reads as is).
    """
    assert len(data) < 126
    return bytes([opcode | (0x80 if fin else 0), 0x80 | len(data)]) + b"\0\0\0\0" + data


def payload(events: Sequence[Event]) -> bytes:
    """
    The payload bytes of the data messages among C{events}, in order.
    """
    return b"".join(
        e.data.encode() if isinstance(e.data, str) else bytes(e.data)
        for e in events
        if isinstance(e, Message)
    )


def closes(events: Sequence[Event]) -> list[tuple[int, str | None]]:
    """
    The code and reason of each close frame among C{events}.
    """
    return [(int(e.code), e.reason) for e in events if isinstance(e, CloseConnection)]


def access_reasons(log_events: EventLoggingObserver) -> list[str]:
    """
    The close reason of each access event of a WebSocket session.
    """
    return [str(e["reason"]) for e in log_events if e.get("kind") == "websocket" and "reason" in e]


class Bridge:
    """
    One WebSocket session under test: the browser, the stream and reader the
    front door would build, a real L{GameSession}, and a pool of real
    backends on a memory reactor (ports 7000, 7001, ...).

    @ivar backend: the backend connection once L{accept} was called.
    """

    def __init__(
        self,
        *,
        text: bool = False,
        max_message: int = 1 << 20,
        ping: float = 0.0,
        busy: str | None = None,
        backends: int = 1,
    ) -> None:
        self.reactor = MemoryReactorClock()
        self.backends = memory_backends(self.reactor, backends)
        gateway_ws, browser_ws = open_pair("text" if text else None)
        self.transport = FakeTransport()
        self.browser = Browser(browser_ws, self.transport)
        self.stream = MessageStream(self.transport, gateway_ws, text=text)
        self.reader = MessageReader(
            self.stream, gateway_ws, self.reactor, max_message=max_message, ping_interval=ping
        )
        settings = SessionSettings(
            sniff_timeout=2.0,
            connect_timeout=5.0,
            idle_timeout=0,
            fin_timeout=0,
            busy_message=busy,
        )
        self.session = GameSession(
            self.stream,  # type: ignore[arg-type]
            Pool(self.backends),
            self.reactor,
            settings,
            peer="192.0.2.7:40000",
            kind="websocket",
        )
        # As the front door does: the end of the browser's connection goes
        # to the reader, then to the session.
        self.transport.on_lost = lambda reason: self._lost()
        self.reader.attach(self.session)
        self.session.start(b"")
        self.backend: HalfCloseableTransport | None = None

    def _lost(self) -> None:
        self.reader.connection_lost()
        self.session.client_lost()

    def accept(self) -> HalfCloseableTransport:
        """
        Complete the last connection attempt to a backend.
        """
        host, port, factory, _timeout, _bind = self.reactor.tcpClients[-1]
        protocol = factory.buildProtocol(IPv4Address("TCP", host, port))
        assert protocol is not None
        self.backend = HalfCloseableTransport()
        self.backend.on_lost = protocol.connectionLost
        self.backend.protocol = protocol
        protocol.makeConnection(self.backend)
        return self.backend

    def refuse(self) -> None:
        """
        Fail the last connection attempt to a backend as refused.
        """
        factory = self.reactor.tcpClients[-1][2]
        factory.clientConnectionFailed(
            self.reactor.connectors[-1], Failure(ConnectionRefusedError())
        )

    def backend_sends(self, data: bytes) -> None:
        """
        Bytes from the backend to the session.
        """
        assert self.backend is not None and self.backend.protocol is not None
        self.backend.protocol.dataReceived(data)

    def send(self, *events: Event) -> None:
        """
        The browser sends C{events}, in one read.
        """
        self.reader.dataReceived(self.browser.frames(*events))


# The browser's bytes to the backend


@given(st.lists(st.binary(max_size=40), min_size=1, max_size=8), st.data())
def test_payload_split_anywhere_arrives_byte_exact(
    messages: list[bytes], data: st.DataObject
) -> None:
    """
    However the browser's frames are cut across reads (here at arbitrary
    points of the wire bytes), the backend gets the messages' payload bytes
    byte-exact and in order, and nothing else: the bytes sent before the
    backend connected first.
    """
    bridge = Bridge()
    wire = bridge.browser.frames(*(BytesMessage(data=m) for m in messages))
    pieces = data.draw(splits(wire))
    early = data.draw(st.integers(min_value=0, max_value=len(pieces)))
    for piece in pieces[:early]:
        bridge.reader.dataReceived(piece)
    backend = bridge.accept()
    for piece in pieces[early:]:
        bridge.reader.dataReceived(piece)
    assert backend.value() == b"".join(messages)
    assert bridge.session.bytes_in == len(b"".join(messages))
    assert bridge.browser.read() == []


def test_fragments_are_relayed_as_they_arrive() -> None:
    """
    A message in fragments is not gathered whole: each fragment's payload
    reaches the backend when it arrives, in order; text fragments arrive as
    their UTF-8 bytes.
    """
    bridge = Bridge()
    backend = bridge.accept()
    bridge.send(BytesMessage(data=b"one ", message_finished=False))
    assert backend.value() == b"one "
    bridge.send(BytesMessage(data=b"two ", message_finished=False))
    assert backend.value() == b"one two "
    bridge.send(BytesMessage(data=b"three", message_finished=True))
    bridge.send(TextMessage(data="caf\u00e9 \u20ac"))
    assert backend.value() == b"one two three" + "caf\u00e9 \u20ac".encode()


def test_browser_ping_is_answered() -> None:
    """
    A ping from the browser is answered with a pong carrying its payload,
    and relays nothing to the backend.
    """
    bridge = Bridge()
    backend = bridge.accept()
    bridge.send(Ping(payload=b"are you there"))
    assert bridge.browser.read() == [Pong(payload=b"are you there")]
    assert backend.value() == b""


# The size limit


def test_message_at_the_limit_passes_one_over_closes_1009(
    log_events: EventLoggingObserver,
) -> None:
    """
    Messages of exactly C{--websocket-max-message} bytes pass (the count
    starts again with each message); one byte more, even spread over
    fragments, closes the session with code 1009: the close frame goes out,
    the over-size fragment is not relayed, the backend connection closes,
    and the access log says C{message-too-big}.
    """
    bridge = Bridge(max_message=10)
    backend = bridge.accept()
    bridge.send(BytesMessage(data=b"a" * 10), BytesMessage(data=b"b" * 10))
    bridge.send(BytesMessage(data=b"c" * 6, message_finished=False))
    bridge.send(BytesMessage(data=b"d" * 5, message_finished=True))
    assert backend.value() == b"a" * 10 + b"b" * 10 + b"c" * 6
    assert closes(bridge.browser.read()) == [(CLOSE_TOO_BIG, "message over 10 bytes")]
    assert bridge.transport.disconnecting
    assert backend.disconnecting
    assert bridge.session.close_reason is CloseReason.MESSAGE_TOO_BIG
    assert access_reasons(log_events) == ["message-too-big"]
    # Whatever the browser sends after that is ignored.
    bridge.reader.dataReceived(masked(0x2, b"late"))
    assert backend.value() == b"a" * 10 + b"b" * 10 + b"c" * 6


def test_oversized_text_is_counted_in_utf8_bytes() -> None:
    """
    A text message is measured in its UTF-8 bytes, not in characters: four
    euro signs (12 bytes) are over a 10-byte limit.
    """
    bridge = Bridge(max_message=10)
    bridge.accept()
    bridge.send(TextMessage(data="\u20ac" * 4))
    assert [code for code, _ in closes(bridge.browser.read())] == [CLOSE_TOO_BIG]


# Pings


def test_unanswered_ping_closes_with_1001(log_events: EventLoggingObserver) -> None:
    """
    A ping goes out every C{--websocket-ping} seconds; a browser that has
    not answered the last one when the next is due is closed with 1001 and
    the reason C{ping-timeout}.
    """
    bridge = Bridge(ping=PING)
    backend = bridge.accept()
    bridge.reactor.advance(PING - 0.1)
    assert bridge.browser.read() == []
    bridge.reactor.advance(0.1)
    assert bridge.browser.read() == [Ping(payload=b"gateway")]
    bridge.reactor.advance(PING)
    assert closes(bridge.browser.read()) == [(CLOSE_GOING_AWAY, "no answer to ping")]
    assert bridge.transport.disconnecting and backend.disconnecting
    assert bridge.session.close_reason is CloseReason.PING_TIMEOUT
    assert access_reasons(log_events) == ["ping-timeout"]
    assert any("no answer to a ping in 20 s" in formatEvent(e) for e in log_events)


def test_answered_pings_keep_the_session() -> None:
    """
    A browser that answers every ping before the next is due stays, however
    long it is quiet otherwise; the pings stop when the session ends.
    """
    bridge = Bridge(ping=PING)
    bridge.accept()
    for _ in range(5):
        bridge.reactor.advance(PING)
        events = bridge.browser.read()
        assert events == [Ping(payload=b"gateway")]
        ping = events[0]
        assert isinstance(ping, Ping)
        bridge.send(ping.response())
    assert not bridge.transport.disconnecting
    assert bridge.session.close_reason is None
    bridge.send(CloseConnection(code=CLOSE_NORMAL))
    assert bridge.reactor.getDelayedCalls() == []


def test_no_ping_deadline_while_the_browser_is_not_read() -> None:
    """
    While the session does not read the browser (a slow backend, or a full
    hold in the waiting room), its pong cannot arrive: no ping is sent and
    nobody is closed; once reading resumes, pings and their deadline do too.
    """
    bridge = Bridge(ping=PING)
    backend = bridge.accept()
    bridge.reactor.advance(PING)
    assert bridge.browser.read() == [Ping(payload=b"gateway")]
    bridge.stream.pauseProducing()
    bridge.reactor.advance(5 * PING)
    assert bridge.browser.read() == []
    assert not bridge.transport.disconnecting and bridge.session.close_reason is None
    bridge.stream.resumeProducing()
    bridge.reactor.advance(PING)
    assert bridge.browser.read() == [Ping(payload=b"gateway")]
    bridge.reactor.advance(PING)
    assert closes(bridge.browser.read()) == [(CLOSE_GOING_AWAY, "no answer to ping")]
    assert backend.disconnecting


def test_no_pings_when_the_interval_is_zero() -> None:
    """
    C{--websocket-ping 0} sends no pings and closes nobody for silence.
    """
    bridge = Bridge(ping=0)
    bridge.accept()
    bridge.reactor.advance(10 * PING)
    assert bridge.browser.read() == []
    assert not bridge.transport.disconnecting


# Closing


def test_browser_close_is_answered_and_ends_the_client_side() -> None:
    """
    The browser's close frame is answered with its own code; the session
    sees the client's end of stream: the backend's sending side is shut
    down, and the backend's last bytes, which can no longer be carried, are
    dropped and counted.
    """
    bridge = Bridge()
    backend = bridge.accept()
    bridge.send(BytesMessage(data=b"last words"))
    bridge.send(CloseConnection(code=4000, reason="bye"))
    assert closes(bridge.browser.read()) == [(4000, "")]
    assert backend.value() == b"last words"
    assert backend.write_closed
    bridge.backend_sends(b"too late")
    bridge.backend_sends(b"!")
    assert bridge.browser.ws.state is ConnectionState.CLOSED
    assert bridge.transport.value() == b""
    assert bridge.stream.dropped == len(b"too late!")


def test_browser_close_without_code_is_answered_normal() -> None:
    """
    A close frame without a code (1005, which must not go on the wire) is
    answered with 1000.
    """
    bridge = Bridge()
    bridge.accept()
    bridge.reader.dataReceived(masked(0x8, b""))
    assert closes(bridge.browser.read()) == [(CLOSE_NORMAL, "")]


def test_backend_close_sends_a_normal_close_frame() -> None:
    """
    The backend ending its side ends the WebSocket: a normal close frame
    after the backend's last bytes, then the connection closes.
    """
    bridge = Bridge()
    backend = bridge.accept()
    bridge.backend_sends(b"goodbye")
    assert backend.protocol is not None
    backend.protocol.readConnectionLost()  # type: ignore[attr-defined]
    events = bridge.browser.read()
    assert payload(events) == b"goodbye"
    assert closes(events) == [(CLOSE_NORMAL, "")]
    assert bridge.transport.disconnecting


def test_unmasked_frame_closes_with_1002(log_events: EventLoggingObserver) -> None:
    """
    A frame without a mask from the browser is a protocol error: close code
    1002, the backend connection closed, and C{protocol-error} in the access log.
    """
    bridge = Bridge()
    backend = bridge.accept()
    bridge.reader.dataReceived(b"\x82\x03abc")
    assert [code for code, _ in closes(bridge.browser.read())] == [1002]
    assert backend.value() == b""
    assert bridge.transport.disconnecting and backend.disconnecting
    assert access_reasons(log_events) == ["protocol-error"]


@pytest.mark.parametrize("backends", [1, 2])
def test_protocol_error_while_connecting_blames_no_backend(
    backends: int, log_events: EventLoggingObserver
) -> None:
    """
    A browser that breaks the protocol before its backend answered is closed
    with 1002 at once; the attempt is given up, and it is not a failure of
    the backend (a few broken browsers must not take a backend down), no
    other backend is tried, and the session is not refused for want of a
    backend.
    """
    bridge = Bridge(backends=backends, busy="busy")
    bridge.reader.dataReceived(b"\x82\x03abc")
    assert [code for code, _ in closes(bridge.browser.read())] == [1002]
    assert bridge.transport.disconnecting
    assert bridge.reactor.connectors[0].stoppedConnecting
    assert len(bridge.reactor.tcpClients) == 1
    assert [(b.failures, b.consecutive_failures) for b in bridge.backends] == [(0, 0)] * backends
    texts = [formatEvent(e) for e in log_events]
    assert not [t for t in texts if "refused" in t or "failed for a session" in t]
    assert access_reasons(log_events) == ["protocol-error"]


def test_no_backend_refuses_with_1013_and_the_busy_line_cut() -> None:
    """
    A session no backend takes is closed with 1013 (try again later), the
    busy line as the reason, cut to the 123 bytes a close frame holds
    without splitting a character.
    """
    busy = "\u00e9" * 100  # 200 bytes of UTF-8
    bridge = Bridge(busy=busy)
    bridge.refuse()
    events = bridge.browser.read()
    assert closes(events) == [(CLOSE_TRY_LATER, "\u00e9" * 61)]
    assert bridge.transport.disconnecting


@given(st.text(max_size=200))
def test_refuse_reason_is_a_utf8_prefix_of_at_most_123_bytes(line: str) -> None:
    """
    Whatever the busy line, the reason of the 1013 close frame is the longest
    prefix of it whose UTF-8 fits in 123 bytes.
    """
    gateway_ws, browser_ws = open_pair()
    transport = FakeTransport()
    MessageStream(transport, gateway_ws).refuse(line)
    browser = Browser(browser_ws, transport)
    [(code, reason)] = closes(browser.read())
    assert code == CLOSE_TRY_LATER
    assert reason is not None and len(reason.encode()) <= 123
    assert line.startswith(reason)
    assert reason == line or len(line[: len(reason) + 1].encode()) > 123
    assert transport.disconnecting


# Text subprotocol


@given(st.text(max_size=60).flatmap(lambda text: st.tuples(st.just(text), splits(text.encode()))))
def test_text_mode_decodes_utf8_across_writes(generated: tuple[str, list[bytes]]) -> None:
    """
    Under the C{text} subprotocol, the backend's bytes go out as text
    messages: a character cut between two writes is completed by the next
    one, and the text the browser reads is exactly the backend's.
    """
    text, pieces = generated
    bridge = Bridge(text=True)
    bridge.accept()
    for piece in pieces:
        bridge.backend_sends(piece)
    events = bridge.browser.read()
    assert all(isinstance(e, TextMessage) and e.data for e in events)
    assert "".join(e.data for e in events if isinstance(e, TextMessage)) == text


def test_text_mode_replaces_invalid_bytes() -> None:
    """
    Bytes that are not UTF-8 become U+FFFD, and an unfinished sequence left
    at the close goes out as U+FFFD before the close frame.
    """
    bridge = Bridge(text=True)
    backend = bridge.accept()
    bridge.backend_sends(b"ok \xff\xfe done ")
    bridge.backend_sends(b"\xe2\x82")  # the start of a euro sign
    assert backend.protocol is not None
    backend.protocol.readConnectionLost()  # type: ignore[attr-defined]
    events = bridge.browser.read()
    texts = [e.data for e in events if isinstance(e, TextMessage)]
    assert "".join(texts) == "ok \ufffd\ufffd done \ufffd"
    assert closes(events) == [(CLOSE_NORMAL, "")]


def _wire_opcodes(data: bytes) -> list[int]:
    """
    The opcode of each (unmasked, short) frame in C{data}.
    """
    opcodes = []
    while data:
        opcodes.append(data[0] & 0x0F)
        length = data[1] & 0x7F
        assert length < 126
        data = data[2 + length :]
    return opcodes


def test_binary_mode_sends_binary_messages() -> None:
    """
    Without the C{text} subprotocol, each write of the backend is one binary
    message, whatever its bytes.
    """
    bridge = Bridge()
    bridge.accept()
    bridge.backend_sends(b"\xff\x00")
    bridge.backend_sends(b"abc")
    assert _wire_opcodes(bridge.transport.value()) == [0x2, 0x2]
    assert payload(bridge.browser.read()) == b"\xff\x00abc"
