"""
The quiet-time watch (L{gateway.session.quiet}): idle and fin timeouts
checked by one timer per period and clock, shared by every session.
"""

from __future__ import annotations

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock

from gateway.session.quiet import LATE_DATING, QuietWatch


class Owner(QuietWatch):
    """
    A session as the watch sees it: its timeouts, its byte count, whether a
    direction ended, and when it was told it went quiet.
    """

    def __init__(self, clock: Clock, idle: float = 10.0, fin: float = 0.0) -> None:
        self._clock = clock
        self.clock = clock
        self.timeouts = (idle, fin)
        self.quiet_init()
        self.moved = 0
        self.ended = False
        self.quiet_at: list[tuple[float, float, bool]] = []

    def quiet_timeouts(self) -> tuple[float, float]:
        return self.timeouts

    def traffic(self) -> int:
        return self.moved

    def one_direction_ended(self) -> bool:
        return self.ended

    def went_quiet(self, limit: float, fin: bool) -> None:
        self.quiet_at.append((self.clock.seconds(), limit, fin))


def watch(clock: Clock, idle: float = 10.0, fin: float = 0.0) -> tuple[Owner, QuietWatch]:
    """
    A session and its watch: the same object (the watch is a base of it).
    """
    owner = Owner(clock, idle, fin)
    return owner, owner


def test_sessions_share_one_timer() -> None:
    """
    A thousand watched sessions with the same idle timeout keep one timer
    between them; the fin timeout of those where a direction ended is a
    second one; none is left once they have all stopped.
    """
    clock = Clock()
    watches = []
    for number in range(1000):
        clock.advance(0.01)
        owner, quiet = watch(clock, idle=10.0, fin=6.0)
        if number % 2:
            owner.ended = True
        quiet.quiet_restart()
        watches.append(quiet)
    assert len(clock.getDelayedCalls()) == 2
    for quiet in watches:
        quiet.quiet_stop()
    assert clock.getDelayedCalls() == []


def test_no_timer_without_a_limit() -> None:
    """
    Without an idle timeout (and no direction ended) nothing is checked.
    """
    clock = Clock()
    owner, quiet = watch(clock, idle=0.0, fin=60.0)
    quiet.quiet_restart()
    assert clock.getDelayedCalls() == []
    owner.ended = True
    quiet.quiet_restart()  # a direction ended: the fin timeout applies
    assert len(clock.getDelayedCalls()) == 1


def test_a_stopped_watch_is_not_told() -> None:
    """
    A session that ended (its watch stopped) during a tick, before its own
    check, is not told it went quiet; the others are.
    """
    clock = Clock()
    pairs = [watch(clock) for _ in range(3)]

    class Stopping(Owner):
        def went_quiet(self, limit: float, fin: bool) -> None:
            super().went_quiet(limit, fin)
            pairs[1][1].quiet_stop()

    stopping = first = Stopping(clock)
    # Checked in the order they joined: the first pair, the stopping one, the rest.
    pairs[0][1].quiet_restart()
    first.quiet_restart()
    for _, quiet in pairs[1:]:
        quiet.quiet_restart()
    clock.advance(12.5)
    assert [len(owner.quiet_at) for owner, _ in pairs] == [1, 0, 1]
    assert len(stopping.quiet_at) == 1
    assert clock.getDelayedCalls() == []


@settings(max_examples=200, deadline=None)
# A tick that ran late saw the traffic, and the later ones ran on time: dated
# by the late one, the close came a period late (1.5 limits after the byte).
@example(joins=[11.0], traffic=[5.0, 15.0], limit=0.6)
@given(
    joins=st.lists(st.floats(min_value=0, max_value=20), min_size=1, max_size=8),
    traffic=st.lists(st.floats(min_value=0, max_value=40), max_size=6),
    limit=st.sampled_from([0.6, 10.0, 60.0]),
)
def test_closed_between_the_limit_and_a_quarter_more(
    joins: list[float], traffic: list[float], limit: float
) -> None:
    """
    Whatever the phase of the shared timer when a session joins, and
    whenever its bytes move, it is told it went quiet between C{limit} and
    1.25 C{limit} after its last traffic (or its start), once.
    """
    clock = Clock()
    sessions = []
    step = limit / 40  # the clock moves in small steps, as a reactor's would

    def advance_to(when: float) -> None:
        while clock.seconds() + step < when:
            clock.advance(step)
        clock.advance(max(0.0, when - clock.seconds()))

    for join in sorted(joins):
        advance_to(join * limit / 10)
        owner, quiet = watch(clock, idle=limit)
        quiet.quiet_restart()
        sessions.append((clock.seconds(), owner, quiet))
    events = sorted(t * limit / 10 + clock.seconds() for t in traffic)
    last = {id(owner): start for start, owner, _ in sessions}
    for when in events:
        advance_to(when)
        for _, owner, _ in sessions:
            if not owner.quiet_at:
                owner.moved += 1
                last[id(owner)] = clock.seconds()
    advance_to(clock.seconds() + 2 * limit)
    for _, owner, _ in sessions:
        [(at, told_limit, fin)] = owner.quiet_at
        assert (told_limit, fin) == (limit, False)
        since = last[id(owner)]
        # The clock's steps are its only other lateness (a tick runs at the
        # first step past its time), as a busy reactor's would be.
        assert since + limit - 1e-6 <= at <= since + 1.25 * limit + step + 1e-6
    assert clock.getDelayedCalls() == []


def test_a_stopped_watch_stays_stopped() -> None:
    """
    A session that ended is not watched again, whatever restarts it (a
    direction that ends during the close).
    """
    clock = Clock()
    owner, quiet = watch(clock, idle=10.0, fin=5.0)
    quiet.quiet_restart()
    quiet.quiet_stop()
    owner.ended = True
    quiet.quiet_restart()
    assert clock.getDelayedCalls() == []
    clock.advance(30)
    assert owner.quiet_at == []


@pytest.mark.parametrize("stall", [0.02, 0.5, 0.9, 4.0, 30.0])
def test_a_late_check_does_not_close_early(stall: float) -> None:
    """
    A reactor held up past a check's time (a slow callback, a pause) reads
    bytes, then runs the overdue check: the bytes are dated at most a tenth
    of a period (or LATE_DATING) before they came, so the session is not
    closed early, and never at once.
    """
    clock = Clock()
    owner, quiet = watch(clock, idle=4.0)  # checked every second
    quiet.quiet_restart()
    for _ in range(10):
        owner.moved += 1
        clock.advance(1.0)
    clock.rightNow = 11.0 + stall  # the check due at 11 is overdue
    owner.moved += 1  # bytes read in that turn, before the check runs
    last_byte = clock.seconds()
    clock.advance(0)  # the overdue check
    while not owner.quiet_at and clock.seconds() < last_byte + 10:
        clock.advance(0.01)
    [(at, _limit, _fin)] = owner.quiet_at
    assert 4.0 - max(LATE_DATING, 0.1) - 1e-6 <= at - last_byte <= 1.25 * 4.0 + 1e-6
