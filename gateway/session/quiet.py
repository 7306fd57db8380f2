"""
The quiet-time watch of a game session: its idle and fin timeouts.

A L{QuietWatch} closes a session through which no byte has moved for too
long: the idle timeout, or, once one direction has ended, the fin timeout
(like HAProxy's client-fin/server-fin), whichever is shorter.  It never
touches a timer per chunk: a timer at a quarter of the limit compares the
session's byte counters with those it saw last, so traffic is dated to the
check that first sees it, and a close is at most a quarter of the limit late.
"""

from __future__ import annotations

from typing import Protocol as Structural

from twisted.internet.interfaces import IDelayedCall, IReactorTime

__all__ = ["QuietOwner", "QuietWatch"]


class QuietOwner(Structural):
    """
    What a L{QuietWatch} asks and tells its session.
    """

    def traffic(self) -> int:
        """
        The bytes moved so far, both ways together.
        """
        ...

    def one_direction_ended(self) -> bool:
        """
        Whether a direction has ended now.
        """
        ...

    def went_quiet(self, limit: float, fin: bool) -> None:
        """
        No byte moved for C{limit} seconds (the fin timeout if C{fin}, else
        the idle timeout); the watch has stopped.
        """


class QuietWatch:
    """
    Watches one session's byte counters and calls back when it went quiet.
    """

    # Slots: one watch per live session (see GameSession); and its session
    # is held once, not as three bound methods.
    __slots__ = (
        "_call",
        "_clock",
        "_fin_timeout",
        "_idle_timeout",
        "_owner",
        "_seen",
        "_since",
        "_stopped",
    )

    def __init__(
        self,
        owner: QuietOwner,
        clock: IReactorTime,
        *,
        idle_timeout: float,
        fin_timeout: float,
    ) -> None:
        """
        @param owner: the session watched, told once when it went quiet.
        @param clock: for the checks.
        @param idle_timeout: seconds without traffic before closing; 0 for never.
        @param fin_timeout: seconds without traffic before closing once one
            direction has ended; 0 for never.
        """
        self._owner = owner
        self._clock = clock
        self._idle_timeout = idle_timeout
        self._fin_timeout = fin_timeout
        self._call: IDelayedCall | None = None
        self._seen = 0
        self._since = 0.0
        self._stopped = False

    def _limit(self) -> tuple[float, bool]:
        """
        How long the session may go without traffic now, and whether that is
        the fin timeout: the idle timeout, or the fin timeout once a direction
        has ended, whichever is shorter (0: no limit).
        """
        limit, fin = self._idle_timeout, False
        if self._fin_timeout and self._owner.one_direction_ended():
            if not limit or self._fin_timeout < limit:
                limit, fin = self._fin_timeout, True
        return limit, fin

    def restart(self) -> None:
        """
        Count quiet time from now (the relay starts, or a direction ended: the
        fin timeout gives the other side its full time from this moment, as
        HAProxy's does), and (re)start the checks at the current limit's pace.
        """
        self._seen = self._owner.traffic()
        self._since = self._clock.seconds()
        self._schedule()

    def stop(self) -> None:
        """
        Stop watching, for good (the session has ended).
        """
        self._stopped = True
        if self._call is not None:
            self._call.cancel()
            self._call = None

    def _schedule(self) -> None:
        if self._call is not None:
            self._call.cancel()
            self._call = None
        limit, _fin = self._limit()
        if limit and not self._stopped:
            self._call = self._clock.callLater(limit / 4, self._check)

    def _check(self) -> None:
        self._call = None
        limit, fin = self._limit()
        now = self._clock.seconds()
        seen = self._owner.traffic()
        if seen != self._seen:
            # Traffic since the last check: it was quiet at most since now.
            self._seen = seen
            self._since = now
            delay = limit / 4
        else:
            # Check again within a quarter of the limit even when the
            # deadline is further: traffic seen at a check is dated to that
            # check, so the gap between checks is the close's only lateness.
            delay = min(self._since + limit - now, limit / 4)
            if delay <= 0:
                self._owner.went_quiet(limit, fin)
                return
        self._call = self._clock.callLater(delay, self._check)
