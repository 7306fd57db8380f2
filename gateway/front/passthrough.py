"""
A WebSocket upgrade on a proxied route: passed through to a backend of the
route's pool, which speaks WebSocket itself (L{pass_through}).

The gateway does not answer the upgrade: it takes the connection from its
HTTP channel (as the bridge does, L{gateway.front.websocket}), and starts a
game session (kind C{websocket}) to a backend of the pool whose first bytes
are the request as the proxy rewrote it (its target, the forwarding fields,
and C{Connection: Upgrade} and C{Upgrade} put back).  From then on both
ways are a byte stream: the backend's C{101} and its frames reach the
client as they are, the client's frames the backend, with everything a game
session has (flow control, idle and fin timeouts, drain, splice, the
children list).  A backend that refuses the upgrade answers the client
itself; when no backend can be reached the client gets a C{502}.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, Protocol

from twisted.internet.interfaces import IDelayedCall
from twisted.web.server import NOT_DONE_YET, Request

from gateway.connection import describe_peer
from gateway.front.limits import address_key
from gateway.interfaces import IBackendChooser
from gateway.session.relay import GameSession

__all__ = ["BAD_GATEWAY", "Door", "pass_through"]


class Door(Protocol):
    """
    What a pass-through needs of the front door
    (L{gateway.front.door.FrontDoor}, which imports this module).
    """

    transport: Any
    factory: Any

    def forward_to(self, forward: Callable[[bytes], None]) -> None: ...

    def leave_http(self, request: Request) -> bytes: ...

    def upgrading(self, handler: Any) -> None: ...

    def take_session(self, session: Any) -> None: ...


BAD_GATEWAY = "HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\nconnection: close\r\n"
"""What a client whose upgrade no backend took gets (the session's busy line,
so it ends the response's head with the line end the session adds)."""


def pass_through(door: Door, request: Request, pool: IBackendChooser, head: bytes) -> bytes | int:
    """
    Pass an upgrade request through to a backend of C{pool}, C{head} (the
    rewritten request line and fields, with the blank line) first.
    """
    _PassThrough(door, request, pool, head).begin()
    return NOT_DONE_YET


class _PassThrough:
    """
    Takes an upgraded connection from its HTTP channel to its session.
    """

    def __init__(self, door: Door, request: Request, pool: IBackendChooser, head: bytes) -> None:
        self.door = door
        self._request = request
        self._pool = pool
        self._head = head
        self._early: list[bytes] = []
        self._lost = False
        self._call: IDelayedCall | None = None

    def begin(self) -> None:
        """
        Take the connection from the channel once the channel's current call
        is over (it may still be parsing bytes that came with the request).
        """
        door = self.door
        door.upgrading(self)
        door.forward_to(self._early.append)
        self._call = door.factory.clock.callLater(0, self._take_over)

    def _take_over(self) -> None:
        self._call = None
        door = self.door
        transport = door.transport
        if self._lost or transport is None:
            return  # gone before the channel let go
        leftover = door.leave_http(self._request)
        factory = door.factory
        settings = dataclasses.replace(factory.settings, busy_message=BAD_GATEWAY)
        key = None
        if self._pool.needs_key:
            host = getattr(transport.getPeer(), "host", None)
            key = address_key(host).encode() if isinstance(host, str) else b""
        session = GameSession(
            transport,
            self._pool,
            factory.clock,
            settings,
            peer=describe_peer(transport.getPeer()),
            key=key,
            refusals=factory.refusals,
            kind="websocket",
            wait=False,
        )
        door.take_session(session)
        door.forward_to(session.client_data)
        early, self._early = self._early, []
        session.start(b"".join([self._head, leftover, *early]))
        transport.resumeProducing()

    def connection_lost(self) -> None:
        """
        The client's connection is gone (before the session took it, this
        stops the take-over; after, the session has heard it too).
        """
        self._lost = True
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
