"""
Tests for L{gateway.pool.backends}: the backends and the round-robin choice among them.

Every test is synchronous.  The backends' endpoints are TCP endpoints on a
L{MemoryReactorClock} that no test ever connects: the pool only hands
backends out, it never touches their endpoints.
"""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.testing import EventLoggingObserver, MemoryReactorClock
from twisted.logger import LogLevel, formatEvent
from zope.interface.verify import verifyObject

from gateway.interfaces import IBackendChooser, IBalancer
from gateway.pool.backends import Backend, BackendState, Pool
from gateway.pool.balance import (
    BALANCERS,
    LeastConnections,
    RendezvousHash,
    RoundRobin,
    make_balancer,
)

_REACTOR = MemoryReactorClock()
"""Only for building endpoints; nothing is ever connected through it."""


def make_backend(name: str, state: BackendState = BackendState.UP) -> Backend:
    """
    A backend called C{name} in C{state}, with a (never used) TCP endpoint.
    """
    port = 7000 + len(name)
    return Backend(
        name=name,
        description=f"tcp:127.0.0.1:{port}",
        endpoint=TCP4ClientEndpoint(_REACTOR, "127.0.0.1", port),
        state=state,
    )


def make_pool(*names: str) -> Pool:
    """
    A pool of up backends with these names, in this order.
    """
    return Pool(make_backend(name) for name in names)


def names(backends: list[Backend | None]) -> list[str | None]:
    """
    The names of C{backends}, with L{None} kept as L{None}.
    """
    return [None if backend is None else backend.name for backend in backends]


def test_pool_provides_backend_chooser() -> None:
    """
    A L{Pool} provides L{IBackendChooser}, the interface game sessions use.
    """
    assert verifyObject(IBackendChooser, make_pool("a"))


def test_backends_in_configured_order() -> None:
    """
    C{backends} lists every backend in configured order, whatever its state,
    then those added later, as a tuple that does not alias the pool's list.
    """
    down = make_backend("b", BackendState.DOWN)
    pool = Pool([make_backend("a"), down])
    pool.add(make_backend("c", BackendState.DRAINING))
    listed = pool.backends
    assert isinstance(listed, tuple)
    assert [backend.name for backend in listed] == ["a", "b", "c"]
    assert listed[1] is down


def test_new_backend_counters_start_at_zero() -> None:
    """
    A new backend is up and has no active, total or failed sessions.
    """
    backend = Backend(
        name="a",
        description="tcp:127.0.0.1:1",
        endpoint=TCP4ClientEndpoint(_REACTOR, "127.0.0.1", 1),
    )
    assert (backend.state, backend.active, backend.total, backend.failures) == (
        BackendState.UP,
        0,
        0,
        0,
    )


def test_round_robin_order() -> None:
    """
    Consecutive choices go to consecutive backends in configured order, and
    wrap around after the last.
    """
    pool = make_pool("a", "b", "c")
    chosen = [pool.choose() for _ in range(7)]
    assert names(chosen) == ["a", "b", "c", "a", "b", "c", "a"]


def test_single_backend_always_chosen() -> None:
    """
    With one up backend, every choice is that backend.
    """
    pool = make_pool("only")
    assert names([pool.choose() for _ in range(3)]) == ["only"] * 3


def test_skips_down_and_draining() -> None:
    """
    A backend that is down or draining is never chosen; the rotation goes on
    among the up ones.
    """
    pool = Pool(
        [
            make_backend("a"),
            make_backend("b", BackendState.DOWN),
            make_backend("c"),
            make_backend("d", BackendState.DRAINING),
        ]
    )
    assert names([pool.choose() for _ in range(4)]) == ["a", "c", "a", "c"]


def test_state_change_takes_effect_on_next_choice() -> None:
    """
    A backend set down or draining is never chosen from the next choice on,
    the others share the sessions, and a backend back up is chosen again
    within one round.
    """
    pool = make_pool("a", "b", "c")
    a, b, _ = pool.backends
    assert names([pool.choose()]) == ["a"]
    b.state = BackendState.DOWN
    chosen = names([pool.choose() for _ in range(4)])
    assert set(chosen) == {"a", "c"}
    b.state = BackendState.UP
    assert "b" in names([pool.choose() for _ in range(3)])
    a.state = BackendState.DRAINING
    chosen = names([pool.choose() for _ in range(4)])
    assert set(chosen) == {"b", "c"}


def test_excluded_backend_skipped() -> None:
    """
    An excluded backend is skipped and the next up one is chosen.
    """
    pool = make_pool("a", "b", "c")
    a, b, _ = pool.backends
    assert names([pool.choose([a, b])]) == ["c"]


def test_retry_gets_the_backend_after_the_failed_one() -> None:
    """
    A session that retries after its backend failed (excluding it) gets the
    backend after it in the rotation, and the rotation goes on from there.
    """
    pool = make_pool("a", "b", "c")
    first = pool.choose()
    assert first is not None and first.name == "a"
    assert names([pool.choose([first])]) == ["b"]
    assert names([pool.choose()]) == ["c"]


def test_exclusion_is_by_identity() -> None:
    """
    Exclusion names backend objects, not names: an equal-looking but distinct
    backend in C{exclude} does not exclude the pool's backend.
    """
    pool = make_pool("a")
    assert names([pool.choose([make_backend("a")])]) == ["a"]


def test_none_when_all_excluded() -> None:
    """
    When every up backend is excluded there is no choice, and the rotation is
    unchanged.
    """
    pool = make_pool("a", "b")
    assert names([pool.choose(), pool.choose(pool.backends)]) == ["a", None]
    assert names([pool.choose()]) == ["b"]


def test_none_when_all_down() -> None:
    """
    When no backend is up there is no choice.
    """
    pool = Pool([make_backend("a", BackendState.DOWN), make_backend("b", BackendState.DRAINING)])
    assert pool.choose() is None


def test_none_when_empty() -> None:
    """
    An empty pool has no choice, with or without exclusions, and no backends.
    """
    pool = Pool()
    assert pool.choose() is None
    assert pool.choose([make_backend("a")]) is None
    assert pool.backends == ()


def test_added_backend_is_chosen() -> None:
    """
    A backend added to an empty pool is chosen, and one added while the
    rotation stands at the start joins it at the end.
    """
    pool = Pool()
    pool.add(make_backend("a"))
    assert names([pool.choose()]) == ["a"]
    pool = make_pool("a", "b")
    pool.add(make_backend("c"))
    assert names([pool.choose() for _ in range(3)]) == ["a", "b", "c"]


def test_backend_added_joins_the_rotation() -> None:
    """
    A backend added to the pool is chosen within the next round, and from
    then on the three share the sessions equally.
    """
    pool = make_pool("a", "b")
    assert names([pool.choose(), pool.choose()]) == ["a", "b"]
    pool.add(make_backend("c"))
    assert "c" in names([pool.choose() for _ in range(3)])
    later = names([pool.choose() for _ in range(30)])
    assert {name: later.count(name) for name in "abc"} == {"a": 10, "b": 10, "c": 10}


def test_add_rejects_duplicate_name() -> None:
    """
    Adding a backend whose name is already in the pool raises L{ValueError}
    naming it, and leaves the pool unchanged.
    """
    pool = make_pool("a", "b")
    before = pool.backends
    with pytest.raises(ValueError, match="'a'"):
        pool.add(make_backend("a", BackendState.DOWN))
    assert pool.backends == before


def test_constructor_rejects_duplicate_name() -> None:
    """
    A pool cannot be built with two backends of one name either (as
    C{--backend X --backend X} would): the constructor raises L{ValueError}
    like L{Pool.add}.
    """
    with pytest.raises(ValueError, match="'a'"):
        Pool([make_backend("a"), make_backend("a")])


_STATES = st.sampled_from(list(BackendState))


@settings(max_examples=200, deadline=None)
@given(
    states=st.lists(_STATES, min_size=0, max_size=6),
    exclusions=st.lists(st.sets(st.integers(min_value=0, max_value=5)), max_size=40),
)
def test_choice_always_up_and_not_excluded(
    states: list[BackendState], exclusions: list[set[int]]
) -> None:
    """
    Over any sequence of choices with any exclusions, the chosen backend is up
    and not excluded, and L{None} comes back exactly when no backend is both.
    """
    pool = Pool(make_backend(f"b{i}", state) for i, state in enumerate(states))
    backends = pool.backends
    for excluded in exclusions:
        exclude = [backends[i] for i in excluded if i < len(backends)]
        chosen = pool.choose(exclude)
        eligible = [
            backend
            for backend in backends
            if backend.state is BackendState.UP and backend not in exclude
        ]
        if chosen is None:
            assert eligible == []
        else:
            assert chosen.state is BackendState.UP
            assert chosen not in exclude
            assert chosen in backends


@settings(max_examples=200, deadline=None)
@given(
    states=st.lists(_STATES, min_size=1, max_size=8).filter(
        lambda states: BackendState.UP in states
    ),
    rounds=st.integers(min_value=1, max_value=10),
    start=st.integers(min_value=0, max_value=20),
)
def test_spread_is_exact(states: list[BackendState], rounds: int, start: int) -> None:
    """
    With no exclusions, N*k choices among N up backends give each exactly k,
    wherever the rotation stood before; backends not up get none.
    """
    pool = Pool(make_backend(f"b{i}", state) for i, state in enumerate(states))
    for _ in range(start):
        pool.choose()
    up = [backend for backend in pool.backends if backend.state is BackendState.UP]
    counts = Counter(pool.choose() for _ in range(len(up) * rounds))
    assert counts == {backend: rounds for backend in up}


# Pool with each balancing policy


@settings(max_examples=200, deadline=None)
@given(
    balance=st.sampled_from(sorted(BALANCERS)),
    states=st.lists(_STATES, min_size=0, max_size=6),
    steps=st.lists(
        st.tuples(st.sets(st.integers(min_value=0, max_value=5)), st.binary(max_size=8)),
        max_size=40,
    ),
)
def test_every_balancer_chooses_up_and_not_excluded(
    balance: str, states: list[BackendState], steps: list[tuple[set[int], bytes]]
) -> None:
    """
    Whatever the balancing policy, over any choices with any exclusions and
    keys, the chosen backend is up and not excluded, and L{None} comes back
    exactly when no backend is both.
    """
    pool = Pool(
        (make_backend(f"b{i}", state) for i, state in enumerate(states)),
        make_balancer(balance),
    )
    backends = pool.backends
    for excluded, key in steps:
        exclude = [backends[i] for i in excluded if i < len(backends)]
        chosen = pool.choose(exclude, key)
        eligible = [b for b in backends if b.state is BackendState.UP and b not in exclude]
        if chosen is None:
            assert eligible == []
        else:
            assert chosen in eligible
            chosen.active += 1


@pytest.mark.parametrize(
    ("balancer", "needs_key"),
    [(None, False), (RoundRobin(), False), (LeastConnections(), False), (RendezvousHash(), True)],
)
def test_needs_key_follows_balancer(balancer: IBalancer | None, needs_key: bool) -> None:
    """
    A pool needs a session key exactly when its balancing policy does (the
    default policy, round-robin, does not).
    """
    assert Pool([make_backend("a")], balancer).needs_key is needs_key


def test_hash_pool_keeps_key_on_backend() -> None:
    """
    A pool with the hash policy sends a key to the same backend each time, and
    while that backend is down, to another one; back up, the key returns to it.
    """
    pool = Pool([make_backend(name) for name in "abcd"], RendezvousHash())
    home = pool.choose((), b"player-7")
    assert home is not None
    assert {pool.choose((), b"player-7") for _ in range(5)} == {home}
    pool.set_state(home, BackendState.DOWN, "test")
    elsewhere = pool.choose((), b"player-7")
    assert elsewhere is not None and elsewhere is not home
    pool.set_state(home, BackendState.UP, "test")
    assert pool.choose((), b"player-7") is home


# State changes and passive failure detection


def state_changes(log_events: EventLoggingObserver) -> list[str]:
    """
    The text of the pool's state-change events logged so far.
    """
    return [
        formatEvent(event)
        for event in log_events
        if event.get("log_namespace") == "gateway.pool.backends.Pool"
        and event.get("log_format", "").startswith("backend {backend} is {state}")
    ]


def test_set_state_logs_and_counts_each_change(log_events: EventLoggingObserver) -> None:
    """
    Each state change is logged once, with the old and new states and the
    reason, and counted in C{transitions}; the backend keeps the reason.
    """
    pool = make_pool("a", "b")
    a, _ = pool.backends
    pool.set_state(a, BackendState.DRAINING, "operator drain")
    pool.set_state(a, BackendState.DOWN, "3 health checks failed")
    assert (a.state, a.reason, pool.transitions) == (
        BackendState.DOWN,
        "3 health checks failed",
        2,
    )
    assert state_changes(log_events) == [
        "backend a is draining (was up): operator drain",
        "backend a is down (was draining): 3 health checks failed",
    ]
    levels = {
        event["log_level"]
        for event in log_events
        if event.get("log_namespace") == "gateway.pool.backends.Pool"
    }
    assert levels == {LogLevel.info}


def test_set_state_unchanged_not_logged(log_events: EventLoggingObserver) -> None:
    """
    Setting a backend to the state it is already in logs nothing and counts
    nothing (the reason given is still recorded).
    """
    pool = make_pool("a")
    (a,) = pool.backends
    pool.set_state(a, BackendState.UP, "health check passed")
    assert (a.state, a.reason, pool.transitions) == (BackendState.UP, "health check passed", 0)
    assert state_changes(log_events) == []


def test_drain_then_enable(log_events: EventLoggingObserver) -> None:
    """
    A backend set to draining through the pool gets no new session, not even
    when it is the only one left to choose; set back up, it is chosen again
    within one round.  Both changes are logged and counted in C{transitions}.
    """
    pool = make_pool("a", "b", "c")
    a, b, c = pool.backends
    assert names([pool.choose()]) == ["a"]
    pool.set_state(b, BackendState.DRAINING, "operator drain")
    assert (b.state, b.reason, pool.transitions) == (
        BackendState.DRAINING,
        "operator drain",
        1,
    )
    # The others share the sessions (in what order is the balancer's business).
    assert set(names([pool.choose() for _ in range(6)])) == {"a", "c"}
    assert pool.choose([a, c]) is None
    pool.set_state(b, BackendState.UP, "operator enable")
    assert (b.state, b.reason, pool.transitions) == (BackendState.UP, "operator enable", 2)
    assert "b" in names([pool.choose() for _ in range(3)])
    assert pool.choose([a, c]) is b
    assert state_changes(log_events) == [
        "backend b is draining (was up): operator drain",
        "backend b is up (was draining): operator enable",
    ]


def test_fall_failures_in_a_row_mark_down(log_events: EventLoggingObserver) -> None:
    """
    With C{fall=3}, the third failed attempt in a row marks an up backend
    down at once, logged with the reason, and the pool stops choosing it.
    """
    pool = Pool([make_backend("a"), make_backend("b")], fall=3)
    a, b = pool.backends
    pool.attempt_failed(a)
    pool.attempt_failed(a)
    assert a.state is BackendState.UP
    pool.attempt_failed(a)
    assert (a.state, a.reason, pool.transitions) == (
        BackendState.DOWN,
        "3 connection attempts failed in a row",
        1,
    )
    assert state_changes(log_events) == [
        "backend a is down (was up): 3 connection attempts failed in a row"
    ]
    assert {pool.choose() for _ in range(4)} == {b}


def test_success_resets_the_run() -> None:
    """
    A successful attempt between failures starts the count again: two
    failures, a success, two failures leave the backend up.
    """
    pool = Pool([make_backend("a")], fall=3)
    (a,) = pool.backends
    for _ in range(2):
        pool.attempt_failed(a)
    pool.attempt_succeeded(a)
    assert a.consecutive_failures == 0
    for _ in range(2):
        pool.attempt_failed(a)
    assert (a.state, a.failures, a.consecutive_failures) == (BackendState.UP, 4, 2)


def test_fall_zero_never_marks_down(log_events: EventLoggingObserver) -> None:
    """
    With C{fall=0} passive detection is off: any number of failures in a row
    are counted but leave the backend up.
    """
    pool = Pool([make_backend("a")], fall=0)
    (a,) = pool.backends
    for _ in range(100):
        pool.attempt_failed(a)
    assert (a.state, a.failures, a.consecutive_failures) == (BackendState.UP, 100, 100)
    assert pool.transitions == 0
    assert state_changes(log_events) == []


@pytest.mark.parametrize("state", [BackendState.DOWN, BackendState.DRAINING])
def test_failures_do_not_remark(state: BackendState, log_events: EventLoggingObserver) -> None:
    """
    Failures of a backend that is already down or draining are counted, but
    do not change its state or reason, log or count a transition.
    """
    pool = Pool([make_backend("a", state)], fall=1)
    (a,) = pool.backends
    a.reason = "operator"
    for _ in range(3):
        pool.attempt_failed(a)
    assert (a.state, a.reason, a.failures, pool.transitions) == (state, "operator", 3, 0)
    assert state_changes(log_events) == []


@settings(max_examples=200, deadline=None)
@given(
    fall=st.integers(min_value=0, max_value=5),
    outcomes=st.lists(st.booleans(), max_size=30),
)
def test_passive_detection_model(fall: int, outcomes: list[bool]) -> None:
    """
    For any C{fall} and any sequence of attempt outcomes (C{True}: success),
    every failure is counted, and the backend is down exactly when some run of
    C{fall} failures in a row (C{fall} > 0) has occurred, after one transition.
    """
    pool = Pool([make_backend("a")], fall=fall)
    (a,) = pool.backends
    run = longest = 0
    for succeeded in outcomes:
        if succeeded:
            pool.attempt_succeeded(a)
            run = 0
        else:
            pool.attempt_failed(a)
            run += 1
            longest = max(longest, run)
        assert a.consecutive_failures == run
    down = fall > 0 and longest >= fall
    assert a.failures == outcomes.count(False)
    assert a.state is (BackendState.DOWN if down else BackendState.UP)
    assert pool.transitions == int(down)


def test_recovered_backend_needs_fall_new_failures() -> None:
    """
    A backend marked down by C{fall} failures and brought back up (by a
    passing health check or an operator) takes C{fall} new failures in a row
    to be marked down again, not one.
    """
    pool = Pool([make_backend("a")], fall=3)
    (a,) = pool.backends
    for _ in range(3):
        pool.attempt_failed(a)
    assert a.state is BackendState.DOWN
    pool.set_state(a, BackendState.UP, "2 health checks passed")
    pool.attempt_failed(a)
    assert (a.state, a.consecutive_failures) == (BackendState.UP, 1)


def test_nothing_available_is_counted() -> None:
    """
    A session that found no backend to try is counted on the pool
    (unserved), for the admin endpoint.
    """
    pool = make_pool("a")
    assert pool.unserved == 0
    pool.nothing_available()
    pool.nothing_available()
    assert pool.unserved == 2
