"""
Tests of L{gateway.cluster.seats.SharedSeats}: the backends' seats counted
across nodes, on a real C{redis-server}, each node through a
L{tests.test_shared_limits.Link} (Redis runs each command at once, in the
order sent; a link can be away).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from twisted.internet.task import Clock

from gateway.cluster.seats import SharedSeats
from gateway.pool.backend import Backend
from gateway.pool.backends import Pool
from gateway.pool.pools import Pools
from gateway.pool.seats import Seat, SeatAnswer
from tests.redisserver import RedisServer
from tests.test_shared_limits import Link, hash_of


class Node:
    """
    One node: its pool of two backends (C{a}, C{b}), its seats and link.
    """

    def __init__(
        self, redis: RedisServer, name: str, *, limit: int = 2, cap: int = 0, live: int = 2
    ) -> None:
        self.connection = redis.connect()
        self.link = Link(self.connection)
        self.live = live
        self.backends = [
            Backend(name=n, description=n, endpoint=None, max_sessions=limit)  # type: ignore[arg-type]
            for n in ("a", "b")
        ]
        self.pool = Pool(self.backends)
        self.seats = SharedSeats(
            self.link,  # type: ignore[arg-type]
            Clock(),
            Pools(self.pool),
            cluster="t",
            node=name,
            ttl=3.0,
            cap=cap,
            live_nodes=lambda: self.live,
        )

    def claim(self, index: int = 0) -> tuple[SeatAnswer, Seat | None]:
        """
        A session chosen for backend C{index} (counted in C{active} first,
        as the dialer does) claims its seat; uncounted unless taken.
        """
        backend = self.backends[index]
        backend.active += 1
        answers: list[tuple[SeatAnswer, Seat | None]] = []
        self.seats.claim(backend).addCallback(answers.append)
        assert len(answers) == 1, "no answer"
        if answers[0][0] is not SeatAnswer.TAKEN:
            backend.active -= 1
        return answers[0]

    def seat(self, index: int = 0) -> Seat:
        """
        Claim, which must succeed.
        """
        result, seat = self.claim(index)
        assert result is SeatAnswer.TAKEN and seat is not None
        return seat

    def end(self, seat: Seat, index: int = 0) -> None:
        """
        The session on backend C{index} ends.
        """
        self.backends[index].active -= 1
        seat.release()


@pytest.fixture
def two(redis_server: RedisServer) -> Iterator[list[Node]]:
    """
    Two nodes, backends of two seats each.
    """
    made = [Node(redis_server, f"n{i}") for i in (1, 2)]
    yield made
    for node in made:
        node.connection.close()


def fields(redis: RedisServer, node: str) -> dict[bytes, bytes]:
    """
    Node C{node}'s hash of seats, as Redis has it.
    """
    return hash_of(redis, f"t:seats:{node}")


def test_max_sessions_across_nodes(redis_server: RedisServer, two: list[Node]) -> None:
    """
    A backend of two seats: one session through each node, then a third
    through either is refused as full, and the answer tells the node the
    backend's sessions elsewhere; the other backend is not affected; an end
    frees a seat for the other node.
    """
    n1, n2 = two
    first = n1.seat()
    n2.seat()
    assert n1.claim() == (SeatAnswer.FULL, None)
    assert n1.backends[0].elsewhere == 1
    assert not Pool.has_room(n1.backends[0])
    n1.seat(1)
    assert fields(redis_server, "n1") == {b"a": b"1", b"b": b"1", b"*": b"2"}
    n1.end(first)
    assert n2.claim()[0] is SeatAnswer.TAKEN
    assert n2.backends[0].elsewhere == 0


def test_cluster_cap(redis_server: RedisServer) -> None:
    """
    C{--cluster-max-sessions 3} over backends without a limit: three
    sessions through two nodes, the fourth capped.
    """
    n1, n2 = (Node(redis_server, f"c{i}", limit=0, cap=3) for i in (1, 2))
    assert n1.seats.applies(n1.backends[0])
    n1.seat(0)
    n2.seat(1)
    seat = n2.seat(0)
    assert n1.claim(1) == (SeatAnswer.CAPPED, None)
    n2.end(seat)
    assert n1.claim(1)[0] is SeatAnswer.TAKEN


def test_no_limit_no_claim(two: list[Node]) -> None:
    """
    A backend without max-sessions, no cap: nothing to claim.
    """
    two[0].backends[0].max_sessions = 0
    assert not two[0].seats.applies(two[0].backends[0])


def test_heartbeat_view_and_the_room(redis_server: RedisServer, two: list[Node]) -> None:
    """
    A heartbeat reads every backend's sessions elsewhere; seats freed
    elsewhere make the pool's waiting room look again.
    """
    n1, n2 = two
    taken = [n2.seat(0), n2.seat(0), n2.seat(1)]
    n1.seats.beat()
    assert [b.elsewhere for b in n1.backends] == [2, 1]
    assert n1.seats.summary()["sessions"] == 3
    kicks: list[int] = []
    n1.pool.room.kick = lambda: kicks.append(1)  # type: ignore[method-assign]
    n2.end(taken[0])
    n1.seats.beat()
    assert [b.elsewhere for b in n1.backends] == [1, 1]
    assert kicks == [1]
    n1.seats.beat()
    assert kicks == [1]  # nothing freed since


def test_redis_away_takes_a_share(redis_server: RedisServer, two: list[Node]) -> None:
    """
    Without Redis a node takes seats alone: each backend's max-sessions
    divided by the live nodes (2 of 4 over 2 nodes), the rest left to the
    others; when Redis answers again its seats are written back.
    """
    n1, _ = two
    for backend in n1.backends:
        backend.max_sessions = 4
    n1.link.away = True
    n1.seat()
    n1.seat()
    assert n1.claim() == (SeatAnswer.FULL, None)
    assert n1.backends[0].elsewhere == 2
    assert n1.seats.alone and n1.seats.local == 3
    n1.link.away = False
    n1.seat(1)
    assert not n1.seats.alone
    assert fields(redis_server, "n1") == {b"a": b"2", b"b": b"1", b"*": b"3"}


def test_cap_share_alone(redis_server: RedisServer) -> None:
    """
    Without Redis, the cluster's cap is divided too.
    """
    n1 = Node(redis_server, "d1", limit=0, cap=4)
    n1.link.away = True
    n1.seat(0)
    n1.seat(1)
    assert n1.claim(0) == (SeatAnswer.CAPPED, None)


def test_seat_given_back_once(redis_server: RedisServer, two: list[Node]) -> None:
    """
    A seat released twice is given back once.
    """
    seat = two[0].seat()
    seat.release()
    seat.release()
    assert fields(redis_server, "n1") == {}
    assert two[0].seats.counts() == {}
