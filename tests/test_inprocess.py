"""
End-to-end tests in this process, under pytest-twisted: the service tree that
C{twistd gateway --demo} runs, started on the real reactor on loopback with an
ephemeral port, and talked to by Twisted clients.
"""

from __future__ import annotations

import gc
import os
import socket
from collections.abc import AsyncIterator

import pytest
import pytest_twisted
from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.interfaces import IReactorTCP, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.internet.task import deferLater
from twisted.python.failure import Failure
from typing_extensions import override

from gateway.config import GatewayConfig
from gateway.front.door import FrontDoor
from gateway.front.sessionend import SessionEnd
from gateway.pool.backends import BackendState
from gateway.process.assemble import make_service
from gateway.process.service import GatewayService
from gateway.session.bareclient import BareClient, ClientTransport
from gateway.session.leanlink import LeanLink
from gateway.session.lifecycle import Phase
from gateway.session.relay import GameSession

reactor: IReactorTCP = _reactor


class Collector(Protocol):
    """
    A client that keeps what it receives and can wait for some text or the end.
    """

    def __init__(self) -> None:
        self.received = b""
        self.closed: Deferred[None] = Deferred()
        self._waiting: list[tuple[bytes, Deferred[bytes]]] = []

    @override
    def dataReceived(self, data: bytes) -> None:
        self.received += data
        for item in list(self._waiting):
            text, waiter = item
            if text in self.received:
                self._waiting.remove(item)
                waiter.callback(self.received)

    @override
    def connectionLost(self, reason: Failure | None = None) -> None:
        self.closed.callback(None)

    def wait_for(self, text: bytes, timeout: float = 10) -> Deferred[bytes]:
        """
        Fire with everything received once C{text} has arrived.
        """
        waiter: Deferred[bytes] = Deferred()
        if text in self.received:
            waiter.callback(self.received)
            return waiter
        self._waiting.append((text, waiter))
        clock: IReactorTime = reactor  # type: ignore[assignment]
        return waiter.addTimeout(timeout, clock)


@pytest_twisted.async_yield_fixture
async def demo() -> AsyncIterator[GatewayService]:
    """
    The demo gateway (two demo game servers, the demo page) on an ephemeral
    loopback port, with a short sniff timeout.
    """
    config = GatewayConfig(
        listen=("tcp:0:interface=127.0.0.1",), demo=True, sniff_timeout=0.2, admin=None
    )
    service = make_service(config, reactor)
    service.startService()
    try:
        yield service
    finally:
        await service.stopService()


def front_port(service: GatewayService) -> int:
    """
    The port the gateway's first front listens on.
    """
    port = service.listeners[0].port
    assert port is not None
    return int(port.getHost().port)  # type: ignore[attr-defined]


async def connect_client(service: GatewayService) -> Collector:
    """
    Connect a new collecting client to the gateway's front.
    """
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", front_port(service))
    client = Collector()
    await connectProtocol(endpoint, client)
    return client


@pytest_twisted.ensureDeferred
async def test_demo_serves_page_and_game_round_robin(demo: GatewayService) -> None:
    """
    On one port the demo serves its page over HTTP and, to silent clients,
    the Hi-Lo game; two players land on the two demo servers in turn and can
    play; the pool counts their sessions.
    """
    assert [b.name for b in demo.pool.backends] == ["demo-a", "demo-b"]
    assert all(b.state is BackendState.UP for b in demo.pool.backends)

    web = await connect_client(demo)
    web.transport.write(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")  # type: ignore[union-attr]
    await web.closed
    assert web.received.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"Content-Type: text/html" in web.received
    assert b"nc localhost 8080" in web.received

    first = await connect_client(demo)
    second = await connect_client(demo)
    await first.wait_for(b"What is your name?")
    await second.wait_for(b"What is your name?")
    servers = {b"demo-a" if b"server demo-a" in c.received else b"demo-b" for c in (first, second)}
    assert servers == {b"demo-a", b"demo-b"}

    first.transport.write(b"alice\r\nwho\r\n")  # type: ignore[union-attr]
    reply = await first.wait_for(b"Players on ")
    assert b"alice (0 wins)" in reply
    assert sorted(b.active for b in demo.pool.backends) == [1, 1]

    first.transport.write(b"quit\n")  # type: ignore[union-attr]
    await first.closed
    assert b"Goodbye, alice!" in first.received
    second.transport.loseConnection()  # type: ignore[union-attr]
    await second.closed
    await deferLater(reactor, 0.05, lambda: None)  # type: ignore[arg-type]
    assert [b.active for b in demo.pool.backends] == [0, 0]
    assert [b.total for b in demo.pool.backends] == [1, 1]


@pytest_twisted.ensureDeferred
async def test_stop_closes_the_front(demo: GatewayService) -> None:
    """
    Stopping the service tree stops listening on the front.
    """
    port = front_port(demo)
    await demo.stopService()
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port)
    with pytest.raises(Exception, match="refused"):
        await connectProtocol(endpoint, Collector())
    demo.startService()  # so that the fixture's stop has something to stop


@pytest_twisted.ensureDeferred
async def test_a_plain_front_gives_game_sessions_a_bare_client(demo: GatewayService) -> None:
    """
    On a plain TCP front with the TCP fast path, a spliced game session's
    client stays a bare socket (L{gateway.session.bareclient}), while an HTTP
    connection on the same front gets a Twisted transport once sniffed.
    """
    player = await connect_client(demo)
    await player.wait_for(b"What is your name?")
    web = await connect_client(demo)
    web.transport.write(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")  # type: ignore[union-attr]
    await web.wait_for(b"nc localhost 8080")
    entries = demo.registry.snapshot()[1]
    [session] = [entry for entry in entries if isinstance(entry, GameSession)]
    [door] = [entry for entry in entries if isinstance(entry, FrontDoor)]
    assert type(session.client) is BareClient
    assert session.phase is Phase.SPLICING
    assert type(door.transport) is ClientTransport
    # The game session's front door handed its end duties on and is gone.
    assert type(session.client.protocol) is SessionEnd
    gc.collect()
    assert [o for o in gc.get_objects() if type(o) is FrontDoor and o.session is session] == []
    player.transport.write(b"bob\r\nquit\r\n")
    await player.closed
    assert b"Goodbye, bob!" in player.received
    web.transport.loseConnection()
    await web.closed
    await deferLater(reactor, 0.05, lambda: None)
    assert len(demo.registry) == 0
    assert [b.active for b in demo.pool.backends] == [0, 0]


@pytest_twisted.ensureDeferred
async def test_a_spliced_session_keeps_descriptors_not_sockets(demo: GatewayService) -> None:
    """
    While the relay moves a spliced session's bytes, its client and its
    backend link keep only their descriptors (no socket object of either is
    left); the session still relays and passes each end of stream on, and
    at its end both descriptors are closed (no descriptor of this process is
    open on either socket).
    """
    player = await connect_client(demo)
    await player.wait_for(b"What is your name?")
    [session] = demo.registry.snapshot()[1]
    assert isinstance(session, GameSession) and session.phase is Phase.SPLICING
    client: object = session.client
    link: object = session._server
    assert isinstance(client, BareClient) and isinstance(link, LeanLink)
    fds = [client._sock, link._sock]
    assert isinstance(fds[0], int) and isinstance(fds[1], int) and fds[0] != fds[1]
    sockets = {_open_file(fds[0]), _open_file(fds[1])}  # the kernel's sockets, by inode
    assert all(name.startswith("socket:") for name in sockets)
    gc.collect()
    assert [
        o for o in gc.get_objects() if isinstance(o, socket.socket) and o.fileno() in fds
    ] == []
    player.transport.write(b"cy\r\nquit\r\n")  # type: ignore[union-attr]
    await player.closed
    assert b"Goodbye, cy!" in player.received
    await deferLater(reactor, 0.05, lambda: None)  # type: ignore[arg-type]
    assert len(demo.registry) == 0
    still_open = {_open_file(int(fd)) for fd in os.listdir("/proc/self/fd")}
    assert sockets.isdisjoint(still_open)


def _open_file(fd: int) -> str:
    """
    What descriptor C{fd} of this process is open on (C{socket:[inode]}
    for a socket), or C{""} if it is not open.
    """
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return ""


@pytest_twisted.ensureDeferred
async def test_a_spliced_session_ends_as_the_front_door_would() -> None:
    """
    A spliced session on a bare client, whose front door handed its end
    duties to a L{SessionEnd}: at its end it leaves the registry and runs the
    connection's close hooks, so the cap of one connection takes the next
    player; a player refused by the cap meanwhile is not counted.
    """
    config = GatewayConfig(
        listen=("tcp:0:interface=127.0.0.1",),
        demo=True,
        sniff_timeout=0.2,
        admin=None,
        max_connections=1,
    )
    service = make_service(config, reactor)
    service.startService()
    try:
        for name in (b"ann", b"bob"):
            player = await connect_client(service)
            await player.wait_for(b"What is your name?")
            [session] = service.registry.snapshot()[1]
            assert isinstance(session, GameSession)
            assert type(session.client.protocol) is SessionEnd  # type: ignore[attr-defined]
            refused = await connect_client(service)
            await refused.closed
            assert b"What is your name?" not in refused.received
            player.transport.write(name + b"\r\nquit\r\n")  # type: ignore[union-attr]
            await player.closed
            assert b"Goodbye, " + name in player.received
            await deferLater(reactor, 0.05, lambda: None)  # type: ignore[arg-type]
            assert len(service.registry) == 0
            assert service.registry.ended_bytes_in >= len(name) + 8
    finally:
        await service.stopService()
