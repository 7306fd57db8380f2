"""
Tests for the waiting room's ordering (L{gateway.pool.room.WaitingRoom}) on
a fake clock, with a real L{Pool} and real L{Backend}s: what a session does
is simulated the way C{GameSession} does it (an arrival kicks the room, then
asks the pool, then waits; an ended session frees its slot and kicks).
"""

from __future__ import annotations

import re
import tracemalloc
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock

from gateway.pool.backend import Backend, BackendState
from gateway.pool.backends import Pool
from gateway.pool.balance import make_balancer
from gateway.pool.room import RoomSettings, Standing, Ticket, WaitingRoom


@dataclass(frozen=True)
class Tier:
    """
    A C{[[queue-class]]} stand-in: it takes players whose first line starts
    with its name.
    """

    name: str
    priority: int
    reserved: int = 0
    first_line: re.Pattern[bytes] | None = None

    def matches(self, host: str | None, first_line: bytes) -> bool:
        return first_line.startswith(self.name.encode())


@dataclass(eq=False)
class Player:
    """
    A waiter: C{admit} counts the session on the backend at once, as the
    dialer does; what the room says and does to it is recorded.
    """

    key: bytes | None
    standing: Standing
    ends: list[str] = field(default_factory=list)
    told: list[tuple[float, str]] = field(default_factory=list)
    backend: Backend | None = None
    ticket: Ticket | None = None
    sim: Sim | None = None

    def admit(self, backend: Backend) -> None:
        if self.sim is not None:
            self.sim.check_admission(self, backend)
        backend.active += 1
        self.backend = backend
        self.ends.append("admitted")

    def tell(self, text: str) -> None:
        assert self.sim is not None
        self.told.append((self.sim.clock.seconds(), text))

    def dismiss(self, detail: str) -> None:
        self.ends.append("dismissed")

    def expire(self) -> None:
        assert self.sim is not None and self.ticket is not None
        now = self.sim.clock.seconds()
        assert now >= self.ticket.deadline, "timed out before its deadline"
        self.ends.append("timed out")


def backends(*limits: int) -> list[Backend]:
    """
    Backends C{b0}, C{b1}, ... with these session limits (nothing connects).
    """
    return [
        Backend(f"b{i}", f"tcp:h:{i}", None, max_sessions=limit)  # type: ignore[arg-type]
        for i, limit in enumerate(limits)
    ]


class Sim:
    """
    A pool, its room on a fake clock, and the sessions of a test.
    """

    def __init__(self, pool: Pool, settings: RoomSettings, *, checked: bool = False) -> None:
        self.pool = pool
        self.room: WaitingRoom = pool.room
        self.clock = Clock()
        self.room.configure(settings, self.clock)
        self.checked = checked
        self.players: list[Player] = []
        self.connected: list[Player] = []
        self.entered = 0
        self.refused_full = 0
        self.refused = 0

    def own(self, key: bytes | None) -> Backend | None:
        """
        A key's own backend among those up (the hash balancer keeps no state).
        """
        up = [b for b in self.pool.backends if b.state is BackendState.UP]
        return self.pool.balancer.choose(up, key) if up else None

    def competes(self, ticket: Ticket, backend: Backend) -> bool:
        """
        Whether the waiter of C{ticket} could take a slot on C{backend} now.
        """
        if self.pool.needs_key and self.own(ticket.waiter.key) is not backend:
            return False
        return Pool.has_room(backend, ticket.standing.blocked)

    def check_admission(self, player: Player, backend: Backend) -> None:
        """
        Nobody ahead of C{player} (a higher class, or its class and earlier)
        could have had C{backend}'s slot, and the slot is not reserved for a
        class above it.
        """
        if not self.checked:
            return
        limit = backend.max_sessions
        assert backend.state is BackendState.UP
        # The room's standing: a reload may have changed what is reserved above it.
        standing = player.ticket.standing if player.ticket is not None else player.standing
        assert not limit or backend.active < limit - standing.blocked
        ticket = player.ticket
        for other in self.room.tickets():
            ahead = other.standing.priority > player.standing.priority or (
                ticket is not None
                and other.standing.priority == player.standing.priority
                and other.seq < ticket.seq
            )
            assert not (ahead and self.competes(other, backend)), (other.seq, backend.name)

    def arrive(self, key: bytes | None = None, first_line: bytes = b"") -> Player:
        """
        A new session: the room first, then the pool, then a wait (or a
        refusal).
        """
        standing = self.room.standing(None, first_line)
        player = Player(key, standing, sim=self)
        self.players.append(player)
        if self.room.open:
            self.room.kick()
        backend = self.pool.choose((), key, standing.blocked, self.room.has_space)
        if backend is not None:
            self.check_admission(player, backend)
            backend.active += 1
            player.backend = backend
            player.ends.append("connected")
            self.connected.append(player)
        elif self.room.can_hold(standing):
            player.ticket = self.room.enter(player, standing)
            if player.ticket is None:
                self.refused_full += 1
                player.ends.append("full")
            else:
                self.entered += 1
        else:
            self.refused += 1
            player.ends.append("refused")
        return player

    def end(self, player: Player) -> None:
        """
        A connected session ends: its slot frees.
        """
        assert player.backend is not None
        player.backend.active -= 1
        player.backend = None
        player.ends.append("ended")
        self.room.kick()

    def leave(self, player: Player) -> None:
        """
        A waiting client goes away.
        """
        assert player.ticket is not None
        self.room.leave(player.ticket)
        player.ends.append("left")

    def waiting(self) -> list[Player]:
        """
        The players whose wait has not ended.
        """
        return [p for p in self.players if p.ticket is not None and len(p.ends) == 0]

    def serving(self) -> list[Player]:
        """
        The players with a session on a backend.
        """
        return [p for p in self.players if p.backend is not None]

    def check(self) -> None:
        """
        The invariants that hold between events.
        """
        now = self.clock.seconds()
        waiting = self.waiting()
        tickets = list(self.room.tickets())
        assert {id(t) for t in tickets} == {id(p.ticket) for p in waiting}
        assert len(self.room) == len(waiting)
        for player in self.players:
            if player.ticket is not None and player.ends:
                assert len(player.ends) <= 2 and player.ends[0] in (
                    "admitted",
                    "timed out",
                    "left",
                )
        for backend in self.pool.backends:
            assert backend.active == sum(1 for p in self.serving() if p.backend is backend)
            assert not backend.max_sessions or backend.active <= backend.max_sessions
        for ticket in tickets:
            assert ticket.deadline > now, "a deadline passed and the waiter still waits"
            for backend in self.pool.backends:
                assert not self.competes(ticket, backend), (ticket.seq, backend.name)
        room = self.room
        assert room.admitted + room.timed_out + room.left + len(room) == self.entered
        assert room.full == self.refused_full


LIMITS = st.lists(st.one_of(st.integers(1, 3), st.just(0)), min_size=1, max_size=3)
ARRIVE = st.tuples(st.just("arrive"), st.integers(0, 7), st.sampled_from([b"", b"vip", b"admin"]))
OPS = st.lists(
    st.one_of(
        ARRIVE,
        ARRIVE,
        st.tuples(st.just("leave"), st.integers(0, 50)),
        st.tuples(st.just("end"), st.integers(0, 50)),
        st.tuples(st.just("advance"), st.sampled_from([0.5, 1.0, 3.0, 10.0])),
        st.tuples(st.just("state"), st.integers(0, 2), st.sampled_from(list(BackendState))),
    ),
    min_size=10,
    max_size=80,
)


@settings(max_examples=300, deadline=None)
@given(
    limits=LIMITS,
    balance=st.sampled_from(["roundrobin", "leastconn", "hash"]),
    size=st.integers(1, 6),
    timeout=st.integers(1, 20),
    tiers=st.booleans(),
    reserved=st.tuples(st.integers(0, 2), st.integers(0, 2)),
    ops=OPS,
)
def test_ordering_invariants(
    limits: list[int],
    balance: str,
    size: int,
    timeout: int,
    tiers: bool,
    reserved: tuple[int, int],
    ops: list[tuple[object, ...]],
) -> None:
    """
    Whatever arrives, leaves, ends, waits and changes state: nobody is
    admitted past a player ahead of it who could take the same slot, no
    backend exceeds its limit nor gives a class the slots reserved above
    it, every wait ends once (admitted, timed out at its deadline, or gone),
    no slot stays free while someone who could use it waits, and the
    counters add up.
    """
    classes = (Tier("admin", 2, reserved[0]), Tier("vip", 1, reserved[1])) if tiers else ()
    pool = Pool(backends(*limits), make_balancer(balance))
    sim = Sim(pool, RoomSettings(size=size, timeout=timeout, classes=classes), checked=True)
    for number, (op, *args) in enumerate(ops):
        if op == "arrive":
            key, line = args
            sim.arrive(b"k%d" % int(key), bytes(line))  # type: ignore[call-overload]
        elif op == "leave" and sim.waiting():
            waiting = sim.waiting()
            sim.leave(waiting[int(args[0]) % len(waiting)])  # type: ignore[call-overload]
        elif op == "end" and sim.serving():
            serving = sim.serving()
            sim.end(serving[int(args[0]) % len(serving)])  # type: ignore[call-overload]
        elif op == "advance":
            sim.clock.advance(float(args[0]))  # type: ignore[arg-type]
        elif op == "state":
            index, state = args
            backend = pool.backends[int(index) % len(pool.backends)]  # type: ignore[call-overload]
            pool.set_state(backend, state, f"step {number}")  # type: ignore[arg-type]
        sim.check()
    # Past every deadline, nobody waits.
    sim.clock.advance(timeout + 1)
    sim.check()
    assert len(sim.room) == 0


def keyed_for(pool: Pool, backend: Backend, skip: int = 0) -> bytes:
    """
    A key whose own backend (all backends up) is C{backend}.
    """
    up = list(pool.backends)
    keys = (b"k%d" % n for n in range(1000))
    found = [k for k in keys if pool.balancer.choose(up, k) is backend]
    return found[skip]


def test_first_in_first_out() -> None:
    """
    Without keys, the longest-waiting player takes the slot that frees.
    """
    sim = Sim(Pool(backends(1, 1)), RoomSettings(size=10), checked=True)
    first, second = sim.arrive(), sim.arrive()
    waiters = [sim.arrive() for _ in range(4)]
    assert [p.ends for p in waiters] == [[]] * 4 and len(sim.room) == 4
    sim.end(second)
    assert [p.ends for p in waiters] == [["admitted"], [], [], []]
    sim.end(first)
    sim.end(waiters[0])
    assert [p.ends for p in waiters] == [["admitted", "ended"], ["admitted"], ["admitted"], []]
    assert sim.room.admitted == 3 and len(sim.room) == 1
    sim.check()


def test_hash_affinity() -> None:
    """
    With C{hash}, a player waits for their own backend; one behind them
    whose backend has a free slot passes them.
    """
    pool = Pool(backends(1, 1), make_balancer("hash"))
    b0, b1 = pool.backends
    sim = Sim(pool, RoomSettings(size=10), checked=True)
    on_b0 = sim.arrive(keyed_for(pool, b0))
    on_b1 = sim.arrive(keyed_for(pool, b1))
    assert (on_b0.backend, on_b1.backend) == (b0, b1)
    for_b0 = sim.arrive(keyed_for(pool, b0, 1))
    for_b1 = sim.arrive(keyed_for(pool, b1, 1))
    assert sim.room.positions() == {for_b0.ticket.seq: 1, for_b1.ticket.seq: 1}  # type: ignore[union-attr]
    sim.end(on_b1)
    assert (for_b0.ends, for_b1.ends, for_b1.backend) == ([], ["admitted"], b1)
    # A backend going down moves its waiters to their next own backend.
    sim.end(for_b1)
    pool.set_state(b0, BackendState.DRAINING, "operator")
    assert for_b0.backend is b1
    sim.check()


def test_priority_classes_jump_ahead() -> None:
    """
    A player of a higher class waits ahead of those of lower classes who
    came earlier; within a class, arrival order.
    """
    classes = (Tier("admin", 2), Tier("vip", 1))
    sim = Sim(Pool(backends(1)), RoomSettings(size=10, classes=classes), checked=True)
    playing = sim.arrive()
    plain, vip, admin, vip2 = (
        sim.arrive(first_line=line) for line in (b"", b"vip", b"admin", b"vip")
    )
    assert (vip.standing.name, admin.standing.priority) == ("vip", 2)
    order = []
    for player in (playing, admin, vip, vip2):
        sim.end(player)
        order.append(next(p for p in (plain, vip, admin, vip2) if p.backend is not None))
    assert order == [admin, vip, vip2, plain]


def test_reserved_slots() -> None:
    """
    Slots a class reserves are taken only by it and the classes above it:
    a plain player waits while an admin still gets in, and a plain waiter
    is not admitted to a reserved slot that frees.
    """
    classes = (Tier("admin", 2, reserved=1),)
    pool = Pool(backends(2))
    sim = Sim(pool, RoomSettings(size=10, classes=classes), checked=True)
    plain = sim.arrive()
    waiting = sim.arrive()
    assert waiting.ends == [] and len(sim.room) == 1
    admin = sim.arrive(first_line=b"admin")
    assert admin.ends == ["connected"]
    sim.end(admin)
    assert waiting.ends == [] and pool.backends[0].active == 1
    sim.end(plain)
    assert waiting.ends == ["admitted"]
    sim.check()


def test_a_reload_recomputes_the_reserved_slots() -> None:
    """
    Players waiting keep their place and class, but the slots reserved
    above them are the new classes': with the reserving class gone, a plain
    waiter takes the seat a plain newcomer would; with one added, it no
    longer may.
    """
    admins = (Tier("admin", 2, reserved=1),)
    pool = Pool(backends(2))
    sim = Sim(pool, RoomSettings(size=10, classes=admins), checked=True)
    sim.arrive()
    waiting = sim.arrive()
    assert waiting.ends == [] and waiting.standing.blocked == 1
    sim.room.configure(RoomSettings(size=10), sim.clock)
    assert waiting.ends == ["admitted"] and pool.backends[0].active == 2
    sim.end(waiting)
    later = sim.arrive()
    assert later.ends == ["connected"]
    again = sim.arrive()
    assert again.ends == []
    sim.room.configure(RoomSettings(size=10, classes=admins), sim.clock)
    sim.end(later)
    assert again.ends == [] and pool.backends[0].active == 1
    ticket = again.ticket
    assert ticket is not None and ticket.standing.blocked == 1


def test_one_timer_for_every_deadline() -> None:
    """
    Each waiter times out at its own deadline (entered + timeout), not
    before, with one timer for the whole room.
    """
    sim = Sim(Pool(backends(1)), RoomSettings(size=100, timeout=10), checked=True)
    sim.arrive()
    waiters = []
    for _ in range(5):
        waiters.append(sim.arrive())
        sim.clock.advance(1)
    assert len(sim.clock.getDelayedCalls()) == 1
    sim.clock.advance(4.5)  # t = 9.5: the first's deadline is 10
    assert [p.ends for p in waiters] == [[]] * 5
    sim.clock.advance(0.5)
    assert [p.ends for p in waiters] == [["timed out"]] + [[]] * 4
    sim.clock.advance(2)
    assert [len(p.ends) for p in waiters] == [1, 1, 1, 0, 0]
    assert len(sim.clock.getDelayedCalls()) == 1
    sim.clock.advance(2)
    assert sim.room.timed_out == 5 and not sim.clock.getDelayedCalls()
    sim.check()


def test_a_leaver_is_gone_at_once() -> None:
    """
    A player who leaves is removed at once: counted, never admitted, and
    the one behind takes the slot.
    """
    sim = Sim(Pool(backends(1)), RoomSettings(size=10), checked=True)
    playing, leaver, next_one = sim.arrive(), sim.arrive(), sim.arrive()
    sim.leave(leaver)
    sim.leave(leaver)  # twice: counted once
    assert sim.room.left == 1 and len(sim.room) == 1
    sim.end(playing)
    assert (leaver.ends, next_one.ends) == (["left", "left"], ["admitted"])
    assert sim.room.admitted + sim.room.left == 2


def test_messages_and_eta() -> None:
    """
    A waiter is told its place on entering, then at most once every
    C{update} seconds and only when its position changed; the ETA is C{?}
    until two admissions were seen, then the position times the smoothed
    time between admissions (no less than the time since the last one).
    """
    template = "{position}/{length} ~{eta}s"
    sim = Sim(Pool(backends(1)), RoomSettings(size=10, update=5, message=template))
    playing = sim.arrive()
    b, c, d = sim.arrive(), sim.arrive(), sim.arrive()
    assert [p.told for p in (b, c, d)] == [[(0, "1/1 ~?s")], [(0, "2/2 ~?s")], [(0, "3/3 ~?s")]]
    sim.clock.advance(5)
    sim.clock.advance(5)
    assert [len(p.told) for p in (b, c, d)] == [1, 1, 1]  # nothing changed
    sim.end(playing)  # t = 10: b in, the first admission
    sim.clock.advance(1)
    sim.end(b)  # t = 11: c in, 1 s after the first
    assert (c.ends, d.told[1:]) == (["admitted"], [])
    sim.clock.advance(4)  # t = 15: d is told once, its new place
    assert d.told[1:] == [(15, "1/1 ~4s")]  # no faster than the 4 s since the last
    sim.clock.advance(5)
    assert d.told[1:] == [(15, "1/1 ~4s")]
    # The rate follows the admissions: smoothed 0.2 * 9 + 0.8 * 1.
    e = sim.arrive()
    sim.end(c)  # t = 20: d in
    assert sim.room.eta(1) == "3" and sim.room.eta(2) == "6"
    sim.clock.advance(10)
    assert sim.room.eta(1) == "10" and e.told[0][1] == "2/2 ~18s"
    # Told on entering at 34, f is not told again at the round of 35,
    # though its position changed at 34.5, but at the next round.
    sim.clock.advance(4)
    f = sim.arrive()
    sim.clock.advance(0.5)
    sim.end(d)
    assert [p.ends for p in (e, f)] == [["admitted"], []]
    sim.clock.advance(0.5)  # the round of 35 (Clock runs it at the time advanced to)
    sim.clock.advance(4)
    assert f.told == [(34, "2/2 ~28s")]
    sim.clock.advance(1)
    assert f.told == [(34, "2/2 ~28s"), (40, "1/1 ~6s")]


def test_a_returning_ticket_keeps_its_place_and_deadline() -> None:
    """
    A waiter admitted whose connection failed comes back with its ticket:
    ahead of those who came after it, with its first deadline, which the
    room's timer keeps even when armed for a later waiter.
    """
    sim = Sim(Pool(backends(1)), RoomSettings(size=10, timeout=100), checked=True)
    playing, early = sim.arrive(), sim.arrive()
    sim.clock.advance(2)
    sim.end(playing)  # the room is empty again
    assert early.backend is not None and early.ticket is not None
    late = sim.arrive()  # t = 2: its deadline is 102
    sim.clock.advance(3)
    early.backend.active -= 1  # its attempt failed; it comes back
    early.backend = None
    assert sim.room.enter(early, early.standing, again=early.ticket) is early.ticket
    early.ends.clear()
    assert [t.waiter for t in sim.room.tickets()] == [early, late]
    assert early.ticket.deadline == 100
    sim.clock.advance(95)  # t = 100
    assert (early.ends, late.ends) == (["timed out"], [])


@dataclass(eq=False)
class Unlucky(Player):
    """
    A waiter whose first admission fails at once: the slot is given back and
    it comes back to the room with its ticket, from inside the kick.
    """

    failed: bool = False

    def admit(self, backend: Backend) -> None:
        super().admit(backend)
        if not self.failed and self.sim is not None and self.ticket is not None:
            self.failed = True
            backend.active -= 1
            self.backend = None
            self.ends.clear()
            self.sim.room.enter(self, self.standing, again=self.ticket)
            self.sim.entered += 1  # counted again when it ends again


def test_a_waiter_back_from_inside_a_kick() -> None:
    """
    A waiter whose admission fails at once and comes back during the kick
    that admitted it does not make the kick admit anybody twice, and the
    kick still fills every free slot.
    """
    pool = Pool(backends(2))
    sim = Sim(pool, RoomSettings(size=10))
    x, y = sim.arrive(), sim.arrive()
    unlucky = Unlucky(None, sim.room.standing(None, b""), sim=sim)
    unlucky.ticket = sim.room.enter(unlucky, unlucky.standing)
    sim.players.append(unlucky)
    sim.entered += 1
    c, d = sim.arrive(), sim.arrive()
    for player in (x, y):
        assert player.backend is not None
        player.backend.active -= 1
        player.backend = None
    sim.room.kick()
    assert [p.ends for p in (c, d)] == [["admitted"], ["admitted"]]
    assert pool.backends[0].active == 2 and unlucky.ends == []
    sim.check()


def test_configure_and_turn_away() -> None:
    """
    A smaller size turns away only new players (those waiting keep their
    place); turn_away empties the room, in order, timers and all.
    """
    sim = Sim(Pool(backends(1)), RoomSettings(size=5, message="{position}"))
    sim.arrive()
    waiters = [sim.arrive() for _ in range(4)]
    sim.room.configure(RoomSettings(size=2, message="{position}"), sim.clock)
    assert list(sim.room.tickets()) == [p.ticket for p in waiters]
    late = sim.arrive()
    assert late.ends == ["full"] and sim.room.full == 1
    assert sim.room.turn_away() == waiters
    assert len(sim.room) == 0 and not sim.clock.getDelayedCalls()


@pytest.mark.parametrize("timeout", [3.0, 30.0])
def test_a_new_timeout_counts_from_entering(timeout: float) -> None:
    """
    A reload's new timeout applies to the players already waiting, counted
    from when each entered: shorter, the oldest go at once and the rest at
    their new deadlines; longer, nobody goes at the old deadline.
    """
    sim = Sim(Pool(backends(1)), RoomSettings(size=10, timeout=10), checked=True)
    sim.arrive()
    waiters = []
    for _ in range(3):
        waiters.append(sim.arrive())
        sim.clock.advance(2)
    # t = 6; entered at 0, 2, 4.
    sim.room.configure(RoomSettings(size=10, timeout=timeout), sim.clock)
    sim.clock.advance(0)
    expected = [[]] * 3 if timeout > 6 else [["timed out"], ["timed out"], []]
    assert [p.ends for p in waiters] == expected
    sim.clock.advance(4.5)  # t = 10.5: past every old deadline but the last
    assert [len(p.ends) for p in waiters] == ([0, 0, 0] if timeout > 6 else [1, 1, 1])
    sim.clock.advance(timeout)
    assert [len(p.ends) for p in waiters] == [1, 1, 1]
    assert len(sim.clock.getDelayedCalls()) == 0
    sim.check()


class CountingHash:
    """
    The hash balancer, counting its calls.
    """

    needs_key = True

    def __init__(self) -> None:
        self.calls = 0
        self._hash = make_balancer("hash")

    def choose(self, candidates: list[Backend], key: bytes | None) -> Backend:
        self.calls += 1
        return self._hash.choose(candidates, key)


def test_a_thousand_waiters() -> None:
    """
    A thousand waiters: a kick asks the balancer about each waiter at most
    once (its own backend is remembered), and the room's own structures
    cost well under 2 KB a waiter.
    """
    balancer = CountingHash()
    pool = Pool(backends(1, 1, 1, 1), balancer)  # type: ignore[arg-type]
    sim = Sim(pool, RoomSettings(size=1000, message="{position} {length} {eta}"))
    for backend in pool.backends:
        backend.active = 1
    players = [Player(b"k%d" % n, sim.room.standing(None, b""), sim=sim) for n in range(1000)]
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    for player in players:
        player.ticket = sim.room.enter(player, player.standing)
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    room_stats = [s for s in after.compare_to(before, "filename") if "room.py" in str(s.traceback)]
    assert sum(s.size_diff for s in room_stats) < 2048 * 1000
    # Telling each its place on entering asked about each waiter once.
    assert balancer.calls <= 1000
    for _ in range(3):
        balancer.calls = 0
        pool.backends[0].active = 0
        sim.room.kick()
        assert balancer.calls <= len(sim.room) + 1 and len(sim.room) >= 996
    assert sum(1 for p in players if p.ends) >= 3
