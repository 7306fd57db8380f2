"""
A worker process of C{--workers N}: C{python -m gateway.process.workerproc INDEX},
started by the acceptor (L{gateway.process.supervisor}) with its control channel on
descriptor 3 and its handoff channel on descriptor 4 (their messages:
L{gateway.process.wire}).

It builds the same gateway as a single process, without fronts, limits, health
checks or admin endpoint (the acceptor has those), and serves the connections
the acceptor passes it: each is adopted into its front's protocol chain (the
PROXY header reader of a C{haproxy:} front, which reads again the header the
acceptor read; TLS for a C{tls:} front), the bytes the acceptor read are
replayed, and from then on it is an ordinary connection of this reactor.
When it ends, the acceptor is told, which frees its slots.

Its log events go to the acceptor, which writes them with its own.  It ignores
SIGINT and SIGHUP (a terminal's Ctrl-C or hang-up reaches every process of the
group; the acceptor decides), drains on SIGTERM or when the acceptor says so,
and drains too if the acceptor goes away.
"""

from __future__ import annotations

import errno
import os
import signal
import socket
import sys
from collections.abc import Callable
from typing import Any, cast

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IAddress, IProtocol, IReadDescriptor
from twisted.internet.protocol import Factory
from twisted.logger import (
    ILogObserver,
    Logger,
    globalLogBeginner,
)
from twisted.python.failure import Failure
from typing_extensions import override
from zope.interface import implementer

from gateway.config import GatewayConfig
from gateway.connection import OneShotFactory
from gateway.front.chain import connection_chain, split_front
from gateway.front.door import FrontDoor
from gateway.front.limits import Refusal
from gateway.ops.access import ACCESS_ONLY
from gateway.pool.backends import Backend, BackendState
from gateway.process.wire import (
    HANDOFF_MESSAGE,
    BackendCounts,
    BackendStateChange,
    Configure,
    Drain,
    Draining,
    Ended,
    Framed,
    Message,
    Op,
    Passed,
    Ready,
    StatusReply,
    StatusRequest,
    decode,
)
from gateway.process.workerlog import LogForwarder
from gateway.session.backendlink import LOCAL_ERRNOS

_log = Logger()

CONTROL_FD = 3
HANDOFF_FD = 4


class _Control(Framed):
    """
    The worker's end of its control channel.
    """

    def __init__(self, worker: Worker) -> None:
        super().__init__()
        self.worker = worker

    @override
    def connectionMade(self) -> None:
        self.worker.control_made(self)

    def close_then(self, closed: Deferred[None]) -> None:
        """
        Close the channel once what it still has to send is sent, and fire
        C{closed} when it is.
        """
        self.closed = closed
        if self.transport is not None:
            self.transport.loseConnection()

    @override
    def message_received(self, message: Message) -> None:
        self.worker.received(message)

    @override
    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:  # noqa: B008
        self.worker.acceptor_gone()
        closed, self.closed = self.closed, None
        if closed is not None:
            closed.callback(None)

    closed: Deferred[None] | None = None


def _peer_of(fd: int) -> str:
    """
    The client's address of a connected socket descriptor, as logs show it
    (C{"unknown"} if it cannot be read).
    """
    probe = socket.socket(fileno=fd)
    try:
        address = probe.getpeername()
    except OSError:
        return "unknown"
    finally:
        probe.detach()
    if isinstance(address, tuple) and probe.family == socket.AF_INET6:
        return f"[{address[0]}]:{address[1]}"
    if isinstance(address, tuple):
        return f"{address[0]}:{address[1]}"
    return "unix"


@implementer(IReadDescriptor)
class _Handoffs:
    """
    Reads the handoff channel: one connection (descriptor and header) per message.
    """

    def __init__(self, worker: Worker, sock: socket.socket) -> None:
        self.worker = worker
        self.sock = sock

    def fileno(self) -> int:
        return self.sock.fileno()

    def doRead(self) -> None:  # noqa: N802 - Twisted's name
        while self.worker.reading_handoffs(self):
            try:
                data, fds, flags, _address = socket.recv_fds(
                    self.sock, HANDOFF_MESSAGE, 4, socket.MSG_CMSG_CLOEXEC
                )
            except BlockingIOError:
                return
            except OSError:
                self.worker.handoffs_ended()
                return
            if not data and not fds:
                self.worker.handoffs_ended()
                return
            try:
                if flags & socket.MSG_TRUNC:
                    raise ValueError(f"a truncated handoff message ({len(data)} bytes)")
                message = decode(data)
                if not isinstance(message, Passed | Drain):
                    raise ValueError(f"a {message.op.value} message on the handoff channel")
            except Exception as error:
                # Never on a working acceptor; if it happens, this
                # connection is lost, not the channel.
                for fd in fds:
                    os.close(fd)
                _log.error(
                    "worker {index}: bad handoff message: {error}",
                    index=self.worker.index,
                    error=str(error),
                )
                continue
            # MSG_CTRUNC: the descriptor found no room here (this worker is
            # out of descriptors), and the kernel dropped it: the message
            # still says which connection it was.
            self.worker.handoff(message, fds, dropped=bool(flags & socket.MSG_CTRUNC))

    def connectionLost(self, reason: Failure) -> None:  # noqa: N802 - Twisted's name
        pass

    def logPrefix(self) -> str:  # noqa: N802 - Twisted's name
        return "handoffs"


class _Numbered(Factory):
    """
    Builds the front door of one handed-over connection, with the number
    the acceptor gave it; its end is reported to the acceptor.
    """

    noisy = False

    def __init__(self, worker: Worker, number: int) -> None:
        self.worker = worker
        self.number = number

    @override
    def buildProtocol(self, addr: IAddress | None) -> IProtocol:  # type: ignore[override]
        front = self.worker.service.factory.buildProtocol(addr)
        assert isinstance(front, FrontDoor)
        front.number_as(self.number)
        number, worker = self.number, self.worker
        front.add_close_hook(lambda: worker.ended(number))
        return front


class Worker:
    """
    One worker's reactor-side state: its gateway service, its channels and
    the connections it serves.
    """

    def __init__(self, index: int, reactor: Any, forward: LogForwarder) -> None:
        self.index = index
        self.reactor = reactor
        self.forward = forward
        self.service: Any = None
        self.control: _Control | None = None
        self._handoffs: _Handoffs | None = None
        self._fronts: list[tuple[str, Any]] = []
        self._ended: list[int] = []
        self._applying = False
        self._stopping: Deferred[None] | None = None

    def start(self) -> None:
        """
        Adopt the control channel (descriptor 3) and the handoff channel
        (descriptor 4, read once configured); drain before the reactor stops.
        """
        control = socket.socket(fileno=CONTROL_FD)
        control.setblocking(False)
        self.reactor.adoptStreamConnection(
            control.fileno(), socket.AF_UNIX, OneShotFactory(_Control(self))
        )
        control.close()
        sock = socket.socket(fileno=HANDOFF_FD)
        sock.setblocking(False)
        self._handoffs = _Handoffs(self, sock)
        self.reactor.addSystemEventTrigger("before", "shutdown", self._drain)

    # Control messages

    def received(self, message: Message) -> None:
        """
        A message from the acceptor.
        """
        on_message = _ON_MESSAGE.get(message.op)
        if on_message is not None:
            on_message(self, message)

    def _on_configure(self, message: Configure) -> None:
        self._configure(message.config)

    def _on_state(self, message: BackendStateChange) -> None:
        self._set_state(message.backend, message.state, message.reason)

    def _on_status(self, message: StatusRequest) -> None:
        self._status(message.number, message.limit)

    def _on_stop(self, message: Message) -> None:
        if self.service is not None:
            self.service.stop_now("the acceptor stops at once")

    def _configure(self, config: GatewayConfig) -> None:
        from gateway.process.assemble import make_service

        if self.service is not None:
            self._applying = True
            try:
                self.service.reloader.apply(config)
            finally:
                self._applying = False
            return
        self.service = make_service(config, self.reactor, role="worker")
        self.service.pools.observers.append(self._state_changed)
        factory = _NumberedFactories(self)
        for description in config.listen:
            self._fronts.append((description, factory.chain(description, config)))
        self.service.startService()
        assert self._handoffs is not None
        self.reactor.addReader(self._handoffs)
        self._send(Ready(os.getpid()))
        from gateway.process.uvloopreactor import reactor_name

        _log.info(
            "worker {index} (pid {pid}) ready, reactor {reactor}",
            index=self.index,
            pid=os.getpid(),
            reactor=reactor_name(self.reactor) or type(self.reactor).__name__,
        )

    def _set_state(self, name: str, state: BackendState, reason: str) -> None:
        backend = self.service.pools.get(name) if self.service is not None else None
        if backend is None:
            return
        self._applying = True
        try:
            self.service.pools.set_state(backend, state, reason, log=False)
        finally:
            self._applying = False

    def _state_changed(self, backend: Backend) -> None:
        if not self._applying:
            self._send(BackendStateChange(backend.name, backend.state, backend.reason))

    def _status(self, number: int, limit: int | None) -> None:
        from gateway.ops.status import AdminState, session_json, status

        service = self.service
        if service is None:
            # Never asked: the acceptor asks only a worker that said it is
            # ready, which it says once configured.
            return
        state = AdminState(service.pools, service.registry, service.counters)
        document = status(state, limit=0)
        ids, sessions = service.registry.snapshot()
        if limit is not None:
            ids, sessions = ids[:limit], sessions[:limit]
        self._send(
            StatusReply(
                number=number,
                live=len(service.registry),
                counters=document["counters"],
                backends={
                    b.name: BackendCounts(b.active, b.total, b.failures, b.description)
                    for b in service.pools.backends
                },
                sessions=tuple(
                    (n, session_json(n, s, self.index)) for n, s in zip(ids, sessions, strict=True)
                ),
            )
        )

    def _send(self, message: Message) -> None:
        if self.control is not None:
            self.control.send(message)

    # Connections

    def handoff(self, message: Passed | Drain, fds: list[int], dropped: bool = False) -> None:
        """
        A connection from the acceptor (or its last message, when draining).

        @param dropped: whether its descriptor was dropped for want of room
            in this process's descriptor table.
        """
        if isinstance(message, Drain):
            self.handoffs_ended()
            self._stop_reactor()
            return
        number = message.number
        if len(fds) != 1:
            for fd in fds:
                os.close(fd)
            self.ended(number)
            if dropped:
                # The kernel's word for it is the same as for any other
                # descriptor shortage (EMFILE), so that one phrase finds them all.
                self._short_of_resources(
                    "unknown",
                    f"{os.strerror(errno.EMFILE)}: no descriptor free to receive the connection",
                )
            return
        fd = fds[0]
        try:
            self._adopt(fd, number, message.front, message.data)
        except OSError as error:
            self.ended(number)
            if error.errno in LOCAL_ERRNOS:
                self._short_of_resources(_peer_of(fd), error.strerror or str(error))
            else:
                # The client may be gone already (its socket reset).
                _log.failure("worker {index}: cannot take a connection", index=self.index)
        except Exception:
            self.ended(number)
            _log.failure("worker {index}: cannot take a connection", index=self.index)
        finally:
            os.close(fd)

    def _short_of_resources(self, peer: str, detail: str) -> None:
        """
        A connection this worker could not take for want of its own
        descriptors (or memory): closed, and counted and logged (sampled) as
        a C{local-resources} refusal, like a session whose backend connection
        failed for that reason.
        """
        refusals = self.service.refusals if self.service is not None else None
        detail = f"the gateway is short of resources; worker {self.index}: {detail}"
        if refusals is not None:
            refusals.refused(Refusal.LOCAL_RESOURCES, peer, detail)
        else:
            _log.error("refused {peer}: local-resources ({detail})", peer=peer, detail=detail)

    def _adopt(self, fd: int, number: int, front: int, data: bytes) -> None:
        # The socket's family, without a descriptor of its own (detach: the
        # descriptor stays open), as this process may have none to spare.
        probe = socket.socket(fileno=fd)
        try:
            kind = probe.family
        finally:
            probe.detach()
        _, chain = self._fronts[front]
        factory = chain(number)
        transport = self.reactor.adoptStreamConnection(fd, kind, factory)
        protocol = transport.protocol
        add = getattr(protocol, "add_close_hook", None)
        if add is not None:
            # The PROXY header reader: its connection may end before the
            # front door exists.
            add(lambda: self.ended(number))
        if data:
            protocol.dataReceived(data)

    def ended(self, number: int) -> None:
        """
        A connection ended: the acceptor hears of it on the next turn (with
        the others that ended in this one).
        """
        if not self._ended:
            self.reactor.callLater(0, self._flush_ended)
        self._ended.append(number)

    def _flush_ended(self) -> None:
        ended, self._ended = self._ended, []
        if ended:
            self._send(Ended(tuple(ended)))

    # Stopping

    def reading_handoffs(self, reader: _Handoffs) -> bool:
        """
        Whether C{reader} is still this worker's handoff reader.
        """
        return self._handoffs is reader

    def handoffs_ended(self) -> None:
        """
        The handoff channel ended (the drain marker, or the acceptor's end
        closed): stop reading it.
        """
        if self._handoffs is not None:
            self.reactor.removeReader(self._handoffs)
            self._handoffs.sock.close()
            self._handoffs = None

    def control_made(self, control: _Control) -> None:
        """
        The control channel to the acceptor is up.
        """
        self.control = control
        self.forward.attach(control)

    def acceptor_gone(self) -> None:
        """
        The control channel closed: the acceptor is gone (or done): drain
        and exit.
        """
        self.control = None
        self.forward.detach()
        self._stop_reactor()

    def _stop_reactor(self) -> None:
        from twisted.internet.error import ReactorNotRunning

        try:
            self.reactor.stop()
        except ReactorNotRunning:
            pass

    def _drain(self) -> Deferred[None] | None:
        if self.service is None or self._stopping is not None:
            return self._stopping
        self._send(Draining())
        self._stopping = self.service.stopService()
        self._stopping.addCallback(lambda _: self._close_control())
        return self._stopping

    def _close_control(self) -> Deferred[None] | None:
        """
        Drained: close the control channel once what it still has to send
        (the last log events, the last ends) is sent; the reactor's own
        shutdown would drop it.
        """
        self._flush_ended()
        control = self.control
        if control is None or control.transport is None:
            return None
        closed: Deferred[None] = Deferred()
        self.forward.detach(finished=True)
        control.close_then(closed)

        def give_up() -> None:
            if not closed.called:
                closed.callback(None)

        timer = self.reactor.callLater(2.0, give_up)

        def stop_timer(result: None) -> None:
            if timer.active():
                timer.cancel()

        closed.addCallback(stop_timer)
        return closed


class _NumberedFactories:
    """
    The protocol chain of each front, as in a single gateway minus the
    admission (done by the acceptor).
    """

    def __init__(self, worker: Worker) -> None:
        self.worker = worker

    def chain(self, description: str, config: GatewayConfig) -> Any:
        from gateway.front.tls import is_tls_front, tls_front_endpoint

        worker = self.worker
        reactor = worker.reactor
        service = worker.service
        proxy, text = split_front(description)
        creator = None
        if is_tls_front(text):
            # The acceptor checked the folder; read here too (and again at
            # every reload).
            creator = tls_front_endpoint(reactor, text, reactor)[1]
            service.reloader.watch_certificates(creator)

        def build(number: int) -> Factory:
            return connection_chain(
                _Numbered(worker, number),
                proxy=proxy,
                tls=creator,
                clock=reactor,
                header_timeout=config.header_timeout,
                refusals=service.refusals,
            )

        return build


_ON_MESSAGE: dict[Op, Callable[[Worker, Any], None]] = {
    Op.CONFIGURE: Worker._on_configure,
    Op.BACKEND_STATE: Worker._on_state,
    Op.STATUS_REQUEST: Worker._on_status,
    Op.STOP: Worker._on_stop,
}
"""What a worker does with each message from the acceptor."""


def main(argv: list[str]) -> int:
    """
    Run worker C{argv[1]} (on the reactor named by C{argv[2]}, if given)
    until it has drained.

    @return: the exit status.
    """
    index = int(argv[1]) if len(argv) > 1 else 0
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    if len(argv) > 2:
        # The acceptor's kind of reactor (twistd -r NAME).
        from twisted.application.reactors import installReactor

        installReactor(argv[2])
    from twisted.internet import reactor

    forward = LogForwarder()
    globalLogBeginner.beginLoggingTo([forward], redirectStandardIO=False)
    ACCESS_ONLY.addObserver(cast(ILogObserver, forward.access_only))
    worker = Worker(index, reactor, forward)
    worker.start()
    # Twisted installs its own SIGINT handler when it runs: ignore it again.
    reactor.callWhenRunning(signal.signal, signal.SIGINT, signal.SIG_IGN)
    reactor.run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
