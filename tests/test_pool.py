"""
Tests for L{gateway.pool}: the backends and the round-robin choice among them.

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
from twisted.internet.testing import MemoryReactorClock
from zope.interface.verify import verifyObject

from gateway.interfaces import IBackendChooser
from gateway.pool import Backend, BackendState, Pool

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
