"""
The quiet-time watch of a game session: its idle and fin timeouts.

A L{QuietWatch} closes a session through which no byte has moved for too
long: the idle timeout, or, once one direction has ended, the fin timeout
(like HAProxy's client-fin/server-fin), whichever is shorter.  It never
touches a timer per chunk: a check every quarter of the limit compares the
session's byte counters with those it saw last, so traffic is dated to the
check that first sees it, and a close is at most a quarter of the limit late.

The checks are not a timer per session: the watches with the same period
share one (a L{_Cohort}, one per period and clock: in practice one for the
idle timeout and one for the fin timeout), which checks them all at each
tick.  An idle session then holds a place in a set, not a C{DelayedCall}
(about 0.4 KB each: docs/performance.md), and ten thousand idle sessions
cost one timer.
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING

from twisted.internet.interfaces import IDelayedCall, IReactorTime

__all__ = ["QuietWatch"]


class _Cohort:
    """
    The watches of one clock that check at the same period, and the one
    timer that checks them: it runs while the cohort has watches.
    """

    __slots__ = ("_call", "_clock", "_due", "_period", "watches")

    def __init__(self, clock: IReactorTime, period: float) -> None:
        self._clock = clock
        self._period = period
        self._call: IDelayedCall | None = None
        self._due = 0.0
        # A dict as an ordered set: watches are checked in the order they joined.
        self.watches: dict[QuietWatch, None] = {}

    def join(self, watch: QuietWatch) -> None:
        self.watches[watch] = None
        if self._call is None:
            self._due = self._clock.seconds() + self._period
            self._call = self._clock.callLater(self._period, self._tick)

    def leave(self, watch: QuietWatch) -> None:
        self.watches.pop(watch, None)
        if not self.watches and self._call is not None:
            if self._call.active():
                self._call.cancel()
            self._call = None

    def _tick(self) -> None:
        self._call = None
        # The tick's time, for its checks: when it was due (a tick runs a
        # little late), but never more than LATE_DATING before the clock (a
        # tick held up longer, by a stall, dates by the clock less that).
        now = self._clock.seconds()
        at = max(self._due, now - max(LATE_DATING, self._period / 10))
        for watch in list(self.watches):
            if watch._cohort is self:  # it may have left during this tick
                watch._quiet_check(at)
        if self.watches and self._call is None:
            # Every period from the first tick, not from whenever this one
            # ran: a late tick does not make every later one late.
            now = self._clock.seconds()
            self._due = max(self._due + self._period, now)
            self._call = self._clock.callLater(self._due - now, self._tick)


LATE_DATING = 0.05
"""Seconds by which a check may date traffic before it saw it (or a tenth of
its period, if more): what a close may come early, the reactor's lateness."""

_ROUNDING = 1e-6
"""Seconds of float rounding forgiven when a tick lands on the deadline
(ticks are a sum of periods: four quarters may come to a hair under the limit)."""


_COHORTS: weakref.WeakKeyDictionary[IReactorTime, dict[float, _Cohort]] = (
    weakref.WeakKeyDictionary()
)
"""Each clock's cohorts by period (a test's clock goes with its cohorts)."""


def _cohort(clock: IReactorTime, period: float) -> _Cohort:
    cohorts = _COHORTS.get(clock)
    if cohorts is None:
        cohorts = _COHORTS[clock] = {}
    cohort = cohorts.get(period)
    if cohort is None:
        cohort = cohorts[period] = _Cohort(clock, period)
    return cohort


_STOPPED = -1
"""What a stopped watch has seen (traffic is never negative)."""


class QuietWatch:
    """
    Watches one session's byte counters and tells it when it went quiet: a
    base of the session, not an object of its own (one per live session: a
    separate watch was 96 bytes of every idle session, docs/performance.md).

    The session gives it C{_clock}, L{quiet_timeouts} and the three below.
    """

    __slots__ = ("_cohort", "_seen", "_since")

    if TYPE_CHECKING:
        _clock: IReactorTime

        def traffic(self) -> int:
            """
            The bytes moved so far, both ways together.
            """

        def one_direction_ended(self) -> bool:
            """
            Whether a direction has ended now.
            """

        def went_quiet(self, limit: float, fin: bool) -> None:
            """
            No byte moved for C{limit} seconds (the fin timeout if C{fin},
            else the idle timeout); the watch has stopped.
            """

    def quiet_timeouts(self) -> tuple[float, float]:
        """
        The idle and fin timeouts, in seconds (0: none).
        """
        raise NotImplementedError

    def quiet_init(self) -> None:
        """
        Not watched yet (the session's C{__init__} calls it).
        """
        self._cohort: _Cohort | None = None
        self._seen = 0
        self._since = 0.0

    def _quiet_limit(self) -> tuple[float, bool]:
        """
        How long the session may go without traffic now, and whether that is
        the fin timeout: the idle timeout, or the fin timeout once a direction
        has ended, whichever is shorter (0: no limit).
        """
        limit, fin_timeout = self.quiet_timeouts()
        fin = False
        if fin_timeout and self.one_direction_ended():
            if not limit or fin_timeout < limit:
                limit, fin = fin_timeout, True
        return limit, fin

    def quiet_restart(self) -> None:
        """
        Count quiet time from now (the relay starts, or a direction ended: the
        fin timeout gives the other side its full time from this moment, as
        HAProxy's does), and check at the current limit's pace.
        """
        if self._seen == _STOPPED:
            return
        self._seen = self.traffic()
        self._since = self._clock.seconds()
        self._quiet_schedule()

    def quiet_stop(self) -> None:
        """
        Stop watching, for good (the session has ended).
        """
        self._seen = _STOPPED
        self._quiet_leave()

    def _quiet_leave(self) -> None:
        if self._cohort is not None:
            self._cohort.leave(self)
            self._cohort = None

    def _quiet_schedule(self) -> None:
        """
        Be checked every quarter of the current limit (not at all without one).
        """
        limit, _fin = self._quiet_limit()
        cohort = _cohort(self._clock, limit / 4) if limit else None
        if cohort is not self._cohort:
            self._quiet_leave()
            if cohort is not None:
                self._cohort = cohort
                cohort.join(self)

    def _quiet_check(self, now: float) -> None:
        """
        A tick of its cohort, at C{now}: traffic since the last check dates
        the quiet time from now; otherwise, past the limit, the session went
        quiet.

        C{now} is the tick's due time, not the clock's: on a busy reactor a
        tick runs a little late, and traffic dated by a late tick while the
        later ones ran on time would close the session a period late (1.5
        limits after its last byte).  Dated by the ticks' due times, the
        close comes between one limit and 1.25 limits after the last byte,
        give or take the reactor's lateness (at most L{LATE_DATING}, or a
        tenth of the period, early).
        """
        limit, fin = self._quiet_limit()
        seen = self.traffic()
        if seen != self._seen:
            # Traffic since the last check: it was quiet at most since now.
            self._seen = seen
            self._since = now
        elif now - self._since >= limit - _ROUNDING:
            self.quiet_stop()
            self.went_quiet(limit, fin)
            return
        self._quiet_schedule()  # the limit may have changed (a direction ended)
