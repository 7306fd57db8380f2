"""
Every pool of a process by name: L{Pools}.

Sessions and proxied requests choose among one pool's backends (a
L{gateway.pool.backends.Pool}); what watches and steers backends (the admin
endpoint, the health checks' states pushed to worker processes, the status
documents) sees them all, by name, through this registry.  Backend names are
unique across pools (the configuration checks it), so an operator's
C{POST /backends/NAME/drain} and a worker's state message need no pool.

The game pool (raw TCP game sessions and C{--websocket} bridges) always
exists; named pools come and go with the configuration.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.logger import Logger

from gateway.pool.affinity import AffinityStore
from gateway.pool.backend import GAME_POOL, Backend, BackendState
from gateway.pool.backends import Pool
from gateway.pool.seats import SeatStore

__all__ = ["Pools"]


class Pools:
    """
    The pools of one process, the game pool first, then the others in the
    order they were added.

    @ivar observers: called with a backend of any pool whose state just
        changed.
    """

    _log = Logger()

    def __init__(self, game: Pool) -> None:
        self._pools: dict[str, Pool] = {}
        self.observers: list[Callable[[Backend], None]] = []
        self._retired_transitions = 0
        self._retired_unserved = 0
        self._affinity: AffinityStore | None = None
        self._seats: SeatStore | None = None
        self.add_pool(game)

    @property
    def game(self) -> Pool:
        """
        The game pool.
        """
        return self._pools[GAME_POOL]

    @property
    def pools(self) -> tuple[Pool, ...]:
        """
        Every pool, the game pool first.
        """
        return tuple(self._pools.values())

    def pool(self, name: str) -> Pool | None:
        """
        The pool called C{name}, if any.
        """
        return self._pools.get(name)

    def add_pool(self, pool: Pool) -> None:
        """
        Add a pool (its backends' state changes reach L{observers}).

        @raise ValueError: a pool of that name exists.
        """
        if pool.name in self._pools:
            raise ValueError(f"duplicate pool name {pool.name!r}")
        self._pools[pool.name] = pool
        pool.observers.append(self._changed)
        pool.affinity = self._affinity
        pool.seats = self._seats

    def share_affinity(self, store: AffinityStore | None) -> None:
        """
        Share the backends session keys are sent to through C{store} (the
        cluster's), in every pool, those added later too.
        """
        self._affinity = store
        for pool in self._pools.values():
            pool.affinity = store

    def share_seats(self, store: SeatStore | None) -> None:
        """
        Count the sessions' seats with other gateways through C{store} (the
        cluster's), in every pool, those added later too.
        """
        self._seats = store
        for pool in self._pools.values():
            pool.seats = store

    def remove_pool(self, name: str) -> None:
        """
        Forget a pool that has no backends left (its counters stay in the
        totals).

        @raise ValueError: it is the game pool, or it still has backends.
        """
        pool = self._pools[name]
        if name == GAME_POOL or pool.backends:
            raise ValueError(f"pool {name!r} cannot be removed")
        del self._pools[name]
        pool.observers.remove(self._changed)
        self._retired_transitions += pool.transitions
        self._retired_unserved += pool.unserved

    def _changed(self, backend: Backend) -> None:
        for observer in list(self.observers):
            observer(backend)

    @property
    def backends(self) -> tuple[Backend, ...]:
        """
        Every backend of every pool, pool by pool, each in configured order.
        """
        return tuple(backend for pool in self._pools.values() for backend in pool.backends)

    def get(self, name: str) -> Backend | None:
        """
        The backend called C{name}, in whichever pool it is.
        """
        for pool in self._pools.values():
            backend = pool.get(name)
            if backend is not None:
                return backend
        return None

    def owner(self, backend: Backend) -> Pool | None:
        """
        The pool C{backend} is in, if any.
        """
        pool = self._pools.get(backend.pool)
        return pool if pool is not None and backend in pool.backends else None

    def set_state(
        self, backend: Backend, state: BackendState, reason: str, *, log: bool = True
    ) -> None:
        """
        Change a backend's state through its pool (see L{Pool.set_state}).
        """
        pool = self.owner(backend)
        if pool is None:
            raise ValueError(f"backend {backend.name!r} is in no pool")
        pool.set_state(backend, state, reason, log=log)

    @property
    def transitions(self) -> int:
        """
        Backend state changes so far, every pool's.
        """
        return self._retired_transitions + sum(p.transitions for p in self._pools.values())

    @property
    def unserved(self) -> int:
        """
        Sessions and requests no backend could take, every pool's.
        """
        return self._retired_unserved + sum(p.unserved for p in self._pools.values())
