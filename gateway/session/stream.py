"""
What the relay uses of a connected transport: its structural type, how one
direction of it is ended, and how first bytes go straight to its socket.
"""

from __future__ import annotations

import socket
from typing import Any
from typing import Protocol as Structural

from twisted.internet import tcp
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IHalfCloseableDescriptor
from twisted.python.failure import Failure

from gateway.session.bareclient import ClientTransport

__all__ = [
    "Stream",
    "close_now",
    "half_close",
    "nothing_queued",
    "plain_socket",
    "send_now",
    "write_now",
]


class Stream(Structural):
    """
    What the relay uses of a connected transport: ITransport, IConsumer and
    IPushProducer at once, which Twisted's stream transports all are, though
    no single interface of theirs says so.
    """

    def write(self, data: bytes) -> None: ...
    def loseConnection(self) -> None: ...
    def abortConnection(self) -> None: ...
    def pauseProducing(self) -> None: ...
    def resumeProducing(self) -> None: ...
    def registerProducer(self, producer: object, streaming: bool) -> None: ...
    def unregisterProducer(self) -> None: ...


def half_close(transport: Stream) -> None:
    """
    Shut down the sending side of C{transport} once its buffer is flushed, or
    close it if it cannot half-close (TLS transports cannot).
    """
    if IHalfCloseableDescriptor.providedBy(transport):
        transport.loseWriteConnection()  # type: ignore[attr-defined]
    else:
        transport.loseConnection()


def send_now(sock: socket.socket, data: bytes) -> int | None:
    """
    Send what C{sock} takes of C{data} now, without waiting.

    @return: the number of bytes sent (less than C{len(data)} if the socket's
        buffer filled, or it failed after taking some); L{None} if it failed
        before taking any (the error is left for its transport to see).
    """
    sent = 0
    try:
        while sent < len(data):
            sent += sock.send(data[sent:])
    except BlockingIOError:
        pass
    except OSError:
        if not sent:
            return None
    return sent


def write_now(transport: Any, data: bytes) -> bool:
    """
    Write C{data} to C{transport}: on a plain TCP or UNIX socket with nothing
    waiting in its buffer, send what the socket takes at once, and buffer
    only the rest.

    Twisted's C{write} always buffers and sends on the reactor's next turn,
    registering the socket for writing and unregistering it after: two
    C{epoll_ctl} calls and a turn per chunk, which a session of small
    messages (a game's) pays on every one.  Sending at once when nothing is
    buffered keeps the order of the bytes; an error (a reset) is left for
    the transport's own write to meet.

    @return: whether the socket took every byte (nothing was buffered).
    """
    if nothing_queued(transport):
        try:
            sent = transport.socket.send(data)
        except OSError:
            sent = 0
        if sent == len(data):
            return True
        data = data[sent:]
    transport.write(data)
    return False


def nothing_queued(transport: Any) -> bool:
    """
    Whether C{transport} is a plain TCP or UNIX socket's, open for writing,
    with nothing waiting in its buffer: what is written to its socket now
    comes after everything written before (L{write_now}, and the static
    files' C{sendfile(2)}: L{gateway.http.sendfile}).
    """
    return (
        type(transport) in _PLAIN
        and not transport._tempDataBuffer
        and transport.offset == len(transport.dataBuffer)
        and transport.connected
        and not transport.disconnecting
        and not transport._writeDisconnecting
        and not transport._writeDisconnected
        and not getattr(transport, "TLS", False)
    )


def close_now(transport: Any) -> None:
    """
    Close C{transport}: at once when nothing waits in its buffer on a plain
    socket (L{nothing_queued}), else once its buffer is sent.

    Twisted's C{loseConnection} always waits for the transport's next turn
    to write: it registers the socket for writing, and on the next turn
    writes its (empty) buffer with a C{send} of nothing, unregisters the
    socket and closes it.  With nothing to send, the close can be done now,
    as Twisted does itself for a transport whose sending side is shut: the
    protocol's C{connectionLost} (with L{ConnectionDone}) runs before this
    returns, so the caller must not touch the connection after.
    """
    if nothing_queued(transport):
        transport.stopReading()
        transport.stopWriting()
        transport.connectionLost(Failure(ConnectionDone()))
    else:
        transport.loseConnection()


def plain_socket(transport: Any) -> bool:
    """
    Whether C{transport} writes to a plain TCP or UNIX socket of its own
    (not TLS, not a wrapping protocol such as a C{haproxy:} front's).
    """
    return type(transport) in _PLAIN and not getattr(transport, "TLS", False)


_PLAIN: tuple[type, ...] = (tcp.Server, tcp.Client, ClientTransport)
"""Transports whose socket L{write_now} may write to (C{unix.Server} and
C{unix.Client} are added below when the platform has them; a bare client's
transport, L{ClientTransport}, is a C{tcp.Server})."""

try:
    from twisted.internet import unix
except ImportError:  # pragma: no cover - no UNIX sockets on this platform
    pass
else:
    _PLAIN = (*_PLAIN, unix.Server, unix.Client)
