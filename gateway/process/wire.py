"""
The wire between the acceptor and its worker processes (C{--workers N}): the
messages both ends exchange, and how they are framed.

Two socket pairs join each worker to the acceptor (the supervisor's end is
L{gateway.process.supervisor}, the worker's L{gateway.process.workerproc}):

  - the I{control channel}, a stream of L{Framed} messages: each is 4 bytes
    of length (big-endian) then a pickled L{Message}.  The acceptor sends
    L{Configure} (at start and on every SIGHUP), L{BackendStateChange}
    (health checks and operators' actions happen in the acceptor),
    L{StatusRequest} (for the admin endpoint) and L{Stop} (a second
    SIGTERM); the worker sends L{Ready}, L{Draining}, L{Ended} (connections
    that ended, which frees their slots in the acceptor), L{LogEvent} (its
    log events, written by the acceptor), L{BackendStateChange} (a backend
    it marked down) and L{StatusReply};
  - the I{handoff channel} (C{SOCK_SEQPACKET}), one pickled message per
    datagram: a L{Passed} connection, whose descriptor travels with it
    (C{SCM_RIGHTS}), or the L{Drain} marker, the last message of a drain.

The encoding is pickle, which is safe only because both ends are this
program: the socket pairs are created by the acceptor and inherited by the
worker it starts, and nothing else can connect to them.  Decoding checks that
what arrived is one of the messages below.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, ClassVar, NamedTuple

from twisted.internet.protocol import Protocol
from typing_extensions import override

from gateway.config import GatewayConfig
from gateway.pool.backends import BackendState

__all__ = [
    "HANDOFF_BUFFER",
    "HANDOFF_MESSAGE",
    "MAX_MESSAGE",
    "BackendCounts",
    "BackendStateChange",
    "Configure",
    "Drain",
    "Draining",
    "Ended",
    "Framed",
    "LogEvent",
    "Message",
    "Op",
    "Passed",
    "Ready",
    "StatusReply",
    "StatusRequest",
    "Stop",
    "WireError",
    "decode",
    "encode",
]

MAX_MESSAGE = 256 * 1024 * 1024
"""The largest control message (a status reply listing many sessions)."""

HANDOFF_MESSAGE = 256 * 1024
"""The largest handoff message a worker reads (the bytes the acceptor read
from a connection are at most a read or two: 64 KiB each)."""

HANDOFF_BUFFER = 1024 * 1024
"""The handoff channel's socket buffers (the kernel may give less): a
SEQPACKET message must fit in the sender's buffer whole."""


class Op(Enum):
    """
    The kinds of message (a closed vocabulary); each message class names its own.
    """

    CONFIGURE = "configure"
    BACKEND_STATE = "backend-state"
    STATUS_REQUEST = "status-request"
    STATUS_REPLY = "status-reply"
    STOP = "stop"
    READY = "ready"
    DRAINING = "draining"
    ENDED = "ended"
    LOG_EVENT = "log-event"
    PASSED = "passed"
    DRAIN = "drain"


class WireError(Exception):
    """
    What arrived is not a message of this module (a bug at the other end).
    """


@dataclass(frozen=True, slots=True)
class Message:
    """
    The base of every message.

    @cvar op: which kind of message it is.
    """

    op: ClassVar[Op]


# Acceptor to worker (control channel)


@dataclass(frozen=True, slots=True)
class Configure(Message):
    """
    The configuration the worker runs (sent at its start and on every reload).
    """

    op: ClassVar[Op] = Op.CONFIGURE
    config: GatewayConfig


@dataclass(frozen=True, slots=True)
class StatusRequest(Message):
    """
    The admin endpoint asks for the worker's counters and sessions.

    @ivar number: the request's number, repeated in the reply.
    @ivar limit: how many sessions to list at most (L{None}: all).
    """

    op: ClassVar[Op] = Op.STATUS_REQUEST
    number: int
    limit: int | None


@dataclass(frozen=True, slots=True)
class Stop(Message):
    """
    Close every session at once (a second SIGTERM in the acceptor).
    """

    op: ClassVar[Op] = Op.STOP


# Both ways (control channel)


@dataclass(frozen=True, slots=True)
class BackendStateChange(Message):
    """
    A backend's state: from the acceptor, every change (the workers follow
    it); from a worker, a backend it marked down after failed connections.
    """

    op: ClassVar[Op] = Op.BACKEND_STATE
    backend: str
    state: BackendState
    reason: str


# Worker to acceptor (control channel)


@dataclass(frozen=True, slots=True)
class Ready(Message):
    """
    The worker is configured and takes connections.
    """

    op: ClassVar[Op] = Op.READY
    pid: int


@dataclass(frozen=True, slots=True)
class Draining(Message):
    """
    The worker drains on its own (a SIGTERM sent to it): it takes nothing more.
    """

    op: ClassVar[Op] = Op.DRAINING


@dataclass(frozen=True, slots=True)
class Ended(Message):
    """
    Connections that ended in the worker, by the acceptor's numbers.
    """

    op: ClassVar[Op] = Op.ENDED
    numbers: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class LogEvent(Message):
    """
    One of the worker's log events, as the acceptor re-emits it.

    @ivar level: the log level's name.
    @ivar text: the event formatted as the worker would write it (Twisted's
        JSON form of an event loses format specifications).
    @ivar traceback: the failure's traceback, if the event carried one.
    @ivar fields: the event's plain fields (str, int, float, bool, None),
        which the access log reads.
    @ivar access_only: an access event kept out of the main log
        (C{--access-log-only}): for the access log file only.
    """

    op: ClassVar[Op] = Op.LOG_EVENT
    level: str
    text: str
    traceback: str | None = None
    fields: dict[str, Any] = field(default_factory=dict)
    access_only: bool = False


class BackendCounts(NamedTuple):
    """
    A backend's session counts in one worker, and its endpoint.
    """

    active: int
    total: int
    failures: int
    endpoint: str


@dataclass(frozen=True, slots=True)
class StatusReply(Message):
    """
    The worker's answer to a L{StatusRequest}, what the acceptor merges into
    its status document (L{gateway.ops.admin.gather_status}).

    @ivar number: the request's number.
    @ivar live: how many sessions the worker serves now.
    @ivar counters: the C{counters} of its status document.
    @ivar backends: each backend's counts, by name.
    @ivar sessions: its sessions (at most the request's limit), each as its
        number and its JSON text in C{/status.json}.
    """

    op: ClassVar[Op] = Op.STATUS_REPLY
    number: int
    live: int
    counters: dict[str, Any]
    backends: dict[str, BackendCounts]
    sessions: tuple[tuple[int, str], ...]


# Acceptor to worker (handoff channel)


@dataclass(frozen=True, slots=True)
class Passed(Message):
    """
    The header of a connection passed to the worker (its descriptor travels
    beside it).

    @ivar number: its number, unique across workers (its session's id).
    @ivar front: the index of its front in C{--listen} order.
    @ivar data: the bytes the acceptor read from it (a PROXY header).
    """

    op: ClassVar[Op] = Op.PASSED
    number: int
    front: int
    data: bytes


@dataclass(frozen=True, slots=True)
class Drain(Message):
    """
    The last handoff message: every connection for the worker has been
    sent; it drains and exits.
    """

    op: ClassVar[Op] = Op.DRAIN


def encode(message: Message) -> bytes:
    """
    A message's bytes (without framing).
    """
    return pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)


def decode(data: bytes | bytearray | memoryview) -> Message:
    """
    The message in C{data}.

    @raise WireError: it is not a message of this module.
    """
    message = pickle.loads(data)
    if not isinstance(message, Message):
        raise WireError(f"not a message: {type(message).__name__}")
    return message


class Framed(Protocol):
    """
    Length-prefixed messages on a stream (4 bytes, big-endian, then the
    encoded message).

    Not Twisted's C{Int32StringReceiver}, which joins its buffer with each
    read: a status reply of megabytes would be copied over and over.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()

    def send(self, message: Message) -> None:
        """
        Send one message.
        """
        if self.transport is not None:
            data = encode(message)
            self.transport.writeSequence([len(data).to_bytes(4, "big"), data])

    @override
    def dataReceived(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        start = 0
        while len(buffer) - start >= 4:
            length = int.from_bytes(buffer[start : start + 4], "big")
            if length > MAX_MESSAGE:
                self.too_long(length)
                return
            if len(buffer) - start - 4 < length:
                break
            message = decode(buffer[start + 4 : start + 4 + length])
            start += 4 + length
            self.message_received(message)
        del buffer[:start]

    def message_received(self, message: Message) -> None:
        """
        One whole message arrived.
        """
        raise NotImplementedError

    def too_long(self, length: int) -> None:
        """
        A message longer than L{MAX_MESSAGE} (a bug): drop the channel.
        """
        assert self.transport is not None
        self.transport.loseConnection()
