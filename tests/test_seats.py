"""
Shared seats on the session side (L{gateway.pool.seats}, the dialer's claim
before connecting): a fake store implementing L{SeatStore} answers as the
test says, on a memory reactor.  The store kept in Redis is tested in
C{test_shared_seats.py} and end to end in C{test_e2e_cluster_seats.py}.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred

from gateway.pool.backend import Backend
from gateway.pool.backends import Pool
from gateway.pool.pools import Pools
from gateway.pool.seats import Seat, SeatAnswer
from gateway.session.lifecycle import CloseReason
from tests.test_relay import Gateway


class FakeSeats:
    """
    A seat store whose claims the test answers.

    @ivar asked: each claim's backend and pending answer.
    @ivar released: the seats given back, in order.
    @ivar everything: whether every backend needs a seat (a cluster cap).
    """

    def __init__(self, everything: bool = False) -> None:
        self.asked: list[tuple[Backend, Deferred[tuple[SeatAnswer, Seat | None]]]] = []
        self.released: list[Seat] = []
        self.everything = everything

    def applies(self, backend: Backend) -> bool:
        return self.everything or backend.max_sessions > 0

    def claim(self, backend: Backend) -> Deferred[tuple[SeatAnswer, Seat | None]]:
        answer: Deferred[tuple[SeatAnswer, Seat | None]] = Deferred()
        self.asked.append((backend, answer))
        return answer

    def answer(self, result: SeatAnswer = SeatAnswer.TAKEN) -> Seat | None:
        """
        Answer the oldest claim.
        """
        backend, answer = self.asked.pop(0)
        seat = (
            Seat(backend.name, True, 0, self.released.append)
            if result is SeatAnswer.TAKEN
            else None
        )
        answer.callback((result, seat))
        return seat


class Seated(Gateway):
    """
    A session to three backends of two seats each, with shared seats.
    """

    def __init__(self, everything: bool = False, limit: int = 2) -> None:
        super().__init__(3)
        for backend in self.backends:
            backend.max_sessions = limit
        self.seats = FakeSeats(everything)
        Pools(self.pool).share_seats(self.seats)

    def claimed(self) -> list[str]:
        """
        The backends claimed and not answered yet.
        """
        return [backend.name for backend, _ in self.seats.asked]


def test_seat_claimed_before_connecting_and_given_back_at_the_end() -> None:
    """
    The chosen backend's seat is claimed before any connection attempt
    (counted in C{active} meanwhile); once taken the backend is connected
    to, and the seat is given back when the backend connection ends.
    """
    gateway = Seated()
    gateway.session.start(b"hello")
    first = gateway.backends[0]
    assert gateway.claimed() == [first.name]
    assert gateway.attempted_ports() == []
    assert first.active == 1
    seat = gateway.seats.answer()
    assert gateway.attempted_ports() == [7000]
    backend, _ = gateway.accept()
    assert gateway.session.backend is first
    assert gateway.seats.released == []
    backend.connection_lost()
    assert gateway.seats.released == [seat]
    assert first.active == 0


def test_full_elsewhere_chooses_the_next_backend() -> None:
    """
    A backend full through the other nodes is uncounted here and the next
    is chosen (and claimed).
    """
    gateway = Seated()
    gateway.session.start(b"hello")
    first = gateway.backends[0]
    gateway.seats.answer(SeatAnswer.FULL)
    assert first.active == 0
    assert gateway.claimed() == [gateway.backends[1].name]
    gateway.seats.answer()
    assert gateway.attempted_ports() == [7001]


def test_full_everywhere_is_no_backend() -> None:
    """
    Every backend full through the other nodes: no backend (no room
    configured: refused, counted).
    """
    gateway = Seated()
    gateway.session.start(b"hello")
    for _ in range(3):
        gateway.seats.answer(SeatAnswer.FULL)
    assert gateway.attempted_ports() == []
    assert gateway.session.close_reason is CloseReason.NO_BACKEND
    assert [b.active for b in gateway.backends] == [0, 0, 0]


def test_capped_is_refused() -> None:
    """
    At the cluster's cap the session is refused C{cluster-cap}: no other
    backend is tried.
    """
    gateway = Seated(everything=True, limit=0)
    gateway.session.start(b"hello")
    gateway.seats.answer(SeatAnswer.CAPPED)
    assert gateway.session.close_reason is CloseReason.CLUSTER_CAP
    assert gateway.claimed() == []
    assert gateway.backends[0].active == 0


def test_failed_attempt_gives_the_seat_back() -> None:
    """
    An attempt that fails gives its seat back at once; the next backend's
    seat is claimed.
    """
    gateway = Seated()
    gateway.session.start(b"hello")
    seat = gateway.seats.answer()
    gateway.refuse()
    assert gateway.seats.released == [seat]
    assert gateway.claimed() == [gateway.backends[1].name]


def test_client_leaving_while_claiming() -> None:
    """
    A client that leaves while its seat is claimed: uncounted at once, and
    the seat, when the answer takes it, given back; nothing is connected.
    """
    gateway = Seated()
    gateway.session.start(b"hello")
    gateway.client.loseConnection()
    gateway.client.connection_lost()
    assert gateway.backends[0].active == 0
    seat = gateway.seats.answer()
    assert gateway.seats.released == [seat]
    assert gateway.attempted_ports() == []


def test_backends_without_a_limit_claim_nothing() -> None:
    """
    Without a max-sessions (and no cluster cap) nothing is claimed: the
    session connects at once.
    """
    gateway = Seated(limit=0)
    gateway.session.start(b"hello")
    assert gateway.claimed() == []
    assert gateway.attempted_ports() == [7000]


def test_has_room_counts_the_sessions_elsewhere() -> None:
    """
    The pool sees a backend's sessions through the other nodes: full with
    one here and one elsewhere of two seats.
    """
    gateway = Seated()
    first = gateway.backends[0]
    first.active, first.elsewhere = 1, 1
    assert not Pool.has_room(first)
    first.elsewhere = 0
    assert Pool.has_room(first)
    assert gateway.pool.choose() is not None
