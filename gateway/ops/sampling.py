"""
Sampling for logs that a flood could fill: the first few events of each kind
in a window are logged one by one, the rest only counted, and a summary of
what was not logged is due when the window ends.

L{Sampler} decides, and keeps the window's timer; what is logged (and what a
summary says) belongs to its user (L{gateway.ops.registry.RefusalLog}, the admin
endpoint's refused actions).  The summary is logged by a timer at the end of
the window, on the clock it is given, not when some later event happens to
arrive: an operator who watches the log after a burst of refusals sees the
whole burst counted within one window's time.  No timer runs while nothing is
suppressed, so a quiet gateway (or one with a few refusals) schedules nothing.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

from twisted.internet.interfaces import IDelayedCall, IReactorTime

__all__ = ["Sampler"]

K = TypeVar("K", bound=Hashable)


class Sampler(Generic[K]):
    """
    Decide which events of a flood are logged one by one, per key (a reason,
    say), in windows of C{window} seconds.

    A window opens with the first event after the previous one closed.  In
    it, the first C{burst} events of each key are logged (L{admit} says
    L{True}); the rest are suppressed (L{False}), and the first suppressed
    event schedules the window's end.  At that end, C{summarise} is called
    with how many events of each key were suppressed, and a new window opens
    with the next event.

    @ivar window: seconds of a window.
    @ivar burst: events of each key logged one by one per window.
    """

    def __init__(
        self,
        clock: IReactorTime,
        summarise: Callable[[Counter[K]], None],
        *,
        window: float,
        burst: int,
    ) -> None:
        """
        @param clock: reads the time and schedules the window's end.
        @param summarise: logs the summary of a window: it gets the count
            of suppressed events by key (never empty).
        """
        self._clock = clock
        self._summarise = summarise
        self.window = window
        self.burst = burst
        self._opened: float | None = None
        self._logged: Counter[K] = Counter()
        self._suppressed: Counter[K] = Counter()
        self._end: IDelayedCall | None = None

    def admit(self, key: K) -> bool:
        """
        One event of C{key}: whether to log it one by one.

        @return: L{True} for the first C{burst} of its key in this window,
            else L{False} (it is counted for the window's summary).
        """
        now = self._clock.seconds()
        if self._opened is None or now >= self._opened + self.window:
            # The window is over; its end may be due in this same reactor
            # turn, before its timer has run: summarise it first.
            self.flush()
            self._opened = now
        if self._logged[key] < self.burst:
            self._logged[key] += 1
            return True
        self._suppressed[key] += 1
        if self._end is None:
            self._end = self._clock.callLater(self._opened + self.window - now, self._ended)
        return False

    @property
    def pending(self) -> bool:
        """
        Whether a summary is due (events were suppressed in this window).
        """
        return bool(self._suppressed)

    def _ended(self) -> None:
        self._end = None
        self.flush()

    def flush(self) -> None:
        """
        End the window now: summarise what it suppressed, if anything, and
        cancel its timer (for the window's end, or a service that stops).
        """
        if self._end is not None:
            if self._end.active():
                self._end.cancel()
            self._end = None
        suppressed, self._suppressed = self._suppressed, Counter()
        self._logged.clear()
        self._opened = None
        if suppressed:
            self._summarise(suppressed)
