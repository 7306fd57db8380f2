"""
The TCP fast path's client side: an accepted socket, bare until something
needs a Twisted transport.

A game session on the fast path never uses most of its client's transport: the
front door reads a few bytes to sniff, the session holds them while it
connects, then the splice relay takes the socket and the kernel moves every
byte, and at the end the socket is closed.  Twisted's C{tcp.Server} costs a
dictionary of state and strings per connection (about 400 bytes of an idle
session), its build and teardown, and a reactor registration that the relay
removes only to add its own.  A L{BareClient} is what the listening port
gives the front door instead (L{gateway.process.listener}, for a plain
C{tcp:} front whose connection reaches the front door with the TCP fast path
on): a slotted object that reads for the front door, can be paused, resumed
and closed, names its peer, and hands its socket to the relay.

Anything else asked of it (a write, a producer, a half-close, ...) makes it
L{full}: a Twisted transport (L{ClientTransport}) is built on the same socket,
takes over its reactor registration, and the front door and its session use
it from then on (C{FrontDoor.replace_transport}); the bare client passes every
later call to it.  So an HTTP connection gets its transport as soon as it is
sniffed, a refused or waiting game client when it is written to, and a
spliced session when the relay hands the sockets back; every uncommon path is
Twisted's, as before.

L{pass_reader} gives a socket's reactor registration from one reader to
another; on the gateway's own reactor that is a change of the reactor's map
only (L{gateway.process.leanreactor.LeanEPollReactor.replace_reader}).
"""

from __future__ import annotations

import os
import socket
import struct
from typing import Any

from twisted.internet import address, tcp
from twisted.internet.error import ConnectionAborted, ConnectionLost
from twisted.internet.interfaces import IHalfCloseableDescriptor, IReadDescriptor
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

__all__ = ["BareClient", "ClientTransport", "Parkable", "pass_reader"]

_log = Logger()

READ_SIZE = 65536
"""The most bytes read at once (Twisted's transports read as much)."""


def pass_reader(reactor: Any, transport: Any, reader: Any) -> None:
    """
    Watch C{reader} instead of C{transport} for reading C{transport}'s
    socket (the same descriptor): C{transport} reads no more.

    On a reactor that can (C{replace_reader}), this changes its map only;
    elsewhere, C{transport} stops reading and C{reader} is added.
    """
    replace = getattr(reactor, "replace_reader", None)
    if replace is not None and replace(transport, reader):
        passed = getattr(transport, "reading_passed", None)
        if passed is not None:
            passed()
        return
    transport.stopReading()
    reactor.addReader(reader)


class ClientTransport(tcp.Server):
    """
    A client's Twisted transport, built on a L{BareClient}'s socket: a
    C{tcp.Server} that does not start reading by itself (the bare client
    passes its registration on, or none if it was paused).
    """

    _quiet_start = False

    def __init__(
        self,
        sock: socket.socket,
        protocol: Any,
        client: tuple[Any, ...],
        server: tcp.Port,
        sessionno: int,
        reactor: Any,
    ) -> None:
        self._quiet_start = True
        super().__init__(sock, protocol, client, server, sessionno, reactor)
        self._quiet_start = False

    def startReading(self) -> None:  # noqa: N802 - Twisted's name
        if not self._quiet_start:
            super().startReading()


class Parkable:
    """
    A socket that can be I{parked}: while the splice relay moves a session's
    bytes, only its descriptor is kept (the same int the relay's ends keep),
    not the socket object, which is 88 bytes of an idle spliced session for
    each of its two sockets (docs/performance.md).  Whatever asks for the
    socket again (a hand-back, a local address) gets one rebuilt on the same
    descriptor, once.

    @ivar _sock: the socket, its descriptor while parked, or L{None} once
        closed (or not made yet).
    """

    __slots__ = ("_sock",)

    _sock: socket.socket | int | None

    def park(self) -> int:
        """
        Keep only the descriptor, open, from now.

        @return: the descriptor.
        """
        sock = self._sock
        if isinstance(sock, socket.socket):
            self._sock = sock = sock.detach()
        assert isinstance(sock, int)
        return sock

    def _socket_object(self) -> socket.socket | None:
        sock = self._sock
        if isinstance(sock, int):
            # Off the common path: the kernel says the family and type.
            sock = self._sock = socket.socket(fileno=sock)
            sock.setblocking(False)
        return sock

    def fileno(self) -> int:
        """
        The socket's descriptor (-1 once closed).
        """
        sock = self._sock
        if sock is None:
            return -1
        return sock if isinstance(sock, int) else sock.fileno()

    def _close_socket(self) -> None:
        sock, self._sock = self._sock, None
        if isinstance(sock, int):
            os.close(sock)
        elif sock is not None:
            sock.close()


@implementer(IReadDescriptor, IHalfCloseableDescriptor)
class BareClient(Parkable):
    """
    One accepted client socket and its protocol (a front door), with no
    Twisted transport until one is needed (L{full}).

    The listening port builds it as it would build its C{tcp.Server}, with
    the same arguments (C{tcp.Port.transport}).

    @ivar socket: the accepted socket (rebuilt if it was parked; a closed
        socket once closed).
    @ivar protocol: its protocol (the front door).
    @ivar connected: whether the socket is open.
    @ivar disconnecting: whether it is closing (never: it closes at once).
    """

    TLS = False
    disconnecting = False  # it closes at once (a class attribute: no slot)

    __slots__ = (
        "_addr",
        "_full",
        "_port",
        "_reactor",
        "_reading",
        "_sessionno",
        "_watched",
        "connected",
        "protocol",
    )

    def __init__(
        self,
        sock: socket.socket,
        protocol: Any,
        addr: tuple[Any, ...],
        port: tcp.Port,
        sessionno: int,
        reactor: Any,
    ) -> None:
        sock.setblocking(False)
        self._sock = sock
        self.protocol = protocol
        self._addr: tuple[Any, ...] | None = addr
        self._port = port
        self._sessionno = sessionno
        self._reactor = reactor
        self._full: ClientTransport | None = None
        self.connected = True
        # Whether it reads (not paused), and whether the reactor watches it
        # for that: not before read_first, nor once another reader took
        # its registration.
        self._reading = False
        self._watched = False

    def read_first(self) -> None:
        """
        Start reading (its protocol's C{connectionMade} calls it): what the
        client sent already is read now, in the turn the connection was
        accepted, then the reactor watches the socket, unless that read
        closed it, paused it, passed it on or made it a transport.  A client
        that speaks first (HTTP, most game protocols) is served without a
        reactor turn in between, and one answered and closed at once is
        never registered at all.
        """
        self._reading = True
        try:
            self.doRead()
        except Exception:
            # Inside the port's accept loop, which would only log it: the
            # connection is closed, as the reactor closes one whose event
            # raised (its protocol hears why).
            failure = Failure()
            _log.failure("a connection's first read failed; closing it", failure)
            self.connectionLost(failure)
            return
        if self._reading and not self._watched and self.connected and self._full is None:
            self._watched = True
            self._reactor.addReader(self)

    def full(self) -> ClientTransport:
        """
        The Twisted transport on this socket, built now if it is not yet:
        it takes this client's reactor registration, and its protocol (the
        front door) uses it from now on.
        """
        server = self._full
        if server is not None:
            return server
        server = ClientTransport(
            self.socket,
            self.protocol,
            self._peer_address(),
            self._port,
            self._sessionno,
            self._reactor,
        )
        if self._reading:
            pass_reader(self._reactor, self, server)  # before: self's own
        self._full = server
        self.protocol.replace_transport(server)
        return server

    def __getattr__(self, name: str) -> Any:
        # What the bare client does not do itself, its transport does (only
        # a transport's attributes: a probe for anything else is no reason
        # to build one).
        if name.startswith("__") or not hasattr(ClientTransport, name):
            raise AttributeError(name)
        if not self.connected and self._full is None:
            return _closed  # as a closed transport, which ignores what it is asked
        return getattr(self.full(), name)

    @property
    def socket(self) -> socket.socket:
        sock = self._socket_object()
        return sock if sock is not None else _CLOSED

    def park(self) -> int:
        """
        Keep only the descriptor (the splice relay took the socket's
        bytes), unless a transport was built on the socket.
        """
        if self._full is not None:
            return self._full.fileno()
        return super().park()

    # What the reactor asks of a descriptor.

    def logPrefix(self) -> str:  # noqa: N802 - Twisted's name
        return "BareClient"

    def doRead(self) -> None:  # noqa: N802 - Twisted's name
        """
        Bytes for the front door; an end of stream makes the transport, which
        then reads it (and follows Twisted's half-close rules); an error
        closes the connection.
        """
        sock = self._sock
        if not isinstance(sock, socket.socket):
            sock = self.socket  # closed (or, never here, parked)
        try:
            data = sock.recv(READ_SIZE)
        except BlockingIOError:
            return
        except OSError as error:
            self._close(Failure(ConnectionLost(error.strerror)))
            return
        if data:
            self.protocol.dataReceived(data)
        elif self._full is None and self.connected:
            self.full()

    def connectionLost(self, reason: Failure) -> None:  # noqa: N802 - Twisted's name
        """
        The reactor dropped the socket (a hang-up, an event that raised, or
        the reactor stopping); if it became a transport meanwhile (inside
        that event), the transport closes.
        """
        self._reading = self._watched = False
        if self._full is not None:
            self._full.connectionLost(reason)
        else:
            self._close(reason)

    def reading_passed(self) -> None:
        """
        Another reader took this socket's registration (L{pass_reader}): the
        splice relay, or the transport this client becomes.  From then on the
        peer's address is the socket's to tell (C{getpeername}), not kept
        here: it is about 150 bytes of an idle spliced session, which never
        asks for it again (docs/performance.md).
        """
        self._reading = self._watched = False
        self._addr = None

    def _peer_address(self) -> tuple[Any, ...]:
        addr = self._addr
        if addr is not None:
            return addr
        try:
            addr = self.socket.getpeername()
        except OSError:
            # The connection is gone already (a transport built on it now
            # sees that at once): no peer to name.
            v6 = self.socket.family == socket.AF_INET6
            addr = ("::", 0, 0, 0) if v6 else ("0.0.0.0", 0)
        return addr

    # What the front door and its game session ask of a transport.

    def getPeer(self) -> address.IPv4Address | address.IPv6Address:  # noqa: N802
        if self._full is not None:
            peer: address.IPv4Address | address.IPv6Address = self._full.getPeer()
            return peer
        addr = self._peer_address()
        return _kind(addr)("TCP", *addr)

    def getHost(self) -> address.IPv4Address | address.IPv6Address:  # noqa: N802
        if self._full is not None:
            host: address.IPv4Address | address.IPv6Address = self._full.getHost()
            return host
        addr = tcp._getsockname(self.socket)
        return _kind(addr)("TCP", *addr)

    def stopReading(self) -> None:  # noqa: N802 - Twisted's name
        if self._full is not None:
            self._full.stopReading()
        elif self._reading:
            self._reading = False
            if self._watched:
                self._watched = False
                self._reactor.removeReader(self)

    def startReading(self) -> None:  # noqa: N802 - Twisted's name
        if self._full is not None:
            self._full.startReading()
        elif not self._reading and self.connected:
            self._reading = self._watched = True
            self._reactor.addReader(self)

    pauseProducing = stopReading
    resumeProducing = startReading

    def stopWriting(self) -> None:  # noqa: N802 - Twisted's name
        """
        Nothing: a bare client never writes (its transport does).
        """
        if self._full is not None:
            self._full.stopWriting()

    def loseConnection(self) -> None:  # noqa: N802 - Twisted's name
        """
        Close now (nothing is ever queued here): the protocol hears
        C{connectionLost} before this returns.
        """
        if self._full is not None:
            self._full.loseConnection()
        else:
            self._close(connectionDone)  # Twisted's one clean-close failure

    def abortConnection(self) -> None:  # noqa: N802 - Twisted's name
        """
        Close now with a reset.
        """
        if self._full is not None:
            self._full.abortConnection()
            return
        if self.connected:
            try:
                self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)
            except OSError:
                pass
        self._close(Failure(ConnectionAborted()))

    def _close(self, reason: Failure) -> None:
        if not self.connected or self._full is not None:
            return
        self.connected = False
        self._reading = False
        if self._watched:
            self._watched = False
            self._reactor.removeReader(self)
        self._close_socket()
        self.protocol.connectionLost(reason)


def _kind(addr: tuple[Any, ...]) -> type[address.IPv4Address] | type[address.IPv6Address]:
    # As tcp.Server: an IPv6 address has four parts.
    return address.IPv6Address if len(addr) != 2 else address.IPv4Address


def _closed(*args: object, **kwargs: object) -> None:
    """
    What a closed bare client does when asked anything of a transport.
    """


_CLOSED = socket.socket()
_CLOSED.close()
"""What a closed bare client's C{socket} is: one closed socket for all (its
descriptor is -1, and it answers anything else with an L{OSError})."""

_RESET = struct.pack("ii", 1, 0)
"""C{SO_LINGER} on with no time: C{close} sends a reset (as Twisted's abort)."""
