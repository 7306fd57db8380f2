"""
Every core in use (C{--workers N}): the acceptor's end of one worker's
handoff channel.

The channel is a C{SOCK_SEQPACKET} socket pair: one message per connection,
carrying its descriptor (C{SCM_RIGHTS}) and its L{Passed} header (see
L{gateway.process.wire}).  Once C{sendmsg} returns, the kernel holds the
socket for the worker and the acceptor closes its descriptor, without
shutting the connection down.  When the socket's buffer is full (the worker
is busy), connections wait in order in a backlog until there is room.  The
L{Drain} marker, sent once every connection meant for the worker has gone,
is the channel's last message.
"""

from __future__ import annotations

import socket
from collections import deque
from enum import Enum
from typing import Any
from typing import Protocol as Structural

from twisted.internet.interfaces import IWriteDescriptor
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from gateway.process.dispatch import Handoff
from gateway.process.wire import Drain, Passed, encode

__all__ = ["HandoffChannel", "Receiver"]


class Receiver(Structural):
    """
    The worker at the other end of a handoff channel (a
    L{gateway.process.supervisor.WorkerProcess}).
    """

    @property
    def index(self) -> int:
        """
        The worker's number, from 1.
        """

    @property
    def live(self) -> dict[int, Handoff]:
        """
        The connections it holds, by number.
        """

    def taking(self) -> bool:
        """
        Whether it is passed connections in its state.
        """

    def channel_broken(self) -> None:
        """
        Its end of the channel is closed: it is dying.
        """

    def pass_elsewhere(self, handoff: Handoff) -> None:
        """
        A connection it will not get goes to another worker.
        """

    def gateway_stopping(self) -> bool:
        """
        Whether the gateway drains (then the channel ends with L{Drain}).
        """


class _Outcome(Enum):
    """
    What an attempt to pass a connection came to.
    """

    SENT = "sent"
    """Sent (or done with: closed)."""
    FULL = "full"
    """No room in the channel now."""
    GONE = "gone"
    """The worker is dying: it takes nothing more."""


@implementer(IWriteDescriptor)
class _RoomWaiter:
    """
    Waits for room in the channel, when its socket buffer was full, and
    sends what waited.
    """

    def __init__(self, channel: HandoffChannel) -> None:
        self.channel = channel

    def fileno(self) -> int:
        sock = self.channel.sock
        return sock.fileno() if sock is not None else -1

    def doWrite(self) -> None:  # noqa: N802 - Twisted's name
        self.channel.flush()

    def connectionLost(self, reason: Failure) -> None:  # noqa: N802 - Twisted's name
        pass

    def logPrefix(self) -> str:  # noqa: N802 - Twisted's name
        return f"worker {self.channel.receiver.index} handoff"


class HandoffChannel:
    """
    The acceptor's end of a worker's handoff channel, over the worker's
    successive processes.

    @ivar receiver: the worker.
    @ivar sock: the socket, while the worker's process runs.
    @ivar backlog: connections waiting for room in the channel.
    """

    _log = Logger()

    def __init__(self, receiver: Receiver, clock: Any) -> None:
        """
        @param clock: the reactor (it watches the socket when it is full).
        """
        self.receiver = receiver
        self.sock: socket.socket | None = None
        self.backlog: deque[Handoff] = deque()
        self._clock = clock
        self._waiter: _RoomWaiter | None = None
        self._drain_sent = False

    def open(self, sock: socket.socket) -> None:
        """
        A new process: its channel is C{sock}.
        """
        self.sock = sock
        self._drain_sent = False

    def close(self) -> None:
        """
        The process ended (or could not start): close the socket.
        """
        self._stop_waiting()
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def take_backlog(self) -> list[Handoff]:
        """
        The connections that waited for room, no longer this worker's.
        """
        waiting, self.backlog = list(self.backlog), deque()
        for handoff in waiting:
            handoff.assign(None)
        return waiting

    def send(self, handoff: Handoff) -> None:
        """
        Pass a connection to the worker (or queue it, if the channel is full).
        """
        handoff.assign(self.receiver)
        if self.backlog:
            self.backlog.append(handoff)
            return
        outcome = self._send(handoff)
        if outcome is _Outcome.FULL:
            self.backlog.append(handoff)
            self._wait_for_room()
        elif outcome is _Outcome.GONE:
            self.receiver.pass_elsewhere(handoff)

    def _send(self, handoff: Handoff) -> _Outcome:
        """
        Try to send a connection.
        """
        sock = self.sock
        receiver = self.receiver
        if handoff.ended:
            return _Outcome.SENT  # the client went away while it waited
        if sock is None or not receiver.taking():
            return _Outcome.GONE
        message = encode(Passed(handoff.number, handoff.front, handoff.data()))
        try:
            socket.send_fds(sock, [message], [handoff.raw.fileno()])
        except BlockingIOError:
            return _Outcome.FULL
        except (BrokenPipeError, ConnectionError) as error:
            # The worker's end is closed: processEnded follows.
            receiver.channel_broken()
            self._log.warn(
                "worker {index}: cannot pass it connections: {error}",
                index=receiver.index,
                error=error.strerror or str(error),
            )
            return _Outcome.GONE
        except OSError as error:
            # This connection cannot be passed (too large a message, no
            # memory): close it, not the channel.
            self._log.error(
                "worker {index}: cannot pass a connection from {peer}: {error}; closing it",
                index=receiver.index,
                peer=handoff.peer(),
                error=error.strerror or str(error),
            )
            handoff.close()
            return _Outcome.SENT
        receiver.live[handoff.number] = handoff
        handoff.detach()
        return _Outcome.SENT

    def _wait_for_room(self) -> None:
        if self._waiter is None and self.sock is not None:
            self._waiter = _RoomWaiter(self)
            self._clock.addWriter(self._waiter)

    def _stop_waiting(self) -> None:
        if self._waiter is not None:
            self._clock.removeWriter(self._waiter)
            self._waiter = None

    def flush(self) -> None:
        """
        Send what waited for room in the channel.
        """
        while self.backlog and self.sock is not None:
            outcome = self._send(self.backlog[0])
            if outcome is _Outcome.FULL:
                return
            handoff = self.backlog.popleft()
            if outcome is _Outcome.GONE:
                self.receiver.pass_elsewhere(handoff)
        self._stop_waiting()
        if self.receiver.gateway_stopping() and not self._drain_sent:
            self.send_drain()

    def send_drain(self) -> None:
        """
        The last message: every connection for the worker has been sent; it
        drains and exits.
        """
        if self.backlog or self.sock is None or self._drain_sent:
            return
        try:
            self.sock.send(encode(Drain()))
        except BlockingIOError:
            self._wait_for_room()
            return
        except OSError:
            return
        self._drain_sent = True

    def forget(self, handoff: Handoff) -> None:
        """
        A connection that waited here went away.
        """
        if handoff in self.backlog:
            self.backlog.remove(handoff)
