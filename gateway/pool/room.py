"""
The waiting room: game sessions that no backend can take now wait here, in
order, until a slot frees, and are told their place.

One L{WaitingRoom} per pool (L{gateway.pool.backends.Pool.room}); with
C{--queue-size} 0 (the default) it is closed and a session no backend can
take is refused as before.  Open, it holds up to C{size} waiters:

  - B{Order.}  Waiters wait by class priority (C{[[queue-class]]}; players
    of no class have priority 0), then by arrival.  When a slot may have
    freed (L{WaitingRoom.kick}: a session ended, a connection attempt was
    abandoned, a backend's state changed, a reload, a new arrival while
    players wait), the room admits, level by level, the longest-waiting
    players the pool can take.  With a pool that balances by key (C{hash}),
    a player waits for their own backend (the one their key hashes to among
    the backends that are up), and players behind them whose backend has a
    free slot pass them; otherwise any free backend takes the head.
  - B{Reserved slots.}  A class may keep C{reserved} slots on every backend
    for itself and the classes above it: a player may take a slot only while
    the backend's sessions are below its limit less the slots reserved by
    the classes of higher priority (L{Standing.blocked}).
  - B{Ends of a wait.}  Admitted (L{Waiter.admit}, with the backend chosen
    and counted on it at once, so one kick never overfills a backend), timed
    out after C{timeout} seconds (L{Waiter.expire}: the busy line and a
    C{queue-timeout} refusal), or gone (L{WaitingRoom.leave}, at once).
  - B{Being told.}  With a message template, a waiter is told its place
    (L{Waiter.tell}) on entering and, while it waits, whenever its position
    changed, at most once every C{update} seconds.  The position counts the
    waiters ahead that compete for the same slots (with C{hash}, those
    waiting for the same backend); the ETA is the position times the
    smoothed time between admissions (C{?} until two admissions were seen).

The room keeps one timer for the oldest waiter's deadline (every waiter has
the same timeout, so arrival order is deadline order) and one for the
updates, whatever the number of waiters: a thousand waiters cost a thousand
small entries, not a thousand timers.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from gateway.histogram import Histogram
from gateway.pool.backend import Backend, BackendState
from gateway.pool.waiters import (
    DEFAULT,
    QueueClass,
    RoomPool,
    RoomSettings,
    Standing,
    Ticket,
    Waiter,
)

__all__ = [
    "DEFAULT",
    "KICK_RETRY",
    "QUEUE_WAIT_BOUNDS",
    "QueueClass",
    "RoomPool",
    "RoomSettings",
    "Standing",
    "Ticket",
    "Waiter",
    "WaitingRoom",
]

QUEUE_WAIT_BOUNDS = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)
"""Bucket bounds, in seconds, of the waits' histogram."""

SMOOTHING = 0.2
"""The weight of the newest interval between admissions in the ETA's average."""

KICK_RETRY = 1.0
"""Seconds before the room looks again at a seat that a failed connection
attempt gave back."""


class WaitingRoom:
    """
    The waiting room of one pool (see the module's docstring).

    @ivar settings: its settings.
    @ivar admitted: waiters admitted so far.
    @ivar timed_out: waiters refused by the timeout so far.
    @ivar full: players refused because the room was full so far.
    @ivar left: waiters that left while waiting so far.
    @ivar waits: how long admitted and timed-out waiters waited.
    """

    _log = Logger()

    def __init__(self, pool: RoomPool) -> None:
        self._pool = pool
        self._clock: IReactorTime | None = None
        self.settings = RoomSettings()
        self._standings: tuple[tuple[QueueClass, Standing], ...] = ()
        self._default = DEFAULT
        # Every waiter in arrival order (seq), and by priority (highest
        # first), each level in arrival order.
        self._all: dict[int, Ticket] = {}
        self._levels: dict[int, dict[int, Ticket]] = {}
        self._seq = 0
        self._deadline_call: IDelayedCall | None = None
        self._update_call: IDelayedCall | None = None
        self._kick_call: IDelayedCall | None = None
        self._batch = 0
        self._kicking = False
        self._again = False
        self._up: tuple[Backend, ...] = ()
        self._interval: float | None = None
        self._last_admission: float | None = None
        self.admitted = 0
        self.timed_out = 0
        self.full = 0
        self.left = 0
        self.waits = Histogram(QUEUE_WAIT_BOUNDS)

    def configure(self, settings: RoomSettings, clock: IReactorTime) -> None:
        """
        New settings (start or reload).  Players already waiting keep their
        place, their class's name and priority; the seats reserved above them
        are the new classes' (so that a waiter and a newcomer of the same
        priority see the same seats); a smaller size turns away only new
        players; a new timeout counts from when each waiter entered (so
        arrival order stays deadline order, which the one deadline timer
        relies on).
        """
        timeout_changed = settings.timeout != self.settings.timeout
        self.settings = settings
        self._clock = clock
        classes = settings.classes

        def above(priority: int) -> int:
            return sum(c.reserved for c in classes if c.priority > priority)

        self._standings = tuple(
            (qclass, Standing(qclass.name, qclass.priority, above(qclass.priority)))
            for qclass in classes
        )
        self._default = Standing(DEFAULT.name, 0, above(0))
        for ticket in self._all.values():
            old = ticket.standing
            if old.blocked != above(old.priority):
                ticket.standing = Standing(old.name, old.priority, above(old.priority))
        if self._update_call is not None and self._update_call.active():
            self._update_call.cancel()
        self._update_call = None
        self._arm_update()
        if timeout_changed and self._all:
            for ticket in self._all.values():
                ticket.deadline = ticket.entered + settings.timeout
            if self._deadline_call is not None and self._deadline_call.active():
                self._deadline_call.cancel()
            self._deadline_call = None
            self._arm_deadline()
        self.kick()

    @property
    def open(self) -> bool:
        """
        Whether players may wait (C{--queue-size} above 0).
        """
        return self.settings.size > 0

    def __len__(self) -> int:
        return len(self._all)

    @property
    def wants_first_line(self) -> bool:
        """
        Whether a player's class may depend on its first line (then the
        front door waits for that line, as for a session key).
        """
        return self.open and any(c.first_line is not None for c in self.settings.classes)

    def standing(self, host: str | None, first_line: bytes) -> Standing:
        """
        The standing of a player: its first matching class's (classes in
        priority order), else the default's.

        @param host: the client's IP address (L{None}: not an IP client).
        @param first_line: the client's first bytes.
        """
        for qclass, standing in self._standings:
            if qclass.matches(host, first_line):
                return standing
        return self._default

    def can_hold(self, standing: Standing) -> bool:
        """
        Whether a session no backend could take should wait: the room is
        open and some backend that is up is full for this player, so a seat
        can free.  Not when the backends it could take merely failed (a
        refused or timed-out connection: waiting in front of an empty
        backend would be for nothing), nor with none up.
        """
        return self.open and any(
            b.state is BackendState.UP
            and b.max_sessions
            and not self._pool.has_room(b, standing.blocked)
            for b in self._pool.backends
        )

    @property
    def has_space(self) -> bool:
        """
        Whether a new player could wait now (open, and not full).
        """
        return self.open and len(self._all) < self.settings.size

    def oldest_wait(self) -> float:
        """
        How long the longest waiter has waited, in seconds (0: nobody waits).
        """
        if not self._all or self._clock is None:
            return 0.0
        first = next(iter(self._all.values()))
        return max(0.0, self._clock.seconds() - first.entered)

    # Entering and leaving

    def enter(
        self, waiter: Waiter, standing: Standing, again: Ticket | None = None
    ) -> Ticket | None:
        """
        Let a player wait.

        @param again: its ticket from an earlier wait (an admission whose
            connection attempts all failed): it goes back to its place, with
            its deadline.
        @return: its ticket, or L{None} if the room is full (counted) or
            closed.
        """
        clock = self._clock
        full = not self.open or len(self._all) >= self.settings.size
        if clock is None or (again is None and full):
            if self.open:
                self.full += 1
            return None
        now = clock.seconds()
        if again is not None:
            ticket = again
            ticket.own = None
            self._insert_in_place(ticket)
        else:
            self._seq += 1
            ticket = Ticket(waiter, standing, self._seq, now, now + self.settings.timeout)
            self._all[ticket.seq] = ticket
            self._level(standing.priority)[ticket.seq] = ticket
        self._arm_deadline()
        self._arm_update()
        if again is None and self.settings.message is not None:
            self._tell(ticket, self._positions().get(ticket.seq, 1), now)
        return ticket

    def leave(self, ticket: Ticket, *, left: bool = True) -> None:
        """
        A waiter leaves: forget it now.

        @param left: whether the player left (counted in L{left}), rather
            than being turned away (the gateway stopping).
        """
        if self._remove(ticket) and left:
            self.left += 1

    def _level(self, priority: int) -> dict[int, Ticket]:
        level = self._levels.get(priority)
        if level is None:
            level = {}
            self._levels[priority] = level
            self._levels = dict(sorted(self._levels.items(), key=lambda item: -item[0]))
        return level

    def _insert_in_place(self, ticket: Ticket) -> None:
        """
        Put a returning ticket back at its place in arrival order (rare: a
        sort of one level).
        """
        self._all[ticket.seq] = ticket
        self._all = dict(sorted(self._all.items()))
        level = self._level(ticket.standing.priority)
        level[ticket.seq] = ticket
        self._levels[ticket.standing.priority] = dict(sorted(level.items()))

    def _remove(self, ticket: Ticket) -> bool:
        if self._all.pop(ticket.seq, None) is None:
            return False
        level = self._levels.get(ticket.standing.priority)
        if level is not None:
            level.pop(ticket.seq, None)
            if not level:
                del self._levels[ticket.standing.priority]
        if not self._all:
            self._stop_timers()
        return True

    # Admitting

    def kick(self) -> None:
        """
        A slot may have freed: admit, in order, every waiter the pool can
        take now.
        """
        if not self._all:
            return
        if self._kicking:
            self._again = True
            return
        self._kicking = True
        self._batch = 0
        try:
            self._again = True
            while self._again and self._all:
                self._again = False
                self._admit_pass()
        finally:
            self._kicking = False
        if self._batch:
            self._measure(self._batch)

    def _measure(self, admitted: int) -> None:
        """
        C{admitted} waiters were admitted at once: the time since the last
        admissions, shared among them, enters the smoothed interval (a burst,
        such as a reload raising the limits, is not a rate of zero).
        """
        assert self._clock is not None
        now = self._clock.seconds()
        last = self._last_admission
        self._last_admission = now
        if last is None:
            return
        interval = (now - last) / admitted
        self._interval = (
            interval
            if self._interval is None
            else SMOOTHING * interval + (1 - SMOOTHING) * self._interval
        )

    def _admit_pass(self) -> None:
        pool = self._pool
        up = tuple(b for b in pool.backends if b.state is BackendState.UP)
        if not up:
            return
        keyed = pool.needs_key
        if keyed and up != self._up:
            # The backends that are up changed: every waiter's own backend
            # may have too.
            self._up = up
            for ticket in self._all.values():
                ticket.own = None
        for priority in list(self._levels):
            level = self._levels.get(priority)
            if not level:
                continue
            blocked = next(iter(level.values())).standing.blocked
            free = [b for b in up if pool.has_room(b, blocked)]
            if not free:
                continue
            if keyed:
                self._admit_own(level, up, free, blocked)
            else:
                self._admit_heads(priority, blocked)

    def _admit_heads(self, priority: int, blocked: int) -> None:
        """
        Without keys every waiter of a level is alike: admit its heads while
        the pool has a slot, each waiter at most once a pass (one that comes
        back at once is not taken twice).  The level is looked up again each
        time: a returning ticket replaces its dict.  Each admission costs
        the admissions before it in this pass, not the level's length.
        """
        seen: set[int] = set()
        while True:
            level = self._levels.get(priority)
            if not level:
                return
            ticket = next((t for t in level.values() if t.seq not in seen), None)
            if ticket is None:
                return
            backend = self._pool.choose((), None, blocked)
            if backend is None:
                return
            seen.add(ticket.seq)
            self._admit(ticket, backend)

    def _admit_own(
        self, level: dict[int, Ticket], up: tuple[Backend, ...], free: list[Backend], blocked: int
    ) -> None:
        """
        With keys: each waiter in arrival order takes its own backend if it
        has a slot; the others wait.
        """
        pool = self._pool
        for ticket in list(level.values()):
            if self._all.get(ticket.seq) is not ticket:
                continue  # admitted or gone meanwhile
            if ticket.own is None:
                ticket.own = pool.balancer.choose(up, ticket.waiter.key)
            own = ticket.own
            if own in free and pool.has_room(own, blocked):
                self._admit(ticket, own)
                free = [b for b in free if pool.has_room(b, blocked)]
                if not free:
                    return

    def _admit(self, ticket: Ticket, backend: Backend) -> None:
        assert self._clock is not None
        self._remove(ticket)
        now = self._clock.seconds()
        self.admitted += 1
        self._batch += 1
        self.waits.observe(now - ticket.entered)
        ticket.waiter.admit(backend)

    # Deadlines

    def _arm_deadline(self) -> None:
        if not self._all or self._clock is None:
            return
        first = next(iter(self._all.values()))
        call = self._deadline_call
        if call is not None:
            # A returning ticket may have a deadline before the one the
            # timer was armed for.
            if call.getTime() <= first.deadline:
                return
            call.cancel()
        delay = max(0.0, first.deadline - self._clock.seconds())
        self._deadline_call = self._clock.callLater(delay, self._deadline_passed)

    def _deadline_passed(self) -> None:
        assert self._clock is not None
        self._deadline_call = None
        now = self._clock.seconds()
        while self._all:
            first = next(iter(self._all.values()))
            if first.deadline > now:
                break
            self._remove(first)
            self.timed_out += 1
            self.waits.observe(now - first.entered)
            first.waiter.expire()
        self._arm_deadline()

    # Telling players their place

    def positions(self) -> dict[int, int]:
        """
        Each waiter's position (by ticket number): 1 + the waiters ahead of
        it that compete for the same slots.
        """
        return self._positions()

    def tickets(self) -> Iterator[Ticket]:
        """
        The waiters' tickets, in the order they are admitted (without keys).
        """
        for level in list(self._levels.values()):
            yield from list(level.values())

    def _positions(self) -> dict[int, int]:
        keyed = self._pool.needs_key
        up = tuple(b for b in self._pool.backends if b.state is BackendState.UP)
        positions: dict[int, int] = {}
        ahead: dict[Backend | None, int] = {}
        for ticket in self.tickets():
            own: Backend | None = None
            if keyed and up:
                if ticket.own is None or up != self._up:
                    ticket.own = self._pool.balancer.choose(up, ticket.waiter.key)
                own = ticket.own
            count = ahead.get(own, 0) + 1
            ahead[own] = count
            positions[ticket.seq] = count
        if keyed:
            self._up = up
        return positions

    def eta(self, position: int) -> str:
        """
        The estimated wait of the waiter at C{position}, in whole seconds
        (C{?} without a measured rate).
        """
        if self._interval is None or self._last_admission is None or self._clock is None:
            return "?"
        # A rate that has stopped is no faster than the time since its last
        # admission says.
        interval = max(self._interval, self._clock.seconds() - self._last_admission)
        if self._pool.needs_key:
            # Each waits for one backend, which frees slots at its share of
            # the room's rate.
            interval *= max(1, sum(1 for b in self._pool.backends if b.max_sessions))
        return str(math.ceil(position * interval))

    def _tell(self, ticket: Ticket, position: int, now: float) -> None:
        template = self.settings.message
        if template is None:
            return
        ticket.told = position
        ticket.told_at = now
        text = template.format(position=position, length=len(self._all), eta=self.eta(position))
        ticket.waiter.tell(text)

    def _arm_update(self) -> None:
        if (
            self._update_call is not None
            or not self._all
            or self._clock is None
            or self.settings.message is None
        ):
            return
        self._update_call = self._clock.callLater(self.settings.update, self._send_updates)

    def _send_updates(self) -> None:
        assert self._clock is not None
        self._update_call = None
        now = self._clock.seconds()
        # A waiter told less than `update` ago (on entering) waits for the
        # next round; the small slack absorbs the clock's rounding.
        recent = now - self.settings.update + 1e-6
        for seq, position in self._positions().items():
            ticket = self._all.get(seq)
            if ticket is not None and position != ticket.told and ticket.told_at <= recent:
                self._tell(ticket, position, now)
        self._arm_update()

    def _stop_timers(self) -> None:
        for call in (self._deadline_call, self._update_call, self._kick_call):
            if call is not None and call.active():
                call.cancel()
        self._deadline_call = None
        self._update_call = None
        self._kick_call = None

    def kick_later(self) -> None:
        """
        A seat freed that a failed connection attempt had (or one abandoned):
        look again in L{KICK_RETRY} seconds, not at once, so that waiters are
        not sent round a tight loop to a backend that refuses them.
        """
        if self._kick_call is not None or not self._all or self._clock is None:
            return
        self._kick_call = self._clock.callLater(KICK_RETRY, self._kick_again)

    def _kick_again(self) -> None:
        self._kick_call = None
        self.kick()

    def turn_away(self) -> list[Waiter]:
        """
        Empty the room (its pool left the configuration, so no seat can
        come): the waiters, in order, for the caller to refuse.
        """
        waiters = [ticket.waiter for ticket in self.tickets()]
        self._all.clear()
        self._levels.clear()
        self._stop_timers()
        return waiters
