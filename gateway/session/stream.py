"""
What the relay uses of a connected transport: its structural type, how one
direction of it is ended, and how first bytes go straight to its socket.
"""

from __future__ import annotations

import socket
from typing import Protocol as Structural

from twisted.internet.interfaces import IHalfCloseableDescriptor

__all__ = ["Stream", "half_close", "send_now"]


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
