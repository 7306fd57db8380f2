"""
Unit tests of L{gateway.ops.sampling.Sampler}: the first events of each key in a
window pass, the rest are counted, and their summary is due at the window's
end, by a timer on the clock given, without waiting for another event; no
timer runs while nothing is suppressed.

Time is a L{Clock}; the summaries are recorded with the time they came.
"""

from __future__ import annotations

from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock

from gateway.ops.sampling import Sampler

WINDOW = 10.0
BURST = 3


class Summaries:
    """
    The summaries a sampler gave, each with the clock's time when it came.

    @ivar seen: C{(time, suppressed counts)} in order.
    """

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self.seen: list[tuple[float, Counter[str]]] = []

    def __call__(self, suppressed: Counter[str]) -> None:
        self.seen.append((self._clock.seconds(), Counter(suppressed)))


def make_sampler() -> tuple[Sampler[str], Summaries, Clock]:
    """
    A sampler with a window of L{WINDOW} seconds and a burst of L{BURST}.
    """
    clock = Clock()
    summaries = Summaries(clock)
    return Sampler(clock, summaries, window=WINDOW, burst=BURST), summaries, clock


def test_summary_at_window_end_without_another_event() -> None:
    """
    Events beyond the burst are suppressed, and their summary comes when the
    window that began with the first event ends, although no event follows:
    46 events at once give 3 logged and one summary of 43 at 10 s.
    """
    sampler, summaries, clock = make_sampler()
    clock.advance(5)
    admitted = [sampler.admit("wrong-token") for _ in range(46)]
    assert admitted == [True] * BURST + [False] * (46 - BURST)
    assert sampler.pending
    clock.advance(WINDOW - 0.001)
    assert summaries.seen == []
    clock.advance(0.001)
    assert summaries.seen == [(5 + WINDOW, Counter({"wrong-token": 43}))]
    assert not sampler.pending
    assert clock.getDelayedCalls() == []
    clock.advance(25)
    assert len(summaries.seen) == 1


def test_no_timer_while_nothing_is_suppressed() -> None:
    """
    Events within the burst schedule nothing, in any number of windows; the
    first suppressed event schedules the window's end, once.
    """
    sampler, summaries, clock = make_sampler()
    for _ in range(4):
        assert all(sampler.admit(key) for key in ("a", "b") for _ in range(BURST))
        assert clock.getDelayedCalls() == []
        clock.advance(WINDOW)
    assert all(sampler.admit(key) for key in ("a", "b") for _ in range(BURST))
    assert not sampler.admit("a")
    assert not sampler.admit("b")
    (call,) = clock.getDelayedCalls()
    assert call.getTime() == clock.seconds() + WINDOW
    clock.advance(WINDOW)
    assert summaries.seen == [(clock.seconds(), Counter({"a": 1, "b": 1}))]


def test_late_event_in_the_same_turn_summarises_first() -> None:
    """
    An event that comes at or after the window's end, before the timer has
    run, first ends the old window (its summary) and opens a new one, where
    it is logged; the old timer does not give a second summary.
    """
    sampler, summaries, clock = make_sampler()
    for _ in range(BURST + 2):
        sampler.admit("a")
    clock.rightNow += WINDOW  # time passes, the timer has not run yet
    assert sampler.admit("a")
    assert summaries.seen == [(WINDOW, Counter({"a": 2}))]
    assert clock.getDelayedCalls() == []
    clock.advance(WINDOW)
    assert len(summaries.seen) == 1


def test_flush_ends_the_window_now() -> None:
    """
    L{Sampler.flush} (a stopping service) gives the summary at once and
    cancels the timer; with nothing suppressed it gives none.
    """
    sampler, summaries, clock = make_sampler()
    sampler.flush()
    assert summaries.seen == []
    for _ in range(BURST + 1):
        sampler.admit("a")
    sampler.flush()
    assert summaries.seen == [(0.0, Counter({"a": 1}))]
    assert clock.getDelayedCalls() == []
    assert sampler.admit("a")


@settings(max_examples=200, deadline=None)
@given(
    events=st.lists(
        st.tuples(
            st.sampled_from("ab"),
            # Binary fractions: the sums of pauses are exact.
            st.sampled_from([0.0, 0.0, 0.0, 0.25, 0.5, 3.0, 9.75, WINDOW, 25.0]),
        ),
        max_size=80,
    )
)
def test_every_suppressed_event_summarised_by_its_window_end(
    events: list[tuple[str, float]],
) -> None:
    """
    For any events at any times: per key and window the first L{BURST} are
    admitted and the rest suppressed; every suppressed event is in exactly
    one summary, which comes at the end of its window (its first event's
    time plus L{WINDOW}) whatever follows; a timer is pending exactly while
    a summary is due.
    """
    sampler, summaries, clock = make_sampler()
    opened: float | None = None
    window: Counter[str] = Counter()
    expected: list[tuple[float, Counter[str]]] = []

    def close_window() -> None:
        suppressed = Counter({k: n - BURST for k, n in window.items() if n > BURST})
        if suppressed:
            assert opened is not None
            expected.append((opened + WINDOW, suppressed))
        window.clear()

    for key, pause in events:
        target = clock.seconds() + pause
        if opened is not None and target >= opened + WINDOW:
            # Up to the window's end exactly: its summary is there, before
            # (and without) the next event.
            clock.advance(opened + WINDOW - clock.seconds())
            close_window()
            opened = None
            assert summaries.seen == expected
            assert clock.getDelayedCalls() == []
        clock.advance(target - clock.seconds())
        if opened is None:
            opened = clock.seconds()
        window[key] += 1
        assert sampler.admit(key) is (window[key] <= BURST)
        assert summaries.seen == expected
        assert bool(clock.getDelayedCalls()) is sampler.pending
        assert sampler.pending is any(n > BURST for n in window.values())
    if opened is not None:
        clock.advance(opened + WINDOW - clock.seconds())
    close_window()
    assert summaries.seen == expected
    assert clock.getDelayedCalls() == []
