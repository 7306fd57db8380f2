"""
C{--balance leastconn} under a burst: a game session counts on its backend
from the moment the backend is chosen for it, so sessions arriving before
any connection completes see each other, and an attempt that fails uncounts
its session.  The backends are real TCP endpoints on a
L{MemoryReactorClock}: the attempts are recorded, never made.
"""

from __future__ import annotations

from collections import Counter

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure

from gateway.pool.backends import Pool
from gateway.pool.balance import LeastConnections
from gateway.session.relay import GameSession
from gateway.session.settings import SessionSettings
from tests.test_relay import memory_backends

SETTINGS = SessionSettings(
    sniff_timeout=2.0, connect_timeout=5.0, idle_timeout=0.0, fin_timeout=0.0, retries=2
)


def burst(weights: list[int], count: int) -> tuple[MemoryReactorClock, Pool, list[GameSession]]:
    """
    C{count} game sessions started at once (no connection completed) on a
    leastconn pool with C{weights}.
    """
    reactor = MemoryReactorClock()
    backends = memory_backends(reactor, len(weights))
    for backend, weight in zip(backends, weights, strict=True):
        backend.weight = weight
    pool = Pool(backends, LeastConnections())
    sessions = []
    for number in range(count):
        session = GameSession(
            StringTransport(), pool, reactor, SETTINGS, peer=f"192.0.2.{number}:5000"
        )
        session.start(b"login")
        sessions.append(session)
    return reactor, pool, sessions


def attempts_by_port(reactor: MemoryReactorClock) -> Counter[int]:
    """
    How many connection attempts each backend port got.
    """
    return Counter(port for _host, port, _factory, _timeout, _bind in reactor.tcpClients)


def test_burst_spread_by_weight() -> None:
    """
    8 simultaneous logins on backends of weights 5/2/1 go 5/2/1 (they went
    3/3/2 when a session counted only once connected), and each backend's
    active count is its share while the connections are still pending.
    """
    reactor, pool, _ = burst([5, 2, 1], 8)
    assert attempts_by_port(reactor) == {7000: 5, 7001: 2, 7002: 1}
    assert [backend.active for backend in pool.backends] == [5, 2, 1]
    assert [backend.total for backend in pool.backends] == [0, 0, 0]


def test_burst_of_sixteen_spread_by_weight() -> None:
    """
    A longer burst keeps the proportions (16 on 5/2/1: 10/4/2).
    """
    reactor, _, _ = burst([5, 2, 1], 16)
    assert attempts_by_port(reactor) == {7000: 10, 7001: 4, 7002: 2}


def test_failed_attempt_uncounts_and_connected_ones_stay() -> None:
    """
    A refused attempt uncounts its session on that backend (the session
    then counts on the backend it tries next); completed connections keep
    their count, and their connect times go to the backend's histogram.
    """
    reactor, pool, _ = burst([1, 1], 2)
    assert [backend.active for backend in pool.backends] == [1, 1]
    # Refuse the first session's attempt: it moves to the other backend.
    refused = reactor.tcpClients[0][1] - 7000
    other = 1 - refused
    factory = reactor.tcpClients[0][2]
    factory.clientConnectionFailed(reactor.connectors[0], Failure(ConnectionRefusedError()))
    assert pool.backends[refused].active == 0
    assert pool.backends[other].active == 2
    for _host, port, factory, _timeout, _bind in reactor.tcpClients[1:]:
        protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", port))
        assert protocol is not None
        protocol.makeConnection(StringTransport())
    counts = [(b.active, b.total, b.failures) for b in pool.backends]
    assert counts[refused] == (0, 0, 1)
    assert counts[other] == (2, 2, 0)
    # Both connected on the clock's first instant: the first bucket.
    assert pool.backends[other].connect_time.counts[0] == 2


def test_client_leaving_while_connecting_uncounts() -> None:
    """
    A client that leaves while its backend connects is uncounted at once.
    """
    _, pool, sessions = burst([1], 3)
    assert pool.backends[0].active == 3
    sessions[1].client_lost()
    assert pool.backends[0].active == 2
