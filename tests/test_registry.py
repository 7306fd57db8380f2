"""
The registry of live sessions (the children list) with real front doors and
game sessions in memory: whatever order the two sides of a session close in,
it is listed while it lives, removed exactly once, its bytes counted once in
the totals, and its end logged once in the access log.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IProtocol
from twisted.internet.testing import (
    EventLoggingObserver,
    MemoryReactorClock,
    StringTransportWithDisconnection,
)
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure

from gateway.front.door import FrontDoor, GatewayFactory
from gateway.http.site import make_site
from gateway.ops.registry import SessionRegistry
from gateway.pool.backends import Backend, Pool
from gateway.session.settings import SessionSettings

PEER = IPv4Address("TCP", "192.0.2.9", 40000)

STEPS = st.lists(
    st.sampled_from(
        [
            "client-data",
            "backend-data",
            "client-eof",
            "backend-eof",
            "client-lost",
            "backend-lost",
            "idle",
        ]
    ),
    max_size=12,
)


class _Side:
    """
    One connection of a session: its transport and the protocol it drives.
    The transport reports its own close to the protocol at once (as
    StringTransportWithDisconnection does), so a connection is lost either
    by the gateway closing it or by the test.
    """

    def __init__(self, protocol: IProtocol, transport: StringTransportWithDisconnection) -> None:
        self.protocol = protocol
        self.transport = transport

    @property
    def lost(self) -> bool:
        """
        Whether the connection is gone.
        """
        return not self.transport.connected

    def data(self, payload: bytes) -> None:
        if not self.lost and not self.transport.disconnecting:
            self.protocol.dataReceived(payload)

    def eof(self) -> None:
        if not self.lost and not self.transport.disconnecting:
            self.protocol.readConnectionLost()  # type: ignore[attr-defined]

    def lose(self) -> None:
        if not self.lost:
            self.transport.connected = False
            self.protocol.connectionLost(Failure(ConnectionDone()))


def _session(
    registry: SessionRegistry,
) -> tuple[MemoryReactorClock, FrontDoor, _Side, _Side]:
    reactor = MemoryReactorClock()
    pool = Pool(
        [
            Backend(
                name="b0",
                description="tcp:127.0.0.1:7000",
                endpoint=TCP4ClientEndpoint(reactor, "127.0.0.1", 7000),
            )
        ]
    )
    factory = GatewayFactory(
        site=make_site(None, listing=False, reactor=reactor),
        chooser=pool,
        clock=reactor,
        settings=SessionSettings(
            sniff_timeout=1.0, connect_timeout=5.0, idle_timeout=10.0, fin_timeout=10.0
        ),
        registry=registry,
    )
    front = factory.buildProtocol(PEER)
    client_transport = StringTransportWithDisconnection(peerAddress=PEER)
    client_transport.protocol = front
    front.makeConnection(client_transport)
    client = _Side(front, client_transport)
    client.data(b"\x01hello\n")  # not HTTP: a game session, connecting
    host, port, backend_factory, _timeout, _bind = reactor.tcpClients[-1]
    link = backend_factory.buildProtocol(IPv4Address("TCP", host, port))
    assert link is not None
    backend_transport = StringTransportWithDisconnection()
    backend_transport.protocol = link
    link.makeConnection(backend_transport)
    return reactor, front, client, _Side(link, backend_transport)


@settings(max_examples=300, deadline=None)
@given(STEPS)
def test_session_listed_then_removed_once_whatever_the_close_order(steps: list[str]) -> None:
    """
    A game session is in the registry from its classification until its
    client connection is lost, however the events of its two sides
    interleave (data, half-closes, losses, an idle timeout); then it is
    gone, its bytes are in the ended totals exactly once, and exactly one
    access event says it ended.
    """
    events = EventLoggingObserver()
    globalLogPublisher.addObserver(events)
    try:
        registry = SessionRegistry()
        reactor, front, client, backend = _session(registry)
        assert len(registry) == 1
        for step in steps:
            if step == "client-data":
                client.data(b"ping")
            elif step == "backend-data":
                backend.data(b"pong!")
            elif step == "client-eof":
                client.eof()
            elif step == "backend-eof":
                backend.eof()
            elif step == "client-lost":
                client.lose()
            elif step == "backend-lost":
                backend.lose()
            else:
                reactor.advance(15.0)
            assert len(registry) == (0 if client.lost else 1)
        # In the end both connections go, as the reactor would report them.
        backend.lose()
        client.lose()
        reactor.advance(60.0)
        assert len(registry) == 0
        assert list(registry.items()) == []
        session = front.session
        assert session is not None
        assert registry.ended_bytes_in == session.bytes_in
        assert registry.ended_bytes_out == session.bytes_out
        assert registry.started == {"game": 1}
        ended = [e for e in events if e.get("log_namespace") == "gateway.access"]
        assert len(ended) == 1
        assert (ended[0]["bytes_in"], ended[0]["bytes_out"]) == (
            session.bytes_in,
            session.bytes_out,
        )
        # Every byte written either way was counted once.
        assert session.bytes_in == len(backend.transport.value())
        assert session.bytes_out == len(client.transport.value())
    finally:
        globalLogPublisher.removeObserver(events)
