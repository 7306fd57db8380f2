"""
The settings of game sessions, as one value.

A L{SessionSettings} is built from the gateway's configuration by
L{SessionSettings.from_config}, the one place that knows which settings of
the configuration concern the front door and the game sessions.  The front
door's factory holds one and hands it to each session it starts; a reload
builds a new one and gives it to the factory in one call
(L{gateway.front.door.GatewayFactory.reconfigure}), so a session sees either
the old settings or the new ones, never a mix.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gateway.config import GatewayConfig, PoolSpec

__all__ = ["SessionSettings"]


@dataclass(frozen=True, slots=True)
class SessionSettings:
    """
    How the front door classifies connections and how game sessions reach
    and relay to their backends.

    @ivar sniff_timeout: seconds a silent client waits before being a game
        session (also the most a keyed session waits for its first line).
    @ivar connect_timeout: seconds per backend attempt (TLS handshake included).
    @ivar idle_timeout: seconds without traffic either way before a game
        session is closed; 0 for never.
    @ivar fin_timeout: seconds without traffic before a game session where one
        direction has ended is closed; 0 for never.
    @ivar retries: other backends tried after a failed connection attempt.
    @ivar proxy_version: the PROXY header sent to backends that do not say
        otherwise: C{"v1"}, C{"v2"}, or C{"off"} for none.
    @ivar busy_message: the line sent to a client no backend could take,
        before it is closed; L{None} for none.
    @ivar relay_mode: how game sessions move bytes: C{"copy"} (through
        Python), or C{"auto"}/C{"splice"} (with splice(2) when both sides are
        plain sockets; see L{gateway.session.splice}).
    @ivar session_key: with a balancer that uses keys, the pattern whose first
        group in the client's first line is the session's key; L{None} for the
        client's address.
    @ivar websocket_origins: the C{Origin}s a WebSocket upgrade may come from
        besides the request's own host (C{*}: any).
    @ivar websocket_max_message: the largest WebSocket message, in bytes.
    @ivar websocket_ping: seconds between pings to a browser (0: none).
    @ivar tcp_fast_path: whether a game session that will splice connects a
        backend that has a bare address with a bare socket
        (L{gateway.session.leanlink}).
    """

    sniff_timeout: float
    connect_timeout: float
    idle_timeout: float
    fin_timeout: float
    retries: int = 2
    proxy_version: str = "off"
    busy_message: str | None = None
    relay_mode: str = "copy"
    session_key: re.Pattern[bytes] | None = None
    websocket_origins: tuple[str, ...] = ()
    websocket_max_message: int = 1024 * 1024
    websocket_ping: float = 20.0
    tcp_fast_path: bool = False

    @classmethod
    def from_config(cls, config: GatewayConfig) -> SessionSettings:
        """
        The session settings of a validated configuration.

        @param config: the gateway's configuration (its session key, if any,
            already checked to compile).
        """
        return cls(
            sniff_timeout=config.sniff_timeout,
            connect_timeout=config.connect_timeout,
            idle_timeout=config.idle_timeout,
            fin_timeout=config.fin_timeout,
            retries=config.retries,
            proxy_version=config.proxy_protocol,
            busy_message=config.busy_message,
            relay_mode=config.relay,
            session_key=re.compile(config.session_key.encode()) if config.session_key else None,
            websocket_origins=config.websocket_origins,
            websocket_max_message=config.websocket_max_message,
            websocket_ping=config.websocket_ping,
            tcp_fast_path=config.tcp_fast_path,
        )

    def for_pool(self, pool: PoolSpec) -> SessionSettings:
        """
        These settings for sessions to C{pool}: its connect timeout,
        retries, PROXY version and session key instead of the game pool's.
        """
        return replace(
            self,
            connect_timeout=pool.connect_timeout,
            retries=pool.retries,
            proxy_version=pool.proxy_protocol,
            session_key=re.compile(pool.session_key.encode()) if pool.session_key else None,
        )
