"""
Unit tests of L{gateway.ops.registry.RefusalLog}: every refusal counted, the first
few of each reason in a window logged one by one, the rest tallied and
summarised once per window, with bounded memory per window.

Time is a L{Clock}; the log events are read with an L{EventLoggingObserver}
on the global log publisher (the refusal log's logger publishes there), or,
inside hypothesis tests (which cannot take function-scoped fixtures), with
L{capturedLogs} around each example.
"""

from __future__ import annotations

from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import LogEvent, LogLevel, capturedLogs, formatEvent

from gateway.front.limits import Refusal
from gateway.ops.registry import Counters, RefusalLog

WINDOW = 10.0
BURST = 3
TOP = 2


def make_log() -> tuple[RefusalLog, Counters, Clock]:
    """
    A refusal log with a window of L{WINDOW} seconds, a burst of L{BURST}
    and the L{TOP} addresses in its summaries.
    """
    clock = Clock()
    counters = Counters()
    return RefusalLog(clock, counters, window=WINDOW, burst=BURST, top=TOP), counters, clock


def ours(events: EventLoggingObserver | list[LogEvent]) -> list[LogEvent]:
    """
    The events logged by a refusal log.
    """
    return [e for e in events if isinstance(e.get("log_source"), RefusalLog)]


def singles(events: EventLoggingObserver | list[LogEvent]) -> list[LogEvent]:
    """
    The refusals logged one by one.
    """
    return [e for e in ours(events) if "peer" in e]


def summaries(events: EventLoggingObserver | list[LogEvent]) -> list[LogEvent]:
    """
    The end-of-window summaries.
    """
    return [e for e in ours(events) if "count" in e]


def test_first_burst_logged_one_by_one(log_events: EventLoggingObserver) -> None:
    """
    The first C{burst} refusals of a reason in a window are logged one by
    one, as warnings with the client's address, the reason and the detail;
    the rest are only counted.
    """
    refusals, counters, _ = make_log()
    for n in range(BURST + 4):
        refusals.refused(Refusal.RATE, f"192.0.2.{n}:1000", "too fast" if n == 0 else "")
    logged = singles(log_events)
    assert [formatEvent(e) for e in logged] == [
        "refused 192.0.2.0:1000: rate (too fast)",
        "refused 192.0.2.1:1000: rate",
        "refused 192.0.2.2:1000: rate",
    ]
    assert all(e["log_level"] is LogLevel.warn for e in logged)
    assert [(e["peer"], e["reason"]) for e in logged][0] == ("192.0.2.0:1000", "rate")
    assert counters.refused[Refusal.RATE] == BURST + 4
    assert summaries(log_events) == []


def test_burst_is_per_reason(log_events: EventLoggingObserver) -> None:
    """
    Each reason has its own burst: a flood of one reason does not hide the
    first refusals of another.
    """
    refusals, counters, _ = make_log()
    for _ in range(10):
        refusals.refused(Refusal.TOTAL_CAP, "192.0.2.1:1")
    refusals.refused(Refusal.TIMEOUT, "192.0.2.2:2")
    reasons = Counter(e["reason"] for e in singles(log_events))
    assert reasons == {"total-cap": BURST, "timeout": 1}
    assert counters.refused[Refusal.TOTAL_CAP] == 10
    assert counters.refused[Refusal.TIMEOUT] == 1


def test_summary_at_window_end(log_events: EventLoggingObserver) -> None:
    """
    When the window ends (C{window} seconds after its first refusal, not
    before), one summary per flooding reason gives the number of refusals
    not logged one by one and the addresses most of them came from, most
    frequent first; a reason that stayed within its burst gets no summary.
    """
    refusals, _, clock = make_log()
    for _ in range(BURST):
        refusals.refused(Refusal.RATE, "192.0.2.9:1")
    # Tallied by address: the ports (each connection has its own) are dropped.
    suppressed = [f"192.0.2.1:{port}" for port in range(4)] + ["192.0.2.2:1"] * 2
    suppressed += ["192.0.2.3:1"]
    for peer in suppressed:
        refusals.refused(Refusal.RATE, peer)
    refusals.refused(Refusal.TIMEOUT, "192.0.2.4:1")
    clock.advance(WINDOW - 0.001)
    assert summaries(log_events) == []
    clock.advance(0.001)
    (summary,) = summaries(log_events)
    assert formatEvent(summary) == (
        "refused 7 more connections (rate) in the last 10 s without logging each; "
        "most from: 192.0.2.1 (4), 192.0.2.2 (2)"
    )
    assert summary["count"] == 7
    assert summary["reason"] == "rate"
    assert summary["addresses"] == 3
    assert summary["log_level"] is LogLevel.warn
    assert clock.getDelayedCalls() == []


def test_one_summary_per_reason(log_events: EventLoggingObserver) -> None:
    """
    Several flooding reasons in one window each get their own summary, once.
    """
    refusals, _, clock = make_log()
    for reason in (Refusal.RATE, Refusal.ADDRESS_CAP):
        for _ in range(BURST + 2):
            refusals.refused(reason, "192.0.2.1:1")
    clock.advance(WINDOW)
    clock.advance(WINDOW * 5)
    assert sorted((e["reason"], e["count"]) for e in summaries(log_events)) == [
        ("address-cap", 2),
        ("rate", 2),
    ]


def test_logged_one_by_one_again_after_window(log_events: EventLoggingObserver) -> None:
    """
    After a window ends, the next refusals are logged one by one again, and
    a new window starts at the first of them.
    """
    refusals, counters, clock = make_log()
    for _ in range(BURST + 1):
        refusals.refused(Refusal.RATE, "192.0.2.1:1")
    clock.advance(WINDOW)
    clock.advance(100)  # quiet: no window runs, nothing is logged
    assert len(summaries(log_events)) == 1
    assert clock.getDelayedCalls() == []
    for _ in range(BURST + 2):
        refusals.refused(Refusal.RATE, "192.0.2.5:1")
    assert len(singles(log_events)) == 2 * BURST
    assert singles(log_events)[-1]["peer"] == "192.0.2.5:1"
    clock.advance(WINDOW)
    assert [e["count"] for e in summaries(log_events)] == [1, 2]
    assert counters.refused[Refusal.RATE] == 2 * BURST + 3


def test_tracked_addresses_bounded(log_events: EventLoggingObserver) -> None:
    """
    At most C{TRACKED_ADDRESSES} distinct addresses are tallied per reason
    and window; refusals from further addresses are counted as "others",
    while addresses already tallied keep being counted by name.
    """
    refusals, counters, clock = make_log()
    refusals.TRACKED_ADDRESSES = 3
    for _ in range(BURST):
        refusals.refused(Refusal.RATE, "192.0.2.250:1")
    for n in range(10):
        refusals.refused(Refusal.RATE, f"192.0.2.{n}:1")
    for _ in range(5):
        refusals.refused(Refusal.RATE, "192.0.2.0:1")
    clock.advance(WINDOW)
    (summary,) = summaries(log_events)
    assert summary["count"] == 15
    assert summary["addresses"] == 3
    assert summary["most"] == "192.0.2.0 (6), 192.0.2.1 (1), others (7)"
    assert counters.refused[Refusal.RATE] == BURST + 15


def test_default_tracked_addresses_bound() -> None:
    """
    The default bound on addresses tallied per window is a thousand.
    """
    assert RefusalLog.TRACKED_ADDRESSES == 1000


def test_nothing_scheduled_while_nothing_is_suppressed() -> None:
    """
    A refusal log keeps no timer while every refusal has been logged one by
    one (none refused, or a burst of each reason, in any number of
    windows); the first tallied refusal schedules the window's end, counted
    from the window's first refusal, and the summary comes then with no
    further refusal.
    """
    refusals, _, clock = make_log()
    assert clock.getDelayedCalls() == []
    for _ in range(3):
        for reason in (Refusal.RATE, Refusal.TIMEOUT):
            for _ in range(BURST):
                refusals.refused(reason, "192.0.2.1:1")
        assert clock.getDelayedCalls() == []
        clock.advance(WINDOW)
    start = clock.seconds()
    for _ in range(BURST):
        refusals.refused(Refusal.RATE, "192.0.2.1:1")
    clock.advance(4)
    refusals.refused(Refusal.RATE, "192.0.2.1:1")
    (call,) = clock.getDelayedCalls()
    assert call.getTime() == start + WINDOW


def test_flush_logs_the_summary_now(log_events: EventLoggingObserver) -> None:
    """
    L{RefusalLog.flush} (a gateway stopping within a window) logs the
    window's summary at once and leaves no timer.
    """
    refusals, _, clock = make_log()
    for _ in range(BURST + 2):
        refusals.refused(Refusal.RATE, "192.0.2.1:1")
    refusals.flush()
    assert [e["count"] for e in summaries(log_events)] == [2]
    assert clock.getDelayedCalls() == []


@settings(max_examples=100, deadline=None)
@given(
    events=st.lists(
        st.tuples(
            st.sampled_from(Refusal),
            st.integers(min_value=0, max_value=5),
            st.sampled_from([0.0, 0.0, 0.5, 3.0, WINDOW, 11.0]),
        ),
        max_size=60,
    ),
    tracked=st.integers(min_value=1, max_value=4),
)
def test_counts_exact_and_sampling_per_window(
    events: list[tuple[Refusal, int, float]], tracked: int
) -> None:
    """
    For any refusals at any times: the counters are exact after each one;
    a window starts at the first refusal after the previous window ended;
    per reason and window the first C{burst} are logged one by one and the
    rest are in that window's one summary for the reason, with the right
    count and at most C{TRACKED_ADDRESSES} addresses.
    """
    refusals, counters, clock = make_log()
    refusals.TRACKED_ADDRESSES = tracked
    expected: Counter[Refusal] = Counter()
    per_window: list[Counter[Refusal]] = []
    peers_per_window: list[dict[Refusal, set[str]]] = []
    window_start: float | None = None
    with capturedLogs() as captured:
        for reason, host, pause in events:
            clock.advance(pause)
            now = clock.seconds()
            if window_start is None or now >= window_start + WINDOW:
                window_start = now
                per_window.append(Counter())
                peers_per_window.append({})
            peer = f"192.0.2.{host}:1"
            if per_window[-1][reason] >= BURST:
                peers_per_window[-1].setdefault(reason, set()).add(peer)
            per_window[-1][reason] += 1
            refusals.refused(reason, peer)
            expected[reason] += 1
            assert counters.refused[reason] == expected[reason]
        clock.advance(WINDOW)
        seen = list(captured)
    assert counters.refused == {reason: expected[reason] for reason in Refusal}
    for reason in Refusal:
        logged = [e for e in singles(seen) if e["reason"] == reason.value]
        assert len(logged) == sum(min(w[reason], BURST) for w in per_window)
        summary_events = [e for e in summaries(seen) if e["reason"] == reason.value]
        assert [e["count"] for e in summary_events] == [
            w[reason] - BURST for w in per_window if w[reason] > BURST
        ]
        distinct = [len(p[reason]) for p in peers_per_window if reason in p]
        assert [e["addresses"] for e in summary_events] == [min(n, tracked) for n in distinct]
    assert clock.getDelayedCalls() == []


# Found while writing these tests


def test_events_in_documented_namespace(log_events: EventLoggingObserver) -> None:
    """
    Refusal events carry the namespace docs/operations.md documents,
    C{gateway.refusals}, so that operators can filter them.
    """
    refusals, _, clock = make_log()
    for _ in range(BURST + 1):
        refusals.refused(Refusal.RATE, "192.0.2.1:1")
    clock.advance(WINDOW)
    assert {e["log_namespace"] for e in ours(log_events)} == {"gateway.refusals"}
