"""
The pool of game backends and the choice of a backend for a new session.

A L{Backend} is data: a name, its endpoint string, the endpoint built from it,
a weight, a state from a closed vocabulary and plain integer counters that the
relay updates and the admin endpoint reads.  The L{Pool} holds the backends in
configured order, asks its balancing policy (L{gateway.pool.balance}) to choose among
those that are up, and is the one place where a backend's state changes: by an
operator (drain, enable), by the health checker (L{gateway.pool.health}), or by
passive detection (C{fall} consecutive failed connection attempts mark a
backend down at once; only a passing health check brings it back).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from gateway.interfaces import IBackendChooser, IBalancer
from gateway.pool.affinity import AffinityStore
from gateway.pool.backend import GAME_POOL, Backend, BackendState
from gateway.pool.balance import RoundRobin
from gateway.pool.room import WaitingRoom
from gateway.pool.seats import SeatStore

__all__ = ["Backend", "BackendState", "Pool"]


@implementer(IBackendChooser)
class Pool:
    """
    The backends, in configured order, and the policy that chooses among them.

    @ivar name: the pool's name (C{game}, or a C{[pool.NAME]} table's).
    @ivar balancer: the balancing policy.
    @ivar fall: consecutive failed attempts that mark a backend down at once
        (0: passive detection off).
    @ivar transitions: state changes so far (a counter for the admin endpoint).
    @ivar unserved: game sessions closed because no backend could take them.
    @ivar observers: called with a backend whose state just changed (the
        acceptor tells its workers; a worker tells the acceptor).
    @ivar clock: for the time of a backend's last change of state (L{None}:
        not recorded).
    @ivar room: its waiting room (closed until configured with a size).
    @ivar affinity: where the backends session keys were sent to are shared
        with other gateways (C{--cluster}), for a policy that uses keys;
        L{None}: not shared.
    @ivar seats: where sessions take their seats on backends with other
        gateways (C{--cluster}); L{None}: each node counts its own.
    """

    _log = Logger()

    def __init__(
        self,
        backends: Iterable[Backend] = (),
        balancer: IBalancer | None = None,
        *,
        fall: int = 0,
        name: str = GAME_POOL,
        clock: IReactorTime | None = None,
    ) -> None:
        self.name = name
        self.clock = clock
        self._backends: list[Backend] = []
        self.balancer: IBalancer = balancer if balancer is not None else RoundRobin()
        self.fall = fall
        self.transitions = 0
        self.unserved = 0
        self.observers: list[Callable[[Backend], None]] = []
        self.room = WaitingRoom(self)
        self.affinity: AffinityStore | None = None
        self.seats: SeatStore | None = None
        for backend in backends:
            self.add(backend)

    def reconfigure(self, *, balancer: IBalancer | None = None, fall: int) -> None:
        """
        New settings for the choices and failures that come next (a reload).

        @param balancer: a new balancing policy, or L{None} to keep this one
            (and what it has learnt).
        @param fall: failed attempts in a row that mark a backend down (0:
            passive detection off).
        """
        if balancer is not None:
            self.balancer = balancer
        self.fall = fall

    @property
    def needs_key(self) -> bool:
        """
        Whether the balancing policy uses a session key.
        """
        return bool(self.balancer.needs_key)

    @property
    def backends(self) -> tuple[Backend, ...]:
        """
        Every backend, in configured order.
        """
        return tuple(self._backends)

    def get(self, name: str) -> Backend | None:
        """
        The backend called C{name}, if any.
        """
        for backend in self._backends:
            if backend.name == name:
                return backend
        return None

    def add(self, backend: Backend) -> None:
        """
        Put a backend into rotation.

        @raise ValueError: a backend of that name is already in the pool.
        """
        if self.get(backend.name) is not None:
            raise ValueError(f"duplicate backend name {backend.name!r}")
        backend.pool = self.name
        self._backends.append(backend)

    def remove(self, backend: Backend) -> None:
        """
        Take a backend out of rotation (sessions already on it are not touched).

        @raise ValueError: it is not in the pool.
        """
        self._backends.remove(backend)

    def choose(
        self,
        exclude: Collection[Backend] = (),
        key: bytes | None = None,
        blocked: int = 0,
        patient: bool = False,
    ) -> Backend | None:
        """
        The backend for a new session: chosen by the balancing policy among
        the backends that are up, have room (L{has_room}) and are not
        excluded.  For a C{patient} session with a policy that uses keys, the
        key's own backend (its choice among those up) or none: the player
        waits for it in the waiting room rather than land on another backend.

        @param blocked: slots of each backend the session may not take
            (reserved for queue classes above its own).
        @param patient: whether the session may wait for a seat (a game
            session with room for it in the waiting room).
        """
        if patient and self.balancer.needs_key and key is not None:
            up = [b for b in self._backends if b.state is BackendState.UP and b not in exclude]
            if not up:
                return None
            own = self.balancer.choose(up, key)
            return own if self.has_room(own, blocked) else None
        candidates = [
            backend
            for backend in self._backends
            if backend not in exclude and self.has_room(backend, blocked)
        ]
        if not candidates:
            return None
        return self.balancer.choose(candidates, key)

    def remembered(self, name: str, blocked: int = 0) -> Backend | None:
        """
        The backend called C{name}, if it is in this pool and takes a new
        session (L{has_room}): a shared affinity's choice, which this node
        follows only while it sees that backend up.

        @param blocked: slots of each backend the session may not take.
        """
        backend = self.get(name)
        return backend if backend is not None and self.has_room(backend, blocked) else None

    @staticmethod
    def has_room(backend: Backend, blocked: int = 0) -> bool:
        """
        Whether C{backend} takes a new session: it is up and below its
        session limit less C{blocked} reserved slots (no limit: always),
        counting its sessions through this node and, in a cluster, through
        the others (C{elsewhere}).
        """
        if backend.state is not BackendState.UP:
            return False
        limit = backend.max_sessions
        return not limit or backend.active + backend.elsewhere < limit - blocked

    def set_state(
        self, backend: Backend, state: BackendState, reason: str, *, log: bool = True
    ) -> None:
        """
        Change a backend's state (logged and counted when it changes).

        @param log: whether to log the change (a worker process follows its
            acceptor's changes without logging them again).
        """
        backend.reason = reason
        if state is BackendState.UP:
            # Back in service: it needs `fall` new failures to be marked down.
            backend.consecutive_failures = 0
        if backend.state is state:
            return
        old, backend.state = backend.state, state
        self.transitions += 1
        if self.clock is not None:
            backend.changed = self.clock.seconds()
        if log:
            self._log.info(
                "backend {backend} is {state} (was {old}): {reason}{in_pool}",
                backend=backend.name,
                pool=self.name,
                in_pool="" if self.name == GAME_POOL else f" (pool {self.name})",
                state=state.value,
                old=old.value,
                reason=reason,
            )
        for observer in list(self.observers):
            observer(backend)
        # A backend back up has free slots; one going down or draining moves
        # keyed waiters to other backends.
        self.room.kick()

    def attempt_failed(self, backend: Backend) -> None:
        """
        A connection attempt failed: count it, and after C{fall} in a row mark
        the backend down at once.
        """
        backend.failures += 1
        backend.consecutive_failures += 1
        if (
            self.fall
            and backend.consecutive_failures >= self.fall
            and backend.state is BackendState.UP
        ):
            self.set_state(
                backend,
                BackendState.DOWN,
                # A named pool's attempts may be HTTP requests a backend
                # accepted and then failed, not only connection attempts.
                f"{backend.consecutive_failures} "
                + ("connection attempts" if self.name == GAME_POOL else "attempts")
                + " failed in a row",
            )

    def attempt_succeeded(self, backend: Backend) -> None:
        """
        A connection attempt succeeded.
        """
        backend.consecutive_failures = 0

    def nothing_available(self) -> None:
        """
        A session found no backend to try: count it.
        """
        self.unserved += 1
