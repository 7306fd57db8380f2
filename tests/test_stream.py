"""
Unit tests of L{gateway.session.stream}'s writes and closes straight to a
plain socket: a real TCP connection whose transport runs on a memory
reactor, so what happens now and what waits for a reactor turn can be told
apart.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager

from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Protocol
from twisted.internet.tcp import Server
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure

from gateway.session.stream import close_now, nothing_queued, plain_socket, write_now


class Recording(Protocol):
    """
    Notes how its connection ended.
    """

    def __init__(self) -> None:
        self.reasons: list[Failure] = []

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:  # noqa: B008, N802
        self.reasons.append(reason)


@contextmanager
def plain_pair() -> Iterator[tuple[Server, socket.socket, Recording, MemoryReactorClock]]:
    """
    A server transport on a memory reactor over a real TCP connection, and
    the client's socket.
    """
    reactor = MemoryReactorClock()
    protocol = Recording()
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        accepted, address = listener.accept()
    transport = Server(accepted, protocol, address, None, 1, reactor)  # type: ignore[arg-type]
    protocol.makeConnection(transport)
    client.settimeout(5)
    with client:
        yield transport, client, protocol, reactor
        if transport.connected:
            transport.connectionLost(Failure(ConnectionDone()))


def test_nothing_queued_closes_at_once() -> None:
    """
    With nothing queued, the connection is closed before L{close_now}
    returns: the protocol has heard a clean end, the reactor watches it no
    more, and the client reads every byte written before, then the end.
    """
    with plain_pair() as (transport, client, protocol, reactor):
        assert nothing_queued(transport) and plain_socket(transport)
        assert write_now(transport, b"last words")
        close_now(transport)
        assert [reason.type for reason in protocol.reasons] == [ConnectionDone]
        assert not transport.connected
        assert transport not in reactor.getReaders() + reactor.getWriters()
        assert client.recv(100) == b"last words"
        assert client.recv(100) == b""


def test_queued_bytes_are_sent_before_the_close() -> None:
    """
    With bytes waiting in the transport's buffer, the close waits for them,
    as C{loseConnection} does: nothing is lost.
    """
    with plain_pair() as (transport, client, protocol, reactor):
        transport.write(b"queued")
        assert not nothing_queued(transport)
        close_now(transport)
        assert protocol.reasons == [] and transport.disconnecting
        assert transport in reactor.getWriters()
        why = transport.doWrite()  # the reactor's turn
        transport.connectionLost(Failure(why))
        assert [reason.type for reason in protocol.reasons] == [ConnectionDone]
        assert client.recv(100) == b"queued"
        assert client.recv(100) == b""


def test_other_transports_lose_their_connection() -> None:
    """
    A transport that is not a plain socket's (TLS, a wrapper, a test's) is
    closed by its own C{loseConnection}.
    """
    transport = StringTransport()
    assert not nothing_queued(transport) and not plain_socket(transport)
    close_now(transport)
    assert transport.disconnecting
