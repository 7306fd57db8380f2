"""
Every core in use (C{--workers N}): the life of a worker process as the
acceptor sees it (L{WorkerState}, the changes L{TRANSITIONS} allows) and
how long a dead one waits before it is started again (L{RestartPolicy}).
Pure: no process, no clock of its own (the time is passed in).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

__all__ = [
    "RESTART_DELAY",
    "RESTART_DELAY_MAX",
    "TAKING",
    "TRANSITIONS",
    "YOUNG",
    "RestartPolicy",
    "WorkerState",
]

RESTART_DELAY = 0.2
"""Seconds before a dead worker is restarted (doubled while it keeps dying young)."""

RESTART_DELAY_MAX = 10.0
"""The longest wait before a restart."""

YOUNG = 10.0
"""A worker that dies within this many seconds of its start died young."""


class WorkerState(Enum):
    """
    Where a worker is in its life (the values are what C{/status.json} shows).

    @cvar STOPPED: no process: before its first start, once it exited while
        the gateway stops, or when a drain cancelled its restart.
    @cvar STARTING: its process was started (from C{stopped} or
        C{restarting}); it has not said it is ready yet.  It is sent the
        connections of a drain, not new ones.
    @cvar RUNNING: it said it is ready (from C{starting}): it gets new connections.
    @cvar DRAINING: it drains on its own (it said so after a SIGTERM sent to
        it), or the acceptor told it to leave (its control channel was lost):
        it takes nothing more.
    @cvar DYING: its end of the handoff channel is closed (from C{starting}
        or C{running}): the end of its process follows; it takes nothing more.
    @cvar RESTARTING: its process ended while the gateway runs (from any
        state with a process), or a new start failed: it is started again
        after a delay.
    """

    STOPPED = "stopped"
    STARTING = "starting"
    RUNNING = "running"
    DRAINING = "draining"
    DYING = "dying"
    RESTARTING = "restarting"


_ENDED = frozenset({WorkerState.STOPPED, WorkerState.RESTARTING})

TRANSITIONS: dict[WorkerState, frozenset[WorkerState]] = {
    WorkerState.STOPPED: frozenset({WorkerState.STARTING}),
    WorkerState.STARTING: frozenset(
        {WorkerState.RUNNING, WorkerState.DRAINING, WorkerState.DYING, *_ENDED}
    ),
    WorkerState.RUNNING: frozenset({WorkerState.DRAINING, WorkerState.DYING, *_ENDED}),
    WorkerState.DRAINING: _ENDED,
    WorkerState.DYING: frozenset({WorkerState.DRAINING, *_ENDED}),
    WorkerState.RESTARTING: frozenset({WorkerState.STARTING, *_ENDED}),
}
"""The changes of state a worker goes through (staying in a state is no change)."""

TAKING = frozenset({WorkerState.STARTING, WorkerState.RUNNING})
"""The states in which a worker is passed connections."""


@dataclass
class RestartPolicy:
    """
    How long a dead worker waits before it is started again: L{RESTART_DELAY},
    doubled (up to L{RESTART_DELAY_MAX}) while it keeps dying within
    L{YOUNG} seconds of its start or failing to start.

    @ivar delay: the last delay decided.
    """

    delay: float = RESTART_DELAY

    def after_death(self, started_at: float, now: float) -> float:
        """
        The delay before restarting a worker that died at C{now}.
        """
        young = now - started_at < YOUNG
        self.delay = min(self.delay * 2, RESTART_DELAY_MAX) if young else RESTART_DELAY
        return self.delay

    def after_failed_start(self) -> float:
        """
        The delay before trying again a start that failed.
        """
        self.delay = min(self.delay * 2, RESTART_DELAY_MAX)
        return self.delay

    def ready(self, restarted: bool) -> None:
        """
        The worker is ready: a worker never restarted starts over from the
        first delay.
        """
        if not restarted:
            self.delay = RESTART_DELAY
