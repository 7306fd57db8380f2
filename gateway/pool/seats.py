"""
Seats shared with other gateways: the backends' C{max-sessions} counted
across a cluster, and the cluster's cap on game sessions
(C{--cluster-max-sessions}).

The pool and the sessions see the shared seats through a structural
interface, L{SeatStore}: the cluster's (L{gateway.cluster.seats}) keeps them
in Redis, and the session code does not import the cluster (whose client
library installs a reactor when it is imported).

A session whose backend needs a shared seat (L{SeatStore.applies}) claims
it once the backend is chosen, before connecting (L{SeatStore.claim}, which
answers within the store's timeout and never fails); the answer is one of
L{SeatAnswer}.  A taken seat (L{Seat}) is given back once, when the
session's backend connection ends or its attempt fails (L{Seat.release}).

Between claims, each backend's C{elsewhere} (its sessions through the other
nodes, as last learned) makes L{gateway.pool.backends.Pool.has_room} see the
whole cluster, so that a node rarely chooses a backend the others fill.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum
from typing import TYPE_CHECKING, Protocol

from twisted.internet.defer import Deferred

if TYPE_CHECKING:
    from gateway.pool.backend import Backend

__all__ = ["Seat", "SeatAnswer", "SeatStore"]


class SeatAnswer(Enum):
    """
    A claim's answer.
    """

    TAKEN = "taken"
    """The session has its seat."""
    FULL = "full"
    """The backend's C{max-sessions} is reached across the cluster."""
    CAPPED = "capped"
    """The cluster's cap on game sessions (C{--cluster-max-sessions}) is reached."""


class Seat:
    """
    A seat a session holds, given back once (L{release}).

    @ivar backend: the backend's name.
    @ivar counted: whether the store's shared count has it from its claim.
    @ivar epoch: the shared count's epoch it was taken in.
    """

    __slots__ = ("_give_back", "backend", "counted", "epoch")

    def __init__(
        self, backend: str, counted: bool, epoch: int, give_back: Callable[[Seat], None]
    ) -> None:
        self.backend = backend
        self.counted = counted
        self.epoch = epoch
        self._give_back: Callable[[Seat], None] | None = give_back

    def release(self) -> None:
        """
        The session is over (or never got its backend): the seat is free.
        Only the first call counts.
        """
        give_back, self._give_back = self._give_back, None
        if give_back is not None:
            give_back(self)


class SeatStore(Protocol):
    """
    Where the sessions of every node of a cluster take their seats.
    """

    def applies(self, backend: Backend) -> bool:
        """
        Whether a session on C{backend} needs a shared seat (the backend
        has a C{max-sessions}, or the cluster a cap on sessions).
        """
        ...

    def claim(self, backend: Backend) -> Deferred[tuple[SeatAnswer, Seat | None]]:
        """
        Take a seat on C{backend} for a session (already counted in
        C{backend.active}).  Never fails: without the other nodes the store
        decides alone.

        @return: the answer, and the seat when L{SeatAnswer.TAKEN}.
        """
        ...
