"""
The shared affinity on the session side (L{gateway.pool.affinity}, the
dialer's first choice): a fake store implementing
L{gateway.pool.affinity.AffinityStore} answers as the test says, on a
memory reactor whose clock bounds the lookup.  The store kept in Redis is
tested end to end (tests/test_e2e_affinity.py); its Redis keys here.
"""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.defer import Deferred

from gateway.cluster.affinity import affinity_key
from gateway.interfaces import IBalancer
from gateway.pool.backends import BackendState, Pool
from gateway.pool.balance import RendezvousHash, RoundRobin
from gateway.pool.pools import Pools
from gateway.session.relay import GameSession
from gateway.session.settings import SessionSettings
from tests.test_relay import CONNECT_TIMEOUT, PEER, Gateway, HalfCloseableTransport

KEY = b"alice"
TIMEOUT = 0.05


class FakeStore:
    """
    An affinity store whose lookups the test answers.

    @ivar asked: each lookup's pool, key and pending answer.
    @ivar remembered: each remember's pool, key and backend.
    @ivar counts: the lookups' results.
    """

    timeout = TIMEOUT

    def __init__(self) -> None:
        self.asked: list[tuple[str, bytes, Deferred[str | None]]] = []
        self.remembered: list[tuple[str, bytes, str]] = []
        self.counts: Counter[str] = Counter()

    def lookup(self, pool: str, key: bytes) -> Deferred[str | None]:
        answer: Deferred[str | None] = Deferred()
        self.asked.append((pool, key, answer))
        return answer

    def remember(self, pool: str, key: bytes, backend: str) -> None:
        self.remembered.append((pool, key, backend))

    def count(self, result: str) -> None:
        self.counts[result] += 1


class Keyed(Gateway):
    """
    A session with key L{KEY} to three backends balanced by hash, with a
    shared affinity (L{FakeStore}).

    @ivar own: the backend the hash gives the key.
    @ivar other: another backend, the one the store remembers in most tests.
    """

    def __init__(self, key: bytes | None = KEY, *, balancer: IBalancer | None = None) -> None:
        super().__init__(3)
        self.pool = Pool(self.backends, balancer or RendezvousHash())
        self.store = FakeStore()
        Pools(self.pool).share_affinity(self.store)
        self.client = HalfCloseableTransport()
        settings = SessionSettings(
            sniff_timeout=2.0, connect_timeout=CONNECT_TIMEOUT, idle_timeout=0, fin_timeout=0
        )
        self.session = GameSession(
            self.client, self.pool, self.reactor, settings, peer=PEER, key=key
        )
        self.client.on_lost = lambda reason: self.session.client_lost()
        self.own = RendezvousHash().choose(self.backends, KEY)
        self.other = next(b for b in self.backends if b is not self.own)

    def port(self, backend: object) -> int:
        """
        The port of C{backend}'s endpoint.
        """
        return 7000 + self.backends.index(backend)  # type: ignore[arg-type]


def test_remembered_backend_is_used_when_up() -> None:
    """
    The session waits for the lookup (no attempt before it answers), then
    tries the backend the store remembers rather than the hash's; it is
    remembered again once connected, not before.
    """
    gateway = Keyed()
    gateway.session.start(b"alice\n")
    assert [(pool, key) for pool, key, _ in gateway.store.asked] == [("game", KEY)]
    assert gateway.attempted_ports() == []
    gateway.store.asked[0][2].callback(gateway.other.name)
    assert gateway.attempted_ports() == [gateway.port(gateway.other)]
    assert gateway.store.remembered == []
    gateway.accept()
    assert gateway.session.backend is gateway.other
    assert gateway.store.remembered == [("game", KEY, gateway.other.name)]
    assert gateway.store.counts == {"used": 1}


@pytest.mark.parametrize("why", ["down", "draining", "full", "unknown"])
def test_remembered_backend_not_used_unless_it_takes_the_session(why: str) -> None:
    """
    A remembered backend that is down or draining on this node, has no free
    seat, or is not in the pool is overridden: the hash chooses, and the
    backend that took the session is remembered.
    """
    gateway = Keyed()
    other = gateway.other
    name = other.name
    if why == "down":
        other.state = BackendState.DOWN
    elif why == "draining":
        other.state = BackendState.DRAINING
    elif why == "full":
        other.max_sessions, other.active = 1, 1
    else:
        name = "gone"
    gateway.session.start(b"alice\n")
    gateway.store.asked[0][2].callback(name)
    assert gateway.attempted_ports() == [gateway.port(gateway.own)]
    gateway.accept()
    assert gateway.store.remembered == [("game", KEY, gateway.own.name)]
    assert gateway.store.counts == {"overridden": 1}


def test_nothing_remembered_chooses_by_hash() -> None:
    """
    A key the store does not know goes where the hash sends it.
    """
    gateway = Keyed()
    gateway.session.start(b"alice\n")
    gateway.store.asked[0][2].callback(None)
    assert gateway.attempted_ports() == [gateway.port(gateway.own)]
    assert gateway.store.counts == {"none": 1}


def test_lookup_timing_out_falls_back_to_the_hash() -> None:
    """
    A store that does not answer within its timeout: the hash chooses as
    soon as the timeout has passed on the session's clock, not later; its
    late answer is ignored.
    """
    gateway = Keyed()
    gateway.session.start(b"alice\n")
    gateway.reactor.advance(TIMEOUT * 0.99)
    assert gateway.attempted_ports() == []
    gateway.reactor.advance(TIMEOUT * 0.01)
    assert gateway.attempted_ports() == [gateway.port(gateway.own)]
    gateway.store.asked[0][2].callback(gateway.other.name)
    assert gateway.attempted_ports() == [gateway.port(gateway.own)]
    assert gateway.store.counts == {"failed": 1}
    assert not gateway.reactor.getDelayedCalls() or all(
        call.getTime() > TIMEOUT for call in gateway.reactor.getDelayedCalls()
    )


def test_lookup_failing_falls_back_to_the_hash_at_once() -> None:
    """
    A store that fails (Redis away: at once) lets the hash choose at once,
    and its timer is cancelled.
    """
    gateway = Keyed()
    gateway.session.start(b"alice\n")
    gateway.store.asked[0][2].errback(ConnectionError("no connection to Redis"))
    assert gateway.attempted_ports() == [gateway.port(gateway.own)]
    assert gateway.store.counts == {"failed": 1}
    # Only the connect timeout is left: the lookup's timer is gone.
    assert [round(c.getTime(), 3) for c in gateway.reactor.getDelayedCalls()] == [CONNECT_TIMEOUT]


def test_remember_after_connect_only() -> None:
    """
    A refused attempt is not remembered; the backend the retry reaches is.
    A session no backend takes is not remembered at all.
    """
    gateway = Keyed()
    gateway.session.start(b"alice\n")
    gateway.store.asked[0][2].callback(gateway.other.name)
    gateway.refuse()
    assert gateway.store.remembered == []
    second = gateway.attempted_ports()[-1]
    assert second != gateway.port(gateway.other)
    gateway.accept()
    assert gateway.store.remembered == [("game", KEY, gateway.backends[second - 7000].name)]

    unlucky = Keyed()
    unlucky.session.start(b"alice\n")
    unlucky.store.asked[0][2].callback(None)
    for _ in range(3):
        unlucky.refuse()
    assert len(unlucky.attempted_ports()) == 3
    assert unlucky.store.remembered == []


def test_client_leaving_during_the_lookup() -> None:
    """
    A client that leaves while the lookup is pending: no attempt is made
    when it answers, nothing is remembered.
    """
    gateway = Keyed()
    gateway.session.start(b"alice\n")
    gateway.client.loseConnection()
    gateway.client.connection_lost()
    gateway.store.asked[0][2].callback(gateway.other.name)
    assert gateway.attempted_ports() == []
    assert gateway.store.remembered == []
    assert [b.active for b in gateway.backends] == [0, 0, 0]


@pytest.mark.parametrize("how", ["no key", "empty key", "not hash"])
def test_no_lookup_without_a_key_or_hash(how: str) -> None:
    """
    Sessions without a key, and pools whose policy does not use keys, do
    not ask the store (nor tell it).
    """
    if how == "not hash":
        gateway = Keyed(balancer=RoundRobin())
    else:
        gateway = Keyed(None if how == "no key" else b"")
    gateway.session.start(b"alice\n")
    assert gateway.store.asked == []
    assert len(gateway.attempted_ports()) == 1
    gateway.accept()
    assert gateway.store.remembered == []


def test_pools_added_later_share_it() -> None:
    """
    A pool added after the affinity was shared (a reload) has it too.
    """
    store = FakeStore()
    pools = Pools(Pool())
    pools.share_affinity(store)
    pools.add_pool(Pool(name="arena"))
    assert all(pool.affinity is store for pool in pools.pools)


@given(st.binary(max_size=300), st.binary(max_size=300))
def test_redis_keys_are_one_to_one(one: bytes, two: bytes) -> None:
    """
    Two different session keys never share a Redis key, and every Redis key
    is text within the cluster's and pool's prefix.
    """
    first, second = affinity_key("gw", "game", one), affinity_key("gw", "game", two)
    assert (first == second) == (one == two)
    assert first.startswith("gw:affinity:game:") and first.isascii()
