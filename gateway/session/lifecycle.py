"""
A game session's life: the phases it goes through, the moves between them,
and why it ended.

The phases move one way: C{CONNECTING} (with C{WAITING} in the waiting
room between attempts, when no backend has a free slot), then C{RELAYING} or C{SPLICING} (a
spliced session goes back to relaying when the kernel hands the sockets
back), then C{CLOSING} while a connection is still being closed, and
C{CLOSED} once both are gone; a session may skip ahead (a client that leaves
while its session connects ends it at once).  L{can_move} says which moves
there are; L{gateway.session.relay.GameSession} makes every move through it.
"""

from __future__ import annotations

from enum import Enum
from typing import Any, overload

__all__ = ["CloseReason", "Fact", "Phase", "can_move"]


class Fact:
    """
    A boolean attribute kept as one bit of its object's C{_facts}: a
    session's eight independent facts (which directions ended, which
    connections are gone, ...) take one slot, not eight (56 bytes of every
    idle session; docs/performance.md).
    """

    __slots__ = ("_bit",)

    def __init__(self, bit: int) -> None:
        self._bit = bit

    @overload
    def __get__(self, instance: None, owner: type) -> Fact: ...

    @overload
    def __get__(self, instance: object, owner: type) -> bool: ...

    def __get__(self, instance: Any, owner: type) -> Fact | bool:
        if instance is None:
            return self
        return bool(instance._facts & self._bit)

    def __set__(self, instance: Any, value: bool) -> None:
        facts: int = instance._facts
        instance._facts = facts | self._bit if value else facts & ~self._bit


class CloseReason(Enum):
    """
    Why a game session ended: the C{reason} of its access event
    (L{gateway.ops.access.log_game_session}), and the argument of
    L{GameSession.close} (C{DRAIN_TIMEOUT}, C{SHUTDOWN}).

    C{NO_BACKEND}, C{LOCAL_RESOURCES}, C{QUEUE_FULL}, C{QUEUE_TIMEOUT} and
    C{CLUSTER_CAP} end a session refused before it reached a backend: such a session writes
    no access event, and is counted and logged as a refusal instead (the
    L{Refusal} of the same name).
    """

    CLIENT_CLOSED = "client-closed"
    BACKEND_CLOSED = "backend-closed"
    IDLE_TIMEOUT = "idle-timeout"
    FIN_TIMEOUT = "fin-timeout"
    NO_BACKEND = "no-backend"
    LOCAL_RESOURCES = "local-resources"
    CLIENT_LEFT_EARLY = "client-left-before-connect"
    DRAIN_TIMEOUT = "drain-timeout"
    SHUTDOWN = "shutdown"
    MESSAGE_TOO_BIG = "message-too-big"
    """A WebSocket message over C{--websocket-max-message} (close code 1009)."""
    PROTOCOL_ERROR = "protocol-error"
    """A browser's frames broke RFC 6455 (the close frame says how)."""
    PING_TIMEOUT = "ping-timeout"
    """A browser that did not answer a ping before the next was due."""
    QUEUE_FULL = "queue-full"
    """Refused: no backend could take it and the waiting room was full."""
    QUEUE_TIMEOUT = "queue-timeout"
    """Refused: it waited C{--queue-timeout} seconds in the waiting room."""
    CLUSTER_CAP = "cluster-cap"
    """Refused: the cluster's cap on game sessions (C{--cluster-max-sessions})."""


class Phase(Enum):
    """
    Where a game session is in its life (see the module's docstring).
    """

    CONNECTING = "connecting"
    WAITING = "waiting"
    RELAYING = "relaying"
    SPLICING = "splicing"
    CLOSING = "closing"
    CLOSED = "closed"


_NEXT: dict[Phase, frozenset[Phase]] = {
    Phase.CONNECTING: frozenset(
        {Phase.WAITING, Phase.RELAYING, Phase.SPLICING, Phase.CLOSING, Phase.CLOSED}
    ),
    Phase.WAITING: frozenset({Phase.CONNECTING, Phase.CLOSING, Phase.CLOSED}),
    Phase.SPLICING: frozenset({Phase.RELAYING, Phase.CLOSING, Phase.CLOSED}),
    Phase.RELAYING: frozenset({Phase.CLOSING, Phase.CLOSED}),
    Phase.CLOSING: frozenset({Phase.CLOSED}),
    Phase.CLOSED: frozenset(),
}
"""The phases each phase may move on to."""


def can_move(current: Phase, new: Phase) -> bool:
    """
    Whether a session in phase C{current} may move on to phase C{new}.
    """
    return new in _NEXT[current]
