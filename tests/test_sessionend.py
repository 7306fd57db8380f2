"""
A game session's client end after its front door is done
(L{gateway.front.sessionend}): on a bare client, the front door that starts a
game session hands its end duties to a L{SessionEnd} and is gone; the
session then hears the client's bytes, end of stream and close as before, and
the close takes it out of the registry and runs the connection's close hooks.

The client is a real socket on loopback (a bare client, as the listening port
builds it); the backend never answers (a recording endpoint), and the reactor
is a memory one, so every event is the test's.
"""

from __future__ import annotations

import gc
import socket
import weakref
from typing import Any

from twisted.internet import main
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure

from gateway.front.door import FrontDoor, GatewayFactory
from gateway.front.sessionend import SessionEnd
from gateway.http.site import make_site
from gateway.ops.registry import SessionRegistry
from gateway.pool.backends import Backend, Pool
from gateway.session.bareclient import BareClient, ClientTransport
from gateway.session.lifecycle import Phase
from gateway.session.relay import GameSession
from gateway.session.settings import SessionSettings
from tests.test_bareclient import Port, pair
from tests.test_front import RecordingEndpoint

__all__ = ["pair"]  # the fixture, used by name


def _settings() -> SessionSettings:
    return SessionSettings(sniff_timeout=2.0, connect_timeout=5, idle_timeout=0, fin_timeout=60)


def _start(
    pair: Any,
) -> tuple[BareClient, socket.socket, SessionRegistry, list[str], weakref.ref[FrontDoor]]:
    """
    A front door on a bare client, as the port builds it, whose client sent
    a game line: the session has started.

    @return: the bare client, the peer's socket, the registry, what the
        connection's two close hooks recorded (the cap's and a worker's), and
        a weak reference to the front door.
    """
    accepted, addr, peer = pair
    reactor = MemoryReactorClock()
    registry = SessionRegistry(reactor)
    factory = GatewayFactory(
        site=make_site(None, listing=False, reactor=reactor),
        chooser=Pool([Backend(name="b", description="b", endpoint=RecordingEndpoint())]),
        clock=reactor,
        settings=_settings(),
        registry=registry,
    )
    door = factory.buildProtocol(IPv4Address("TCP", *addr))
    hooks: list[str] = []
    door.add_close_hook(lambda: hooks.append("cap"))
    door.add_close_hook(lambda: hooks.append("worker"))
    client = BareClient(accepted, door, addr, Port(), 1, reactor)  # type: ignore[arg-type]
    peer.sendall(b"hello\n")
    door.makeConnection(client)  # reads the line now (read_first)
    return client, peer, registry, hooks, weakref.ref(door)


def test_the_front_door_hands_its_end_on(pair: Any) -> None:
    client, _peer, registry, _hooks, door = _start(pair)
    end = client.protocol
    assert type(end) is SessionEnd
    [session] = registry.snapshot()[1]
    assert end.session is session
    assert session.client is client
    assert session._held == [b"hello\n"]
    gc.collect()
    assert door() is None


def test_the_session_hears_the_client(pair: Any) -> None:
    """
    Bytes, then the end of stream (read by the transport the end of stream
    makes), then the close: the session hears each, and the close takes it
    out of the registry and runs the close hooks once, in order.
    """
    client, peer, registry, hooks, _door = _start(pair)
    end = client.protocol
    session = end.session
    peer.sendall(b"more")
    for _ in range(20):
        client.doRead()
        if session._held_size == 10:
            break
    assert b"".join(session._held) == b"hello\nmore"
    peer.shutdown(socket.SHUT_WR)
    transport = client.full()
    assert type(transport) is ClientTransport
    assert transport.protocol is end
    assert session.client is transport  # re-pointed: the session uses it
    for _ in range(20):
        if transport.doRead() is main.CONNECTION_DONE:
            break
    transport.readConnectionLost(Failure(ConnectionDone()))
    assert session._client_eof
    assert hooks == []
    client.loseConnection()
    transport.connectionLost(Failure(ConnectionDone()))
    assert session.phase is Phase.CLOSED
    assert len(registry) == 0
    assert hooks == ["cap", "worker"]
    end.connectionLost(Failure(ConnectionDone()))  # once only
    assert hooks == ["cap", "worker"]


def test_a_bare_client_closed_at_once_ends_it(pair: Any) -> None:
    client, _peer, registry, hooks, _door = _start(pair)
    session = client.protocol.session
    client.abortConnection()
    assert not client.connected
    assert session.phase is Phase.CLOSED
    assert len(registry) == 0
    assert hooks == ["cap", "worker"]


def test_only_a_bare_client_is_replaced(pair: Any) -> None:
    """
    A session whose client is not the bare client (another stream) keeps it
    when told of a new transport.
    """
    reactor = MemoryReactorClock()
    other = StringTransport()
    session = GameSession(
        other,
        Pool([Backend(name="b", description="b", endpoint=RecordingEndpoint())]),
        reactor,
        _settings(),
        peer="p",
    )
    hooks = FrontDoor.__new__(FrontDoor)
    hooks._close_hooks = None
    end = SessionEnd(session, None, None, hooks)
    end.replace_transport(StringTransport())
    assert session.client is other
