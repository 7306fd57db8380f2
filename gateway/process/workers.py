"""
Every core in use (C{--workers N}): the acceptor's side.

With more than one worker, the twistd process is the I{acceptor}.  It listens
on the fronts and runs the same admission chain as a single gateway (total
cap, per-address cap and rate, the PROXY header of a C{haproxy:} front), so
the limits stay exact however many processes serve the connections.  The end
of that chain is a L{Handoff} instead of a front door: it stops reading the
admitted socket and passes it, with the bytes the acceptor has read from it
(a PROXY header), to the least-loaded worker, then closes its own copy.

Each worker (L{gateway.process.worker}, a process of its own) is a full reactor:
sniffing, HTTP, relaying, splicing.  Two socket pairs join it to the acceptor:

  - the I{handoff channel} (C{SOCK_SEQPACKET}): one message per connection,
    carrying its descriptor (C{SCM_RIGHTS}) and a small pickled header: its
    number, its front and the bytes already read.  Once C{sendmsg} returns,
    the kernel holds the socket for the worker and the acceptor closes its
    descriptor.  The last message of a drain says so, so the worker knows
    every connection sent to it has arrived;
  - the I{control channel} (a stream of length-prefixed pickled messages):
    the configuration (at start and on every SIGHUP), backend states (health
    checks and operators' actions happen in the acceptor), status requests
    for the admin endpoint and, from the worker, its readiness, the end of
    each connection (which frees its slots here), its log events (re-emitted
    here, so twistd's log and the access log see every worker's events) and
    backend states it changed (a backend that failed too often).

The acceptor is the workers' supervisor: a worker that exits is restarted
(with a growing delay if it keeps dying young); the connections it held are
counted as lost and their slots freed; connections not sent to it yet go to
another worker.  The other workers' sessions are never touched.

Both channels carry pickles, which is safe only because both ends are this
program: the socket pairs are created here and inherited by the worker, and
nothing else can connect to them.
"""

from __future__ import annotations

import os
import pickle
import signal
import socket
import sys
from collections import deque
from collections.abc import Callable
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.error import ConnectionDone, ProcessTerminated
from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IHalfCloseableProtocol,
    IProtocol,
    IWriteDescriptor,
)
from twisted.internet.protocol import Factory, ProcessProtocol, Protocol
from twisted.logger import Logger, LogLevel, globalLogPublisher
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from typing_extensions import override
from zope.interface import alsoProvides, implementer

import gateway
from gateway.config import GatewayConfig
from gateway.connection import CloseHooks, describe_peer
from gateway.interfaces import IRefusal
from gateway.ops.access import ACCESS_ONLY
from gateway.pool.backends import Backend, BackendState, Pool

__all__ = [
    "MAX_MESSAGE",
    "Dispatcher",
    "Handoff",
    "TLSRefusals",
    "WorkerPool",
    "worker_config",
]

MAX_MESSAGE = 256 * 1024 * 1024
"""The largest control message (a status reply listing many sessions)."""

HANDOFF_MESSAGE = 256 * 1024
"""The largest handoff message a worker reads (the bytes the acceptor read
from a connection are at most a read or two: 64 KiB each)."""

HANDOFF_BUFFER = 1024 * 1024
"""The handoff channel's socket buffers (the kernel may give less): a
SEQPACKET message must fit in the sender's buffer whole."""

READY_WAIT = 30.0
"""Seconds a started worker has to say it is ready before it is killed."""

CONTROL_GRACE = 2.0
"""Seconds the acceptor reads a dead worker's control channel to its end, and
waits for a worker whose control channel closed to end before stopping it."""

STATUS_WAIT = 2.0
"""Seconds the admin endpoint waits for a worker's status before leaving it out."""

RESTART_DELAY = 0.2
"""Seconds before a dead worker is restarted (doubled while it keeps dying young)."""

RESTART_DELAY_MAX = 10.0
"""The longest wait before a restart."""

YOUNG = 10.0
"""A worker that dies within this many seconds of its start died young."""

SENT, FULL, GONE = "sent", "full", "gone"
"""What an attempt to pass a connection to a worker came to."""

KILL_GRACE = 5.0
"""Seconds a stopping worker gets past its drain before it is killed."""


def worker_config(config: GatewayConfig, pool: Pool) -> GatewayConfig:
    """
    The configuration a worker runs: the same, with the acceptor's backends
    (the demo's game servers run in the acceptor, on ports it chose).
    """
    import dataclasses

    from gateway.config import BackendSpec

    backends = list(config.backends)
    http_root = config.http_root
    if config.demo:
        named = {spec.name for spec in backends}
        for backend in pool.backends:
            if backend.name not in named:
                backends.append(
                    BackendSpec(name=backend.name, endpoint=backend.description, weight=1)
                )
        if http_root is None:
            from gateway.demo import SITE_DIR

            http_root = SITE_DIR
    # The fronts, admin endpoint, hand-over and access log file are the
    # acceptor's: a worker must never take them over or open them.
    return dataclasses.replace(
        config,
        backends=tuple(backends),
        http_root=http_root,
        demo=False,
        admin=None,
        admin_token=None,
        handover=None,
        access_log=None,
    )


def _raw(transport: Any) -> Any:
    """
    The socket transport under a connection's protocol wrappers (the PROXY
    header reader acts as a transport).
    """
    while isinstance(transport, Protocol):
        transport = transport.transport
    return transport


@implementer(IProtocol, IHalfCloseableProtocol)
class Handoff(CloseHooks, Protocol):
    """
    An admitted connection in the acceptor: sent to a worker, and kept (as
    the holder of its slots) until the worker reports its end.

    @ivar number: the connection's number, unique across workers (its
        session's id on the admin endpoint).
    @ivar front: the index of its front in C{--listen} order.
    @ivar worker: the worker it went to, once sent.
    """

    def __init__(self, dispatcher: Dispatcher, number: int) -> None:
        CloseHooks.__init__(self)
        self._dispatcher = dispatcher
        self.number = number
        self.front = dispatcher.front
        self.worker: WorkerProcess | None = None
        self.received: list[bytes] = []
        self.raw: Any = None
        self.ended = False

    @override
    def connectionMade(self) -> None:
        self.raw = _raw(self.transport)
        self.raw.stopReading()
        header = getattr(self.transport, "header", b"")
        if header:
            self.received.append(header)
        # Sent on the next turn: the PROXY header reader and the queue of
        # held connections hand over bytes right after connectionMade.
        self._dispatcher.workers.clock.callLater(0, self._dispatcher.workers.dispatch, self)

    @override
    def dataReceived(self, data: bytes) -> None:
        if self.worker is None:
            self.received.append(data)

    def data(self) -> bytes:
        """
        Every byte read from the connection here, in order.
        """
        return b"".join(self.received)

    def detach(self) -> None:
        """
        The worker holds the socket now: close the acceptor's descriptor
        without shutting the connection down (a shutdown would end it for
        the worker too).
        """
        raw = self.raw
        raw.stopReading()
        raw.stopWriting()
        raw.socket.close()

    def close(self) -> None:
        """
        Close a connection that was never passed on (its slots are freed as
        it closes).
        """
        self.ended = True
        self.raw.loseConnection()

    def peer(self) -> str:
        """
        The client's address, for logs.
        """
        transport = self.transport
        return describe_peer(transport.getPeer()) if transport is not None else "-"

    def readConnectionLost(self) -> None:
        """
        The client ended its stream before the socket was passed on: the
        worker reads that end of stream again.
        """

    def writeConnectionLost(self) -> None:
        """
        Never happens here (nothing is written).
        """

    def end(self) -> None:
        """
        The connection ended (its worker said so, or died): free its slots,
        through the close hooks of every protocol on the connection.
        """
        if self.ended:
            return
        self.ended = True
        outer = getattr(self.raw, "protocol", None)
        reason = Failure(ConnectionDone())
        if outer is not None and outer is not self:
            outer.connectionLost(reason)
        else:
            self.connectionLost(reason)

    @override
    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:  # noqa: B008
        self.ended = True
        if self.worker is None:
            self._dispatcher.workers.forget(self)
        self.run_close_hooks()


class Dispatcher(Factory):
    """
    The end of a front's admission chain in the acceptor: builds a
    L{Handoff} per admitted connection.

    @ivar front: the front's index in C{--listen} order.
    """

    noisy = False

    def __init__(self, workers: WorkerPool, front: int) -> None:
        self.workers = workers
        self.front = front

    @override
    def buildProtocol(self, addr: IAddress | None) -> Handoff:
        return Handoff(self, self.workers.next_number())


class TLSRefusals(Factory):
    """
    On a C{tls:} front of the acceptor: admitted connections pass untouched
    (their worker does TLS), a refused one is answered over TLS.
    """

    noisy = False

    def __init__(self, wrapped: Factory, creator: Any) -> None:
        self.wrapped = wrapped
        self._tls = TLSMemoryBIOFactory(creator, False, wrapped)

    @override
    def buildProtocol(self, addr: IAddress | None) -> IProtocol | None:  # type: ignore[override]
        protocol = self.wrapped.buildProtocol(addr)
        if protocol is None or not IRefusal.providedBy(protocol):
            return protocol
        tls = TLSMemoryBIOProtocol(self._tls, protocol)
        alsoProvides(tls, IRefusal)
        return tls


class Framed(Protocol):
    """
    Length-prefixed pickled messages (4 bytes, big-endian, then the pickle).

    Not Twisted's C{Int32StringReceiver}, which joins its buffer with each
    read: a status reply of megabytes would be copied over and over.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()

    def send(self, message: dict[str, Any]) -> None:
        """
        Send one message.
        """
        if self.transport is not None:
            data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
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
            message = pickle.loads(buffer[start + 4 : start + 4 + length])
            start += 4 + length
            self.message_received(message)
        del buffer[:start]

    def message_received(self, message: dict[str, Any]) -> None:
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


class _Control(Framed):
    """
    The acceptor's end of a worker's control channel.
    """

    def __init__(self, worker: WorkerProcess) -> None:
        super().__init__()
        self.worker = worker

    @override
    def connectionMade(self) -> None:
        self.worker.control = self
        self.worker.send_config()

    @override
    def message_received(self, message: dict[str, Any]) -> None:
        self.worker.received(message)

    @override
    def too_long(self, length: int) -> None:
        self.worker.log.error(
            "worker {index}: a control message of {length} bytes is too long; dropping the "
            "channel",
            index=self.worker.index,
            length=length,
        )
        super().too_long(length)

    @override
    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:  # noqa: B008
        if self.worker.control is self:
            self.worker.control = None
            self.worker.control_lost()


@implementer(IWriteDescriptor)
class _HandoffWriter:
    """
    Waits for room in a worker's handoff channel, when its socket buffer
    was full, and sends what waited.
    """

    def __init__(self, worker: WorkerProcess) -> None:
        self.worker = worker

    def fileno(self) -> int:
        sock = self.worker.handoff
        return sock.fileno() if sock is not None else -1

    def doWrite(self) -> None:  # noqa: N802 - Twisted's name
        self.worker.flush()

    def connectionLost(self, reason: Failure) -> None:  # noqa: N802 - Twisted's name
        pass

    def logPrefix(self) -> str:  # noqa: N802 - Twisted's name
        return f"worker {self.worker.index} handoff"


class WorkerProcess(ProcessProtocol):
    """
    One worker: its process, its two channels and the connections it holds.

    @ivar index: its number, from 1.
    @ivar pid: its process ID while it runs.
    @ivar state: C{starting}, C{running} (it said it is ready), C{restarting}
        (dead, waiting to be started again) or C{stopped}.
    @ivar live: the connections it holds, by number.
    @ivar backlog: connections waiting for room in the handoff channel.
    @ivar restarts: how many times it was started again after dying.
    @ivar lost: connections it held when it died, over all its deaths.
    """

    log = Logger()

    def __init__(self, pool: WorkerPool, index: int) -> None:
        self.pool = pool
        self.index = index
        self.pid: int | None = None
        self.state = "stopped"
        self.live: dict[int, Handoff] = {}
        self.backlog: deque[Handoff] = deque()
        self.restarts = 0
        self.lost = 0
        self.control: _Control | None = None
        self.handoff: socket.socket | None = None
        self.started_at = 0.0
        self.delay = RESTART_DELAY
        self._writer: _HandoffWriter | None = None
        self._restart_call: IDelayedCall | None = None
        self._status: dict[int, Deferred[dict[str, Any] | None]] = {}
        self._drain_sent = False
        self.exited: Deferred[None] | None = None
        self.pid_gone: int | None = None
        self._ended_reason: Failure | None = None
        self._finish_call: IDelayedCall | None = None
        self._ready_call: IDelayedCall | None = None
        self._orphan_call: IDelayedCall | None = None

    # Lifecycle

    def start(self) -> None:
        """
        Start the process, with its two channels as descriptors 3 and 4.
        """
        pool = self.pool
        reactor = pool.clock
        control_here, control_there = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        handoff_here, handoff_there = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        handoff_here.setblocking(False)
        handoff_here.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, HANDOFF_BUFFER)
        handoff_there.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, HANDOFF_BUFFER)
        self.handoff = handoff_here
        self._drain_sent = False
        self.state = "starting"
        self.started_at = reactor.seconds()
        self._ready_call = reactor.callLater(READY_WAIT, self._not_ready)
        self.exited = Deferred()
        try:
            reactor.spawnProcess(
                self,
                sys.executable,
                [
                    sys.executable,
                    "-m",
                    "gateway.process.worker",
                    str(self.index),
                    *pool.reactor_args(),
                ],
                env=pool.environment(),
                childFDs={0: 0, 1: 1, 2: 2, 3: control_there.fileno(), 4: handoff_there.fileno()},
            )
        finally:
            control_there.close()
            handoff_there.close()
        control_here.setblocking(False)
        reactor.adoptStreamConnection(
            control_here.fileno(), socket.AF_UNIX, Adopting(_Control(self))
        )
        control_here.close()  # adopted as a copy

    @override
    def connectionMade(self) -> None:
        assert self.transport is not None
        self.pid = self.transport.pid
        self.log.info("worker {index} started (pid {pid})", index=self.index, pid=self.pid)

    @override
    def processEnded(self, reason: Failure) -> None:
        # What the worker wrote last (its last ends, its last log events)
        # may still wait in the control channel: read it to its end first.
        self.pid_gone = self.pid
        self.pid = None
        self._ended_reason = reason
        if self.control is None:
            self._finish()
        else:
            self._finish_call = self.pool.clock.callLater(CONTROL_GRACE, self._finish)

    def control_lost(self) -> None:
        """
        The control channel closed: the process ended (finish), or is ending
        (a process that dies closes its channel before the acceptor hears of
        its end: wait for that), or it lost its acceptor without ending (a
        bug): then, if it has not ended within L{CONTROL_GRACE} seconds, it
        is told to drain and leave.
        """
        if self._ended_reason is not None:
            self._finish()
        elif self.pid is not None and not self.pool.stopping and self._orphan_call is None:
            self._orphan_call = self.pool.clock.callLater(CONTROL_GRACE, self._orphaned)

    def _orphaned(self) -> None:
        self._orphan_call = None
        if self.pid is None or self.pool.stopping or self.control is not None:
            return
        self.state = "draining"
        self.log.error(
            "worker {index} (pid {pid}) lost its control channel; stopping it",
            index=self.index,
            pid=self.pid,
        )
        try:
            os.kill(self.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass

    def _finish(self) -> None:
        reason, self._ended_reason = self._ended_reason, None
        if reason is None:
            return
        if self._finish_call is not None and self._finish_call.active():
            self._finish_call.cancel()
        self._finish_call = None
        if self._orphan_call is not None and self._orphan_call.active():
            self._orphan_call.cancel()
        self._orphan_call = None
        pool = self.pool
        pid = self.pid_gone
        was = self.state
        self.state = "stopped"
        self._close_channels()
        for number in list(self._status):
            self._status_reply(number, None)
        live, self.live = self.live, {}
        waiting, self.backlog = list(self.backlog), deque()
        for handoff in waiting:
            handoff.worker = None
        how = _how_it_ended(reason)
        exited, self.exited = self.exited, None
        if pool.stopping:
            for handoff in live.values():
                handoff.end()
            for handoff in waiting:
                handoff.close()
            if how != "exited with status 0" or live:
                self.log.info(
                    "worker {index} (pid {pid}) {how}; {count} connections closed with it",
                    index=self.index,
                    pid=pid,
                    how=how,
                    count=len(live) + len(waiting),
                )
            if exited is not None:
                exited.callback(None)
            return
        self.lost += len(live)
        pool.lost += len(live)
        for handoff in live.values():
            handoff.end()
        young = pool.clock.seconds() - self.started_at < YOUNG
        self.delay = min(self.delay * 2, RESTART_DELAY_MAX) if young else RESTART_DELAY
        self.state = "restarting"
        self.log.error(
            "worker {index} (pid {pid}) {how} while {was}: {count} sessions lost; "
            "restarting it in {delay:g} s",
            index=self.index,
            pid=pid,
            how=how,
            was=was,
            count=len(live),
            delay=self.delay,
        )
        self._restart_call = pool.clock.callLater(self.delay, self._restart)
        for handoff in waiting:
            pool.dispatch(handoff)
        if exited is not None:
            exited.callback(None)

    def _not_ready(self) -> None:
        self._ready_call = None
        if self.state == "starting" and self.pid is not None:
            self.log.error(
                "worker {index} (pid {pid}) did not get ready within {wait:g} s; killing it",
                index=self.index,
                pid=self.pid,
                wait=READY_WAIT,
            )
            self.kill()

    def _restart(self) -> None:
        self._restart_call = None
        if self.pool.stopping or self.state != "restarting":
            return
        self.restarts += 1
        try:
            self.start()
        except Exception as error:
            # Out of descriptors or processes, say: try again later.
            self._close_channels()
            self.state = "restarting"
            self.delay = min(self.delay * 2, RESTART_DELAY_MAX)
            self.log.error(
                "worker {index} cannot be started: {error}; trying again in {delay:g} s",
                index=self.index,
                error=str(error) or type(error).__name__,
                delay=self.delay,
            )
            self._restart_call = self.pool.clock.callLater(self.delay, self._restart)

    def _close_channels(self) -> None:
        if self._ready_call is not None and self._ready_call.active():
            self._ready_call.cancel()
        self._ready_call = None
        if self._writer is not None:
            self.pool.clock.removeWriter(self._writer)
            self._writer = None
        if self.handoff is not None:
            self.handoff.close()
            self.handoff = None
        if self.control is not None and self.control.transport is not None:
            self.control.transport.loseConnection()
        self.control = None

    # The channels

    def send_config(self) -> None:
        """
        Send the configuration (at start, and again on every reload).
        """
        if self.control is not None:
            self.control.send({"op": "config", "config": self.pool.worker_config()})
            for backend in self.pool.backends.backends:
                if backend.state is not BackendState.UP:
                    self.send_state(backend)

    def send_state(self, backend: Backend) -> None:
        """
        Tell the worker a backend's state.
        """
        if self.control is not None:
            self.control.send(
                {
                    "op": "state",
                    "backend": backend.name,
                    "state": backend.state.value,
                    "reason": backend.reason,
                }
            )

    def send(self, handoff: Handoff) -> None:
        """
        Pass a connection to this worker (or queue it, if the channel is full).
        """
        handoff.worker = self
        if self.backlog:
            self.backlog.append(handoff)
            return
        outcome = self._send(handoff)
        if outcome == FULL:
            self.backlog.append(handoff)
            self._wait_for_room()
        elif outcome == GONE:
            handoff.worker = None
            self.pool.dispatch(handoff)

    def _send(self, handoff: Handoff) -> str:
        """
        Try to send a connection: L{SENT} (or done with: closed), L{FULL}
        (no room in the channel now) or L{GONE} (this worker is dying: it
        takes nothing more).
        """
        sock = self.handoff
        if handoff.ended:
            return SENT  # the client went away while it waited
        if sock is None or self.state not in ("starting", "running"):
            return GONE
        message = pickle.dumps(
            {"id": handoff.number, "front": handoff.front, "data": handoff.data()},
            protocol=pickle.HIGHEST_PROTOCOL,
        )
        try:
            socket.send_fds(sock, [message], [handoff.raw.fileno()])
        except BlockingIOError:
            return FULL
        except (BrokenPipeError, ConnectionError) as error:
            # The worker's end is closed: processEnded follows.
            self.state = "dying"
            self.log.warn(
                "worker {index}: cannot pass it connections: {error}",
                index=self.index,
                error=error.strerror or str(error),
            )
            return GONE
        except OSError as error:
            # This connection cannot be passed (too large a message, no
            # memory): close it, not the channel.
            self.log.error(
                "worker {index}: cannot pass a connection from {peer}: {error}; closing it",
                index=self.index,
                peer=handoff.peer(),
                error=error.strerror or str(error),
            )
            handoff.close()
            return SENT
        self.live[handoff.number] = handoff
        handoff.detach()
        return SENT

    def _wait_for_room(self) -> None:
        if self._writer is None and self.handoff is not None:
            self._writer = _HandoffWriter(self)
            self.pool.clock.addWriter(self._writer)

    def flush(self) -> None:
        """
        Send what waited for room in the handoff channel.
        """
        while self.backlog and self.handoff is not None:
            outcome = self._send(self.backlog[0])
            if outcome == FULL:
                return
            handoff = self.backlog.popleft()
            if outcome == GONE:
                handoff.worker = None
                self.pool.dispatch(handoff)
        if self._writer is not None:
            self.pool.clock.removeWriter(self._writer)
            self._writer = None
        if self.pool.stopping and not self._drain_sent:
            self.send_drain()

    def send_drain(self) -> None:
        """
        The last handoff message: every connection for this worker has been
        sent; it drains and exits.
        """
        if self.backlog or self.handoff is None or self._drain_sent:
            return
        try:
            self.handoff.send(pickle.dumps({"op": "drain"}))
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

    def received(self, message: dict[str, Any]) -> None:
        """
        A message from the worker.
        """
        op = message.get("op")
        if op == "end":
            for number in message["ids"]:
                handoff = self.live.pop(number, None)
                if handoff is not None:
                    handoff.end()
        elif op == "log":
            event = message["event"]
            text = event.pop("text")
            traceback = event.pop("traceback", None)
            event["log_level"] = LogLevel.levelWithName(event["log_level"])
            event["log_format"] = "{log_text}"
            event["log_text"] = text if traceback is None else f"{text}\n{traceback}"
            event["log_system"] = f"worker {self.index}"
            event["log_worker"] = self.index
            (ACCESS_ONLY if message.get("access_only") else globalLogPublisher)(event)
        elif op == "draining":
            # It drains on its own (a SIGTERM sent to it): it takes nothing more.
            self.state = "draining"
        elif op == "ready":
            if self._ready_call is not None and self._ready_call.active():
                self._ready_call.cancel()
            self._ready_call = None
            self.state = "running"
            self.delay = self.delay if self.restarts else RESTART_DELAY
            self.pool.worker_ready(self)
        elif op == "state":
            self.pool.worker_state(message["backend"], message["state"], message["reason"])
        elif op == "status":
            self._status_reply(message["n"], message)

    def status(self, limit: int | None) -> Deferred[dict[str, Any] | None]:
        """
        Ask the worker for its counters and sessions (L{None} if it does not
        answer within L{STATUS_WAIT} seconds).
        """
        done: Deferred[dict[str, Any] | None] = Deferred()
        if self.control is None or self.state not in ("running", "draining"):
            done.callback(None)
            return done
        number = self.pool.next_number()
        self._status[number] = done
        timer = self.pool.clock.callLater(STATUS_WAIT, self._status_reply, number, None)

        def cancel_timer(result: Any) -> Any:
            if timer.active():
                timer.cancel()
            return result

        done.addBoth(cancel_timer)
        self.control.send({"op": "status", "n": number, "limit": limit})
        return done

    def _status_reply(self, number: int, message: dict[str, Any] | None) -> None:
        waiting = self._status.pop(number, None)
        if waiting is not None:
            waiting.callback(message)

    def stop_now(self) -> None:
        """
        Close every session at once (a second SIGTERM).
        """
        if self.control is not None:
            self.control.send({"op": "stop"})

    def kill(self) -> None:
        """
        The drain is over and the worker still runs: kill it.
        """
        if self.pid is not None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def describe(self) -> dict[str, Any]:
        """
        This worker as C{/status.json} lists it.
        """
        return {
            "worker": self.index,
            "pid": self.pid,
            "state": self.state,
            "connections": len(self.live) + len(self.backlog),
            "restarts": self.restarts,
            "lost": self.lost,
        }


class Adopting(Factory):
    """
    The factory for one adopted socket (a control channel's end): it builds
    the protocol it was given.
    """

    noisy = False

    def __init__(self, protocol: Protocol) -> None:
        self._protocol = protocol

    @override
    def buildProtocol(self, addr: IAddress | None) -> Protocol:
        return self._protocol


def _how_it_ended(reason: Failure) -> str:
    value = reason.value
    if isinstance(value, ProcessTerminated):
        if value.signal is not None:
            try:
                name = signal.Signals(value.signal).name
            except ValueError:
                name = f"signal {value.signal}"
            return f"was killed by {name}"
        return f"exited with status {value.exitCode}"
    return "exited with status 0"


class WorkerPool(Service):
    """
    The acceptor's workers: starts them, passes them connections (the
    least-loaded running one gets the next), restarts those that die and
    tells them what changes.

    @ivar clock: the reactor (time, processes, descriptors).
    @ivar backends: the acceptor's pool, whose states the workers follow.
    @ivar workers: every worker, by index order.
    @ivar lost: connections lost with dead workers.
    @ivar stopping: a drain has begun: nothing is restarted.
    """

    log = Logger()

    def __init__(
        self,
        count: int,
        clock: Any,
        backends: Pool,
        config: Callable[[], GatewayConfig],
    ) -> None:
        """
        @param config: the running configuration (read at each send).
        """
        self.clock = clock
        self.backends = backends
        self._config = config
        self.workers = [WorkerProcess(self, index) for index in range(1, count + 1)]
        self.lost = 0
        self.stopping = False
        self._number = 0
        self._waiting: deque[Handoff] = deque()
        self._applying = False
        backends.observers.append(self._state_changed)

    def next_number(self) -> int:
        """
        A number no connection nor request has had.
        """
        self._number += 1
        return self._number

    def environment(self) -> dict[str, str]:
        """
        The workers' environment: this one, with this package importable.
        """
        env = dict(os.environ)
        # The folder that holds the gateway package (not a folder inside it,
        # whose subpackages such as gateway/http would shadow the standard library).
        here = os.path.dirname(os.path.dirname(os.path.abspath(gateway.__file__)))
        env["PYTHONPATH"] = os.pathsep.join(
            [here, *([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])]
        )
        return env

    def reactor_args(self) -> list[str]:
        """
        The worker's command-line arguments that make it run the acceptor's
        kind of reactor (C{twistd -r uvloop}: the workers too).
        """
        from gateway.process.uvloopreactor import reactor_name

        name = reactor_name(self.clock)
        return [name] if name is not None else []

    def worker_config(self) -> GatewayConfig:
        """
        What the workers run now.
        """
        return worker_config(self._config(), self.backends)

    @override
    def startService(self) -> None:
        super().startService()
        for worker in self.workers:
            worker.start()

    # Connections

    def dispatch(self, handoff: Handoff) -> None:
        """
        Pass an admitted connection to the least-loaded running worker, or
        keep it until one runs.
        """
        if handoff.ended:
            return
        # A connection held in queue mode is resumed once admitted: read
        # nothing more here (what was read goes with it).
        handoff.raw.stopReading()
        if self.stopping:
            # Admitted after the drain began (its PROXY header came late, or
            # it waited in queue mode): the workers take nothing new now.
            handoff.close()
            return
        running = [w for w in self.workers if w.state == "running" and w.handoff is not None]
        if not running:
            self._waiting.append(handoff)
            return
        worker = min(running, key=lambda w: len(w.live) + len(w.backlog))
        worker.send(handoff)

    def forget(self, handoff: Handoff) -> None:
        """
        A connection went away before it was passed on.
        """
        if handoff in self._waiting:
            self._waiting.remove(handoff)
        for worker in self.workers:
            worker.forget(handoff)

    def worker_ready(self, worker: WorkerProcess) -> None:
        """
        A worker runs: pass it what waited for one.
        """
        waiting, self._waiting = self._waiting, deque()
        for handoff in waiting:
            self.dispatch(handoff)
        if self.stopping:
            worker.send_drain()

    # Backend states: the acceptor's pool is the reference.

    def _state_changed(self, backend: Backend) -> None:
        for worker in self.workers:
            worker.send_state(backend)

    def worker_state(self, name: str, state: str, reason: str) -> None:
        """
        A worker changed a backend's state (too many failed connections).
        """
        backend = self.backends.get(name)
        # A worker only ever marks an up backend down (failed connections);
        # what it saw may be stale (an operator drained it meanwhile).
        if (
            backend is not None
            and state == BackendState.DOWN.value
            and backend.state is BackendState.UP
        ):
            self.backends.set_state(backend, BackendState.DOWN, f"in a worker: {reason}")

    def reconfigure(self) -> None:
        """
        The configuration was reloaded: the workers apply it too.
        """
        for worker in self.workers:
            worker.send_config()

    # Status

    def status(self, limit: int | None) -> Deferred[list[dict[str, Any] | None]]:
        """
        Every running worker's status reply (L{None} for one that did not answer).
        """
        return gatherResults([worker.status(limit) for worker in self.workers])

    def describe(self) -> list[dict[str, Any]]:
        """
        The workers as C{/status.json} lists them.
        """
        return [worker.describe() for worker in self.workers]

    # Stopping

    @property
    def finished(self) -> bool:
        """
        Whether every worker has exited.
        """
        return all(worker.pid is None for worker in self.workers)

    def drain(self) -> None:
        """
        Stop: each worker gets every connection meant for it, then drains.
        Connections still waiting for a worker are closed.
        """
        self.stopping = True
        for worker in self.workers:
            if worker._restart_call is not None and worker._restart_call.active():
                worker._restart_call.cancel()
            worker._restart_call = None
            if worker.state == "restarting":
                worker.state = "stopped"
        waiting, self._waiting = self._waiting, deque()
        for handoff in waiting:
            handoff.close()
        for worker in self.workers:
            worker.send_drain()

    def stop_now(self) -> None:
        """
        A second SIGTERM: every worker closes its sessions at once.
        """
        for worker in self.workers:
            worker.stop_now()

    @override
    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        if not self.stopping:
            self.drain()
        exits = [w.exited for w in self.workers if w.pid is not None and w.exited is not None]
        if not exits:
            return None
        done: Deferred[list[None]] = gatherResults(exits)
        timer = self.clock.callLater(KILL_GRACE, self._kill)

        def stop_timer(result: object) -> None:
            if timer.active():
                timer.cancel()

        done.addBoth(stop_timer)
        return done  # type: ignore[return-value]

    def _kill(self) -> None:
        for worker in self.workers:
            if worker.pid is not None:
                self.log.warn(
                    "worker {index} (pid {pid}) did not stop; killing it",
                    index=worker.index,
                    pid=worker.pid,
                )
                worker.kill()
