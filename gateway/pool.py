"""
The pool of game backends and the choice of a backend for a new session.

A L{Backend} is data: a name, its endpoint string, the endpoint built from it,
a state from a closed vocabulary and plain integer counters that the relay
updates and the admin endpoint will read.  The L{Pool} chooses round-robin among
the backends that are up; the pool issue adds weights, least-connections,
consistent hashing and health checks on top of this model.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass
from enum import Enum

from twisted.internet.interfaces import IStreamClientEndpoint
from zope.interface import implementer

from gateway.interfaces import IBackendChooser

__all__ = ["Backend", "BackendState", "Pool"]


class BackendState(Enum):
    """
    Whether a backend takes new sessions (the values are what operators see).
    """

    UP = "up"
    DOWN = "down"
    DRAINING = "draining"


@dataclass(eq=False, slots=True)
class Backend:
    """
    One game backend and its counters.

    @ivar name: the operator's name for it (by default its endpoint string).
    @ivar description: the endpoint string it was configured with.
    @ivar endpoint: the client endpoint sessions connect to.
    @ivar state: whether it takes new sessions.
    @ivar active: sessions connected to it now.
    @ivar total: sessions ever connected to it.
    @ivar failures: connection attempts to it that failed or timed out.
    """

    name: str
    description: str
    endpoint: IStreamClientEndpoint
    state: BackendState = BackendState.UP
    active: int = 0
    total: int = 0
    failures: int = 0


@implementer(IBackendChooser)
class Pool:
    """
    The backends, in configured order, chosen round-robin.
    """

    def __init__(self, backends: Iterable[Backend] = ()) -> None:
        self._backends: list[Backend] = []
        self._next = 0
        for backend in backends:
            self.add(backend)

    @property
    def backends(self) -> tuple[Backend, ...]:
        """
        Every backend, in configured order.
        """
        return tuple(self._backends)

    def add(self, backend: Backend) -> None:
        """
        Put a backend into rotation.

        @raise ValueError: a backend of that name is already in the pool.
        """
        if any(b.name == backend.name for b in self._backends):
            raise ValueError(f"duplicate backend name {backend.name!r}")
        self._backends.append(backend)

    def remove(self, backend: Backend) -> None:
        """
        Take a backend out of rotation (sessions already on it are not touched).

        @raise ValueError: it is not in the pool.
        """
        self._backends.remove(backend)
        if self._next >= len(self._backends):
            self._next = 0

    def choose(self, exclude: Collection[Backend] = ()) -> Backend | None:
        """
        The next backend in round-robin order that is up and not excluded.

        The rotation advances past the chosen backend, so consecutive sessions
        go to consecutive backends, and a session retrying after a failure gets
        the one after the one that failed.
        """
        count = len(self._backends)
        for offset in range(count):
            index = (self._next + offset) % count
            backend = self._backends[index]
            if backend.state is BackendState.UP and backend not in exclude:
                # Not taken modulo here: a backend added meanwhile at the end
                # is then the next one, as round-robin order says.
                self._next = index + 1
                return backend
        return None
