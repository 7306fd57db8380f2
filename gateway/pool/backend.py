"""
One game backend as the pool knows it: L{Backend} (plain data: its name, its
endpoint, its weight, its state and counters) and L{BackendState}, the closed
vocabulary of its states.  A module below the pool, the balancing policies
and the interfaces, so that each can name a backend without importing the
others.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from twisted.internet.interfaces import IStreamClientEndpoint

from gateway.histogram import CONNECT_TIME_BOUNDS, Histogram

__all__ = ["GAME_POOL", "Backend", "BackendState"]

GAME_POOL = "game"
"""The pool of raw TCP game sessions (and of C{--websocket} bridges): the
command line's backends, and the file's without a C{pool} key."""


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
    @ivar weight: its share of new sessions relative to the others (>= 1).
    @ivar state: whether it takes new sessions.
    @ivar active: sessions on it now: a game session from the moment the
        backend is chosen for it (so that a burst of arrivals sees the
        burst), a proxied HTTP request while in flight.
    @ivar total: sessions ever connected to it.
    @ivar failures: connection attempts to it that failed or timed out.
    @ivar consecutive_failures: failed attempts since its last success.
    @ivar reason: why it is in its state (a health check's or an operator's
        words), for logs and the admin endpoint.
    @ivar proxy_protocol: the PROXY header sessions send it (C{off}, C{v1},
        C{v2}), or L{None} for its pool's C{proxy-protocol}.
    @ivar pool: the name of the pool it is in.
    @ivar max_sessions: the most sessions it takes at once (0: no limit);
        C{active} counts a session from the moment it is chosen, so a burst
        of arrivals cannot overshoot it.
    @ivar elsewhere: in a cluster, its sessions through the other nodes as
        this node last learned them (L{gateway.pool.seats}), counted
        against C{max_sessions} with C{active}; without Redis, what this
        node leaves to the others of its C{max_sessions}.
    @ivar check_failures: health checks of it that failed.
    @ivar changed: when its state last changed, in the clock's seconds (0:
        not since the gateway started).
    @ivar connect_time: how long its connections took to become usable
        (game and WebSocket sessions; with TLS, the handshake included).
    @ivar address: the address family and address a bare socket connects
        to for the same connection as C{endpoint}
        (L{gateway.session.leanlink.bare_address}), for the TCP fast path;
        L{None} when only the endpoint can make it (TLS, a host name).
    """

    name: str
    description: str
    endpoint: IStreamClientEndpoint
    weight: int = 1
    state: BackendState = BackendState.UP
    active: int = 0
    total: int = 0
    failures: int = 0
    consecutive_failures: int = 0
    reason: str = field(default="")
    proxy_protocol: str | None = None
    pool: str = GAME_POOL
    max_sessions: int = 0
    elsewhere: int = 0
    check_failures: int = 0
    changed: float = 0.0
    connect_time: Histogram = field(default_factory=lambda: Histogram(CONNECT_TIME_BOUNDS))
    address: tuple[int, Any] | None = None

    def reconfigure(
        self,
        *,
        description: str,
        endpoint: IStreamClientEndpoint,
        weight: int,
        max_sessions: int,
        proxy_protocol: str | None,
        address: tuple[int, Any] | None,
    ) -> None:
        """
        What a reload changes of a backend the configuration keeps (its
        state and counters stay).
        """
        self.description, self.endpoint = description, endpoint
        self.weight = weight
        self.max_sessions = max_sessions
        self.proxy_protocol = proxy_protocol
        self.address = address
