"""
The TCP fast path's client side (L{gateway.session.bareclient}): a bare
accepted socket, the transport it becomes when something needs one, the
reactor registration passed from reader to reader, and which connections a
plain TCP front gives a bare client (L{gateway.process.listener.front_transport}).

The bare client runs here on real sockets (a connected TCP pair on loopback);
the reactor is a recording one, or the gateway's own epoll reactor polled by
the test, so every event is the test's.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Any

import pytest
from twisted.internet import address, tcp
from twisted.internet.error import ConnectionAborted, ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IHalfCloseableDescriptor
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure

from gateway.process.leanreactor import LeanEPollReactor
from gateway.process.listener import front_transport
from gateway.session.bareclient import BareClient, ClientTransport, pass_reader
from gateway.session.splice import spliceable
from gateway.session.stream import nothing_queued, write_now


class Recording:
    """
    A reactor that only records what is watched.
    """

    def __init__(self) -> None:
        self.readers: list[Any] = []
        self.writers: list[Any] = []
        self.calls: list[str] = []
        self.later: list[tuple[Any, tuple[Any, ...]]] = []

    def callLater(self, _delay: float, call: Any, *args: Any) -> None:  # noqa: N802
        self.later.append((call, args))

    def addReader(self, reader: Any) -> None:  # noqa: N802 - Twisted's name
        self.calls.append("addReader")
        if reader not in self.readers:
            self.readers.append(reader)

    def removeReader(self, reader: Any) -> None:  # noqa: N802 - Twisted's name
        self.calls.append("removeReader")
        if reader in self.readers:
            self.readers.remove(reader)

    def addWriter(self, writer: Any) -> None:  # noqa: N802 - Twisted's name
        if writer not in self.writers:
            self.writers.append(writer)

    def removeWriter(self, writer: Any) -> None:  # noqa: N802 - Twisted's name
        if writer in self.writers:
            self.writers.remove(writer)


class Door(Protocol):
    """
    What the bare client's protocol (the front door) is to it: bytes, the
    end, and the transport it is given when the client becomes full.
    """

    def __init__(self) -> None:
        self.received: list[bytes] = []
        self.lost: list[Failure] = []
        self.replaced: list[Any] = []

    def dataReceived(self, data: bytes) -> None:  # noqa: N802 - Twisted's name
        self.received.append(data)

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:  # noqa: B008, N802
        self.lost.append(reason)

    def replace_transport(self, transport: Any) -> None:
        self.replaced.append(transport)
        self.transport = transport


@pytest.fixture
def pair() -> Any:
    """
    A connected TCP pair on loopback: (the accepted socket, its address, the
    peer), closed after the test.
    """
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    peer = socket.create_connection(listener.getsockname())
    accepted, addr = listener.accept()
    listener.close()
    peer.settimeout(5)
    yield accepted, addr, peer
    accepted.close()
    peer.close()


class Port:
    """
    What a transport reads of its listening port (its number, for C{repr}).
    """

    _realPortNumber = 8080  # noqa: N815 - Twisted's name


def _bare(pair: Any, reactor: Any) -> tuple[BareClient, Door, socket.socket]:
    accepted, addr, peer = pair
    door = Door()
    client = BareClient(accepted, door, addr, Port(), 7, reactor)  # type: ignore[arg-type]
    assert reactor.readers == []  # not before it starts reading
    door.makeConnection(client)
    client.read_first()  # what the front door's connectionMade does
    return client, door, peer


def _started(pair: Any, door: Door, reactor: Any) -> BareClient:
    """
    A bare client started as the front door starts it (its first read).
    """
    accepted, addr, _peer = pair
    client = BareClient(accepted, door, addr, Port(), 1, reactor)  # type: ignore[arg-type]
    door.makeConnection(client)
    client.read_first()
    return client


def _read_all(client: BareClient) -> None:
    # A few reads: loopback delivers at once, but one read may come early.
    for _ in range(20):
        client.doRead()


def test_it_reads_for_its_protocol(pair: Any) -> None:
    """
    Made, it is non-blocking and watched for reading; each read gives the
    protocol the bytes; nothing there is no event.
    """
    reactor = Recording()
    client, door, peer = _bare(pair, reactor)
    assert reactor.readers == [client]
    assert client.socket.gettimeout() == 0.0
    client.doRead()  # nothing yet: no bytes, no end
    assert door.received == [] and door.lost == [] and door.replaced == []
    peer.sendall(b"hello")
    _read_all(client)
    assert b"".join(door.received) == b"hello"
    assert client.connected and door.lost == []


def test_it_names_both_ends(pair: Any) -> None:
    accepted, addr, peer = pair
    client, _door, _ = _bare(pair, Recording())
    assert client.getPeer() == address.IPv4Address("TCP", *peer.getsockname())
    assert client.getHost() == address.IPv4Address("TCP", *accepted.getsockname())
    assert client.fileno() == accepted.fileno()
    assert spliceable(client)
    assert IHalfCloseableDescriptor.providedBy(client)


def test_close_is_at_once(pair: Any) -> None:
    """
    C{loseConnection} closes the socket before it returns: the protocol has
    heard a clean end, nothing is watched, and the peer sees the end.
    """
    reactor = Recording()
    client, door, peer = _bare(pair, reactor)
    client.loseConnection()
    assert [failure.type for failure in door.lost] == [ConnectionDone]
    assert reactor.readers == []
    assert client.fileno() == -1 and not client.connected
    assert peer.recv(10) == b""
    client.loseConnection()
    client.abortConnection()
    assert len(door.lost) == 1


def test_abort_resets(pair: Any) -> None:
    reactor = Recording()
    client, door, peer = _bare(pair, reactor)
    client.abortConnection()
    assert [failure.type for failure in door.lost] == [ConnectionAborted]
    with pytest.raises(ConnectionResetError):
        peer.recv(10)


def test_a_read_error_is_a_lost_connection(pair: Any) -> None:
    """
    A reset while reading: the protocol hears a lost connection (not a
    clean end), and the socket is closed.
    """
    reactor = Recording()
    client, door, peer = _bare(pair, reactor)
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    peer.close()
    _read_all(client)
    assert [failure.type for failure in door.lost] == [ConnectionLost]
    assert reactor.readers == [] and not client.connected


def test_the_reactor_dropping_it_closes_it(pair: Any) -> None:
    reactor = Recording()
    client, door, _peer = _bare(pair, reactor)
    reactor.readers.clear()  # the reactor removed it (removeAll), then:
    client.connectionLost(Failure(ConnectionLost("reactor stopping")))
    assert [failure.type for failure in door.lost] == [ConnectionLost]
    assert reactor.calls == ["addReader"]  # not removed a second time
    assert not client.connected


def test_pause_and_resume(pair: Any) -> None:
    reactor = Recording()
    client, door, peer = _bare(pair, reactor)
    client.pauseProducing()
    client.pauseProducing()
    assert reactor.readers == []
    client.resumeProducing()
    client.resumeProducing()
    assert reactor.readers == [client]
    assert reactor.calls == ["addReader", "removeReader", "addReader"]


def test_the_end_of_stream_makes_it_full(pair: Any) -> None:
    """
    An end of stream is Twisted's to follow (half-close rules): the client
    becomes a transport, which takes its registration and, reading again,
    meets the end itself.
    """
    reactor = Recording()
    client, door, peer = _bare(pair, reactor)
    peer.shutdown(socket.SHUT_WR)
    _read_all(client)
    assert door.lost == []
    [server] = door.replaced
    assert type(server) is ClientTransport
    assert reactor.readers == [server]
    assert server.protocol is door and server.socket is client.socket


def test_what_it_does_not_do_makes_it_full(pair: Any) -> None:
    """
    A write (or any other transport method) builds the transport; the
    bytes arrive; later calls through the bare client go to the transport.
    """
    reactor = Recording()
    client, door, peer = _bare(pair, reactor)
    client.write(b"busy\r\n")
    [server] = door.replaced
    assert reactor.readers == [server]
    if server.dataBuffer or server._tempDataBuffer:
        server.doWrite()
    assert peer.recv(10) == b"busy\r\n"
    assert nothing_queued(server)
    assert write_now(server, b"more") and peer.recv(10) == b"more"
    client.pauseProducing()
    assert reactor.readers == []
    client.resumeProducing()
    assert reactor.readers == [server]
    assert client.getHost() == server.getHost()
    client.stopWriting()
    client.loseConnection()  # the transport's: after its buffer, next turn
    assert server.disconnecting
    assert door.replaced == [server]
    client.abortConnection()
    for call, args in reactor.later:
        call(*args)
    assert [failure.type for failure in door.lost] == [ConnectionAborted]


def test_a_paused_client_becomes_a_paused_transport(pair: Any) -> None:
    reactor = Recording()
    client, door, peer = _bare(pair, reactor)
    client.pauseProducing()
    server = client.full()
    assert client.full() is server
    assert reactor.readers == []
    assert reactor.calls == ["addReader", "removeReader"]
    server.resumeProducing()
    assert reactor.readers == [server]


def test_probes_do_not_make_it_full(pair: Any) -> None:
    """
    Asking for what no transport has (a WebSocket client's C{refuse}) is
    no reason to build one.
    """
    client, door, _peer = _bare(pair, Recording())
    assert getattr(client, "refuse", None) is None
    assert getattr(client, "send_text", None) is None
    assert not getattr(client, "TLS", True)
    assert not client.disconnecting
    assert door.replaced == []


# The registration passed from reader to reader.


class Reader:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.reads = 0
        self.passed = 0

    def fileno(self) -> int:
        return self.sock.fileno()

    def doRead(self) -> None:  # noqa: N802 - Twisted's name
        self.reads += 1
        self.sock.recv(100)

    def doWrite(self) -> None:  # noqa: N802 - Twisted's name
        pass

    def logPrefix(self) -> str:  # noqa: N802 - Twisted's name
        return "reader"

    def connectionLost(self, reason: Failure) -> None:  # noqa: N802 - Twisted's name
        pass

    def stopReading(self) -> None:  # noqa: N802 - Twisted's name
        raise AssertionError("the lean reactor swaps: nothing stops reading")

    def reading_passed(self) -> None:
        self.passed += 1


def _watched(reactor: LeanEPollReactor) -> list[Any]:
    # The reactor's readers but its waker.
    return [reader for reader in reactor.getReaders() if reader is not reactor.waker]


def test_the_lean_reactor_swaps_a_reader(pair: Any) -> None:
    """
    On the gateway's reactor the new reader gets the old one's events with
    no C{epoll_ctl} (the kernel's registration is the same: a read event is
    pending from before the swap and is delivered to the new reader).
    """
    accepted, _addr, peer = pair
    accepted.setblocking(False)
    reactor = LeanEPollReactor()
    try:
        old, new = Reader(accepted), Reader(accepted)
        reactor.addReader(old)
        peer.sendall(b"x")
        pass_reader(reactor, old, new)
        assert old.passed == 1
        assert _watched(reactor) == [new]
        reactor.doPoll(1)
        assert (old.reads, new.reads) == (0, 1)
        peer.sendall(b"y")
        reactor.doPoll(1)
        assert new.reads == 2
        reactor.removeReader(new)
        assert _watched(reactor) == []
    finally:
        reactor._poller.close()


def test_the_lean_reactor_swaps_only_a_lone_reader(pair: Any) -> None:
    accepted, _addr, peer = pair
    reactor = LeanEPollReactor()
    try:
        old, new, other = Reader(accepted), Reader(accepted), Reader(peer)
        assert not reactor.replace_reader(old, new)  # not watched
        reactor.addReader(old)
        assert not reactor.replace_reader(old, other)  # another socket
        assert not reactor.replace_reader(new, old)  # not new's
        reactor.addWriter(old)
        assert not reactor.replace_reader(old, new)  # also a writer
        reactor.removeWriter(old)
        assert reactor.replace_reader(old, new)
        assert _watched(reactor) == [new]
        reactor.removeReader(new)
    finally:
        reactor._poller.close()


def test_other_reactors_stop_and_add(pair: Any) -> None:
    """
    Elsewhere (a reactor without C{replace_reader}, or an old reader that
    is not watched) the old reader stops reading and the new one is added.
    """
    reactor = Recording()
    client, door, _peer = _bare(pair, reactor)
    new = Reader(client.socket)
    pass_reader(reactor, client, new)
    assert reactor.readers == [new]
    assert reactor.calls == ["addReader", "removeReader", "addReader"]
    client.loseConnection()  # not watched any more: not removed again
    assert reactor.calls == ["addReader", "removeReader", "addReader"]


def test_closing_after_the_swap_leaves_the_new_reader(pair: Any) -> None:
    """
    A bare client whose registration was passed on (to the splice relay)
    does not remove it when it closes: it is not its own any more.
    """
    reactor = LeanEPollReactor()
    try:
        accepted, _addr, peer = pair
        door = Door()
        client = _started(pair, door, reactor)  # nothing there yet: watched
        assert _watched(reactor) == [client]
        new = Reader(accepted)
        pass_reader(reactor, client, new)  # swapped: no system call
        assert _watched(reactor) == [new]
        fd = accepted.fileno()
        client.loseConnection()  # the socket goes (the relay's owner closes it)
        assert _watched(reactor) == [new] and door.lost  # still the relay's
        # (The relay removes its end before the session closes the socket;
        # here the kernel dropped it with the close, and says so when told.)
        with pytest.raises(OSError):
            reactor.removeReader(new)
        assert _watched(reactor) == [] and fd not in reactor._reads
    finally:
        reactor._poller.close()


def test_the_peer_is_the_sockets_to_tell_once_passed_on(pair: Any) -> None:
    """
    Once the splice relay has its registration, a bare client keeps no
    address (memory): it still names its peer, and the transport it
    becomes on a hand-back does too; once the connection is gone, a
    transport built on it names no peer instead of failing.
    """
    reactor = LeanEPollReactor()
    try:
        accepted, _addr, peer = pair
        client = _started(pair, Door(), reactor)
        pass_reader(reactor, client, Reader(accepted))
        assert client._addr is None
        named = address.IPv4Address("TCP", *peer.getsockname())
        assert client.getPeer() == named
        transport = client.full()
        assert transport.getPeer() == named == client.getPeer()
        reactor.removeReader(transport)
    finally:
        reactor._poller.close()


def test_a_gone_peer_is_named_as_no_address(pair: Any) -> None:
    accepted, addr, peer = pair
    reactor = Recording()
    client = BareClient(accepted, Door(), addr, Port(), 1, reactor)  # type: ignore[arg-type]
    client.reading_passed()
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    peer.close()  # a reset: the accepted socket is not connected any more
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            accepted.getpeername()
        except OSError:
            break
        time.sleep(0.01)
    assert client.getPeer() == address.IPv4Address("TCP", "0.0.0.0", 0)
    assert client.full().getPeer() == address.IPv4Address("TCP", "0.0.0.0", 0)


class Failing(Door):
    """
    A protocol whose first bytes make its transport full (a write), then
    raise: a bug after the transport was built.
    """

    def dataReceived(self, data: bytes) -> None:  # noqa: N802 - Twisted's name
        super().dataReceived(data)
        self.transport.write(b"busy\r\n")  # type: ignore[union-attr]
        raise RuntimeError("a bug")


def test_an_error_after_the_transport_was_built_closes_it(pair: Any) -> None:
    """
    An event that raises after making the client a transport: the reactor
    drops the bare client (its registration, by descriptor, was the
    transport's), and the transport closes: nothing stays open unread.
    """
    reactor = LeanEPollReactor()
    try:
        _accepted, _addr, peer = pair
        door = Failing()
        _started(pair, door, reactor)
        peer.sendall(b"x")
        time.sleep(0.05)
        reactor.doPoll(1)  # doRead raises: the reactor disconnects what it polled
        [server] = door.replaced
        assert [failure.type for failure in door.lost] == [RuntimeError]
        assert not server.connected and _watched(reactor) == []
        assert peer.recv(100) in (b"", b"busy\r\n")
    finally:
        reactor._poller.close()


@pytest.mark.parametrize("full", [False, True])
def test_an_error_in_the_first_read_closes_the_connection(pair: Any, full: bool) -> None:
    """
    The first read runs inside the port's accept loop, which would only
    log an error: the connection is closed, its protocol hears why, and
    nothing is left watched.
    """
    accepted, addr, peer = pair
    peer.sendall(b"x")
    time.sleep(0.05)
    reactor = Recording()
    door = Failing() if full else Reacting("raise")
    client = BareClient(accepted, door, addr, Port(), 1, reactor)  # type: ignore[arg-type]
    door.makeConnection(client)
    client.read_first()
    assert [failure.type for failure in door.lost] == [RuntimeError]
    assert reactor.readers == [] and reactor.writers == []
    assert client.fileno() == -1 or not door.replaced[0].connected
    assert peer.recv(100) in (b"", b"busy\r\n")


def test_a_closed_client_ignores_transport_calls(pair: Any) -> None:
    client, door, _peer = _bare(pair, Recording())
    client.loseConnection()
    client.write(b"late")
    client.unregisterProducer()
    assert door.replaced == [] and len(door.lost) == 1


# Which connections a plain TCP front gives a bare client.


def _front_door(**settings: Any) -> Any:
    from gateway.front.door import FrontDoor, GatewayFactory
    from gateway.session.settings import SessionSettings

    factory = GatewayFactory.__new__(GatewayFactory)
    base: dict[str, Any] = {
        "sniff_timeout": 1.0,
        "connect_timeout": 1.0,
        "idle_timeout": 0.0,
        "fin_timeout": 0.0,
        "relay_mode": "auto",
        "tcp_fast_path": True,
    }
    factory._settings = SessionSettings(**(base | settings))
    return FrontDoor(factory)


@pytest.mark.parametrize(
    ("protocol", "bare"),
    [
        (lambda: _front_door(), True),
        (lambda: _front_door(relay_mode="copy"), True),
        (lambda: _front_door(tcp_fast_path=False), False),
        (lambda: Door(), False),
    ],
    ids=["front-door", "copy-relay", "no-tcp-fast-path", "other-protocol"],
)
def test_front_transport(pair: Any, protocol: Any, bare: bool) -> None:
    accepted, addr, _peer = pair
    reactor = Recording()
    transport = front_transport(accepted, protocol(), addr, Port(), 3, reactor)  # type: ignore[arg-type]
    assert type(transport) is (BareClient if bare else tcp.Server)
    # A bare client is watched once its front door starts it (read_first).
    assert reactor.readers == ([] if bare else [transport])


# The first read, in the turn the connection is accepted.


class Reacting(Door):
    """
    A protocol that does C{action} with its transport on its first bytes.
    """

    def __init__(self, action: str) -> None:
        super().__init__()
        self.action = action

    def dataReceived(self, data: bytes) -> None:  # noqa: N802 - Twisted's name
        super().dataReceived(data)
        transport: Any = self.transport
        if self.action == "close":
            transport.loseConnection()
        elif self.action == "pause":
            transport.pauseProducing()
        elif self.action == "write":
            transport.write(b"ok")
        elif self.action == "pass":
            pass_reader(transport._reactor, transport, Reader(transport.socket))
        elif self.action == "raise":
            raise RuntimeError("a bug")


def _first(pair: Any, protocol: Door, sent: bytes | None) -> tuple[BareClient, Recording]:
    accepted, addr, peer = pair
    if sent is not None:
        peer.sendall(sent) if sent else peer.shutdown(socket.SHUT_WR)
        time.sleep(0.05)  # loopback: there by now
    reactor = Recording()
    client = BareClient(accepted, protocol, addr, Port(), 1, reactor)  # type: ignore[arg-type]
    protocol.makeConnection(client)
    client.read_first()
    return client, reactor


def test_first_bytes_already_there_are_read_at_once(pair: Any) -> None:
    door = Door()
    client, reactor = _first(pair, door, b"PING\r\n")
    assert door.received == [b"PING\r\n"]
    assert reactor.readers == [client]  # then watched for more


def test_nothing_there_yet_is_watched(pair: Any) -> None:
    door = Door()
    client, reactor = _first(pair, door, None)
    assert door.received == [] and reactor.readers == [client]


def test_an_end_already_there_makes_the_transport(pair: Any) -> None:
    door = Door()
    client, reactor = _first(pair, door, b"")
    [server] = door.replaced
    assert reactor.readers == [server] and door.lost == []
    assert reactor.calls == ["addReader"]  # the transport's only


@pytest.mark.parametrize(
    ("action", "watched"),
    [("close", []), ("pause", []), ("write", ["transport"]), ("pass", ["reader"])],
)
def test_what_the_first_bytes_did_is_kept(pair: Any, action: str, watched: list[str]) -> None:
    """
    A client closed, paused, made a transport or passed on by its first
    bytes is not watched as a bare client afterwards.
    """
    protocol = Reacting(action)
    client, reactor = _first(pair, protocol, b"GET / HTTP/1.1\r\n\r\n")
    assert protocol.received == [b"GET / HTTP/1.1\r\n\r\n"]
    assert client not in reactor.readers
    kinds = ["transport" if type(r) is ClientTransport else "reader" for r in reactor.readers]
    assert kinds == watched
    if action == "pause":
        client.resumeProducing()
        assert reactor.readers == [client]
    if action == "close":
        assert reactor.calls == [] and [f.type for f in protocol.lost] == [ConnectionDone]


def test_a_parked_client_keeps_its_descriptor_and_rebuilds_its_socket(pair: Any) -> None:
    """
    Parked (the splice relay owns its bytes), a bare client keeps only its
    descriptor, open; asked for its socket (a hand-back), it gets one on the
    same descriptor that works (its family and peer are the kernel's); and
    a parked client that closes closes the descriptor.
    """
    reactor = Recording()
    client, door, peer = _bare(pair, reactor)
    accepted = pair[0]
    fd = client.fileno()
    assert client.park() == fd and client._sock == fd and client.fileno() == fd
    assert accepted.fileno() == -1  # detached: the object does not own it
    os.fstat(fd)  # still open
    rebuilt = client.socket
    assert rebuilt.fileno() == fd and rebuilt.family == socket.AF_INET
    assert rebuilt.getpeername() == peer.getsockname()
    assert client.socket is rebuilt  # once
    rebuilt.sendall(b"still here")
    assert peer.recv(100) == b"still here"
    client.park()
    client.loseConnection()
    assert door.lost and client.fileno() == -1 and client.socket.fileno() == -1
    with pytest.raises(OSError):
        os.fstat(fd)


def test_a_client_with_a_transport_is_not_parked(pair: Any) -> None:
    """
    Once a transport is built on the socket, parking keeps the socket (the
    transport uses it).
    """
    reactor = Recording()
    client, _door, _peer = _bare(pair, reactor)
    transport = client.full()
    fd = client.fileno()
    assert client.park() == fd and transport.socket.fileno() == fd
    assert isinstance(client._sock, socket.socket)
