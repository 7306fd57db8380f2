"""
Zero-copy relaying with splice(2): once a game session is established on two
plain sockets, its bytes go socket -> pipe -> socket in the kernel and never
enter Python.

A L{SpliceRelay} takes the two sockets away from their Twisted transports
(which stop reading, and have nothing buffered) and registers its own
descriptors with the reactor for the same file descriptors: per direction, a
pipe (sized with C{F_SETPIPE_SZ}) filled from the source socket when it is
readable and emptied into the destination socket while it takes bytes.  The
pipes come from a shared pool and a direction keeps one only while bytes wait
in it, so an idle session holds no pipe (and no extra file descriptor).  A
destination that does not take them (a slow reader) leaves the pipe full, so
the source is not read any more until it drains: flow control end to end,
with at most one pipe per direction in the kernel and nothing in Python.

The relay moves data, and passes on a clean end of stream: when a source
ends its stream with nothing of it left in the pipe, the relay half-closes the
destination (C{shutdown(SHUT_WR)}), stops reading that source, tells the
session (C{on_ended}) and keeps relaying the other way; when both directions
have ended it stops, and the session closes both connections.  Anything else
(an end of stream with bytes still in flight, an error, a socket type splice
does not handle, the session closing) ends splice mode: the relay stops
reading, delivers what is still in its pipes, and hands both sockets back to
their transports, which then see the same error and close the session the
ordinary way.  No byte is lost in either mode.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import sys
from typing import Any
from typing import Protocol as Structural

from twisted.internet import tcp
from twisted.internet.interfaces import IReadWriteDescriptor
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from gateway.session.bareclient import BareClient, pass_reader

__all__ = [
    "PIPE_SIZE",
    "POOL",
    "PipePool",
    "SpliceOwner",
    "SpliceRelay",
    "splice_available",
    "spliceable",
]

PIPE_SIZE = 1 << 20
"""The size asked for each direction's pipe (the kernel may give less)."""

F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
F_GETPIPE_SZ = getattr(fcntl, "F_GETPIPE_SZ", 1032)

_AGAIN = (errno.EAGAIN, errno.EWOULDBLOCK)


def splice_available() -> bool:
    """
    Whether this platform has splice(2) (Linux, Python 3.10+).
    """
    return sys.platform.startswith("linux") and hasattr(os, "splice")


def spliceable(transport: object) -> bool:
    """
    Whether C{transport} is a plain stream socket of the reactor (TCP or
    UNIX), the only kind the relay can splice: not TLS, not a wrapper.
    """
    return isinstance(transport, tcp.Connection | BareClient) and not getattr(
        transport, "TLS", False
    )


POOL_SIZE = 64
"""Empty pipes kept for reuse (each holds two file descriptors)."""


class _Pipe:
    """
    A non-blocking pipe, sized to L{PIPE_SIZE} where the kernel allows.
    """

    __slots__ = ("read_end", "size", "write_end")

    def __init__(self) -> None:
        self.read_end, self.write_end = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            fcntl.fcntl(self.write_end, F_SETPIPE_SZ, PIPE_SIZE)
        except OSError:
            pass  # the default pipe (64 KiB) is smaller, not wrong
        self.size = fcntl.fcntl(self.write_end, F_GETPIPE_SZ)

    def close(self) -> None:
        os.close(self.read_end)
        os.close(self.write_end)


class PipePool:
    """
    Empty pipes shared by every session: a direction holds a pipe only while
    bytes are in it (its destination is slow), so idle sessions hold none
    and a busy gateway reuses a few (HAProxy keeps a pool the same way).
    """

    def __init__(self, keep: int = POOL_SIZE) -> None:
        self._free: list[_Pipe] = []
        self._keep = keep
        self.in_use = 0

    def take(self) -> _Pipe:
        """
        An empty pipe.

        @raise OSError: none can be made (out of file descriptors).
        """
        pipe = self._free.pop() if self._free else _Pipe()
        self.in_use += 1
        return pipe

    def give_back(self, pipe: _Pipe) -> None:
        """
        Return an empty pipe.
        """
        self.in_use -= 1
        if len(self._free) < self._keep:
            self._free.append(pipe)
        else:
            pipe.close()

    def discard(self, pipe: _Pipe) -> None:
        """
        Close a pipe that is not empty (its bytes were read back).
        """
        self.in_use -= 1
        pipe.close()


POOL = PipePool()
"""The process's pipes (one reactor, one pool)."""


class _Direction:
    """
    Bytes from one socket to the other through a pipe from the pool.
    """

    __slots__ = (
        "_pipe",
        "blocked",
        "destination",
        "in_pipe",
        "moved",
        "source",
    )

    _pool = POOL  # the process's (a class attribute: no slot per direction)

    def __init__(self, source: int, destination: int) -> None:
        self.source = source
        self.destination = destination
        self._pipe: _Pipe | None = None
        self.in_pipe = 0
        self.moved = 0
        self.blocked = False
        """Whether its destination was full: its source is not read and
        the destination is watched for room."""

    def fill(self) -> int:
        """
        Move what the source has into the pipe.

        @return: the bytes moved (0 at the end of stream).
        @raise BlockingIOError: the source has nothing now, or the pipe is full.
        @raise OSError: the source failed (reset) or cannot be spliced, or
            no pipe could be made.
        """
        pipe = self._pipe
        if pipe is None:
            pipe = self._pipe = self._pool.take()
        if self.in_pipe >= pipe.size:
            # A read of no bytes would look like the end of the stream.
            raise BlockingIOError(errno.EAGAIN, "the pipe is full")
        try:
            count = os.splice(
                self.source,
                pipe.write_end,
                pipe.size - self.in_pipe,
                flags=os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK,
            )
        except OSError:
            self._release_if_empty()
            raise
        self.in_pipe += count
        self._release_if_empty()
        return count

    def drain(self) -> bool:
        """
        Move what the pipe holds into the destination.

        @return: whether the pipe is empty now.
        @raise OSError: the destination failed.
        """
        pipe = self._pipe
        while self.in_pipe:
            assert pipe is not None
            try:
                count = os.splice(
                    pipe.read_end,
                    self.destination,
                    self.in_pipe,
                    flags=os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK,
                )
            except BlockingIOError:
                return False
            self.in_pipe -= count
            self.moved += count
        self._release_if_empty()
        return True

    def _release_if_empty(self) -> None:
        if self._pipe is not None and not self.in_pipe:
            self._pool.give_back(self._pipe)
            self._pipe = None

    def leftover(self) -> bytes:
        """
        Read back what is still in the pipe (to deliver it another way).
        """
        data = b""
        pipe = self._pipe
        while self.in_pipe and pipe is not None:
            chunk = os.read(pipe.read_end, self.in_pipe)
            if not chunk:
                break
            data += chunk
            self.in_pipe -= len(chunk)
        return data

    def close(self) -> None:
        pipe, self._pipe = self._pipe, None
        if pipe is not None:
            if self.in_pipe:
                self._pool.discard(pipe)
            else:
                self._pool.give_back(pipe)
        self.in_pipe = 0


@implementer(IReadWriteDescriptor)
class _SocketEnd(_Direction):
    """
    What the reactor watches for one socket while the relay owns it, and the
    direction that reads from it (one object, not two: a relay lives as long
    as an idle session; docs/performance.md).
    """

    __slots__ = ("_relay",)

    name = ""
    """C{client} or C{server} (a class attribute of L{_ClientEnd} and
    L{_ServerEnd}, not a slot per end)."""

    def __init__(self, relay: SpliceRelay, fd: int, other: int) -> None:
        super().__init__(fd, other)
        self._relay = relay

    def fileno(self) -> int:
        return self.source

    def doRead(self) -> None:  # noqa: N802 - Twisted's name
        self._relay.readable(self)

    def doWrite(self) -> None:  # noqa: N802 - Twisted's name
        self._relay.writable(self)

    def connectionLost(self, reason: Failure) -> None:  # noqa: N802 - Twisted's name
        # The reactor is shutting down (or the fd was closed): hand back.
        self._relay.finish(f"reactor: {reason.getErrorMessage()}")

    def logPrefix(self) -> str:  # noqa: N802 - Twisted's name
        return f"splice {self.name}"


class _ClientEnd(_SocketEnd):
    """
    The client's socket, and the direction towards the server.
    """

    __slots__ = ()
    name = "client"


class _ServerEnd(_SocketEnd):
    """
    The server's socket, and the direction towards the client.
    """

    __slots__ = ()
    name = "server"


def _park(transport: object) -> int:
    park = getattr(transport, "park", None)  # a Parkable: a bare client, a lean link
    return int(park() if park is not None else transport.fileno())  # type: ignore[attr-defined]


def _shutdown_write(fd: int) -> None:
    """
    C{shutdown(fd, SHUT_WR)}, with a socket object made for the call only:
    with its family and type given, making it asks the kernel only whether
    the descriptor is a socket (C{getsockname}; any family will do for
    C{shutdown}), and it is detached after, so the descriptor stays open.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, 0, fd)
    try:
        sock.shutdown(socket.SHUT_WR)
    finally:
        sock.detach()


class SpliceOwner(Structural):
    """
    What a L{SpliceRelay} tells its session.  One object, not three
    callbacks: a relay lives as long as an idle session, and each bound
    method would cost it another 64 bytes (docs/performance.md).
    """

    def splice_moved(self, up: int, down: int) -> None:
        """
        Bytes delivered (client to server, server to client) since the last
        call, after each step.
        """

    def splice_handed_back(self, up: bytes, down: bytes) -> None:
        """
        The sockets are handed back, with the bytes read but not delivered in
        each direction (client to server, server to client) when splicing
        them out failed: the session writes them through the transports.
        """

    def splice_passed_end(self, name: str, both: bool) -> None:
        """
        The relay passed on a clean end of stream (C{"client"} or
        C{"server"} ended; the other socket is half-closed), and whether
        both directions have now ended (then the relay has stopped, without
        handing the sockets back: the session closes them).
        """


_ACTIVE = 1
"""The relay owns the sockets (from L{SpliceRelay.start} until it hands them
back or both have ended)."""
_STOPPING = 2
"""It stopped reading and is delivering what its pipes hold."""
_BROKEN = 4
"""A destination failed: what is in the pipes is handed back, not delivered."""
_ONE_ENDED = 8
"""Added once per end of stream passed on (so 16: both ended)."""


class SpliceRelay:
    """
    Relays the bytes of two plain sockets with splice(2) until anything but
    data happens, then hands them back.

    Its state is the bits of one int (C{_ACTIVE}, C{_STOPPING}, C{_BROKEN},
    and the ends passed on, in steps of C{_ONE_ENDED}): a relay lives as
    long as an idle session (docs/performance.md).

    @ivar reason: why it stopped, once it did.
    """

    _log = Logger()

    __slots__ = (
        "_client_end",
        "_owner",
        "_reactor",
        "_server_end",
        "_state",
        "reason",
    )

    _client_end: _SocketEnd
    _server_end: _SocketEnd

    def __init__(self, reactor: Any, owner: SpliceOwner) -> None:
        """
        @param reactor: watches the sockets.
        @param owner: hears what the relay moved, passed on and handed back.
        """
        self._reactor = reactor
        self._owner = owner
        self._state = 0
        self.reason = ""

    @property
    def active(self) -> bool:
        """
        Whether the relay owns the sockets now.
        """
        return bool(self._state & _ACTIVE)

    def start(self, client: tcp.Connection | BareClient, server: tcp.Connection) -> None:
        """
        Take the sockets over from their transports and start relaying.
        """
        # A bare socket keeps only its descriptor while the relay owns it.
        client_fd, server_fd = _park(client), _park(server)
        # Each end is also the direction that reads from it: the client's
        # goes up (to the server), the server's down.
        self._client_end = _ClientEnd(self, client_fd, server_fd)
        self._server_end = _ServerEnd(self, server_fd, client_fd)
        self._state = _ACTIVE
        for transport, end in ((client, self._client_end), (server, self._server_end)):
            transport.stopWriting()
            # The end takes the transport's registration (on the gateway's
            # reactor, without a system call).
            pass_reader(self._reactor, transport, end)

    def _directions(self, end: _SocketEnd) -> tuple[_Direction, _Direction]:
        """
        (the direction that reads from C{end}, the one that writes to it).
        """
        return end, self._other(end)

    def _other(self, end: _SocketEnd) -> _SocketEnd:
        return self._server_end if end is self._client_end else self._client_end

    def readable(self, end: _SocketEnd) -> None:
        """
        The socket C{end} has bytes (or an end of stream, or an error).
        """
        if self._state & (_ACTIVE | _STOPPING) != _ACTIVE:
            return
        direction, _ = self._directions(end)
        try:
            count = direction.fill()
        except BlockingIOError:
            return
        except OSError as error:
            self.stop(f"{end.name} read: {os.strerror(error.errno or 0)}")
            return
        if count == 0:
            if direction.in_pipe:
                # Bytes still to deliver before the end: the transports
                # deliver them, then see the end of stream too.
                self.stop(f"{end.name} ended its stream")
            else:
                self._pass_end(end)
            return
        self._deliver(direction, self._other(end), end)

    def _pass_end(self, end: _SocketEnd) -> None:
        """
        C{end} ended its stream and nothing of it is in flight: half-close
        the other socket and stop reading this one; once both have ended,
        stop (the session closes the sockets).
        """
        self._reactor.removeReader(end)
        try:
            _shutdown_write(end.destination)
        except (OSError, ValueError):  # ValueError: a descriptor closed already (-1)
            pass  # the other peer is gone: reading or writing it says so
        self._state += _ONE_ENDED
        both = self._state >= 2 * _ONE_ENDED
        if both:
            self._state &= ~_ACTIVE
            self.reason = "both ended their streams"
            for each in (self._client_end, self._server_end):
                self._reactor.removeWriter(each)
            self._client_end.close()
            self._server_end.close()
        self._owner.splice_passed_end(end.name, both)

    def writable(self, end: _SocketEnd) -> None:
        """
        The socket C{end} takes bytes again.
        """
        if not self._state & _ACTIVE:
            return
        _, direction = self._directions(end)
        self._deliver(direction, end, self._other(end))

    def _deliver(self, direction: _Direction, destination: _SocketEnd, source: _SocketEnd) -> None:
        before = direction.moved
        try:
            empty = direction.drain()
        except OSError as error:
            # The destination is gone: what is in the pipes cannot be
            # delivered this way; the transports will see the error.
            self._report(direction, before)
            self._state |= _BROKEN
            reason = f"{destination.name} write: {os.strerror(error.errno or 0)}"
            if self._state & _STOPPING:
                self.finish(reason)
            else:
                self.stop(reason)
            return
        self._report(direction, before)
        if empty:
            if direction.blocked:
                # Room again: read the source again, stop watching for room.
                direction.blocked = False
                self._reactor.removeWriter(destination)
                if not self._state & _STOPPING:
                    self._reactor.addReader(source)
            if self._state & _STOPPING:
                self._maybe_finish()
        elif not direction.blocked:
            # The destination is full: stop reading the source until it
            # drains (flow control), and wait for it to take bytes.  (The
            # common case, a pipe delivered at once, touches the reactor
            # not at all.)
            direction.blocked = True
            self._reactor.removeReader(source)
            self._reactor.addWriter(destination)

    def _report(self, direction: _Direction, before: int) -> None:
        moved = direction.moved - before
        if moved:
            if direction is self._client_end:
                self._owner.splice_moved(moved, 0)
            else:
                self._owner.splice_moved(0, moved)

    def stop(self, reason: str) -> None:
        """
        Stop reading; hand the sockets back once the pipes are delivered.
        """
        if self._state & (_ACTIVE | _STOPPING) != _ACTIVE:
            return
        self._state |= _STOPPING
        self.reason = reason
        self._reactor.removeReader(self._client_end)
        self._reactor.removeReader(self._server_end)
        for direction, destination, source in (
            (self._client_end, self._server_end, self._client_end),
            (self._server_end, self._client_end, self._server_end),
        ):
            if direction.in_pipe:
                self._deliver(direction, destination, source)
                if not self._state & _ACTIVE:
                    return
        self._maybe_finish()

    def _maybe_finish(self) -> None:
        if not self._state & _BROKEN and (self._client_end.in_pipe or self._server_end.in_pipe):
            return  # still delivering (the writers are registered)
        self.finish(self.reason)

    def finish(self, reason: str) -> None:
        """
        Hand the sockets back now; what could not be delivered through the
        pipes is given to the caller.
        """
        if not self._state & _ACTIVE:
            return
        self._state &= ~_ACTIVE
        self.reason = self.reason or reason
        for end in (self._client_end, self._server_end):
            self._reactor.removeReader(end)
            self._reactor.removeWriter(end)
        up, down = self._client_end.leftover(), self._server_end.leftover()
        self._client_end.close()
        self._server_end.close()
        self._owner.splice_handed_back(up, down)
