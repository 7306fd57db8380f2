"""
The gateway's own shortage (out of file descriptors, buffers, memory, local
ports) is not the backend's fault: L{gateway.session.backendlink.local_shortage} tells such
connection failures apart, a session that meets one is refused with the
reason C{local-resources} and leaves the backend alone, and a health probe
that meets one has no result.  Also: a refused game session (C{no-backend},
C{local-resources}) is a sampled refusal, not an access event.

Synchronous: real L{TCP4ClientEndpoint}s on a L{MemoryReactorClock}, whose
attempts are failed with the errors Twisted's TCP client reports.
"""

from __future__ import annotations

import errno
import os
import resource
import socket
from types import SimpleNamespace

import pytest
from twisted.internet import tcp
from twisted.internet.address import IPv4Address
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.error import (
    ConnectBindError,
    ConnectError,
    ConnectionRefusedError,
    NoRouteError,
    TCPTimedOutError,
    getConnectError,
)
from twisted.internet.testing import EventLoggingObserver, MemoryReactorClock
from twisted.logger import LogLevel, formatEvent
from twisted.python.failure import Failure

from gateway.front.limits import Refusal
from gateway.ops.registry import Counters, RefusalLog
from gateway.pool.backends import Backend, BackendState, Pool
from gateway.pool.health import HealthChecker
from gateway.session.backendlink import LOCAL_ERRNOS, local_shortage
from gateway.session.lifecycle import CloseReason
from gateway.session.relay import GameSession
from gateway.session.settings import SessionSettings
from tests.test_relay import HalfCloseableTransport

PEER = "192.0.2.7:40000"
"""The client's address as the session logs it."""

BUSY = "BUSY try later"
"""The busy line of these tests' sessions."""


def emfile() -> Exception:
    """
    What Twisted's TCP client reports when C{socket()} fails for want of
    descriptors (C{tcp.BaseClient.__init__}): C{Couldn't bind: 24: Too many
    open files.}
    """
    return ConnectBindError(errno.EMFILE, os.strerror(errno.EMFILE))


@pytest.mark.parametrize(
    "error",
    [
        emfile(),
        ConnectBindError(errno.ENFILE, os.strerror(errno.ENFILE)),
        ConnectBindError(errno.ENOBUFS, os.strerror(errno.ENOBUFS)),
        ConnectBindError(errno.ENOMEM, os.strerror(errno.ENOMEM)),
        getConnectError((errno.EADDRNOTAVAIL, os.strerror(errno.EADDRNOTAVAIL))),
        getConnectError((errno.EADDRINUSE, os.strerror(errno.EADDRINUSE))),
        OSError(errno.EMFILE, os.strerror(errno.EMFILE)),
        ConnectError(string=f"[Errno 24] {os.strerror(errno.EMFILE)}"),
        ConnectError(string=Failure(OSError(errno.ENOBUFS, os.strerror(errno.ENOBUFS)))),
    ],
    ids=repr,
)
def test_local_errors_are_the_gateways(error: Exception) -> None:
    """
    A connection attempt that failed for want of descriptors, buffers,
    memory or a local port is the gateway's shortage, however Twisted wraps
    the error: an errno in C{ConnectError.osError}, an C{OSError}, a failure
    inside the error, or only the error's text.
    """
    assert local_shortage(Failure(error))
    assert str(emfile()) == "Couldn't bind: 24: Too many open files."


@pytest.mark.parametrize(
    "error",
    [
        ConnectionRefusedError(errno.ECONNREFUSED, os.strerror(errno.ECONNREFUSED)),
        TCPTimedOutError(errno.ETIMEDOUT, os.strerror(errno.ETIMEDOUT)),
        NoRouteError(errno.ENETUNREACH, os.strerror(errno.ENETUNREACH)),
        getConnectError((errno.EHOSTUNREACH, os.strerror(errno.EHOSTUNREACH))),
        ConnectionRefusedError(),
        ConnectError(string="Connection was refused by other side"),
        OSError(errno.ECONNRESET, os.strerror(errno.ECONNRESET)),
        ValueError("not a connection error"),
    ],
    ids=repr,
)
def test_backend_errors_are_the_backends(error: Exception) -> None:
    """
    A refused, timed-out or unreachable connection is about the backend.
    """
    assert not local_shortage(Failure(error))


def test_local_errnos() -> None:
    """
    The local errors are the resource shortages, and no error a backend or
    the network causes.
    """
    assert {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM} <= LOCAL_ERRNOS
    assert errno.EADDRNOTAVAIL in LOCAL_ERRNOS
    assert not {errno.ECONNREFUSED, errno.ETIMEDOUT, errno.EHOSTUNREACH} & LOCAL_ERRNOS


class Rig:
    """
    Game sessions of one client each, on a pool of backends at
    C{127.0.0.1:7000 + i} (fall 3: passive detection on), with a refusal log.
    """

    def __init__(self, backends: int = 2) -> None:
        self.reactor = MemoryReactorClock()
        self.backends = [
            Backend(
                name=f"b{i}",
                description=f"tcp:127.0.0.1:{7000 + i}",
                endpoint=TCP4ClientEndpoint(self.reactor, "127.0.0.1", 7000 + i),
            )
            for i in range(backends)
        ]
        self.pool = Pool(self.backends, fall=3)
        self.counters = Counters()
        self.refusals = RefusalLog(self.reactor, self.counters)

    def session(self) -> tuple[GameSession, HalfCloseableTransport]:
        """
        A session started with first bytes: its first attempt is pending.
        """
        client = HalfCloseableTransport()
        session = GameSession(
            client,
            self.pool,
            self.reactor,
            SessionSettings(
                sniff_timeout=2.0,
                connect_timeout=5.0,
                idle_timeout=0.0,
                fin_timeout=0.0,
                busy_message=BUSY,
            ),
            peer=PEER,
            refusals=self.refusals,
        )
        client.on_lost = lambda reason: session.client_lost()
        session.start(b"hello\n")
        return session, client

    def fail(self, error: Exception, attempt: int = -1) -> None:
        """
        Fail a connection attempt (the last by default) as the reactor would.
        """
        factory = self.reactor.tcpClients[attempt][2]
        factory.clientConnectionFailed(self.reactor.connectors[attempt], Failure(error))

    def attempts(self) -> int:
        """
        Connection attempts so far.
        """
        return len(self.reactor.tcpClients)


def access_events(events: EventLoggingObserver) -> list[dict[str, object]]:
    return [e for e in events if e.get("log_namespace") == "gateway.access"]


def test_out_of_descriptors_refuses_the_session_and_spares_the_backend(
    log_events: EventLoggingObserver,
) -> None:
    """
    Many sessions in a row whose connection attempts fail with EMFILE are
    each refused at once (the busy line, then closed; no other backend
    tried), counted as C{local-resources}, logged with sampling (5, then a
    summary) and without an access line or a per-attempt warning; the
    backends stay up with no failure counted, where as many refused
    connections would have taken both down after 3.
    """
    rig = Rig()
    sessions = []
    for _ in range(12):
        session, client = rig.session()
        attempts = rig.attempts()
        rig.fail(emfile())
        assert rig.attempts() == attempts  # no other backend tried
        assert session.close_reason is CloseReason.LOCAL_RESOURCES
        assert client.value() == (BUSY + "\r\n").encode()
        assert client.lose_calls == 1 and not client.aborted
        sessions.append(session)
    assert [b.state for b in rig.backends] == [BackendState.UP] * 2
    assert [(b.failures, b.consecutive_failures) for b in rig.backends] == [(0, 0), (0, 0)]
    assert rig.pool.transitions == 0
    assert rig.pool.unserved == 0
    assert rig.counters.refused[Refusal.LOCAL_RESOURCES] == 12
    assert rig.counters.refused[Refusal.NO_BACKEND] == 0
    assert access_events(log_events) == []
    refused = [e for e in log_events if e.get("log_namespace") == "gateway.refusals"]
    assert len(refused) == 5
    text = formatEvent(refused[0])
    assert text.startswith(f"refused {PEER}: local-resources (the gateway is short of resources")
    assert "Couldn't bind: 24: Too many open files." in text
    assert not [e for e in log_events if "failed for a session" in e.get("log_format", "")]
    rig.reactor.advance(rig.refusals.window)
    summary = [e for e in log_events if e.get("log_namespace") == "gateway.refusals"][-1]
    assert summary["count"] == 7 and summary["reason"] == "local-resources"
    # A backend that really refuses is still counted, and still taken down.
    for _ in range(3):
        _session, _client = rig.session()
        rig.fail(ConnectionRefusedError())
        rig.fail(ConnectionRefusedError())
    assert [b.state for b in rig.backends] == [BackendState.DOWN] * 2


def test_local_shortage_after_a_failed_attempt() -> None:
    """
    A session whose first backend refused and whose next attempt meets the
    gateway's shortage is refused C{local-resources}; only the refusal is
    counted on the first backend.
    """
    rig = Rig()
    session, client = rig.session()
    rig.fail(ConnectionRefusedError())
    assert rig.attempts() == 2
    rig.fail(getConnectError((errno.EADDRNOTAVAIL, os.strerror(errno.EADDRNOTAVAIL))))
    assert rig.attempts() == 2
    assert session.close_reason is CloseReason.LOCAL_RESOURCES
    assert [b.failures for b in rig.backends] == [1, 0]
    assert client.value() == (BUSY + "\r\n").encode()


def test_no_backend_refusals_are_sampled_not_access_events(
    log_events: EventLoggingObserver,
) -> None:
    """
    A session no backend could take is a refusal like the others: counted
    exactly, logged 5 at a time per window then summarised, and written to
    no access log (3,000 of them used to write 3,000 access lines).
    """
    rig = Rig()
    for backend in rig.backends:
        rig.pool.set_state(backend, BackendState.DOWN, "test")
    for _ in range(300):
        session, client = rig.session()
        assert session.close_reason is CloseReason.NO_BACKEND
        assert client.value() == (BUSY + "\r\n").encode()
    assert rig.counters.refused[Refusal.NO_BACKEND] == 300
    assert rig.pool.unserved == 300
    assert access_events(log_events) == []
    rig.reactor.advance(rig.refusals.window)
    refused = [e for e in log_events if e.get("log_namespace") == "gateway.refusals"]
    assert len(refused) == 6
    assert refused[-1]["count"] == 295


def test_a_relayed_session_still_writes_its_access_line(
    log_events: EventLoggingObserver,
) -> None:
    """
    Sessions that reached a backend keep their access events.
    """
    rig = Rig()
    session, client = rig.session()
    host, port, factory, _timeout, _bind = rig.reactor.tcpClients[-1]
    protocol = factory.buildProtocol(IPv4Address("TCP", host, port))
    assert protocol is not None
    backend = HalfCloseableTransport()
    backend.on_lost = protocol.connectionLost
    protocol.makeConnection(backend)
    client.connection_lost()
    assert [e["reason"] for e in access_events(log_events)] == ["client-closed"]


def test_health_probe_short_of_resources_has_no_result(
    log_events: EventLoggingObserver,
) -> None:
    """
    A probe whose connection cannot be made for want of the gateway's own
    descriptors neither fails nor passes: however many rounds, the backend
    stays up with no failed probe counted and no fast re-probe; the shortage
    is logged once as a warning (not per probe), and once probes are made
    again that is logged too.  A real failure still counts.
    """
    reactor = MemoryReactorClock()
    backend = Backend(
        name="b0",
        description="tcp:127.0.0.1:7000",
        endpoint=TCP4ClientEndpoint(reactor, "127.0.0.1", 7000),
    )
    pool = Pool([backend])
    checker = HealthChecker(pool, reactor, interval=1.0, fall=3, timeout=0.5)
    checker.startService()

    def fail_probe(error: Exception) -> None:
        factory = reactor.tcpClients[-1][2]
        factory.clientConnectionFailed(reactor.connectors[-1], Failure(error))

    for _ in range(6):
        fail_probe(emfile())
        reactor.advance(1.0)
    assert len(reactor.tcpClients) == 7  # one probe per round, no fast re-probes
    assert backend.state is BackendState.UP and pool.transitions == 0
    health = checker.health(backend)
    assert health is not None and health.failures == 0
    lines = [formatEvent(e) for e in log_events if "health checks of" in e.get("log_format", "")]
    assert lines == [
        "health checks of b0 cannot be made: the gateway is short of resources: "
        "Couldn't bind: 24: Too many open files.; its state stays as it is"
    ]
    # A refused probe is the backend's: counted; the shortage is over.
    fail_probe(ConnectionRefusedError())
    assert health.failures == 1
    reactor.advance(0.25)  # the fast re-probe of a failing backend
    fail_probe(emfile())
    lines = [formatEvent(e) for e in log_events if "health checks of" in e.get("log_format", "")]
    assert lines[1:] == ["health checks of b0 are made again", lines[0]]
    assert health.failures == 1 and backend.state is BackendState.UP
    checker.stopService()


class Connector:
    """
    What Twisted's TCP client reports its failure to.
    """

    def __init__(self) -> None:
        self.failures: list[Failure] = []

    def connectionFailed(self, reason: Failure) -> None:  # noqa: N802 - Twisted's name
        self.failures.append(reason)


def test_real_emfile_is_reported_as_twisted_does() -> None:
    """
    Twisted's own TCP client, started while this process has no descriptor
    left (its soft limit lowered to its lowest free descriptor), reports
    C{Couldn't bind: 24: Too many open files.}, and that is a local shortage.
    """
    reactor = MemoryReactorClock()
    connector = Connector()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    lowest_free = os.open(os.devnull, os.O_RDONLY)
    os.close(lowest_free)
    # Descriptors must be below the limit: the next one would be lowest_free.
    resource.setrlimit(resource.RLIMIT_NOFILE, (lowest_free, hard))
    try:
        tcp.Client("127.0.0.1", 7000, None, connector, reactor)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    reactor.advance(0)
    [failure] = connector.failures
    assert failure.getErrorMessage() == "Couldn't bind: 24: Too many open files."
    assert local_shortage(failure)


class Channel:
    """
    Stands for a worker's control channel: records what the worker sends.
    """

    def __init__(self) -> None:
        self.sent: list[object] = []

    def send(self, message: object) -> None:
        self.sent.append(message)


def test_a_worker_without_a_free_descriptor_refuses_the_connection(
    log_events: EventLoggingObserver,
) -> None:
    """
    A worker with no descriptor free when a connection is handed over: the
    kernel drops the descriptor (C{MSG_CTRUNC}), so the client's connection
    closes; the worker still reads which connection it was, tells the
    acceptor it ended (which frees its slots there) and counts a
    C{local-resources} refusal, logging no error.
    """
    from gateway.process.wire import Ended, Passed, encode
    from gateway.process.workerproc import Worker, _Handoffs

    acceptor_end, worker_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    client, served = socket.socketpair()
    try:
        header = encode(Passed(number=7, front=0, data=b""))
        socket.send_fds(acceptor_end, [header], [served.fileno()])
        served.close()
        worker_end.setblocking(False)
        reactor = MemoryReactorClock()
        worker = Worker(1, reactor, forward=None)  # type: ignore[arg-type]
        counters = Counters()
        worker.service = SimpleNamespace(refusals=RefusalLog(reactor, counters))
        channel = Channel()
        worker.control = channel  # type: ignore[assignment]
        reader = _Handoffs(worker, worker_end)
        worker._handoffs = reader
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        lowest_free = os.open(os.devnull, os.O_RDONLY)
        os.close(lowest_free)
        resource.setrlimit(resource.RLIMIT_NOFILE, (lowest_free, hard))
        try:
            reader.doRead()
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        reactor.advance(0)
        assert channel.sent == [Ended((7,))]
        assert counters.refused[Refusal.LOCAL_RESOURCES] == 1
        client.settimeout(10)
        assert client.recv(1) == b""
        assert [e for e in log_events if e["log_level"] >= LogLevel.error] == []
        [refused] = [e for e in log_events if e.get("log_namespace") == "gateway.refusals"]
        assert "Too many open files: no descriptor free to receive the connection" in formatEvent(
            refused
        )
    finally:
        for sock in (acceptor_end, worker_end, client, served):
            sock.close()
