"""
The lean static path on a bare client (L{gateway.http.lean.LeanStatic.answer_alone}):
a connection whose first bytes are one request that closes it is answered
with no C{twisted.web} channel and no Twisted transport, on the accepted
socket itself, and closed; anything else gets its transport and channel as
before.  The same requests through C{twisted.web} (the lean path off) give
the same bytes (but the C{Date}), access events and count of bytes out.

The connections here are real TCP pairs on loopback; the reactor is a memory
one, and the tests write what a transport buffered themselves.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import cast

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.python.failure import Failure

from gateway.front.door import FrontDoor
from gateway.ops.registry import SessionRegistry
from gateway.session.bareclient import BareClient, ClientTransport
from tests.test_bareclient import Port
from tests.test_lean_static import _DATE, Events, exchange, make_front, requests, www

__all__ = ["www"]  # the fixture, shared with tests/test_lean_static.py


class Bare:
    """
    A front door (lean path on) whose connection is a bare client on a real
    socket, and the client's end.
    """

    def __init__(self, root: Path, *, send_buffer: int | None = None, first: bytes = b"") -> None:
        made, _transport, self.reactor = make_front(root, fast_path=True)
        self.factory = made.factory
        self.factory.registry = self.registry = SessionRegistry()
        self.front: FrontDoor = self.factory.buildProtocol(None)
        with socket.create_server(("127.0.0.1", 0)) as listener:
            self.peer = socket.socket()
            if send_buffer is not None:
                # Small buffers both ways, the window too (set before connecting).
                self.peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, send_buffer)
            self.peer.connect(listener.getsockname())
            accepted, address = listener.accept()
        if send_buffer is not None:
            accepted.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, send_buffer)
        if first:
            self.peer.sendall(first)
            time.sleep(0.05)  # loopback: there by now
        self.bare = BareClient(accepted, self.front, address, Port(), 1, self.reactor)  # type: ignore[arg-type]
        self.front.makeConnection(self.bare)
        self.peer.settimeout(5)

    def receive(self, data: bytes) -> None:
        """
        C{data} arrives (what the bare client's read gives the door), then
        the reactor's turns: due calls run, and a transport's buffer is
        written out (a reactor's C{doWrite}), then closed if asked.
        """
        self.front.dataReceived(data)
        for _ in range(50):
            self.reactor.advance(0)
        transport = self.front.transport
        while isinstance(transport, ClientTransport) and transport.connected:
            if not (transport.dataBuffer or transport._tempDataBuffer or transport.disconnecting):
                break
            ended = transport.doWrite()
            if ended is not None:
                transport.connectionLost(Failure(ended))
            self._read(wait=False)

    _got = b""

    def _read(self, *, wait: bool) -> bool:
        # Read what is there; True once the connection ended.
        self.peer.settimeout(2 if wait else 0.05)
        try:
            while True:
                chunk = self.peer.recv(65536)
                if not chunk:
                    return True
                self._got += chunk
        except (TimeoutError, BlockingIOError):
            return False

    def result(self) -> tuple[bytes, bool]:
        """
        What the client got (C{Date} values blanked), and whether the
        connection was closed.
        """
        ended = self._read(wait=False)
        return _DATE.sub(b"\r\nDate: -\r\n", self._got), ended

    def close(self) -> None:
        if self.front.transport is not None and self.bare.connected:
            self.front.transport.loseConnection()
            self.receive(b"")
        self.peer.close()


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_a_bare_connection_is_twisted_web_but_faster(www: Path, data: st.DataObject) -> None:
    """
    Any first request (closing or not, answered by the lean path or not)
    gives the client the same bytes (but the C{Date}), the same access event
    and the same count of bytes out as C{twisted.web} with the lean path off.
    """
    request = data.draw(requests(www))
    if data.draw(st.booleans()):
        request = request.replace(b"\r\n", b"\r\nConnection: close\r\n", 1)
    twisted = exchange(www, [request], fast_path=False)
    connection = Bare(www)
    try:
        with Events() as events:
            connection.receive(request)
        got, _ended = connection.result()
        # The peers' addresses differ (a real socket's, the memory one's).
        mine = [event | {"peer": None} for event in events.events]
        theirs = [event | {"peer": None} for event in twisted[1]]
        assert (got, mine, connection.front.bytes_out) == (twisted[0], theirs, twisted[2])
    finally:
        connection.close()


@pytest.mark.parametrize("head", [b"GET /a.txt HTTP/1.1\r\nConnection: close", b"HEAD / HTTP/1.0"])
def test_a_closing_request_is_answered_alone(www: Path, head: bytes) -> None:
    """
    The differential test is not vacuous: a request that closes the
    connection is answered with no channel and no transport, and closed
    before the reactor turns; the registry counted it, bytes and all.
    """
    connection = Bare(www)
    with Events() as events:
        connection.front.dataReceived(head + b"\r\nHost: x\r\n\r\n")
    front = connection.front
    assert front.http is None and front.transport is cast(object, connection.bare)
    assert not connection.bare.connected
    got, ended = connection.result()
    assert ended and got.startswith((b"HTTP/1.1 200 OK\r\n", b"HTTP/1.0 200 OK\r\n"))
    assert [event["status"] for event in events.events] == [200]
    assert len(connection.registry) == 0
    assert connection.registry.ended_bytes_out == events.events[0]["bytes_out"]
    assert connection.registry.ended_bytes_in == len(head) + len(b"\r\nHost: x\r\n\r\n")
    if head.startswith(b"GET"):
        assert connection.registry.ended_bytes_out == (www / "a.txt").stat().st_size > 0
    connection.close()


@pytest.mark.parametrize(
    "first",
    [
        b"GET /a.txt HTTP/1.1\r\nHost: x\r\n\r\n",  # keep-alive
        b"GET /a.txt HTTP/1.1\r\nConnection: close\r\n",  # the head not whole yet
        b"GET /a.txt HTTP/1.1\r\nConnection: close\r\n\r\nGET / HTTP/1.1\r\n\r\n",  # two
        b"GET /missing HTTP/1.1\r\nConnection: close\r\n\r\n",  # not the lean path's
    ],
    ids=["keep-alive", "cut", "pipelined", "not-lean"],
)
def test_anything_else_gets_a_transport_and_a_channel(www: Path, first: bytes) -> None:
    connection = Bare(www)
    connection.receive(first)
    front = connection.front
    assert front.http is not None
    assert type(front.transport) is ClientTransport
    assert connection.bare.full() is front.transport
    connection.close()


def test_what_the_socket_does_not_take_goes_through_the_transport(www: Path) -> None:
    """
    A response larger than the socket takes at once: the rest is written
    by the transport the bare client becomes, which then closes; the client
    gets it all.
    """
    body = (www / "big.bin").read_bytes()
    assert len(body) > 60_000
    small = www / "small-buffer.bin"
    small.write_bytes(body[:60_000])
    try:
        connection = Bare(www, send_buffer=4096)
        connection.front.dataReceived(
            b"GET /small-buffer.bin HTTP/1.1\r\nConnection: close\r\n\r\n"
        )
        transport = connection.front.transport
        assert type(transport) is ClientTransport
        assert transport.disconnecting
        assert connection.front.http is None
        connection.front.dataReceived(b"more bytes are dropped")
        connection.receive(b"")
        got, ended = connection.result()
        assert ended
        assert got.endswith(b"\r\n\r\n" + body[:60_000])
        assert connection.registry.ended_bytes_out == 60_000
    finally:
        small.unlink()


def _timers(connection: Bare) -> list[object]:
    # The timers of the connection's front door (make_front made another).
    return [
        call
        for call in connection.reactor.getDelayedCalls()
        if getattr(getattr(call, "func", None), "__self__", None) is connection.front
    ]


def test_a_request_there_at_accept_is_answered_in_that_turn(www: Path) -> None:
    """
    A request already in the socket when the connection is accepted is
    read by the front door's C{connectionMade}, answered and closed there:
    no sniff timer armed, and the socket never watched by the reactor.
    """
    connection = Bare(www, first=b"GET /a.txt HTTP/1.1\r\nConnection: close\r\n\r\n")
    got, ended = connection.result()
    assert ended and got.startswith(b"HTTP/1.1 200 OK\r\n")
    assert _timers(connection) == []
    assert connection.reactor.getReaders() == []
    assert len(connection.registry) == 0
    connection.close()


def test_a_silent_client_is_watched_and_timed(www: Path) -> None:
    connection = Bare(www)
    assert connection.reactor.getReaders() == [connection.bare]
    assert len(_timers(connection)) == 1  # the sniff timeout
    connection.close()


def _abort_timers(connection: Bare) -> list[object]:
    # Pending calls that would abort the connection's transport.
    abort = getattr(connection.front.transport, "abortConnection", None)
    return [
        call
        for call in connection.reactor.getDelayedCalls()
        if call.active() and getattr(call, "func", None) == abort
    ]


def test_a_client_that_does_not_read_the_rest_is_cut_off(www: Path) -> None:
    """
    The rest of a closing response that the socket did not take waits at
    most the site's send timeout for a client that does not read it (as a
    channel's closing connection does); then the connection is aborted.
    """
    small = www / "unread.bin"
    small.write_bytes((www / "big.bin").read_bytes()[:60_000])
    connection = Bare(www, send_buffer=4096)
    try:
        front = connection.front
        front.dataReceived(b"GET /unread.bin HTTP/1.1\r\nConnection: close\r\n\r\n")
        transport = front.transport
        assert type(transport) is ClientTransport and transport.disconnecting
        assert len(_abort_timers(connection)) == 1
        connection.reactor.advance(front.factory.site.send_timeout - 1)
        assert transport.connected  # still given its time
        connection.reactor.advance(1)
        connection.reactor.advance(0)  # the abort's connectionLost
        assert not transport.connected
        # (make_front's own door timed out into a game session meanwhile.)
        assert all(entry is not front for _, entry in connection.registry.items())
    finally:
        small.unlink()
        connection.peer.close()


def test_the_send_timer_goes_when_the_rest_was_taken(www: Path) -> None:
    body = (www / "big.bin").read_bytes()[:60_000]
    small = www / "read.bin"
    small.write_bytes(body)
    connection = Bare(www, send_buffer=4096)
    try:
        connection.front.dataReceived(b"GET /read.bin HTTP/1.1\r\nConnection: close\r\n\r\n")
        assert len(_abort_timers(connection)) == 1
        connection.receive(b"")  # written out as the client reads, then closed
        got, ended = connection.result()
        assert ended and got.endswith(body)
        assert _abort_timers(connection) == []
        assert len(connection.registry) == 0
    finally:
        small.unlink()
        connection.peer.close()
