"""
What the waiting room (L{gateway.pool.room}) deals with: its settings
(L{RoomSettings}, with the C{[[queue-class]]}es as L{QueueClass}), a
player's place among the classes (L{Standing}), what it asks of a waiting
session (L{Waiter}), a waiter's entry (L{Ticket}), and what it uses of its
pool (L{RoomPool}).  Plain types, apart from the room's logic.
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING
from typing import Protocol as Structural

from gateway.pool.backend import Backend

if TYPE_CHECKING:
    from gateway.config import GatewayConfig
    from gateway.interfaces import IBalancer

__all__ = ["DEFAULT", "QueueClass", "RoomPool", "RoomSettings", "Standing", "Ticket", "Waiter"]


class RoomPool(Structural):
    """
    What the room uses of its pool (L{gateway.pool.backends.Pool}, which
    holds the room: a structural type, so that neither module imports the
    other).
    """

    @property
    def backends(self) -> tuple[Backend, ...]: ...
    @property
    def needs_key(self) -> bool: ...
    @property
    def balancer(self) -> IBalancer: ...
    def has_room(self, backend: Backend, blocked: int = 0) -> bool: ...
    def choose(
        self,
        exclude: Collection[Backend] = (),
        key: bytes | None = None,
        blocked: int = 0,
        patient: bool = False,
    ) -> Backend | None: ...


class QueueClass(Structural):
    """
    A C{[[queue-class]]}: which players it takes and their place.
    """

    @property
    def name(self) -> str: ...
    @property
    def priority(self) -> int: ...
    @property
    def reserved(self) -> int: ...
    @property
    def first_line(self) -> re.Pattern[bytes] | None: ...
    def matches(self, host: str | None, first_line: bytes) -> bool: ...


@dataclass(frozen=True, slots=True)
class RoomSettings:
    """
    The waiting room's settings (C{--queue-*}, C{[[queue-class]]}).

    @ivar size: players who may wait at once (0: no waiting room).
    @ivar timeout: the longest wait, in seconds.
    @ivar update: the least time between two messages to one waiter.
    @ivar message: the template a waiter is told (C{{position}},
        C{{length}}, C{{eta}}), or L{None} for a silent wait.
    @ivar classes: the queue classes, highest priority first.
    """

    size: int = 0
    timeout: float = 300.0
    update: float = 5.0
    message: str | None = None
    classes: tuple[QueueClass, ...] = ()

    @classmethod
    def from_config(cls, config: GatewayConfig) -> RoomSettings:
        """
        The waiting room's settings of a validated configuration (every
        pool's room has the same).
        """
        return cls(
            size=config.queue_size,
            timeout=config.queue_timeout,
            update=config.queue_update,
            message=config.queue_message,
            classes=config.queue_classes,
        )


@dataclass(frozen=True, slots=True)
class Standing:
    """
    A player's place among the classes.

    @ivar name: its class's name (C{default}: no class).
    @ivar priority: higher waits ahead.
    @ivar blocked: slots on every backend it may not take (reserved for
        classes of higher priority).
    """

    name: str
    priority: int
    blocked: int


DEFAULT = Standing("default", 0, 0)
"""The standing of every player when there are no classes."""


class Waiter(Structural):
    """
    What the room asks of a waiting session.
    """

    @property
    def key(self) -> bytes | None:
        """
        The session's affinity key (for a pool that balances by key).
        """
        ...

    def admit(self, backend: Backend) -> None:
        """
        A slot on C{backend} is the waiter's: connect to it now, counting
        the session on it before returning (C{Backend.active}).
        """

    def tell(self, text: str) -> None:
        """
        Send the player a line about their place.
        """

    def expire(self) -> None:
        """
        The wait is over (the queue timeout): refuse the player.
        """

    def dismiss(self, detail: str) -> None:
        """
        No seat can come (its pool left the configuration): refuse the
        player, saying why.
        """


class Ticket:
    """
    A waiter's entry in the room (and its place if it comes back after a
    failed attempt).
    """

    __slots__ = ("deadline", "entered", "own", "seq", "standing", "told", "told_at", "waiter")

    def __init__(
        self, waiter: Waiter, standing: Standing, seq: int, entered: float, deadline: float
    ) -> None:
        self.waiter = waiter
        self.standing = standing
        self.seq = seq
        self.entered = entered
        self.deadline = deadline
        self.own: Backend | None = None
        self.told = 0
        self.told_at = -math.inf
