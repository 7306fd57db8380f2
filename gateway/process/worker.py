"""
A worker process of C{--workers N}: C{python -m gateway.process.worker INDEX}, started
by the acceptor (L{gateway.process.workers}) with its control channel on descriptor 3
and its handoff channel on descriptor 4.

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

import os
import pickle
import signal
import socket
import sys
from typing import Any, cast

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IAddress, IProtocol, IReadDescriptor
from twisted.internet.protocol import Factory
from twisted.logger import (
    FileLogObserver,
    ILogObserver,
    Logger,
    LogLevel,
    formatEvent,
    formatEventAsClassicLogText,
    globalLogBeginner,
)
from twisted.python.failure import Failure
from typing_extensions import override
from zope.interface import implementer

from gateway.config import GatewayConfig
from gateway.front.door import FrontDoor
from gateway.front.limits import Refusal
from gateway.front.proxyheader import HAPROXY_PREFIX, ProxyHeaderFactory
from gateway.ops.access import ACCESS_ONLY
from gateway.pool.backends import Backend, BackendState
from gateway.process.workers import HANDOFF_MESSAGE, Adopting, Framed
from gateway.session.backendlink import LOCAL_ERRNOS

_log = Logger()

CONTROL_FD = 3
HANDOFF_FD = 4


@implementer(ILogObserver)
class _Forward:
    """
    Sends log events (info and above) to the acceptor; before the channel
    is up, or after it is gone, writes them to standard error.
    """

    def __init__(self) -> None:
        self.control: _Control | None = None
        self.finished = False
        self._stderr = FileLogObserver(sys.stderr, formatEventAsClassicLogText)

    def access_only(self, event: dict[str, Any]) -> None:
        """
        An access event kept out of the main log (--access-log-only): to the
        acceptor's access log file only, without its text.
        """
        control = self.control
        if control is not None and control.transport is not None:
            record = {key: value for key, value in event.items() if type(value) in _PLAIN}
            record["log_level"] = "info"
            record["text"] = ""
            control.send({"op": "log", "event": record, "access_only": True})

    def __call__(self, event: dict[str, Any]) -> None:
        level = event.get("log_level")
        least = LogLevel.warn if self.finished else LogLevel.info
        if level is not None and level < least:
            # Once drained and disconnected, only problems are worth stderr
            # (not the reactor's "Main loop terminated").
            return
        control = self.control
        if control is None or control.transport is None:
            self._stderr(event)
            return
        # The text as this process would write it (Twisted's JSON form of an
        # event loses format specifications), and the plain fields, which
        # the access log reads.
        record = {key: value for key, value in event.items() if type(value) in _PLAIN}
        record["log_level"] = level.name if level is not None else "info"
        record["text"] = formatEvent(event)
        failure = event.get("log_failure")
        if failure is not None:
            record["traceback"] = failure.getTraceback()
        control.send({"op": "log", "event": record})


_PLAIN = (str, int, float, bool, type(None))


class _Control(Framed):
    """
    The worker's end of its control channel.
    """

    def __init__(self, worker: Worker) -> None:
        super().__init__()
        self.worker = worker

    @override
    def connectionMade(self) -> None:
        self.worker.control = self
        self.worker.forward.control = self

    @override
    def message_received(self, message: dict[str, Any]) -> None:
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
                message = pickle.loads(data)
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
        front.assigned_id = self.number
        number, worker = self.number, self.worker
        front.add_close_hook(lambda: worker.ended(number))
        return front


class Worker:
    """
    One worker's reactor-side state: its gateway service, its channels and
    the connections it serves.
    """

    def __init__(self, index: int, reactor: Any, forward: _Forward) -> None:
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
        control = socket.socket(fileno=CONTROL_FD)
        control.setblocking(False)
        self.reactor.adoptStreamConnection(
            control.fileno(), socket.AF_UNIX, Adopting(_Control(self))
        )
        control.close()
        sock = socket.socket(fileno=HANDOFF_FD)
        sock.setblocking(False)
        self._handoffs = _Handoffs(self, sock)
        self.reactor.addSystemEventTrigger("before", "shutdown", self._drain)

    # Control messages

    def received(self, message: dict[str, Any]) -> None:
        op = message.get("op")
        if op == "config":
            self._configure(message["config"])
        elif op == "state":
            self._set_state(message["backend"], message["state"], message["reason"])
        elif op == "status":
            self._status(message["n"], message["limit"])
        elif op == "stop":
            if self.service is not None:
                self.service._stop_now("the acceptor stops at once")

    def _configure(self, config: GatewayConfig) -> None:
        from gateway.process.service import _apply, make_service

        if self.service is not None:
            self._applying = True
            try:
                _apply(self.service, self.service.parts, config)
            finally:
                self._applying = False
            return
        self.service = make_service(config, self.reactor, role="worker")
        self.service.pool.observers.append(self._state_changed)
        factory = _NumberedFactories(self)
        for description in config.listen:
            self._fronts.append((description, factory.chain(description, config)))
        self.service.startService()
        assert self._handoffs is not None
        self.reactor.addReader(self._handoffs)
        self._send({"op": "ready", "pid": os.getpid()})
        from gateway.process.uvloopreactor import reactor_name

        _log.info(
            "worker {index} (pid {pid}) ready, reactor {reactor}",
            index=self.index,
            pid=os.getpid(),
            reactor=reactor_name(self.reactor) or type(self.reactor).__name__,
        )

    def _set_state(self, name: str, state: str, reason: str) -> None:
        backend = self.service.pool.get(name) if self.service is not None else None
        if backend is None:
            return
        self._applying = True
        try:
            self.service.pool.set_state(backend, BackendState(state), reason, log=False)
        finally:
            self._applying = False

    def _state_changed(self, backend: Backend) -> None:
        if not self._applying:
            self._send(
                {
                    "op": "state",
                    "backend": backend.name,
                    "state": backend.state.value,
                    "reason": backend.reason,
                }
            )

    def _status(self, number: int, limit: int | None) -> None:
        from gateway.ops.admin import AdminState, session_json, status

        service = self.service
        reply: dict[str, Any] = {"op": "status", "n": number}
        if service is not None:
            state = AdminState(service.pool, service.registry, service.counters)
            document = status(state, limit=0)
            ids, sessions = service.registry.snapshot()
            if limit is not None:
                ids, sessions = ids[:limit], sessions[:limit]
            reply["counters"] = document["counters"]
            reply["backends"] = {
                b.name: [b.active, b.total, b.failures, b.description]
                for b in service.pool.backends
            }
            reply["sessions"] = [
                (n, session_json(n, s, self.index)) for n, s in zip(ids, sessions, strict=True)
            ]
            reply["live"] = len(service.registry)
        self._send(reply)

    def _send(self, message: dict[str, Any]) -> None:
        if self.control is not None:
            self.control.send(message)

    # Connections

    def handoff(self, message: dict[str, Any], fds: list[int], dropped: bool = False) -> None:
        """
        A connection from the acceptor (or its last message, when draining).

        @param dropped: whether its descriptor was dropped for want of room
            in this process's descriptor table.
        """
        if message.get("op") == "drain":
            self.handoffs_ended()
            self._stop_reactor()
            return
        number = message["id"]
        if len(fds) != 1:
            for fd in fds:
                os.close(fd)
            self.ended(number)
            if dropped:
                self._short_of_resources("unknown", "no descriptor free to receive it")
            return
        fd = fds[0]
        try:
            self._adopt(fd, number, message["front"], message["data"])
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
            self._send({"op": "end", "ids": ended})

    # Stopping

    def reading_handoffs(self, reader: _Handoffs) -> bool:
        """
        Whether C{reader} is still this worker's handoff reader.
        """
        return self._handoffs is reader

    def handoffs_ended(self) -> None:
        if self._handoffs is not None:
            self.reactor.removeReader(self._handoffs)
            self._handoffs.sock.close()
            self._handoffs = None

    def acceptor_gone(self) -> None:
        self.control = None
        self.forward.control = None
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
        self._send({"op": "draining"})
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
        control.closed = closed
        self.forward.control = None
        self.forward.finished = True
        control.transport.loseConnection()

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
        from twisted.protocols.tls import TLSMemoryBIOFactory

        from gateway.front.tls import is_tls_front, tls_front_endpoint

        worker = self.worker
        reactor = worker.reactor
        service = worker.service
        proxy = description.startswith(HAPROXY_PREFIX)
        text = description[len(HAPROXY_PREFIX) :] if proxy else description
        creator = None
        if is_tls_front(text):
            # The acceptor checked the folder; read here too (a reload reads
            # it again through the service's parts).
            creator = tls_front_endpoint(reactor, text, reactor)[1]
            assert service.parts is not None
            service.parts.certificates.append(creator)

        def build(number: int) -> Factory:
            factory: Factory = _Numbered(worker, number)
            if proxy:
                factory = ProxyHeaderFactory(
                    factory,
                    clock=reactor,
                    timeout=config.header_timeout,
                    refusals=service.refusals,
                )
            if creator is not None:
                factory = TLSMemoryBIOFactory(creator, False, factory)  # type: ignore[assignment]
            return factory

        return build


def main(argv: list[str]) -> int:
    index = int(argv[1]) if len(argv) > 1 else 0
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    if len(argv) > 2:
        # The acceptor's kind of reactor (twistd -r NAME).
        from twisted.application.reactors import installReactor

        installReactor(argv[2])
    from twisted.internet import reactor

    forward = _Forward()
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
