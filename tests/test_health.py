"""
Tests for L{gateway.pool.health}: active health checks and the rise/fall decision.

L{HealthState} is tested as a plain object, by example and with hypothesis
against a model written differently (runs of results since the last change).
The checker runs on a L{MemoryReactorClock}: its backends are real
L{TCP4ClientEndpoint}s whose C{connectTCP} calls the reactor records in
C{tcpClients}; a test completes an attempt by building the protocol from the
recorded factory and connecting it to an in-memory transport, or fails it
through the factory's C{clientConnectionFailed}, as tests/test_relay.py does.
A C{tls:} backend is played by a transport that provides L{INegotiated}.  A
few tests use an endpoint that connects at once to a L{StringTransport}.  Time
only moves when a test advances the clock.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from OpenSSL import SSL
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.interfaces import (
    IHalfCloseableProtocol,
    IHandshakeListener,
    INegotiated,
    IProtocol,
    IProtocolFactory,
    IStreamClientEndpoint,
)
from twisted.internet.testing import EventLoggingObserver, MemoryReactorClock, StringTransport
from twisted.logger import LogLevel
from twisted.python.failure import Failure
from zope.interface import alsoProvides, implementer

from gateway.pool.backends import Backend, BackendState, Pool
from gateway.pool.health import (
    DEFAULT_TIMEOUT,
    HealthCheck,
    HealthChecker,
    HealthState,
)
from gateway.pool.probe import Probe

INTERVAL = 10.0
"""Seconds between rounds in these tests."""

TIMEOUT = 2.0
"""Seconds a probe may take in these tests."""

UP, DOWN, DRAINING = BackendState.UP, BackendState.DOWN, BackendState.DRAINING


class Wire(StringTransport):
    """
    The backend side of a probe's connection, in memory.

    L{StringTransport} only records a close: C{disconnecting} after
    C{loseConnection}, C{disconnected} too after C{abortConnection}.  The test
    delivers C{connectionLost} with L{lost}, as a reactor would later.

    @ivar protocol: the protocol the reactor drives (the endpoint's wrapper).
    """

    protocol: IProtocol | None = None

    @property
    def closed_cleanly(self) -> bool:
        """
        Whether C{loseConnection} was called, and not C{abortConnection}.
        """
        return bool(self.disconnecting and not self.disconnected)

    @property
    def aborted(self) -> bool:
        """
        Whether C{abortConnection} was called.
        """
        return bool(self.disconnected)

    def lost(self, reason: Failure | None = None) -> None:
        """
        Deliver the end of the connection to its protocol.
        """
        assert self.protocol is not None
        self.protocol.connectionLost(reason or Failure(ConnectionDone()))


class TLSWire(Wire):
    """
    A L{Wire} standing for a TLS connection: it provides L{INegotiated}, as
    L{twisted.protocols.tls.TLSMemoryBIOProtocol} does.
    """

    def __init__(self) -> None:
        super().__init__()
        # Declared on the instance: INegotiated extends interfaces whose other
        # methods no probe calls, which @implementer would ask mypy-zope for.
        alsoProvides(self, INegotiated)


def probe_of(protocol: IProtocol) -> Probe:
    """
    The L{Probe} inside C{protocol}: Twisted's client endpoints wrap it.
    """
    probe = getattr(protocol, "_wrappedProtocol", protocol)
    assert isinstance(probe, Probe)
    return probe


@implementer(IStreamClientEndpoint)
class StringEndpoint:
    """
    A client endpoint that connects at once to a new L{Wire}: its C{connect}
    Deferred has already fired when it returns.

    @ivar wires: the backend side of each connection.
    """

    def __init__(self) -> None:
        self.wires: list[Wire] = []

    def connect(self, factory: IProtocolFactory) -> Deferred[IProtocol]:
        """
        Build the protocol and connect it, before returning.
        """
        protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1))
        assert protocol is not None
        wire = Wire()
        wire.protocol = protocol
        protocol.makeConnection(wire)
        self.wires.append(wire)
        return succeed(protocol)


@implementer(IStreamClientEndpoint)
class RaisingEndpoint:
    """
    A client endpoint whose C{connect} raises (a bug, or an exotic endpoint).
    """

    def connect(self, factory: IProtocolFactory) -> Deferred[IProtocol]:
        """
        Raise.
        """
        raise RuntimeError("endpoint exploded")


class Rig:
    """
    A health checker under test, its pool of backends on a memory reactor, and
    helpers to play the backends' part.

    @ivar reactor: records connection attempts and is the checker's clock.
    @ivar backends: C{b0}, C{b1}, ... on ports 7000, 7001, ...
    @ivar pool: the pool they are in.
    @ivar checker: the service under test (not started).
    """

    def __init__(
        self,
        backends: int = 2,
        *,
        rise: int = 2,
        fall: int = 3,
        timeout: float | None = TIMEOUT,
        checks: dict[str, HealthCheck] | None = None,
        pool_fall: int = 0,
    ) -> None:
        self.reactor = MemoryReactorClock()
        self.backends = [self.make_backend(i) for i in range(backends)]
        self.pool = Pool(self.backends, fall=pool_fall)
        self.checker = HealthChecker(
            self.pool,
            self.reactor,
            interval=INTERVAL,
            rise=rise,
            fall=fall,
            timeout=timeout,
            checks=checks,
        )

    def make_backend(self, number: int) -> Backend:
        """
        Backend C{b<number>} on port C{7000 + number}.
        """
        return Backend(
            name=f"b{number}",
            description=f"tcp:127.0.0.1:{7000 + number}",
            endpoint=TCP4ClientEndpoint(self.reactor, "127.0.0.1", 7000 + number),
        )

    def ports(self) -> list[int]:
        """
        The port of each connection attempt so far, in order.
        """
        return [port for _host, port, _factory, _timeout, _bind in self.reactor.tcpClients]

    def _last(self, backend: int) -> int:
        return max(i for i, port in enumerate(self.ports()) if port == 7000 + backend)

    def accept(self, backend: int = 0, wire: Wire | None = None) -> tuple[Wire, IProtocol]:
        """
        Complete the latest connection attempt to backend C{backend}.

        @return: the backend side's transport and the protocol the reactor drives.
        """
        host, port, factory, _timeout, _bind = self.reactor.tcpClients[self._last(backend)]
        protocol = factory.buildProtocol(IPv4Address("TCP", host, port))
        assert protocol is not None
        wire = wire if wire is not None else Wire()
        wire.protocol = protocol
        protocol.makeConnection(wire)
        return wire, protocol

    def pass_probe(self, backend: int = 0) -> Wire:
        """
        Complete the latest attempt to backend C{backend} (a passing TCP check)
        and let its connection close.
        """
        wire, _ = self.accept(backend)
        assert wire.closed_cleanly
        wire.lost()
        return wire

    def refuse(self, backend: int = 0) -> None:
        """
        Fail the latest connection attempt to backend C{backend} as refused.
        """
        index = self._last(backend)
        factory = self.reactor.tcpClients[index][2]
        factory.clientConnectionFailed(
            self.reactor.connectors[index], Failure(ConnectionRefusedError())
        )

    def stopped_connecting(self, backend: int = 0) -> bool:
        """
        Whether the latest attempt to backend C{backend} was given up.
        """
        stopped: bool = self.reactor.connectors[self._last(backend)].stoppedConnecting
        return stopped

    def next_round(self) -> None:
        """
        Move the clock to the next round of probes.
        """
        self.reactor.advance(INTERVAL)

    def state(self, backend: int = 0) -> BackendState:
        """
        The state of backend C{backend}.
        """
        return self.backends[backend].state


# HealthState


def feed(health: HealthState, current: BackendState, results: str) -> list[BackendState | None]:
    """
    Record C{results} (C{"+"} a pass, C{"-"} a failure), applying each change
    to the state as the checker does.

    @return: what each record returned.
    """
    returned = []
    for result in results:
        change = health.record(result == "+", current)
        returned.append(change)
        current = change or current
    return returned


def test_state_falls_after_fall_failures_in_a_row() -> None:
    """
    An up backend goes down on its C{fall}th failed probe in a row, not before.
    """
    assert feed(HealthState(rise=2, fall=3), UP, "---") == [None, None, DOWN]


def test_state_one_lost_probe_does_not_flap() -> None:
    """
    Failures interrupted by a pass start counting again: no change.
    """
    assert feed(HealthState(rise=2, fall=3), UP, "--+--+-") == [None] * 7


def test_state_rises_after_rise_passes_in_a_row() -> None:
    """
    A down backend comes up on its C{rise}th passing probe in a row.
    """
    assert feed(HealthState(rise=2, fall=3), DOWN, "+-+-++") == [None] * 5 + [UP]


def test_state_full_cycle() -> None:
    """
    Down after C{fall} failures, then up after C{rise} passes, then down again
    after another C{fall} failures.
    """
    returned = feed(HealthState(rise=2, fall=2), UP, "---++--")
    assert returned == [None, DOWN, None, None, UP, None, DOWN]


def test_state_draining_never_changes() -> None:
    """
    A draining backend is the operators': no run of results changes it.
    """
    assert feed(HealthState(rise=1, fall=1), DRAINING, "---+++-+") == [None] * 8


def test_state_external_change_restarts_runs() -> None:
    """
    A backend marked down by someone else (passive detection) needs C{rise}
    passes after that, even when earlier probes were passing.
    """
    health = HealthState(rise=2, fall=3)
    assert feed(health, UP, "+++") == [None] * 3
    assert health.record(True, DOWN) is None
    assert health.record(True, DOWN) is UP


def test_state_counters() -> None:
    """
    The counters hold the current runs of passes and failures.
    """
    health = HealthState(rise=2, fall=3)
    feed(health, UP, "+--")
    assert (health.successes, health.failures) == (0, 2)
    feed(health, UP, "+")
    assert (health.successes, health.failures) == (1, 0)


@pytest.mark.parametrize(("rise", "fall"), [(0, 1), (1, 0), (-1, 3)])
def test_state_rejects_bad_thresholds(rise: int, fall: int) -> None:
    """
    C{rise} and C{fall} below 1 are refused.
    """
    with pytest.raises(ValueError, match="at least 1"):
        HealthState(rise, fall)


_EVENTS = st.lists(
    st.one_of(st.booleans(), st.sampled_from(list(BackendState))),
    max_size=60,
)


@given(
    rise=st.integers(min_value=1, max_value=5),
    fall=st.integers(min_value=1, max_value=5),
    start=st.sampled_from(list(BackendState)),
    events=_EVENTS,
)
def test_state_transitions_match_model(
    rise: int, fall: int, start: BackendState, events: list[bool | BackendState]
) -> None:
    """
    For any sequence of probe results, mixed with changes of state made by
    others (operators, passive detection): a change to DOWN happens exactly
    when an up backend's run of failures reaches C{fall}, a change to UP
    exactly when a down backend's run of passes reaches C{rise}, and no
    change happens otherwise.  A run counts the probes since the state the
    probes saw last changed (a change and its undoing between two probes
    cannot be seen by the next one, so it does not restart the run).
    """
    health = HealthState(rise, fall)
    state = start
    seen: BackendState | None = None  # the state at the last probe
    run: list[bool] = []  # results since the state seen changed
    for event in events:
        if isinstance(event, BackendState):
            state = event
            continue
        if state is not seen:
            seen, run = state, []
        run.append(event)
        same = 0  # the length of the run of results like this one
        for earlier in reversed(run):
            if earlier != event:
                break
            same += 1
        expected: BackendState | None = None
        if state is UP and not event and same == fall:
            expected = DOWN
        elif state is DOWN and event and same == rise:
            expected = UP
        assert health.record(event, state) is expected
        if expected is not None:
            state = seen = expected
            run = []


# HealthCheck and settings


def test_check_defaults_to_connect() -> None:
    """
    The default check sends nothing and expects nothing, on the checker's timeout.
    """
    assert HealthCheck() == HealthCheck(send=b"", expect=b"", timeout=None)


@pytest.mark.parametrize("timeout", [0.0, -1.0])
def test_check_rejects_bad_timeout(timeout: float) -> None:
    """
    A check's own timeout must be positive.
    """
    with pytest.raises(ValueError, match="timeout"):
        HealthCheck(timeout=timeout)


def test_default_timeout() -> None:
    """
    Without a timeout, a probe gets the interval, at most L{DEFAULT_TIMEOUT}.
    """
    pool = Pool()
    clock = MemoryReactorClock()
    assert HealthChecker(pool, clock, interval=2.0).timeout == 2.0
    assert HealthChecker(pool, clock, interval=60.0).timeout == DEFAULT_TIMEOUT


@pytest.mark.parametrize(
    ("settings", "match"),
    [
        ({"interval": 0.0}, "interval"),
        ({"interval": 1.0, "rise": 0}, "rise"),
        ({"interval": 1.0, "fall": 0}, "fall"),
        ({"interval": 1.0, "timeout": 0.0}, "timeout"),
    ],
)
def test_checker_rejects_bad_settings(settings: dict[str, float], match: str) -> None:
    """
    Out-of-range settings are refused when the checker is built.
    """
    with pytest.raises(ValueError, match=match):
        HealthChecker(Pool(), MemoryReactorClock(), **settings)  # type: ignore[arg-type]


# Rounds


def test_start_probes_every_backend_at_once() -> None:
    """
    Starting the checker probes every backend straight away, side by side.
    """
    rig = Rig(backends=3)
    rig.checker.startService()
    assert rig.ports() == [7000, 7001, 7002]
    assert set(rig.checker.in_flight()) == set(rig.backends)


def test_interval_honoured() -> None:
    """
    The next round starts C{interval} seconds after the last, not before.
    """
    rig = Rig()
    rig.checker.startService()
    rig.pass_probe(0)
    rig.pass_probe(1)
    rig.reactor.advance(INTERVAL - 0.1)
    assert rig.ports() == [7000, 7001]
    rig.reactor.advance(0.1)
    assert rig.ports() == [7000, 7001, 7000, 7001]
    rig.pass_probe(0)
    rig.pass_probe(1)
    rig.next_round()
    assert len(rig.ports()) == 6


def test_passing_probe_closes_cleanly_and_logs_nothing(
    log_events: EventLoggingObserver,
) -> None:
    """
    A TCP connect passes the default check: the probe closes its connection
    cleanly (not an abort), the backend stays up, no timer is left but the
    next round's, and nothing at all is logged (not even by the factory).
    """
    rig = Rig(backends=1)
    rig.checker.startService()
    wire, _ = rig.accept()
    assert wire.closed_cleanly
    assert wire.value() == b""
    wire.lost()
    assert rig.checker.in_flight() == ()
    health = rig.checker.health(rig.backends[0])
    assert health is not None and health.successes == 1
    assert rig.state() is UP
    assert len(rig.reactor.getDelayedCalls()) == 1
    assert list(log_events) == []


def test_fall_failures_mark_down_with_reason() -> None:
    """
    C{fall} refused probes in a row mark the backend down, with a reason
    naming the count and the last error; the other backend is untouched.
    """
    rig = Rig(fall=3)
    rig.checker.startService()
    for _ in range(2):
        rig.refuse(0)
        rig.pass_probe(1)
        rig.next_round()
        assert rig.state(0) is UP
    rig.refuse(0)
    assert rig.state(0) is DOWN
    assert rig.backends[0].reason.startswith("health check failed 3 times: Connection was refused")
    assert rig.state(1) is UP
    assert rig.pool.transitions == 1


def test_one_lost_probe_does_not_flap() -> None:
    """
    Failed probes with a pass between them never add up to C{fall}.
    """
    rig = Rig(backends=1, fall=2)
    rig.checker.startService()
    for _ in range(5):
        rig.refuse()
        rig.next_round()
        rig.pass_probe()
        rig.next_round()
    assert rig.state() is UP
    assert rig.pool.transitions == 0


def test_rise_passes_bring_back() -> None:
    """
    A down backend comes back after C{rise} passing probes in a row, with a
    reason, and not after one.
    """
    rig = Rig(backends=1, rise=2, fall=1)
    rig.checker.startService()
    rig.refuse()
    assert rig.state() is DOWN
    rig.next_round()
    rig.pass_probe()
    assert rig.state() is DOWN
    rig.next_round()
    rig.pass_probe()
    assert rig.state() is UP
    assert rig.backends[0].reason == "health check passed 2 times"


def test_draining_untouched() -> None:
    """
    A draining backend is probed, but no result changes its state or reason.
    """
    rig = Rig(backends=1, rise=1, fall=1)
    rig.pool.set_state(rig.backends[0], DRAINING, "operator")
    rig.checker.startService()
    for _ in range(3):
        rig.refuse()
        rig.next_round()
        rig.pass_probe()
        rig.next_round()
    assert len(rig.ports()) == 7
    assert rig.state() is DRAINING
    assert rig.backends[0].reason == "operator"


def test_passive_down_comes_back_after_rise() -> None:
    """
    A backend marked down by passive detection (failed session attempts)
    comes back after C{rise} passing probes counted from then, and its
    passive count starts again, so one more failed attempt does not take it
    down at once.
    """
    rig = Rig(backends=1, rise=2, pool_fall=3)
    backend = rig.backends[0]
    rig.checker.startService()
    rig.pass_probe()
    for _ in range(3):
        rig.pool.attempt_failed(backend)
    assert backend.state is DOWN
    rig.next_round()
    rig.pass_probe()
    assert backend.state is DOWN
    rig.next_round()
    rig.pass_probe()
    assert backend.state is UP
    assert backend.consecutive_failures == 0
    rig.pool.attempt_failed(backend)
    assert backend.state is UP


# Timeouts and in-flight probes


def test_connect_timeout_fails_probe(log_events: EventLoggingObserver) -> None:
    """
    A connect that hangs is cancelled after the timeout (its connector stops
    connecting) and the probe has failed, with why in the backend's reason;
    a failed probe logs nothing by itself (only the transition is logged, by
    the pool), so a dead backend does not write a line per interval.
    """
    rig = Rig(backends=1, fall=1)
    rig.checker.startService()
    rig.reactor.advance(TIMEOUT - 0.1)
    assert not rig.stopped_connecting()
    assert rig.state() is UP
    rig.reactor.advance(0.1)
    assert rig.stopped_connecting()
    assert rig.state() is DOWN
    assert rig.backends[0].reason == "health check failed 1 time: no connection within 2 s"
    assert rig.checker.in_flight() == ()
    debug = [e for e in log_events if e["log_level"] is LogLevel.debug]
    assert debug == []


def test_at_most_one_probe_in_flight_and_no_delay_to_others() -> None:
    """
    With a timeout longer than the interval, a backend whose probe still runs
    is skipped in the next round while the other backend is probed on time;
    once its probe has timed out, it is probed again.
    """
    rig = Rig(timeout=INTERVAL * 2.5)
    rig.checker.startService()
    rig.pass_probe(1)
    rig.next_round()
    assert rig.ports() == [7000, 7001, 7001]
    rig.pass_probe(1)
    rig.next_round()
    assert rig.ports() == [7000, 7001, 7001, 7001]
    rig.pass_probe(1)
    rig.reactor.advance(INTERVAL * 0.5)
    assert rig.stopped_connecting(0)
    rig.reactor.advance(INTERVAL * 0.5)
    assert rig.ports()[-2:] == [7000, 7001]


def test_handshake_timeout_aborts() -> None:
    """
    A TLS backend that connects but never completes its handshake fails the
    probe at the timeout; its connection is aborted.
    """
    rig = Rig(backends=1, fall=1)
    rig.checker.startService()
    wire, _ = rig.accept(wire=TLSWire())
    rig.reactor.advance(TIMEOUT)
    assert wire.aborted
    assert rig.state() is DOWN
    assert rig.backends[0].reason.endswith("TLS handshake not done within 2 s")
    assert rig.checker.in_flight() == ()


def test_close_that_never_finishes_is_aborted_at_deadline() -> None:
    """
    A passing probe whose clean close has not finished by the deadline is
    aborted then (the result stands), so it cannot linger.
    """
    rig = Rig(backends=1)
    rig.checker.startService()
    wire, _ = rig.accept()
    assert wire.closed_cleanly
    assert rig.checker.in_flight() == (rig.backends[0],)
    rig.reactor.advance(TIMEOUT)
    assert wire.aborted
    assert rig.checker.in_flight() == ()
    health = rig.checker.health(rig.backends[0])
    assert health is not None and (health.successes, health.failures) == (1, 0)


# TLS


def test_probe_provides_only_handshake_listener() -> None:
    """
    The probe protocol provides L{IHandshakeListener} and not
    L{IHalfCloseableProtocol}, so Twisted's endpoint wrapper (which copies
    only the last of them) keeps the handshake notification.
    """
    rig = Rig(backends=1)
    rig.checker.startService()
    _, protocol = rig.accept(wire=TLSWire())
    probe = probe_of(protocol)
    assert IHandshakeListener.providedBy(probe)
    assert not IHalfCloseableProtocol.providedBy(probe)
    assert IHandshakeListener.providedBy(protocol)


def test_tls_probe_waits_for_handshake() -> None:
    """
    A TLS connection is not a pass until its handshake is done; then the
    probe passes and closes cleanly.
    """
    rig = Rig(backends=1, rise=1, fall=1)
    rig.pool.set_state(rig.backends[0], DOWN, "test")
    rig.checker.startService()
    wire, protocol = rig.accept(wire=TLSWire())
    assert not wire.disconnecting
    assert rig.state() is DOWN
    probe_of(protocol).handshakeCompleted()
    assert wire.closed_cleanly
    assert rig.state() is UP


def test_tls_failure_fails_probe() -> None:
    """
    A TLS connection lost during the handshake (a certificate the client does
    not trust) fails the probe with OpenSSL's reason.
    """
    rig = Rig(backends=1, fall=1)
    rig.checker.startService()
    wire, _ = rig.accept(wire=TLSWire())
    wire.lost(Failure(SSL.Error([("SSL routines", "", "certificate verify failed")])))
    assert rig.state() is DOWN
    assert rig.backends[0].reason.endswith("TLS error: certificate verify failed")


def test_tls_handshake_on_aborting_connection_ignored() -> None:
    """
    A handshake reported done on a connection already being aborted (as
    Twisted before 25 does after a failed host name check) is not a pass.
    """
    rig = Rig(backends=1, rise=1)
    rig.pool.set_state(rig.backends[0], DOWN, "test")
    rig.checker.startService()
    wire, protocol = rig.accept(wire=TLSWire())
    wire.abortConnection()
    probe_of(protocol).handshakeCompleted()
    assert rig.state() is DOWN
    assert probe_of(protocol).passed is None


def test_tls_send_expect_after_handshake() -> None:
    """
    With a send/expect check, a TLS probe sends only once the handshake is done.
    """
    rig = Rig(backends=1, checks={"b0": HealthCheck(send=b"PING\n", expect=b"PONG")})
    rig.checker.startService()
    wire, protocol = rig.accept(wire=TLSWire())
    assert wire.value() == b""
    probe = probe_of(protocol)
    probe.handshakeCompleted()
    assert wire.value() == b"PING\n"
    probe.dataReceived(b"PONG\n")
    assert probe.passed is True
    assert wire.closed_cleanly


# Send and expect


def expect_rig(check: HealthCheck) -> tuple[Rig, Wire, Probe]:
    """
    A one-backend rig whose backend is down and has C{check}, started and
    with its first probe connected (rise 1, fall 1: each result shows).
    """
    rig = Rig(backends=1, rise=1, fall=1, checks={"b0": check})
    rig.pool.set_state(rig.backends[0], DOWN, "test")
    rig.checker.startService()
    wire, protocol = rig.accept()
    return rig, wire, probe_of(protocol)


def test_send_expect_split_across_reads_passes() -> None:
    """
    The probe sends its bytes once connected, and passes when the expected
    bytes arrive, even split across reads and among other bytes; it then
    closes cleanly.
    """
    rig, wire, probe = expect_rig(HealthCheck(send=b"PING\n", expect=b"PONG"))
    assert wire.value() == b"PING\n"
    probe.dataReceived(b"hello P")
    probe.dataReceived(b"O")
    assert rig.state() is DOWN
    assert not wire.disconnecting
    probe.dataReceived(b"NG bye")
    assert rig.state() is UP
    assert wire.closed_cleanly


def test_expect_without_send() -> None:
    """
    An expect with nothing to send checks a backend that speaks first.
    """
    rig, wire, probe = expect_rig(HealthCheck(expect=b"READY"))
    assert wire.value() == b""
    probe.dataReceived(b"READY\n")
    assert rig.state() is UP


def test_send_without_expect_passes_once_sent() -> None:
    """
    A send with nothing expected passes once written; the close flushes it.
    """
    rig, wire, _ = expect_rig(HealthCheck(send=b"QUIT\n"))
    assert wire.value() == b"QUIT\n"
    assert wire.closed_cleanly
    assert rig.state() is UP


def test_wrong_bytes_fail_at_timeout() -> None:
    """
    Bytes that never contain the expected ones fail the probe at the timeout,
    with what arrived in the reason; the connection is aborted.
    """
    rig, wire, probe = expect_rig(HealthCheck(send=b"PING\n", expect=b"PONG"))
    rig.pool.set_state(rig.backends[0], UP, "test")
    probe.dataReceived(b"ERR busy\n")
    rig.reactor.advance(TIMEOUT - 0.1)
    assert rig.state() is UP
    rig.reactor.advance(0.1)
    assert wire.aborted
    assert rig.state() is DOWN
    assert rig.backends[0].reason == (
        'health check failed 1 time: "PONG" not received within 2 s'
        ' (received 9 bytes: "ERR busy\\n")'
    )


def test_silence_fails_at_timeout() -> None:
    """
    A backend that answers nothing fails the probe at the timeout.
    """
    rig, wire, _ = expect_rig(HealthCheck(expect=b"PONG", timeout=1.0))
    rig.pool.set_state(rig.backends[0], UP, "test")
    rig.reactor.advance(1.0)
    assert wire.aborted
    assert rig.backends[0].reason.endswith('"PONG" not received within 1 s (nothing received)')


def test_close_before_expected_fails() -> None:
    """
    A backend that closes before sending the expected bytes fails the probe.
    """
    rig, wire, probe = expect_rig(HealthCheck(expect=b"PONG"))
    rig.pool.set_state(rig.backends[0], UP, "test")
    probe.dataReceived(b"PO")
    wire.lost()
    assert rig.state() is DOWN
    assert rig.backends[0].reason.endswith(
        'connection closed before "PONG" arrived (received 2 bytes: "PO")'
    )
    assert rig.checker.in_flight() == ()


def test_expect_window_is_bounded() -> None:
    """
    Between reads the probe keeps only the bytes that could start the
    expected ones, however much the backend sends.
    """
    _, _, probe = expect_rig(HealthCheck(expect=b"PONG"))
    for _ in range(100):
        probe.dataReceived(b"x" * 1000 + b"PO")
    assert probe.passed is None
    assert len(probe._tail) == 3
    probe.dataReceived(b"NG")
    assert probe.passed is True


# StringTransport endpoints (synchronous connects)


def test_synchronous_connect_passes() -> None:
    """
    An endpoint that connects before C{connect} returns is probed all the
    same: send, expect, clean close; its Deferred has already fired.
    """
    rig = Rig(backends=1, checks={"b0": HealthCheck(send=b"PING", expect=b"PONG")})
    endpoint = StringEndpoint()
    rig.backends[0].endpoint = endpoint
    rig.checker.startService()
    (wire,) = endpoint.wires
    assert wire.value() == b"PING"
    assert wire.protocol is not None
    wire.protocol.dataReceived(b"PONG")
    assert wire.closed_cleanly
    wire.lost()
    assert rig.checker.in_flight() == ()
    health = rig.checker.health(rig.backends[0])
    assert health is not None and health.successes == 1


def test_synchronous_close_before_connect_returns() -> None:
    """
    A connection that passes and is lost before C{connect} returns ends the
    probe cleanly: nothing is left in flight and no timer but the round's.
    """
    rig = Rig(backends=1)

    class ClosingEndpoint(StringEndpoint):
        """
        Connects, then delivers the end of the connection at once.
        """

        def connect(self, factory: IProtocolFactory) -> Deferred[IProtocol]:
            """
            Connect, and lose the connection before returning.
            """
            result = super().connect(factory)
            self.wires[-1].lost()
            return result

    rig.backends[0].endpoint = ClosingEndpoint()
    rig.checker.startService()
    assert rig.checker.in_flight() == ()
    assert len(rig.reactor.getDelayedCalls()) == 1
    health = rig.checker.health(rig.backends[0])
    assert health is not None and health.successes == 1


def test_raising_endpoint_is_a_failed_probe() -> None:
    """
    An endpoint whose C{connect} raises fails its probe (with the error as
    the reason) and does not stop the other backends' probes.
    """
    rig = Rig(fall=1)
    rig.backends[0].endpoint = RaisingEndpoint()
    rig.checker.startService()
    assert rig.state(0) is DOWN
    assert rig.backends[0].reason == "health check failed 1 time: endpoint exploded"
    assert rig.ports() == [7001]
    rig.pass_probe(1)
    rig.next_round()
    assert rig.ports() == [7001, 7001]


# Pool changes and stopping


def test_backend_added_later_is_probed() -> None:
    """
    A backend added to the pool while the checker runs is probed from the
    next round on.
    """
    rig = Rig(backends=1)
    rig.checker.startService()
    rig.pass_probe(0)
    rig.pool.add(rig.make_backend(5))
    assert rig.ports() == [7000]
    rig.next_round()
    assert rig.ports() == [7000, 7000, 7005]


def test_removed_backend_forgotten() -> None:
    """
    A backend removed from the pool is forgotten at the next round: its
    running probe is aborted without a result, its record dropped, and it is
    not probed again.
    """
    rig = Rig(timeout=INTERVAL * 3)
    rig.checker.startService()
    wire, _ = rig.accept(0)
    rig.pass_probe(1)
    removed = rig.backends[0]
    # Connected, its probe would pass if the test let it close; it is closing.
    assert wire.closed_cleanly
    rig.pool.remove(removed)
    rig.next_round()
    assert wire.aborted
    assert rig.checker.health(removed) is None
    assert rig.checker.in_flight() == (rig.backends[1],)
    assert rig.ports() == [7000, 7001, 7001]


def test_result_for_removed_backend_ignored() -> None:
    """
    A probe that ends after its backend left the pool (before the next round)
    changes nothing.
    """
    rig = Rig(backends=1, fall=1)
    rig.checker.startService()
    rig.pool.remove(rig.backends[0])
    rig.refuse()
    assert rig.state() is UP


def test_stop_cancels_everything(log_events: EventLoggingObserver) -> None:
    """
    Stopping the checker cancels its round timer, cancels attempts still
    connecting, aborts open probe connections, records no result, and leaves
    no delayed call behind; no round runs afterwards.
    """
    rig = Rig(backends=2, checks={"b1": HealthCheck(expect=b"PONG")}, fall=1)
    rig.checker.startService()
    wire, _ = rig.accept(1)
    rig.checker.stopService()
    assert rig.reactor.getDelayedCalls() == []
    assert rig.stopped_connecting(0)
    assert wire.aborted
    assert rig.checker.in_flight() == ()
    assert [rig.state(0), rig.state(1)] == [UP, UP]
    rig.reactor.advance(INTERVAL * 3)
    assert rig.ports() == [7000, 7001]
    assert [e for e in log_events if e["log_level"] >= LogLevel.warn] == []


def test_restart_probes_again() -> None:
    """
    A checker stopped and started again probes every backend at once.
    """
    rig = Rig(backends=1)
    rig.checker.startService()
    rig.checker.stopService()
    rig.checker.startService()
    assert rig.ports() == [7000, 7000]
    rig.checker.stopService()
    assert rig.reactor.getDelayedCalls() == []


def test_error_recording_a_result_is_logged_and_checks_go_on(
    log_events: EventLoggingObserver,
) -> None:
    """
    An error while recording one backend's result is logged as a failure and
    stops neither that backend's later probes nor the others'.
    """
    rig = Rig(fall=1)

    def broken(backend: Backend, state: BackendState, reason: str, *, log: bool = True) -> None:
        raise RuntimeError("pool broke")

    rig.pool.set_state = broken  # type: ignore[method-assign]
    rig.checker.startService()
    rig.refuse(0)
    rig.pass_probe(1)
    rig.next_round()
    assert rig.ports() == [7000, 7001, 7000, 7001]
    critical = [e for e in log_events if e["log_level"] is LogLevel.critical]
    assert [e["backend"] for e in critical] == ["b0"]
    assert critical[0]["log_failure"].check(RuntimeError)


def test_failing_backend_probed_again_soon() -> None:
    """
    After a failed probe of an up backend, the next probe comes a quarter of
    the interval later (not a whole interval), so with fall 3 a dead backend
    is down half an interval after its first failed probe.
    """
    rig = Rig(backends=1, fall=3)
    rig.checker.startService()
    rig.refuse()
    assert len(rig.ports()) == 1
    rig.reactor.advance(INTERVAL / 4)
    assert len(rig.ports()) == 2
    rig.refuse()
    assert rig.state() is UP
    rig.reactor.advance(INTERVAL / 4)
    assert len(rig.ports()) == 3
    rig.refuse()
    assert rig.state() is DOWN
    assert rig.reactor.seconds() == INTERVAL / 2
