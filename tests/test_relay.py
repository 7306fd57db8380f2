"""
Tests for L{gateway.session.relay}: a game session relaying one client to one backend.

Every test is synchronous and uses no real reactor or socket.  The backends
are real L{TCP4ClientEndpoint}s on a L{MemoryReactorClock}, which records each
C{connectTCP} in C{tcpClients}; a test completes an attempt by building the
protocol from the recorded factory and connecting it to an in-memory
transport, or fails it through the factory's C{clientConnectionFailed}, as
Twisted's own endpoint tests do.  A C{tls:} backend is played by a transport
that provides L{INegotiated}, as L{twisted.protocols.tls.TLSMemoryBIOProtocol}
does: the test completes its handshake by calling C{handshakeCompleted}, or
fails it by losing the connection with the error OpenSSL or service_identity
would report.  Time only moves when a test advances the clock.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from OpenSSL import SSL
from service_identity import VerificationError
from service_identity.exceptions import DNSMismatch
from service_identity.hazmat import DNS_ID
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.error import (
    ConnectionAborted,
    ConnectionDone,
    ConnectionLost,
    ConnectionRefusedError,
)
from twisted.internet.interfaces import (
    IHalfCloseableDescriptor,
    IHalfCloseableProtocol,
    IHandshakeListener,
    INegotiated,
    IProtocol,
    IProtocolFactory,
    IStreamClientEndpoint,
)
from twisted.internet.testing import (
    EventLoggingObserver,
    MemoryReactorClock,
    RaisingMemoryReactor,
    StringTransport,
)
from twisted.logger import LogLevel, formatEvent
from twisted.python.failure import Failure
from typing_extensions import override
from zope.interface import alsoProvides, implementer

from gateway.pool.backends import Backend, BackendState, Pool
from gateway.session.backendlink import BackendLink, Link, describe_failure
from gateway.session.lifecycle import CloseReason, Phase
from gateway.session.relay import CLOSE_GRACE, HOLD_LIMIT, GameSession
from gateway.session.settings import SessionSettings

CONNECT_TIMEOUT = 5.0
"""Seconds per backend attempt in these tests."""

PEER = "192.0.2.7:40000"
"""The client's address as the session logs it."""

CERT_VERIFY_FAILED = SSL.Error([("SSL routines", "", "certificate verify failed")])
"""What pyOpenSSL reports when the backend's certificate does not chain to a trust root."""


class FakeTransport(StringTransport):
    """
    An in-memory transport that records what the relay asked of it and loses
    its connection only when the test says the reactor got round to it.

    Two departures from L{StringTransport}, both to behave like Twisted's real
    TCP transports (L{twisted.internet.abstract.FileDescriptor}):

      - C{loseConnection} only marks the transport as disconnecting; the test
        calls L{connection_lost} to deliver C{connectionLost}, as a reactor
        does after flushing, never from inside C{loseConnection}.
        (L{StringTransportWithDisconnection} calls it re-entrantly, which a
        real transport never does.)
      - C{unregisterProducer} with no producer registered is a no-op, as in
        C{FileDescriptor} and C{TLSMemoryBIOProtocol}; L{StringTransport}
        raises.  The relay unregisters twice on some closing paths (both
        EOFs, for one), which real transports allow.

    @ivar flow: C{"pause"}/C{"resume"} for each C{pauseProducing} and
        C{resumeProducing}, in order.
    @ivar lose_calls: how many times C{loseConnection} was called.
    @ivar lost: whether C{connectionLost} was delivered.
    @ivar on_lost: what the reactor calls when the connection is lost.
    @ivar protocol: the protocol this transport drives, as on Twisted's TCP
        transports (for a backend, the endpoint's wrapper around the link).
    """

    def __init__(self) -> None:
        super().__init__()
        self.flow: list[str] = []
        self.lose_calls = 0
        self.lost = False
        self.on_lost: Callable[[Failure], object] | None = None
        self.protocol: IProtocol | None = None

    @override
    def pauseProducing(self) -> None:
        super().pauseProducing()
        self.flow.append("pause")

    @override
    def resumeProducing(self) -> None:
        super().resumeProducing()
        self.flow.append("resume")

    @override
    def loseConnection(self) -> None:
        self.lose_calls += 1
        super().loseConnection()

    @override
    def unregisterProducer(self) -> None:
        self.producer = None
        self.streaming = None

    @property
    def aborted(self) -> bool:
        """
        Whether C{abortConnection} was called.
        """
        return bool(self.disconnected)

    def connection_lost(self, reason: Failure | None = None) -> None:
        """
        Deliver the end of the connection to its protocol, once.
        """
        assert not self.lost, "connectionLost delivered twice"
        self.lost = True
        self.connected = False
        assert self.on_lost is not None
        self.on_lost(reason or Failure(ConnectionDone()))


@implementer(IHalfCloseableDescriptor)
class HalfCloseableTransport(FakeTransport):
    """
    A L{FakeTransport} that can shut down its sending side, as TCP can.

    @ivar write_closed: whether C{loseWriteConnection} was called.
    """

    write_closed = False

    # Twisted's name from IHalfCloseableDescriptor; @override needs a base class method.
    def loseWriteConnection(self) -> None:  # noqa: N802
        """
        Record the half-close.
        """
        self.write_closed = True

    def writeConnectionLost(self, reason: Failure) -> None:
        """
        Part of L{IHalfCloseableDescriptor}; unused here.
        """

    def readConnectionLost(self, reason: Failure) -> None:
        """
        Part of L{IHalfCloseableDescriptor}; unused here.
        """


class TLSTransport(FakeTransport):
    """
    A L{FakeTransport} standing for a TLS connection: like
    L{twisted.protocols.tls.TLSMemoryBIOProtocol}, it provides L{INegotiated}
    and cannot half-close.

    @ivar negotiatedProtocol: no ALPN here.
    """

    def __init__(self) -> None:
        super().__init__()
        # Twisted's name, from INegotiated.
        self.negotiatedProtocol: bytes | None = None  # noqa: N815
        # Declared on the instance: INegotiated extends ISSLTransport and
        # ITCPTransport, whose other methods the relay never calls, so
        # @implementer would have mypy-zope ask for all of them.
        alsoProvides(self, INegotiated)


def link_of(protocol: IProtocol) -> BackendLink:
    """
    The session's L{BackendLink} inside C{protocol}, the protocol the reactor
    drives: Twisted's client endpoints wrap it in their private
    C{_WrappingProtocol}; L{InstantEndpoint} does not.
    """
    link = getattr(protocol, "_wrappedProtocol", protocol)
    assert isinstance(link, BackendLink)
    return link


def backend_eof(protocol: IProtocol) -> None:
    """
    Deliver an EOF from a plain backend as a TCP transport does: to the
    protocol it drives, which must provide L{IHalfCloseableProtocol} (the
    endpoint's wrapper must pass it on; see
    L{test_backend_eof_through_endpoint_is_a_half_close}).
    """
    IHalfCloseableProtocol(protocol).readConnectionLost()


def tcp_eof(protocol: IProtocol, transport: FakeTransport) -> None:
    """
    Deliver an EOF from the backend whatever the protocol the transport
    drives, as C{twisted.internet.tcp.Connection.readConnectionLost} does: as
    C{readConnectionLost} to a protocol that provides
    L{IHalfCloseableProtocol}, else as the end of the connection (which is
    how a TLS backend's end of stream arrives).
    """
    half_closeable = IHalfCloseableProtocol(protocol, None)
    if half_closeable is None:
        transport.connection_lost(Failure(ConnectionDone()))
    else:
        half_closeable.readConnectionLost()


def handshake_completed(protocol: IProtocol) -> None:
    """
    Tell the session's link that its TLS handshake is done, as
    C{TLSMemoryBIOProtocol} does: it wraps the link directly (the endpoint's
    wrapper is outside it) and calls C{handshakeCompleted} on it if it
    provides L{IHandshakeListener}.
    """
    link = link_of(protocol)
    assert IHandshakeListener.providedBy(link)
    link.handshakeCompleted()


def warnings_logged(log_events: EventLoggingObserver) -> list[str]:
    """
    The text of each warning logged so far.
    """
    return [formatEvent(e) for e in log_events if e["log_level"] is LogLevel.warn]


def written(transport: StringTransport) -> bytes:
    """
    Everything written to C{transport} so far.
    """
    data: bytes = transport.value()
    return data


def memory_backends(reactor: MemoryReactorClock, count: int) -> list[Backend]:
    """
    C{count} backends C{b0}, C{b1}, ... with real TCP endpoints (ports 7000
    and up) on a memory reactor: their connection attempts are recorded in
    C{reactor.tcpClients}, never made.
    """
    return [
        Backend(
            name=f"b{i}",
            description=f"tcp:127.0.0.1:{7000 + i}",
            endpoint=TCP4ClientEndpoint(reactor, "127.0.0.1", 7000 + i),
        )
        for i in range(count)
    ]


class Gateway:
    """
    One game session under test: its client transport, its pool of backends
    on a memory reactor, and helpers to play the backends' part.

    @ivar reactor: records connection attempts and is the session's clock.
    @ivar backends: the pool's backends, C{b0}, C{b1}, ... on ports 7000, 7001, ...
    @ivar client: the client's transport; losing it tells the session, as the
        front door does.
    @ivar session: the session under test (not started).
    """

    def __init__(
        self,
        backends: int = 3,
        *,
        client: FakeTransport | None = None,
        idle_timeout: float = 0.0,
        fin_timeout: float = 0.0,
        retries: int = 2,
    ) -> None:
        self.reactor = MemoryReactorClock()
        self.backends = memory_backends(self.reactor, backends)
        self.pool = Pool(self.backends)
        self.client = client if client is not None else HalfCloseableTransport()
        self.session = GameSession(
            self.client,
            self.pool,
            self.reactor,
            SessionSettings(
                sniff_timeout=2.0,
                connect_timeout=CONNECT_TIMEOUT,
                idle_timeout=idle_timeout,
                fin_timeout=fin_timeout,
                retries=retries,
            ),
            peer=PEER,
        )
        self.client.on_lost = lambda reason: self.session.client_lost()

    def attempted_ports(self) -> list[int]:
        """
        The port of each connection attempt so far, in order.
        """
        return [port for _host, port, _factory, _timeout, _bind in self.reactor.tcpClients]

    def accept(
        self, attempt: int = -1, transport: FakeTransport | None = None
    ) -> tuple[FakeTransport, IProtocol]:
        """
        Complete a connection attempt (the last by default).

        @return: the backend side's transport and the protocol the reactor
            would drive.
        """
        host, port, factory, _timeout, _bind = self.reactor.tcpClients[attempt]
        protocol = factory.buildProtocol(IPv4Address("TCP", host, port))
        assert protocol is not None
        if transport is None:
            transport = HalfCloseableTransport()
        transport.on_lost = protocol.connectionLost
        transport.protocol = protocol
        protocol.makeConnection(transport)
        return transport, protocol

    def accept_tls(self, attempt: int = -1) -> tuple[TLSTransport, IProtocol]:
        """
        Complete the TCP part of a connection attempt (the last by default)
        to a TLS backend; the handshake is still to come.
        """
        transport = TLSTransport()
        _, protocol = self.accept(attempt, transport)
        return transport, protocol

    def refuse(self, attempt: int = -1) -> None:
        """
        Fail a connection attempt (the last by default) as refused.
        """
        factory = self.reactor.tcpClients[attempt][2]
        connector = self.reactor.connectors[attempt]
        factory.clientConnectionFailed(connector, Failure(ConnectionRefusedError()))

    def stopped_connecting(self, attempt: int = -1) -> bool:
        """
        Whether the session gave up on a connection attempt (the last by default).
        """
        stopped: bool = self.reactor.connectors[attempt].stoppedConnecting
        return stopped

    def connected(
        self, first: bytes = b"hello", backend: FakeTransport | None = None
    ) -> tuple[FakeTransport, IProtocol]:
        """
        Start the session and connect it to the first backend.
        """
        self.session.start(first)
        return self.accept(transport=backend)

    def connected_tls(self, first: bytes = b"hello") -> tuple[TLSTransport, IProtocol]:
        """
        Start the session and connect it to the first backend over TLS,
        handshake included.
        """
        self.session.start(first)
        transport, protocol = self.accept_tls()
        handshake_completed(protocol)
        return transport, protocol

    def counters(self) -> list[tuple[int, int, int]]:
        """
        C{(active, total, failures)} of each backend.
        """
        return [(b.active, b.total, b.failures) for b in self.backends]


# Connecting


def test_client_still_read_while_connecting() -> None:
    """
    Starting a session holds the first bytes while the first backend
    connects, and keeps reading from the client (so a client that leaves is
    noticed): the client is not paused, and nothing is relayed yet.
    """
    gateway = Gateway()
    gateway.session.start(b"hello")
    assert gateway.client.flow == []
    assert gateway.client.producerState == "producing"
    assert gateway.attempted_ports() == [7000]
    assert gateway.session.backend is None
    assert gateway.session.bytes_in == 0


def test_client_not_paused_or_resumed_on_connect() -> None:
    """
    Once the backend connects, the session records its backend; a client
    that was never paused is not resumed either.
    """
    gateway = Gateway()
    gateway.connected()
    assert gateway.client.flow == []
    assert gateway.client.producerState == "producing"
    assert gateway.session.backend is gateway.backends[0]


def test_held_bytes_written_first_in_order() -> None:
    """
    The first bytes, then the bytes that arrived while connecting, reach the
    backend first and in order, before anything sent after the connect.
    """
    gateway = Gateway()
    gateway.session.start(b"first ")
    gateway.session.client_data(b"second ")
    gateway.session.client_data(b"third ")
    backend, _ = gateway.accept()
    assert written(backend) == b"first second third "
    gateway.session.client_data(b"fourth")
    assert written(backend) == b"first second third fourth"
    assert gateway.session.bytes_in == len(b"first second third fourth")


def test_no_first_bytes_nothing_written() -> None:
    """
    A session started with no bytes (a server-speaks-first protocol) writes
    nothing to the backend on connect.
    """
    gateway = Gateway()
    backend, _ = gateway.connected(b"")
    assert written(backend) == b""
    assert gateway.session.bytes_in == 0


def test_producers_registered_both_ways() -> None:
    """
    After the connect, each transport is the other's streaming producer, so a
    full write buffer on either side stops reading on the other.
    """
    gateway = Gateway()
    backend, _ = gateway.connected()
    assert gateway.client.producer is backend
    assert gateway.client.streaming is True
    assert backend.producer is gateway.client
    assert backend.streaming is True


def test_connect_counts_session() -> None:
    """
    Connecting counts one active session and one session in total on the
    chosen backend, and none anywhere else.
    """
    gateway = Gateway()
    gateway.connected()
    assert gateway.counters() == [(1, 1, 0), (0, 0, 0), (0, 0, 0)]


def test_connect_cancels_timeout() -> None:
    """
    A connect that completes in time leaves no timer behind (with no idle
    timeout), so the timeout can never cancel a live connection.
    """
    gateway = Gateway()
    gateway.connected()
    assert gateway.reactor.getDelayedCalls() == []
    gateway.reactor.advance(CONNECT_TIMEOUT * 2)
    assert gateway.attempted_ports() == [7000]
    assert gateway.backends[0].failures == 0


def test_refused_backend_fails_over() -> None:
    """
    A refused attempt is counted as a failure of that backend and the next
    backend is tried; it gets every held byte, in order.
    """
    gateway = Gateway()
    gateway.session.start(b"one ")
    gateway.session.client_data(b"two ")
    gateway.refuse()
    assert gateway.attempted_ports() == [7000, 7001]
    gateway.session.client_data(b"three")
    backend, _ = gateway.accept()
    assert written(backend) == b"one two three"
    assert gateway.session.backend is gateway.backends[1]
    assert gateway.counters() == [(0, 0, 1), (1, 1, 0), (0, 0, 0)]
    assert gateway.client.flow == []


def test_timed_out_backend_fails_over() -> None:
    """
    An attempt that has not connected after C{connect_timeout} seconds is
    cancelled (its connector stops connecting), counted as a failure, and the
    next backend is tried with every held byte.
    """
    gateway = Gateway()
    gateway.session.start(b"held")
    gateway.reactor.advance(CONNECT_TIMEOUT - 0.1)
    assert gateway.attempted_ports() == [7000]
    assert not gateway.stopped_connecting(0)
    gateway.reactor.advance(0.1)
    assert gateway.stopped_connecting(0)
    assert gateway.attempted_ports() == [7000, 7001]
    assert gateway.backends[0].failures == 1
    backend, _ = gateway.accept()
    assert written(backend) == b"held"
    assert gateway.counters() == [(0, 0, 1), (1, 1, 0), (0, 0, 0)]


def test_each_attempt_gets_its_own_timeout() -> None:
    """
    The timeout applies per attempt: a second backend tried after a refusal
    has the full C{connect_timeout} from its own start.
    """
    gateway = Gateway()
    gateway.session.start(b"x")
    gateway.reactor.advance(CONNECT_TIMEOUT - 1)
    gateway.refuse()
    gateway.reactor.advance(CONNECT_TIMEOUT - 0.5)
    assert gateway.attempted_ports() == [7000, 7001]
    gateway.reactor.advance(0.5)
    assert gateway.attempted_ports() == [7000, 7001, 7002]
    assert gateway.counters() == [(0, 0, 1), (0, 0, 1), (1, 0, 0)]  # the pending attempt counts


def test_failover_skips_down_backend() -> None:
    """
    Failover only tries backends that are up.
    """
    gateway = Gateway()
    gateway.backends[1].state = BackendState.DOWN
    gateway.session.start(b"x")
    gateway.refuse()
    assert gateway.attempted_ports() == [7000, 7002]


def test_every_backend_failing_closes_client(log_events: EventLoggingObserver) -> None:
    """
    When every backend failed once (refused or timed out), no backend is tried
    twice, the client is closed cleanly, the reason is NO_BACKEND, and an error
    naming the backends tried is logged.
    """
    gateway = Gateway()
    gateway.session.start(b"x")
    gateway.refuse()
    gateway.reactor.advance(CONNECT_TIMEOUT)
    gateway.refuse()
    assert gateway.attempted_ports() == [7000, 7001, 7002]
    assert gateway.client.lose_calls == 1
    assert not gateway.client.aborted
    assert gateway.session.close_reason is CloseReason.NO_BACKEND
    assert gateway.counters() == [(0, 0, 1), (0, 0, 1), (0, 0, 1)]
    assert gateway.reactor.getDelayedCalls() == []
    errors = [e for e in log_events if e["log_level"] is LogLevel.error]
    assert [e["tried"] for e in errors] == ["b0, b1, b2"]
    # The client's connection then ends; nothing else happens.
    gateway.client.connection_lost()
    assert gateway.session.close_reason is CloseReason.NO_BACKEND
    assert gateway.attempted_ports() == [7000, 7001, 7002]


@pytest.mark.parametrize("retries", [0, 1])
def test_retries_bound_the_attempts(retries: int, log_events: EventLoggingObserver) -> None:
    """
    With four backends that all refuse, a session makes C{1 + retries}
    attempts, on as many different backends, and no more, even though
    backends that were not tried are still up: then the client is closed
    cleanly, the reason is NO_BACKEND, and the error names only the
    backends tried.
    """
    gateway = Gateway(backends=4, retries=retries)
    gateway.session.start(b"x")
    for _ in range(retries + 1):
        assert gateway.client.lose_calls == 0
        gateway.refuse()
    tried = [7000 + i for i in range(retries + 1)]
    assert gateway.attempted_ports() == tried
    assert gateway.client.lose_calls == 1
    assert not gateway.client.aborted
    assert gateway.session.close_reason is CloseReason.NO_BACKEND
    assert [b.failures for b in gateway.backends] == [1] * (retries + 1) + [0] * (3 - retries)
    assert all(b.state is BackendState.UP for b in gateway.backends)
    assert gateway.pool.unserved == 1
    assert gateway.reactor.getDelayedCalls() == []
    errors = [e for e in log_events if e["log_level"] is LogLevel.error]
    assert [e["tried"] for e in errors] == [", ".join(f"b{i}" for i in range(retries + 1))]
    # Time passing or the client leaving starts no further attempt.
    gateway.reactor.advance(CONNECT_TIMEOUT * 2)
    gateway.client.connection_lost()
    assert gateway.attempted_ports() == tried
    assert gateway.session.close_reason is CloseReason.NO_BACKEND


def test_no_backend_up_closes_client() -> None:
    """
    With no backend up, the session closes the client at once, NO_BACKEND.
    """
    gateway = Gateway(backends=2)
    for backend in gateway.backends:
        backend.state = BackendState.DRAINING
    gateway.session.start(b"x")
    assert gateway.attempted_ports() == []
    assert gateway.client.lose_calls == 1
    assert gateway.session.close_reason is CloseReason.NO_BACKEND


def test_empty_pool_closes_client() -> None:
    """
    With no backend configured, the session closes the client at once, NO_BACKEND.
    """
    gateway = Gateway(backends=0)
    gateway.session.start(b"x")
    assert gateway.client.lose_calls == 1
    assert gateway.session.close_reason is CloseReason.NO_BACKEND


def test_failure_logged_with_reason(log_events: EventLoggingObserver) -> None:
    """
    Each failed attempt is logged as a warning naming the backend and why:
    the error for a refusal, the timeout for a timeout.
    """
    gateway = Gateway()
    gateway.session.start(b"x")
    gateway.refuse()
    gateway.reactor.advance(CONNECT_TIMEOUT)
    warnings = [e for e in log_events if e["log_level"] is LogLevel.warn]
    assert [e["backend"] for e in warnings] == ["b0", "b1"]
    assert "refused" in warnings[0]["reason"]
    assert warnings[1]["reason"] == "no connection within 5 s"


def test_client_lost_while_connecting() -> None:
    """
    A client that leaves while its backend connects cancels the attempt: the
    connector stops, no other backend is tried, no failure is counted, no
    timer is left, and the reason is CLIENT_LEFT_EARLY.
    """
    gateway = Gateway()
    gateway.session.start(b"x")
    gateway.client.connection_lost()
    assert gateway.stopped_connecting()
    assert gateway.session.close_reason is CloseReason.CLIENT_LEFT_EARLY
    assert gateway.reactor.getDelayedCalls() == []
    gateway.reactor.advance(CONNECT_TIMEOUT * 2)
    assert gateway.attempted_ports() == [7000]
    assert gateway.counters() == [(0, 0, 0)] * 3


def test_client_lost_while_connecting_after_failover() -> None:
    """
    A client that leaves during the second attempt cancels that attempt, and
    only the first backend's failure is counted.
    """
    gateway = Gateway()
    gateway.session.start(b"x")
    gateway.refuse()
    gateway.client.connection_lost()
    assert gateway.stopped_connecting(1)
    assert gateway.attempted_ports() == [7000, 7001]
    assert gateway.session.close_reason is CloseReason.CLIENT_LEFT_EARLY
    assert gateway.counters() == [(0, 0, 1), (0, 0, 0), (0, 0, 0)]


@pytest.mark.parametrize("reason", [CloseReason.SHUTDOWN, CloseReason.DRAIN_TIMEOUT])
def test_closed_while_connecting(reason: CloseReason, log_events: EventLoggingObserver) -> None:
    """
    A session the gateway closes while its backend connects (shutdown, the
    drain's end, a WebSocket protocol error) gives the attempt up: the
    connector stops, no other backend is tried, no failure is counted or
    logged against the backend, the client is not refused for want of a
    backend, and the session ends with the reason given.
    """
    gateway = Gateway()
    gateway.session.start(b"x")
    gateway.session.close(reason)
    assert gateway.stopped_connecting()
    assert gateway.client.disconnecting
    assert written(gateway.client) == b""
    gateway.client.connection_lost()
    gateway.reactor.advance(CONNECT_TIMEOUT * 2)
    assert gateway.attempted_ports() == [7000]
    assert gateway.counters() == [(0, 0, 0)] * 3
    assert gateway.session.close_reason is reason
    assert warnings_logged(log_events) == []
    assert [e for e in log_events if e["log_level"] is LogLevel.error] == []


def test_client_eof_while_connecting() -> None:
    """
    A client that sends its bytes and half-closes before the backend connects
    gets them delivered and the end passed on: the backend is half-closed
    right after the held bytes, its producer unregistered, and the finished
    client is neither paused nor resumed.
    """
    gateway = Gateway()
    gateway.session.start(b"request")
    gateway.session.client_eof()
    backend, _ = gateway.accept()
    assert written(backend) == b"request"
    assert isinstance(backend, HalfCloseableTransport)
    assert backend.write_closed
    assert backend.lose_calls == 0
    assert backend.producer is None
    assert gateway.client.flow == []
    # The reply still reaches the client.
    gateway.session.backend_data(b"reply")
    assert written(gateway.client) == b"reply"


def test_failure_log_line(log_events: EventLoggingObserver) -> None:
    """
    A failed attempt's warning reads as one line naming the backend, the
    client and the reason.
    """
    gateway = Gateway()
    gateway.session.start(b"x")
    gateway.refuse()
    assert warnings_logged(log_events) == [
        f"backend b0 failed for a session from {PEER}: Connection was refused by other side."
    ]


def test_session_logs_only_its_end(log_events: EventLoggingObserver) -> None:
    """
    A session that connects and ends logs one line, its end, with its byte
    counts: no line when it connects, and none from the factory handed to
    the endpoint when the connector starts and stops it (Twisted's factories
    log "Starting factory" and "Stopping factory" unless quiet).
    """
    gateway = Gateway()
    gateway.session.start(b"hello")
    factory = gateway.reactor.tcpClients[0][2]
    factory.doStart()  # as the connector does when it starts connecting
    backend, protocol = gateway.accept()
    protocol.dataReceived(b"hi")
    backend.connection_lost()
    factory.doStop()  # as the connector does once the connection ended
    gateway.client.connection_lost()
    assert [formatEvent(e) for e in log_events] == [
        f"game session from {PEER} to b0 ended (backend-closed): "
        "5 bytes in, 2 bytes out, 0.000 s, copy"
    ]
    [event] = log_events
    assert event["log_namespace"] == "gateway.access"
    assert {k: event[k] for k in ("kind", "peer", "backend", "reason", "duration")} == {
        "kind": "game",
        "peer": PEER,
        "backend": "b0",
        "reason": "backend-closed",
        "duration": 0.0,
    }


def test_backend_lost_after_ready_is_not_a_failure() -> None:
    """
    A backend connection lost once the session is established ends the
    session: it is not a failed attempt, so no failure is counted and no
    other backend is tried.
    """
    gateway = Gateway()
    backend, _ = gateway.connected()
    backend.connection_lost(Failure(ConnectionLost()))
    assert gateway.attempted_ports() == [7000]
    assert gateway.counters() == [(0, 1, 0), (0, 0, 0), (0, 0, 0)]
    assert gateway.session.close_reason is CloseReason.BACKEND_CLOSED


def test_backend_lost_after_client_eof_is_client_closed() -> None:
    """
    When the client's EOF came first, the backend connection ending
    afterwards leaves CLIENT_CLOSED as the reason.
    """
    gateway = Gateway()
    backend, _ = gateway.connected()
    gateway.session.client_eof()
    backend.connection_lost()
    assert gateway.session.close_reason is CloseReason.CLIENT_CLOSED
    assert gateway.client.lose_calls == 1
    assert gateway.counters()[0] == (0, 1, 0)


# Holding the client's bytes while connecting


def numbered_chunks(count: int, size: int) -> list[bytes]:
    """
    C{count} chunks of C{size} bytes, each of a different letter, so that
    order matters when they are joined.
    """
    return [bytes([ord("a") + i % 26]) * size for i in range(count)]


def test_hold_limit_pauses_client_and_connect_resumes() -> None:
    """
    While connecting, the client is read until more than L{HOLD_LIMIT}
    bytes are held, then paused, once; a chunk already on its way is still
    held.  The connect writes every held byte in order, registers the
    producers and resumes the client, once.
    """
    gateway = Gateway()
    size = 5000
    below = HOLD_LIMIT // size  # chunks that stay below the limit
    chunks = numbered_chunks(below + 3, size)
    gateway.session.start(chunks[0])
    for chunk in chunks[1:below]:
        gateway.session.client_data(chunk)
    assert below * size < HOLD_LIMIT
    assert gateway.client.flow == []
    gateway.session.client_data(chunks[below])
    assert (below + 1) * size > HOLD_LIMIT
    assert gateway.client.flow == ["pause"]
    assert gateway.client.producerState == "paused"
    for chunk in chunks[below + 1 :]:
        gateway.session.client_data(chunk)
    assert gateway.client.flow == ["pause"]
    assert gateway.session.bytes_in == 0
    backend, _ = gateway.accept()
    assert written(backend) == b"".join(chunks)
    assert gateway.session.bytes_in == len(chunks) * size
    assert gateway.client.flow == ["pause", "resume"]
    assert gateway.client.producerState == "producing"
    assert gateway.client.producer is backend
    assert backend.producer is gateway.client
    # Later bytes go straight through, and the hold does not pause again.
    gateway.session.client_data(b"z" * HOLD_LIMIT)
    assert written(backend).endswith(b"z" * HOLD_LIMIT)
    assert gateway.client.flow == ["pause", "resume"]


def test_first_bytes_past_hold_limit_pause_client() -> None:
    """
    First bytes (from the front door) that already pass L{HOLD_LIMIT} pause
    the client at the start.
    """
    gateway = Gateway()
    gateway.session.start(b"x" * (HOLD_LIMIT + 1))
    assert gateway.client.flow == ["pause"]
    backend, _ = gateway.accept()
    assert written(backend) == b"x" * (HOLD_LIMIT + 1)
    assert gateway.client.flow == ["pause", "resume"]


def test_paused_client_stays_paused_across_failover() -> None:
    """
    A client paused for holding too much stays paused while the next backend
    is tried, and is resumed when that one connects, which gets every held
    byte in order.
    """
    gateway = Gateway()
    chunks = numbered_chunks(3, HOLD_LIMIT // 2)
    gateway.session.start(chunks[0])
    gateway.session.client_data(chunks[1])
    gateway.session.client_data(chunks[2])
    assert gateway.client.flow == ["pause"]
    gateway.refuse()
    gateway.reactor.advance(CONNECT_TIMEOUT)
    assert gateway.attempted_ports() == [7000, 7001, 7002]
    assert gateway.client.flow == ["pause"]
    backend, _ = gateway.accept()
    assert written(backend) == b"".join(chunks)
    assert gateway.client.flow == ["pause", "resume"]


def test_paused_client_closed_when_no_backend() -> None:
    """
    A paused client whose every backend failed is closed (cleanly, NO_BACKEND)
    and not resumed.
    """
    gateway = Gateway(backends=1)
    gateway.session.start(b"x" * HOLD_LIMIT * 2)
    gateway.refuse()
    assert gateway.client.flow == ["pause"]
    assert gateway.client.lose_calls == 1
    assert not gateway.client.aborted
    assert gateway.session.close_reason is CloseReason.NO_BACKEND


@settings(max_examples=100, deadline=None)
@given(sizes=st.lists(st.integers(min_value=1, max_value=HOLD_LIMIT // 3), max_size=12))
def test_hold_bounded_whatever_the_chunks(sizes: list[int]) -> None:
    """
    However the client's bytes arrive while connecting, the client is paused
    once the bytes held reach L{HOLD_LIMIT} (never while below it, always once
    past it) and at most once; the connect delivers them all in order and
    resumes the client exactly when it was paused.
    """
    gateway = Gateway()
    gateway.session.start(b"")
    sent = b""
    for i, size in enumerate(sizes):
        chunk = bytes([ord("a") + i % 26]) * size
        gateway.session.client_data(chunk)
        sent += chunk
        if len(sent) < HOLD_LIMIT:
            assert gateway.client.flow == []
        elif len(sent) > HOLD_LIMIT:
            assert gateway.client.flow == ["pause"]
    paused = gateway.client.flow == ["pause"]
    backend, _ = gateway.accept()
    assert written(backend) == sent
    assert gateway.client.flow == (["pause", "resume"] if paused else [])
    assert gateway.client.producerState == "producing"


# TLS backends: ready once the handshake is done


def test_tls_link_not_established_at_tcp_connect() -> None:
    """
    A backend connection on a TLS transport (one providing L{INegotiated}) is
    not used when TCP connects: nothing is written to it, no producer is
    registered, nothing is counted, the client's bytes are still held (and
    the client still read), and the connect timer still runs.
    """
    gateway = Gateway()
    gateway.session.start(b"hello")
    gateway.reactor.advance(1)
    backend, _ = gateway.accept_tls()
    gateway.session.client_data(b" world")
    assert written(backend) == b""
    assert backend.producer is None
    assert gateway.client.producer is None
    assert gateway.session.backend is None
    assert gateway.session.bytes_in == 0
    assert gateway.counters() == [(1, 0, 0), (0, 0, 0), (0, 0, 0)]  # the pending attempt counts
    assert gateway.client.flow == []
    assert [call.getTime() for call in gateway.reactor.getDelayedCalls()] == [CONNECT_TIMEOUT]


def test_tls_link_established_at_handshake() -> None:
    """
    When the TLS handshake completes, the session is established: the held
    bytes are written in order, the producers registered both ways, the
    session counted on the backend, and the connect timer stopped.
    """
    gateway = Gateway()
    gateway.session.start(b"hello")
    backend, protocol = gateway.accept_tls()
    gateway.session.client_data(b" world")
    gateway.reactor.advance(2)
    handshake_completed(protocol)
    assert written(backend) == b"hello world"
    assert gateway.session.bytes_in == len(b"hello world")
    assert gateway.client.producer is backend
    assert backend.producer is gateway.client
    assert gateway.session.backend is gateway.backends[0]
    assert gateway.counters() == [(1, 1, 0), (0, 0, 0), (0, 0, 0)]
    assert gateway.reactor.getDelayedCalls() == []
    gateway.reactor.advance(CONNECT_TIMEOUT * 2)
    assert not backend.aborted
    protocol.dataReceived(b"reply")
    assert written(gateway.client) == b"reply"


def test_handshake_reported_on_an_aborting_tls_transport_is_ignored() -> None:
    """
    Twisted before 25 calls handshakeCompleted even when its host name check
    failed and it is aborting the connection: the session is then not
    established on that backend (the loss that follows is a failed attempt).
    """
    gateway = Gateway()
    gateway.session.start(b"hello")
    backend, protocol = gateway.accept_tls()
    backend.disconnecting = True
    handshake_completed(protocol)
    assert written(backend) == b""
    assert gateway.session.backend is None
    assert gateway.counters() == [(1, 0, 0), (0, 0, 0), (0, 0, 0)]  # the pending attempt counts


def test_tls_handshake_timeout_fails_over(log_events: EventLoggingObserver) -> None:
    """
    The connect timeout covers the TLS handshake, from the start of the
    attempt: a handshake not done C{connect_timeout} seconds after the attempt
    began aborts the connection; once it is gone the attempt counts as a
    failure of that backend, logged with the reason, and the next backend is
    tried with every held byte.
    """
    gateway = Gateway()
    gateway.session.start(b"held")
    gateway.reactor.advance(3)
    backend, _ = gateway.accept_tls()
    gateway.reactor.advance(CONNECT_TIMEOUT - 3 - 0.1)
    assert not backend.aborted
    gateway.reactor.advance(0.1)
    assert backend.aborted
    backend.connection_lost(Failure(ConnectionAborted()))
    assert gateway.attempted_ports() == [7000, 7001]
    assert gateway.counters() == [(0, 0, 1), (1, 0, 0), (0, 0, 0)]  # the pending attempt counts
    assert warnings_logged(log_events) == [
        f"backend b0 failed for a session from {PEER}: TLS handshake not done within 5 s"
    ]
    gateway.session.client_data(b" more")
    second, _ = gateway.accept()
    assert written(second) == b"held more"
    assert gateway.counters() == [(0, 0, 1), (1, 1, 0), (0, 0, 0)]
    assert gateway.session.close_reason is None


def test_tls_handshake_just_in_time() -> None:
    """
    A handshake that completes just before the connect timeout establishes
    the session, and nothing is aborted afterwards.
    """
    gateway = Gateway()
    gateway.session.start(b"x")
    backend, protocol = gateway.accept_tls()
    gateway.reactor.advance(CONNECT_TIMEOUT - 0.01)
    handshake_completed(protocol)
    gateway.reactor.advance(CONNECT_TIMEOUT)
    assert not backend.aborted
    assert gateway.counters()[0] == (1, 1, 0)


@pytest.mark.parametrize(
    ("error", "logged"),
    [
        (CERT_VERIFY_FAILED, "TLS error: certificate verify failed"),
        (
            VerificationError(errors=[DNSMismatch(mismatched_id=DNS_ID("game.example"))]),
            "TLS certificate does not match the host name game.example",
        ),
        (ConnectionDone(), "Connection was closed cleanly."),
    ],
)
def test_tls_link_lost_before_ready_fails_over(
    log_events: EventLoggingObserver, error: Exception, logged: str
) -> None:
    """
    A TLS connection lost before its handshake completed (the certificate
    did not verify, the host name did not match, or the backend hung up) is
    a failed attempt: counted on that backend, logged with a readable
    reason, and the next backend is tried; the bytes held meanwhile, in
    order, reach the backend that connects.
    """
    gateway = Gateway()
    gateway.session.start(b"one ")
    backend, _ = gateway.accept_tls()
    gateway.session.client_data(b"two ")
    backend.connection_lost(Failure(error))
    assert gateway.attempted_ports() == [7000, 7001]
    assert gateway.counters() == [(0, 0, 1), (1, 0, 0), (0, 0, 0)]  # the pending attempt counts
    [warning] = warnings_logged(log_events)
    assert warning.startswith(f"backend b0 failed for a session from {PEER}: {logged}")
    assert gateway.session.backend is None
    gateway.session.client_data(b"three")
    second, _ = gateway.accept()
    assert written(second) == b"one two three"
    assert gateway.session.backend is gateway.backends[1]


def test_every_tls_backend_failing_closes_client(log_events: EventLoggingObserver) -> None:
    """
    When the handshake fails on every backend, the client is closed with
    NO_BACKEND and the error names every backend tried.
    """
    gateway = Gateway()
    gateway.session.start(b"x")
    for _ in range(3):
        backend, _ = gateway.accept_tls()
        backend.connection_lost(Failure(CERT_VERIFY_FAILED))
    assert gateway.attempted_ports() == [7000, 7001, 7002]
    assert gateway.session.close_reason is CloseReason.NO_BACKEND
    assert gateway.client.lose_calls == 1
    assert gateway.counters() == [(0, 0, 1)] * 3
    assert gateway.reactor.getDelayedCalls() == []
    errors = [e for e in log_events if e["log_level"] is LogLevel.error]
    assert [e["tried"] for e in errors] == ["b0, b1, b2"]


def test_client_lost_during_tls_handshake() -> None:
    """
    A client that leaves during the TLS handshake aborts the backend
    connection; when it is gone no failure is counted, no other backend is
    tried, no timer is left, and the reason is CLIENT_LEFT_EARLY.
    """
    gateway = Gateway()
    gateway.session.start(b"x")
    backend, _ = gateway.accept_tls()
    gateway.client.connection_lost()
    assert backend.aborted
    assert gateway.session.close_reason is CloseReason.CLIENT_LEFT_EARLY
    backend.connection_lost(Failure(ConnectionAborted()))
    assert gateway.attempted_ports() == [7000]
    assert gateway.counters() == [(0, 0, 0)] * 3
    assert gateway.reactor.getDelayedCalls() == []
    gateway.reactor.advance(CONNECT_TIMEOUT * 2)
    assert gateway.attempted_ports() == [7000]
    assert gateway.session.close_reason is CloseReason.CLIENT_LEFT_EARLY


def test_handshake_done_after_client_left_closes_link() -> None:
    """
    A handshake that completes after the client left (before the aborted
    connection is gone) does not establish the session: the connection is
    closed, nothing is written or counted.
    """
    gateway = Gateway()
    gateway.session.start(b"x")
    backend, protocol = gateway.accept_tls()
    gateway.client.connection_lost()
    handshake_completed(protocol)
    assert written(backend) == b""
    assert backend.producer is None
    assert gateway.session.backend is None
    backend.connection_lost(Failure(ConnectionAborted()))
    assert gateway.counters() == [(0, 0, 0)] * 3
    assert gateway.session.close_reason is CloseReason.CLIENT_LEFT_EARLY


def test_client_eof_during_tls_handshake() -> None:
    """
    A client that half-closes during the handshake gets its bytes delivered
    once the handshake completes, then the backend closed after flushing (a
    TLS transport cannot half-close); the reply still reaches the client.
    """
    gateway = Gateway()
    gateway.session.start(b"request")
    backend, protocol = gateway.accept_tls()
    gateway.session.client_eof()
    assert backend.lose_calls == 0
    handshake_completed(protocol)
    assert written(backend) == b"request"
    assert backend.lose_calls == 1
    assert not backend.aborted
    protocol.dataReceived(b"reply")
    assert written(gateway.client) == b"reply"


def test_tls_session_closes_like_any_other() -> None:
    """
    Once established, a TLS session ends like a plain one: the backend's
    connection ending closes the client, BACKEND_CLOSED, and the active count
    goes back down.
    """
    gateway = Gateway()
    backend, _ = gateway.connected_tls()
    backend.connection_lost()
    assert gateway.client.lose_calls == 1
    assert gateway.session.close_reason is CloseReason.BACKEND_CLOSED
    assert gateway.counters() == [(0, 1, 0), (0, 0, 0), (0, 0, 0)]


# Describing a failed connection


class ForeignVerificationError(Exception):
    """
    An exception named like service_identity's (see below), as another TLS
    library's might be.
    """


ForeignVerificationError.__name__ = "VerificationError"


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (CERT_VERIFY_FAILED, "TLS error: certificate verify failed"),
        (
            SSL.Error(
                [
                    ("SSL routines", "", "sslv3 alert handshake failure"),
                    ("SSL routines", "", "certificate verify failed"),
                ]
            ),
            "TLS error: sslv3 alert handshake failure, certificate verify failed",
        ),
        (
            SSL.Error(
                [("SSL routines", "tls_process_server_certificate", "certificate verify failed")]
            ),
            "TLS error: certificate verify failed",
        ),
        (
            ForeignVerificationError("no match for game.example"),
            "TLS certificate does not match the host name: no match for game.example",
        ),
        (ConnectionRefusedError(), "Connection was refused by other side."),
        (ConnectionDone(), "Connection was closed cleanly."),
    ],
)
def test_describe_failure(error: Exception, expected: str) -> None:
    """
    L{describe_failure} turns OpenSSL's list of (library, function, reason)
    tuples into the reasons, names a host name mismatch, and otherwise gives
    the failure's own message.
    """
    assert describe_failure(Failure(error)) == expected


def test_describe_failure_service_identity() -> None:
    """
    service_identity's L{VerificationError}, which Twisted's TLS reports
    when the certificate does not name the host, is described as such, with
    the host name it looked for.
    """
    error = VerificationError(errors=[DNSMismatch(mismatched_id=DNS_ID("game.example"))])
    described = describe_failure(Failure(error))
    assert described == "TLS certificate does not match the host name game.example"


# Relaying


@settings(max_examples=100, deadline=None)
@given(
    first=st.binary(max_size=20),
    early=st.lists(st.binary(min_size=1, max_size=20), max_size=4),
    traffic=st.lists(st.tuples(st.booleans(), st.binary(min_size=1, max_size=50)), max_size=20),
)
def test_bytes_relayed_and_counted_exactly(
    first: bytes, early: list[bytes], traffic: list[tuple[bool, bytes]]
) -> None:
    """
    Every byte is relayed once, in order, each way; C{bytes_in} counts the
    bytes written towards the backend (held ones included) and C{bytes_out}
    those written towards the client.
    """
    gateway = Gateway()
    gateway.session.start(first)
    for chunk in early:
        gateway.session.client_data(chunk)
    backend, protocol = gateway.accept()
    sent = first + b"".join(early)
    received = b""
    for from_client, chunk in traffic:
        if from_client:
            gateway.session.client_data(chunk)
            sent += chunk
        else:
            protocol.dataReceived(chunk)
            received += chunk
    assert written(backend) == sent
    assert written(gateway.client) == received
    assert gateway.session.bytes_in == len(sent)
    assert gateway.session.bytes_out == len(received)


# Closing


def test_client_eof_half_closes_backend() -> None:
    """
    A client EOF is passed on as a half-close of a backend transport that can
    half-close (C{loseWriteConnection}), not a close; the client stops being
    the backend's producer, and the reply still flows.
    """
    gateway = Gateway()
    backend, protocol = gateway.connected()
    gateway.session.client_eof()
    assert isinstance(backend, HalfCloseableTransport)
    assert backend.write_closed
    assert backend.lose_calls == 0
    assert backend.producer is None
    assert gateway.client.lose_calls == 0
    protocol.dataReceived(b"reply")
    assert written(gateway.client) == b"reply"


def test_client_eof_closes_backend_that_cannot_half_close() -> None:
    """
    A client EOF closes (after flushing) a backend transport that does not
    provide L{IHalfCloseableDescriptor}; the client stays open.
    """
    gateway = Gateway()
    backend, _ = gateway.connected(backend=FakeTransport())
    assert not IHalfCloseableDescriptor.providedBy(backend)
    gateway.session.client_eof()
    assert backend.lose_calls == 1
    assert not backend.aborted
    assert gateway.client.lose_calls == 0


def test_backend_eof_half_closes_client() -> None:
    """
    A backend EOF is passed on as a half-close of the client; the backend
    stays open and stops being the client's producer.
    """
    gateway = Gateway()
    backend, protocol = gateway.connected()
    backend_eof(protocol)
    assert isinstance(gateway.client, HalfCloseableTransport)
    assert gateway.client.write_closed
    assert gateway.client.lose_calls == 0
    assert gateway.client.producer is None
    assert backend.lose_calls == 0
    gateway.session.client_data(b"more")
    assert written(backend) == b"hellomore"


def test_backend_eof_through_endpoint_is_a_half_close() -> None:
    """
    A backend that half-closes over a plain TCP endpoint is half-closed
    towards the client, not disconnected: the transport hands the EOF to the
    protocol it drives, the endpoint's wrapper, which must provide
    L{IHalfCloseableProtocol} to get it as an EOF.  Twisted's wrapper copies
    only one of the link's interfaces (it calls C{directlyProvides} in a
    loop, and the link is also an L{IHandshakeListener}), so the link
    declares the interface on it again once connected.  The client can then
    still send.
    """
    gateway = Gateway()
    backend, protocol = gateway.connected()
    assert IHalfCloseableProtocol.providedBy(protocol)
    tcp_eof(protocol, backend)
    assert not backend.lost
    assert isinstance(gateway.client, HalfCloseableTransport)
    assert gateway.client.write_closed
    assert gateway.client.lose_calls == 0
    gateway.session.client_data(b"more")
    assert written(backend) == b"hellomore"


def test_backend_eof_closes_client_that_cannot_half_close() -> None:
    """
    A backend EOF closes (after flushing) a client transport that cannot
    half-close.
    """
    gateway = Gateway(client=FakeTransport())
    gateway.connected()
    gateway.session.backend_eof()
    assert gateway.client.lose_calls == 1
    assert not gateway.client.aborted


@pytest.mark.parametrize("client_first", [True, False])
def test_eof_both_ways_closes_both(client_first: bool) -> None:
    """
    Once both sides have sent EOF, in either order, both connections are
    closed cleanly (after flushing), with no producer left registered.
    """
    gateway = Gateway()
    backend, protocol = gateway.connected()
    eofs: list[Callable[[], object]] = [
        gateway.session.client_eof,
        lambda: backend_eof(protocol),
    ]
    if not client_first:
        eofs.reverse()
    for eof in eofs:
        eof()
    assert gateway.client.lose_calls == 1
    assert backend.lose_calls == 1
    assert not gateway.client.aborted and not backend.aborted
    assert gateway.client.producer is None
    assert backend.producer is None


def test_backend_lost_closes_client() -> None:
    """
    When the backend connection is lost, the client is closed cleanly, the
    reason is BACKEND_CLOSED and the backend's active count goes back down.
    """
    gateway = Gateway()
    backend, _ = gateway.connected()
    backend.connection_lost(Failure(ConnectionLost()))
    assert gateway.client.lose_calls == 1
    assert not gateway.client.aborted
    assert gateway.client.producer is None
    assert gateway.session.close_reason is CloseReason.BACKEND_CLOSED
    assert gateway.counters()[0] == (0, 1, 0)
    gateway.client.connection_lost()
    assert gateway.session.close_reason is CloseReason.BACKEND_CLOSED
    assert gateway.counters()[0] == (0, 1, 0)


def test_client_lost_closes_backend() -> None:
    """
    When the client connection is lost, the backend is closed cleanly and the
    reason is CLIENT_CLOSED; the active count goes down when the backend
    connection actually ends.
    """
    gateway = Gateway()
    backend, _ = gateway.connected()
    gateway.client.connection_lost()
    assert backend.lose_calls == 1
    assert not backend.aborted
    assert backend.producer is None
    assert gateway.session.close_reason is CloseReason.CLIENT_CLOSED
    assert gateway.counters()[0] == (1, 1, 0)
    backend.connection_lost()
    assert gateway.counters()[0] == (0, 1, 0)
    assert gateway.session.close_reason is CloseReason.CLIENT_CLOSED


_EVENTS = (
    "client_eof",
    "backend_eof",
    "client_lost",
    "backend_lost",
    "client_data",
    "backend_data",
    "clock_tick",
)
"""
Events of L{test_counts_balanced_whatever_the_close_order}: a loss is the
transport delivering C{connectionLost} (for the backend, to the link, which
tells the session through C{link_lost}); a tick is 4 s.
"""

_BACKEND_KINDS: dict[str, Callable[[], FakeTransport]] = {
    "tcp": HalfCloseableTransport,
    "no-half-close": FakeTransport,
    "tls": TLSTransport,
}
"""The backend transports of L{test_counts_balanced_whatever_the_close_order}."""


@settings(max_examples=300, deadline=None)
@given(
    events=st.lists(st.sampled_from(_EVENTS), max_size=12),
    client_half_closes=st.booleans(),
    backend_kind=st.sampled_from(sorted(_BACKEND_KINDS)),
    fin_timeout=st.sampled_from([0.0, 6.0, 30.0]),
)
def test_counts_balanced_whatever_the_close_order(
    events: list[str], client_half_closes: bool, backend_kind: str, fin_timeout: float
) -> None:
    """
    Whatever order the two sides end in (EOFs, losses, data and time passing
    in between, so idle and fin timeouts and aborts too; with or without
    half-close support, over TCP or TLS), the backend's active count goes up
    once when the session is established and down exactly once, when its
    connection ends; C{total} stays 1, no failure is counted, and once both
    connections have ended the session has a reason and no timer left.

    An event is only delivered when a real transport could deliver it: no
    EOF or data from a side after its connection ended, after its EOF, or
    after the relay closed it (a closing transport stops reading).  A TLS
    backend's EOF arrives as the end of its connection, as it does from
    C{TLSMemoryBIOProtocol}.
    """
    client = HalfCloseableTransport() if client_half_closes else FakeTransport()
    gateway = Gateway(client=client, idle_timeout=10.0, fin_timeout=fin_timeout)
    backend, protocol = gateway.connected(backend=_BACKEND_KINDS[backend_kind]())
    if backend_kind == "tls":
        handshake_completed(protocol)
    counted = gateway.backends[0]
    assert counted.active == 1
    ended = {"client": False, "backend": False}

    def readable(side: str, transport: FakeTransport) -> bool:
        return not ended[side] and not transport.lost and not transport.disconnecting

    for event in events:
        side, _, what = event.partition("_")
        transport = client if side == "client" else backend
        if event == "clock_tick":
            gateway.reactor.advance(4)
        elif what == "lost":
            if not transport.lost:
                transport.connection_lost()
        elif readable(side, transport):
            if what == "eof":
                ended[side] = True
                if side == "client":
                    gateway.session.client_eof()
                else:
                    tcp_eof(protocol, backend)
            elif side == "client":
                gateway.session.client_data(b"c")
            else:
                protocol.dataReceived(b"b")
        assert counted.active == (0 if backend.lost else 1)
        assert counted.total == 1
    # The reactor finishes the closes the relay started; then the peers go away.
    for transport in (client, backend):
        if transport.disconnecting and not transport.lost:
            transport.connection_lost()
    for transport in (client, backend):
        if not transport.lost:
            transport.connection_lost()
    assert gateway.counters() == [(0, 1, 0), (0, 0, 0), (0, 0, 0)]
    ended_by = {CloseReason.CLIENT_CLOSED, CloseReason.BACKEND_CLOSED}
    if "clock_tick" in events:
        ended_by.add(CloseReason.IDLE_TIMEOUT)
        if fin_timeout and any(ended.values()):
            ended_by.add(CloseReason.FIN_TIMEOUT)
    assert gateway.session.close_reason in ended_by
    assert gateway.reactor.getDelayedCalls() == []


# Idle timeout


def test_no_idle_timer_without_idle_timeout() -> None:
    """
    With C{idle_timeout=0} no timer is kept and a silent session stays open.
    """
    gateway = Gateway(idle_timeout=0)
    backend, _ = gateway.connected()
    assert gateway.reactor.getDelayedCalls() == []
    gateway.reactor.advance(3600)
    assert gateway.client.lose_calls == backend.lose_calls == 0


def advance_until_closed(gateway: Gateway, limit: float) -> float:
    """
    Run the clock's timers one at a time, in order, until the client is told
    to close (the session closes only from a timer while nothing else
    happens).  The clock stops exactly at each timer's time, so the close
    time is exact, not rounded up to a step.

    @return: the clock time at which the client was told to close.
    @raise AssertionError: no timer is left, or the next one is after C{limit}.
    """
    reactor = gateway.reactor
    while not gateway.client.lose_calls:
        calls = reactor.getDelayedCalls()
        assert calls, f"still open at {reactor.seconds()} s, with no timer left"
        when = min(call.getTime() for call in calls)
        if when > limit:
            raise AssertionError(f"still open at {limit} s")
        # A second advance covers the case where now + (when - now) rounds below when.
        while reactor.seconds() < when:
            reactor.advance(when - reactor.seconds())
    return reactor.seconds()


@pytest.mark.parametrize("first", [b"", b"hello"])
def test_idle_session_closed(first: bytes) -> None:
    """
    With C{idle_timeout=10}, a session where nothing moves after the connect
    is closed between 10 and 12.5 s later, cleanly (C{loseConnection} on both
    sides, no abort), with the reason IDLE_TIMEOUT.
    """
    gateway = Gateway(idle_timeout=10)
    backend, _ = gateway.connected(first)
    closed_at = advance_until_closed(gateway, limit=20)
    assert 10 <= closed_at <= 12.5
    assert gateway.client.lose_calls == 1
    assert backend.lose_calls == 1
    assert not gateway.client.aborted and not backend.aborted
    assert gateway.session.close_reason is CloseReason.IDLE_TIMEOUT


def test_idle_counted_from_last_traffic() -> None:
    """
    The idle time runs from the last byte moved: traffic at 7 s moves the
    close to between 17 and 19.5 s.
    """
    gateway = Gateway(idle_timeout=10)
    _, protocol = gateway.connected()
    gateway.reactor.advance(7)
    protocol.dataReceived(b"tick")
    closed_at = advance_until_closed(gateway, limit=30)
    assert 17 <= closed_at <= 19.5


@pytest.mark.parametrize("from_client", [True, False])
def test_traffic_keeps_session_open(from_client: bool) -> None:
    """
    A session with a byte every 3 s, either way, is never closed over 100 s
    with C{idle_timeout=10}.
    """
    gateway = Gateway(idle_timeout=10)
    backend, protocol = gateway.connected()
    for _ in range(34):
        gateway.reactor.advance(3)
        if from_client:
            gateway.session.client_data(b".")
        else:
            protocol.dataReceived(b".")
    assert gateway.reactor.seconds() >= 100
    assert gateway.client.lose_calls == backend.lose_calls == 0
    assert gateway.session.close_reason is None


def test_idle_close_aborts_after_grace() -> None:
    """
    If neither connection has ended C{CLOSE_GRACE} seconds after an idle
    close (a peer that reads nothing keeps the gateway from flushing), both
    are aborted; not a moment before.
    """
    gateway = Gateway(idle_timeout=10)
    backend, _ = gateway.connected()
    closed_at = advance_until_closed(gateway, limit=20)
    gateway.reactor.advance(CLOSE_GRACE - 0.5)
    assert not gateway.client.aborted and not backend.aborted
    gateway.reactor.advance(0.5)
    assert gateway.reactor.seconds() == pytest.approx(closed_at + CLOSE_GRACE)
    assert gateway.client.aborted and backend.aborted


def test_idle_close_no_abort_when_both_ended() -> None:
    """
    When both connections end within the grace time after an idle close,
    nothing is aborted and no timer is left.
    """
    gateway = Gateway(idle_timeout=10)
    backend, _ = gateway.connected()
    advance_until_closed(gateway, limit=20)
    gateway.client.connection_lost()
    backend.connection_lost()
    assert gateway.reactor.getDelayedCalls() == []
    gateway.reactor.advance(CLOSE_GRACE * 2)
    assert not gateway.client.aborted and not backend.aborted
    assert gateway.session.close_reason is CloseReason.IDLE_TIMEOUT
    assert gateway.counters()[0] == (0, 1, 0)


@pytest.mark.parametrize("client_ends", [True, False])
def test_idle_close_aborts_only_what_is_left(client_ends: bool) -> None:
    """
    When one connection ended within the grace time after an idle close, only
    the other is aborted.
    """
    gateway = Gateway(idle_timeout=10)
    backend, _ = gateway.connected()
    advance_until_closed(gateway, limit=20)
    ending, left = (gateway.client, backend) if client_ends else (backend, gateway.client)
    ending.connection_lost()
    gateway.reactor.advance(CLOSE_GRACE)
    assert not ending.aborted
    assert left.aborted


def test_session_end_stops_idle_timer() -> None:
    """
    A session that ends before it is idle leaves no idle timer behind.
    """
    gateway = Gateway(idle_timeout=10)
    backend, _ = gateway.connected()
    gateway.reactor.advance(4)
    backend.connection_lost()
    gateway.client.connection_lost()
    assert gateway.reactor.getDelayedCalls() == []
    assert gateway.session.close_reason is CloseReason.BACKEND_CLOSED


def test_idle_counted_from_tls_handshake() -> None:
    """
    The idle time of a TLS session runs from the end of the handshake (when
    the session is established), not from the TCP connect: no idle timer runs
    during the handshake, and a handshake done at 4 s moves the close to
    between 14 and 16.5 s.
    """
    gateway = Gateway(idle_timeout=10)
    gateway.session.start(b"x")
    _, protocol = gateway.accept_tls()
    gateway.reactor.advance(4)
    assert len(gateway.reactor.getDelayedCalls()) == 1  # the connect timer
    handshake_completed(protocol)
    closed_at = advance_until_closed(gateway, limit=30)
    assert 14 <= closed_at <= 16.5
    assert gateway.session.close_reason is CloseReason.IDLE_TIMEOUT


# Fin timeout: a session where one direction has ended


def end_direction(gateway: Gateway, protocol: IProtocol, side: str) -> None:
    """
    End one direction of an established session: C{"client"} sends an EOF,
    C{"backend"} sends an EOF.
    """
    if side == "client":
        gateway.session.client_eof()
    else:
        backend_eof(protocol)


@pytest.mark.parametrize("side", ["client", "backend"])
def test_fin_timeout_closes_half_closed_session(
    log_events: EventLoggingObserver, side: str
) -> None:
    """
    With C{fin_timeout=5} and no idle timeout, a session whose client or
    backend sent its EOF, and where nothing moves after, is closed between 5
    and 6.25 s later, cleanly (no abort), with the reason FIN_TIMEOUT and a
    log line saying so.
    """
    gateway = Gateway(idle_timeout=0, fin_timeout=5)
    backend, protocol = gateway.connected()
    end_direction(gateway, protocol, side)
    closed_at = advance_until_closed(gateway, limit=20)
    assert 5 <= closed_at <= 6.25
    assert gateway.session.close_reason is CloseReason.FIN_TIMEOUT
    assert gateway.client.lose_calls == 1
    assert backend.lose_calls == 1
    assert not gateway.client.aborted and not backend.aborted
    lines = [formatEvent(e) for e in log_events]
    assert f"session from {PEER} had no traffic for 5 s (fin-timeout); closing it" in lines
    assert lines[-1].startswith(f"game session from {PEER} to b0 ended (fin-timeout)")


def close_at_once(transport: FakeTransport) -> None:
    """
    What L{gateway.session.stream.close_now} does on a plain socket with
    nothing queued: the connection is lost before it returns (a fake
    transport is not a plain socket, so the real one would wait a turn).
    """
    if transport.lost:
        return
    if transport.value():
        transport.loseConnection()
    else:
        transport.connection_lost()


@pytest.mark.parametrize("side", ["client", "backend"])
def test_closed_at_once_leaves_no_timer(
    monkeypatch: pytest.MonkeyPatch, log_events: EventLoggingObserver, side: str
) -> None:
    """
    A fin-timeout close whose connections both close at once (the client
    by C{close_now}, the backend because its sending side was shut, as
    Twisted's C{loseConnection} then does): the session ends, with no abort
    timer left behind to hold it for C{CLOSE_GRACE} seconds, and no
    impossible change of phase.
    """
    import gateway.session.ending as ending
    import gateway.session.relay as relay

    monkeypatch.setattr(ending, "close_now", close_at_once)
    monkeypatch.setattr(relay, "close_now", close_at_once)
    gateway = Gateway(idle_timeout=0, fin_timeout=5)
    backend, protocol = gateway.connected()
    lose = backend.loseConnection

    def lose_at_once() -> None:
        lose()
        if not backend.lost:
            backend.connection_lost()

    monkeypatch.setattr(backend, "loseConnection", lose_at_once)
    end_direction(gateway, protocol, side)
    for _ in range(40):
        gateway.reactor.advance(0.25)
    assert gateway.client.lost and backend.lost
    assert gateway.session.phase is Phase.CLOSED
    assert gateway.session.close_reason is CloseReason.FIN_TIMEOUT
    assert gateway.reactor.getDelayedCalls() == []
    assert not [e for e in log_events if e["log_level"] is LogLevel.error]


def test_close_after_the_hand_back_closed_everything(
    monkeypatch: pytest.MonkeyPatch, log_events: EventLoggingObserver
) -> None:
    """
    A session closed (the gateway stopping) whose splice relay, handing the
    sockets back, found the backend gone and so closed the client at once:
    the session is closed, with no impossible change of phase logged.
    """
    import gateway.session.ending as ending
    import gateway.session.relay as relay

    monkeypatch.setattr(ending, "close_now", close_at_once)
    monkeypatch.setattr(relay, "close_now", close_at_once)
    gateway = Gateway()
    backend, protocol = gateway.connected()
    session = gateway.session

    def hand_back_finds_the_backend_gone(self: GameSession) -> None:
        if not backend.lost:
            backend.connection_lost(Failure(ConnectionDone()))

    monkeypatch.setattr(GameSession, "_stop_splicing", hand_back_finds_the_backend_gone)
    session.close(CloseReason.SHUTDOWN)
    assert gateway.client.lost and backend.lost
    assert session.phase is Phase.CLOSED
    assert not [e for e in log_events if e["log_level"] is LogLevel.error]
    assert gateway.reactor.getDelayedCalls() == []


def test_fin_timeout_aborts_after_grace() -> None:
    """
    A fin-timeout close that has not completed after C{CLOSE_GRACE} seconds
    (a peer that reads nothing) is aborted, as an idle close is.
    """
    gateway = Gateway(fin_timeout=5)
    backend, protocol = gateway.connected()
    backend_eof(protocol)
    closed_at = advance_until_closed(gateway, limit=20)
    gateway.reactor.advance(CLOSE_GRACE - 0.5)
    assert not gateway.client.aborted and not backend.aborted
    gateway.reactor.advance(0.5)
    assert gateway.reactor.seconds() == pytest.approx(closed_at + CLOSE_GRACE)
    assert gateway.client.aborted and backend.aborted


def test_fin_timeout_needs_an_eof() -> None:
    """
    The fin timeout only applies once a direction has ended: with no idle
    timeout, a silent session where neither side sent an EOF keeps no timer
    and stays open.
    """
    gateway = Gateway(idle_timeout=0, fin_timeout=5)
    backend, _ = gateway.connected()
    assert gateway.reactor.getDelayedCalls() == []
    gateway.reactor.advance(3600)
    assert gateway.client.lose_calls == backend.lose_calls == 0
    assert gateway.session.close_reason is None


@pytest.mark.parametrize("side", ["client", "backend"])
def test_traffic_after_eof_keeps_session_open(side: str) -> None:
    """
    Bytes still moving the other way after an EOF keep the session open
    (a byte every 3 s for 60 s with C{fin_timeout=5}); once they stop it is
    closed between 5 and 6.25 s after the last one.
    """
    gateway = Gateway(fin_timeout=5)
    backend, protocol = gateway.connected()
    end_direction(gateway, protocol, side)
    for _ in range(20):
        gateway.reactor.advance(3)
        if side == "client":
            protocol.dataReceived(b".")
        else:
            gateway.session.client_data(b".")
    last = gateway.reactor.seconds()
    assert gateway.client.lose_calls == backend.lose_calls == 0
    assert gateway.session.close_reason is None
    closed_at = advance_until_closed(gateway, limit=last + 20)
    assert last + 5 <= closed_at <= last + 6.25
    assert gateway.session.close_reason is CloseReason.FIN_TIMEOUT


@pytest.mark.parametrize(
    ("idle_timeout", "fin_timeout", "reason"),
    [
        (20.0, 5.0, CloseReason.FIN_TIMEOUT),
        (5.0, 20.0, CloseReason.IDLE_TIMEOUT),
        (5.0, 0.0, CloseReason.IDLE_TIMEOUT),
    ],
)
def test_shorter_quiet_limit_wins_after_eof(
    log_events: EventLoggingObserver, idle_timeout: float, fin_timeout: float, reason: CloseReason
) -> None:
    """
    Once a direction has ended, the session is closed after the shorter of
    the idle and fin timeouts without traffic (5 s here: between 5 and
    6.25 s), with that timeout's reason; a fin timeout of 0 leaves the idle
    timeout alone.
    """
    gateway = Gateway(idle_timeout=idle_timeout, fin_timeout=fin_timeout)
    _, protocol = gateway.connected()
    backend_eof(protocol)
    closed_at = advance_until_closed(gateway, limit=30)
    assert 5 <= closed_at <= 6.25
    assert gateway.session.close_reason is reason
    lines = [formatEvent(e) for e in log_events]
    assert f"session from {PEER} had no traffic for 5 s ({reason.value}); closing it" in lines


def test_fin_timeout_shortens_running_idle_wait() -> None:
    """
    An EOF in a session under a longer idle timeout switches it to the fin
    timeout at once: with idle 60 s and fin 5 s, an EOF at 2 s right after
    traffic closes the session between 7 and 8.25 s, not 60 s later.
    """
    gateway = Gateway(idle_timeout=60, fin_timeout=5)
    _, protocol = gateway.connected()
    gateway.reactor.advance(2)
    protocol.dataReceived(b"last words")
    backend_eof(protocol)
    closed_at = advance_until_closed(gateway, limit=70)
    assert 7 <= closed_at <= 8.25
    assert gateway.session.close_reason is CloseReason.FIN_TIMEOUT


def test_fin_timeout_after_eof_while_connecting() -> None:
    """
    A client that half-closed while its backend connected is under the fin
    timeout from the moment the session is established.
    """
    gateway = Gateway(idle_timeout=60, fin_timeout=5)
    gateway.session.start(b"request")
    gateway.session.client_eof()
    gateway.reactor.advance(1)
    gateway.accept()
    closed_at = advance_until_closed(gateway, limit=30)
    assert 6 <= closed_at <= 7.25
    assert gateway.session.close_reason is CloseReason.FIN_TIMEOUT


def test_no_timer_without_idle_or_fin_timeout() -> None:
    """
    With C{idle_timeout=0} and C{fin_timeout=0} no timer is ever kept, before
    or after either side's EOF, and the session stays open however long it
    is silent.
    """
    gateway = Gateway(idle_timeout=0, fin_timeout=0)
    backend, protocol = gateway.connected()
    assert gateway.reactor.getDelayedCalls() == []
    backend_eof(protocol)
    assert gateway.reactor.getDelayedCalls() == []
    gateway.reactor.advance(3600)
    assert gateway.client.lose_calls == backend.lose_calls == 0
    assert gateway.session.close_reason is None


@pytest.mark.parametrize("idle_timeout", [0.0, 60.0])
def test_fin_timeout_runs_from_the_eof(idle_timeout: float) -> None:
    """
    The other side gets the whole fin timeout after an EOF: a session quiet
    for 30 s (allowed by the idle timeout) whose backend then half-closes is
    closed between 5 and 6.25 s after the EOF with C{fin_timeout=5}.
    """
    gateway = Gateway(idle_timeout=idle_timeout, fin_timeout=5)
    _, protocol = gateway.connected()
    gateway.reactor.advance(30)
    backend_eof(protocol)
    closed_at = advance_until_closed(gateway, limit=60)
    assert 35 <= closed_at <= 36.25


# Endpoints that answer synchronously


@implementer(IStreamClientEndpoint)
@dataclass
class InstantEndpoint:
    """
    A client endpoint that connects at once, to an in-memory transport (like
    an in-process backend might): its C{connect} Deferred has already fired.

    @ivar transports: the backend-side transport of each connection.
    """

    transports: list[FakeTransport]

    def connect(self, factory: IProtocolFactory) -> Deferred[IProtocol]:
        """
        Build the protocol and connect it to a new transport, before returning.
        """
        protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1))
        assert protocol is not None
        transport = HalfCloseableTransport()
        transport.on_lost = protocol.connectionLost
        protocol.makeConnection(transport)
        self.transports.append(transport)
        return succeed(protocol)


def instant_gateway(first: IStreamClientEndpoint) -> Gateway:
    """
    A L{Gateway} whose first backend connects through C{first}.
    """
    gateway = Gateway()
    gateway.backends[0].endpoint = first
    return gateway


def test_client_lost_after_synchronous_failure_cancels_next_attempt() -> None:
    """
    When the first backend's endpoint fails at once (its C{connect} raises or
    returns a failed Deferred), the next attempt is the one in progress: a
    client that leaves then cancels it.
    """
    gateway = instant_gateway(
        TCP4ClientEndpoint(
            RaisingMemoryReactor(connectException=ConnectionRefusedError()), "127.0.0.1", 1
        )
    )
    gateway.session.start(b"x")
    assert gateway.attempted_ports() == [7001]
    assert gateway.backends[0].failures == 1
    gateway.client.connection_lost()
    assert gateway.stopped_connecting()
    assert gateway.session.close_reason is CloseReason.CLIENT_LEFT_EARLY


def test_synchronous_connect_relays() -> None:
    """
    An endpoint that connects at once works like any other: held bytes
    written, producers registered, the client never paused.
    """
    transports: list[FakeTransport] = []
    gateway = instant_gateway(InstantEndpoint(transports))
    gateway.session.start(b"hello")
    [backend] = transports
    assert written(backend) == b"hello"
    assert gateway.client.producer is backend
    assert gateway.client.flow == []
    assert gateway.reactor.getDelayedCalls() == []


def test_client_lost_after_synchronous_connect_closes_backend() -> None:
    """
    When the backend connected at once, a client that leaves later closes
    the backend, and the reason is CLIENT_CLOSED.
    """
    transports: list[FakeTransport] = []
    gateway = instant_gateway(InstantEndpoint(transports))
    gateway.session.start(b"hello")
    [backend] = transports
    gateway.client.connection_lost()
    assert backend.lose_calls == 1
    assert gateway.session.close_reason is CloseReason.CLIENT_CLOSED


class Recorder(GameSession):
    """
    A session that records the events its L{BackendLink} passes on.

    @ivar calls: each event, in order.
    """

    def __init__(self) -> None:
        self.calls: list[object] = []

    @override
    def link_ready(self, link: Link) -> None:
        self.calls.append(("ready", link))

    @override
    def link_lost(self, link: Link, reason: Failure) -> None:
        self.calls.append(("lost", link, reason))

    @override
    def backend_data(self, data: bytes) -> None:
        self.calls.append(data)

    @override
    def backend_eof(self) -> None:
        self.calls.append("eof")


def recorded_link() -> tuple[Recorder, BackendLink]:
    """
    A L{BackendLink} to a backend, on a L{Recorder}.
    """
    session = Recorder()
    backend = Backend(
        name="b",
        description="tcp:127.0.0.1:1",
        endpoint=TCP4ClientEndpoint(MemoryReactorClock(), "127.0.0.1", 1),
    )
    link = BackendLink(session, backend)
    assert link.backend is backend
    assert not link.ready
    assert link.failure_reason is None
    return session, link


def test_backend_link_forwards_events() -> None:
    """
    L{BackendLink} on a plain transport is ready as soon as it is connected,
    then passes data, EOF and loss (naming itself) to its session, and
    ignores the end of its own half-close.
    """
    session, link = recorded_link()
    reason = Failure(ConnectionDone())
    link.makeConnection(StringTransport())
    link.dataReceived(b"abc")
    link.readConnectionLost()
    link.writeConnectionLost()
    link.connectionLost(reason)
    assert session.calls == [("ready", link), b"abc", "eof", ("lost", link, reason)]


def test_backend_link_on_tls_ready_at_handshake() -> None:
    """
    L{BackendLink} listens for the TLS handshake: on a transport that
    provides L{INegotiated} it is not ready when connected, only when the
    handshake completes.
    """
    session, link = recorded_link()
    link.makeConnection(TLSTransport())
    assert IHandshakeListener.providedBy(link)
    assert session.calls == []
    link.handshakeCompleted()
    assert session.calls == [("ready", link)]


# Phases


def errors_logged(log_events: EventLoggingObserver) -> list[str]:
    """
    The error lines logged, formatted.
    """
    return [
        formatEvent(e)
        for e in log_events
        if e.get("log_level") in (LogLevel.error, LogLevel.critical)
    ]


def phase(gateway: Gateway) -> Phase:
    """
    The phase of C{gateway}'s session now (a call, so that mypy does not keep
    what an earlier assertion narrowed it to).
    """
    return gateway.session.phase


def test_phases_of_a_relayed_session(log_events: EventLoggingObserver) -> None:
    """
    A session is connecting until its backend is ready, relaying after, closing
    once both directions have ended and until both connections are gone, and
    then closed; no impossible change of phase is logged.
    """
    gateway = Gateway()
    gateway.session.start(b"hello")
    assert phase(gateway) is Phase.CONNECTING
    backend, protocol = gateway.accept()
    assert phase(gateway) is Phase.RELAYING
    gateway.session.client_eof()
    assert phase(gateway) is Phase.RELAYING
    link_of(protocol).readConnectionLost()
    assert phase(gateway) is Phase.CLOSING
    gateway.client.connection_lost()
    assert phase(gateway) is Phase.CLOSING
    backend.connection_lost()
    assert phase(gateway) is Phase.CLOSED
    assert errors_logged(log_events) == []


def test_phases_of_a_refused_session(log_events: EventLoggingObserver) -> None:
    """
    A session no backend takes is closing from its refusal until the client
    connection is gone, then closed.
    """
    gateway = Gateway(backends=1, retries=0)
    gateway.session.start(b"hello")
    gateway.refuse()
    assert phase(gateway) is Phase.CLOSING
    gateway.client.connection_lost()
    assert phase(gateway) is Phase.CLOSED
    assert [e for e in errors_logged(log_events) if "phase" in e] == []


def test_client_left_while_connecting_is_closed() -> None:
    """
    A client that leaves while its session connects closes the session at
    once: there is no backend connection to wait for.
    """
    gateway = Gateway()
    gateway.session.start(b"x")
    gateway.client.connection_lost()
    assert phase(gateway) is Phase.CLOSED


def test_impossible_phase_change_logged(log_events: EventLoggingObserver) -> None:
    """
    A change of phase the phases do not allow (a relaying session connecting
    again) is logged as an error naming both phases.
    """
    gateway = Gateway()
    gateway.connected()
    gateway.session._enter(Phase.CONNECTING)
    assert errors_logged(log_events) == [
        f"session from {PEER}: impossible change of phase from relaying to connecting"
    ]
