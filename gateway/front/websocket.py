"""
The WebSocket bridge's front: an upgrade request on a C{--websocket} path
becomes a game session (kind C{websocket}) of the game pool.

The HTTP side (L{gateway.http.site}) routes a C{--websocket} path to the
front door's C{websocket_upgrade}, which calls L{answer_upgrade}:

  1. the request is checked: C{GET}, HTTP/1.1, an upgrade to C{websocket}
     (a plain request gets C{426 Upgrade Required}), a handshake wsproto
     accepts with a well-formed C{Sec-WebSocket-Key} (else 400, or 426 for
     another protocol version), and an C{Origin} that is the request's own
     host or one of C{--websocket-origin} (else 403).  A refused handshake
     is a counted refusal (C{websocket-handshake}, C{websocket-origin}).
     A request without C{Origin} is not a browser's, and is accepted;
  2. the subprotocol is chosen: C{binary} if offered, else C{text} if
     offered (then the backend's bytes go out as text messages), else none;
  3. the C{101} response is written, and L{Upgrade} takes the connection
     over from the HTTP channel (with any bytes the channel had read past the
     request: a client may send its first frame at once);
  4. the session's affinity key, when the balancer uses one, is the C{key}
     query parameter, else the first group of C{--session-key} in the first
     message (waited for at most the sniff timeout), else the client's
     address;
  5. a L{GameSession} starts with a L{gateway.session.websocket.MessageStream}
     as its client: from there on the session is the same as a TCP one
     (balancing, failover, PROXY header, timeouts, drain, hand-over, the
     registry, the access log).

A refusal of the connection as a whole (the total or per-address cap, the
rate limit) happens before any of this, at accept, like every connection's:
the upgrade request then gets the C{503} with C{Retry-After} every refused
HTTP request gets.
"""

from __future__ import annotations

import base64
import binascii
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from twisted.internet.interfaces import IDelayedCall
from twisted.web import http
from twisted.web.server import NOT_DONE_YET, Request
from wsproto import ConnectionType
from wsproto.connection import Connection
from wsproto.events import AcceptConnection, RejectConnection
from wsproto.handshake import H11Handshake
from wsproto.utilities import RemoteProtocolError

from gateway.connection import describe_peer
from gateway.front.limits import Refusal, address_key
from gateway.pool.backend import GAME_POOL
from gateway.pool.backends import Pool
from gateway.session.relay import GameSession
from gateway.session.websocket import MessageReader, MessageStream

if TYPE_CHECKING:
    from gateway.front.door import FrontDoor

__all__ = ["KEY_MESSAGE_LIMIT", "SUBPROTOCOLS", "Upgrade", "answer_upgrade", "origin_allowed"]

SUBPROTOCOLS = ("binary", "text")
"""The subprotocols the bridge speaks, in the order it prefers them."""

_PHRASES = {426: b"Upgrade Required"}
"""Reason phrases Twisted does not know."""

KEY_MESSAGE_LIMIT = 4096
"""The most bytes of the first message searched for the session key."""


def _tokens(request: Request, name: bytes) -> list[str]:
    """
    The comma-separated tokens of every C{name} header, lower case.
    """
    values = request.requestHeaders.getRawHeaders(name) or []
    return [
        token.strip().lower()
        for value in values
        for token in value.decode("latin-1").split(",")
        if token.strip()
    ]


def origin_allowed(origin: str | None, host: str | None, allowed: tuple[str, ...]) -> bool:
    """
    Whether an upgrade with this C{Origin} may open a session.

    @param origin: the C{Origin} header, or L{None} (not a browser: allowed).
    @param host: the C{Host} header.
    @param allowed: C{--websocket-origin}: origins (lower case) or C{*}.
    """
    if origin is None or "*" in allowed:
        return True
    origin = origin.strip().lower()
    if origin in allowed:
        return True
    _scheme, sep, rest = origin.partition("://")
    return bool(sep) and host is not None and rest == host.strip().lower()


def _refuse(
    door: FrontDoor,
    request: Request,
    status: int,
    text: str,
    refusal: Refusal | None,
    headers: tuple[tuple[bytes, bytes], ...] = (),
) -> bytes:
    """
    Answer an upgrade that is not taken: C{status} with C{text}, counted as
    C{refusal} if given.
    """
    request.setResponseCode(status, _PHRASES.get(status))
    request.setHeader(b"content-type", b"text/plain; charset=utf-8")
    for name, value in headers:
        request.setHeader(name, value)
    refusals = door.factory.refusals
    if refusal is not None and refusals is not None:
        refusals.refused(refusal, describe_peer(request.getClientAddress()), text)
    return (text + "\n").encode()


def _handshake(request: Request) -> H11Handshake | tuple[int, str, tuple[Any, ...]]:
    """
    Check the handshake with wsproto: the handshake, or why it is refused
    (status, text, headers).
    """
    handshake = H11Handshake(ConnectionType.SERVER)
    headers = [
        (name.lower(), value)
        for name, values in request.requestHeaders.getAllRawHeaders()
        for value in values
    ]
    try:
        handshake.initiate_upgrade_connection(headers, request.uri)
    except RemoteProtocolError as error:
        hint = error.event_hint
        status = hint.status_code if isinstance(hint, RejectConnection) else 400
        extra = tuple(hint.headers) if isinstance(hint, RejectConnection) else ()
        return status, f"bad WebSocket handshake: {error}", extra
    keys = request.requestHeaders.getRawHeaders(b"sec-websocket-key") or []
    if len(keys) > 1:
        # RFC 6455 11.3.1: it must not appear more than once (wsproto would
        # answer the last one).
        return 400, "bad WebSocket handshake: Sec-WebSocket-Key given more than once", ()
    key = keys[0] if keys else b""
    try:
        if len(base64.b64decode(key, validate=True)) != 16:
            raise ValueError(key)
    except (binascii.Error, ValueError):
        return 400, "bad WebSocket handshake: Sec-WebSocket-Key is not 16 bytes in base64", ()
    return handshake


def answer_upgrade(door: FrontDoor, request: Request, pool: str = GAME_POOL) -> bytes | int:
    """
    Answer a request on a bridge's path: refuse it, or answer C{101} and
    make the connection a WebSocket session to C{pool}.
    """
    if request.method != b"GET":
        return _refuse(door, request, http.NOT_ALLOWED, "use GET", None, ((b"allow", b"GET"),))
    if "websocket" not in _tokens(request, b"upgrade"):
        return _refuse(
            door,
            request,
            426,
            "this path takes WebSocket connections only",
            None,
            ((b"upgrade", b"websocket"), (b"connection", b"Upgrade")),
        )
    if request.clientproto != b"HTTP/1.1":
        return _refuse(
            door, request, 400, "a WebSocket upgrade needs HTTP/1.1", Refusal.WEBSOCKET_HANDSHAKE
        )
    handshake = _handshake(request)
    if not isinstance(handshake, H11Handshake):
        status, text, headers = handshake
        return _refuse(door, request, status, text, Refusal.WEBSOCKET_HANDSHAKE, headers)
    settings = door.factory.settings
    origin = request.getHeader(b"origin")
    host = request.getHeader(b"host")
    if not origin_allowed(
        origin.decode("latin-1") if origin is not None else None,
        host.decode("latin-1") if host is not None else None,
        settings.websocket_origins,
    ):
        return _refuse(
            door,
            request,
            http.FORBIDDEN,
            f"origin {origin.decode('latin-1', 'replace')!r} may not open sessions here"
            if origin is not None
            else "no origin",
            Refusal.WEBSOCKET_ORIGIN,
        )
    offered = _tokens(request, b"sec-websocket-protocol")
    chosen = next((name for name in SUBPROTOCOLS if name in offered), None)
    response = handshake.send(AcceptConnection(subprotocol=chosen))
    connection = handshake.connection
    assert connection is not None
    query = parse_qs(urlsplit(request.uri).query)
    key_values = query.get(b"key")
    Upgrade(door, request, connection, text=chosen == "text", pool=pool).begin(
        response, key_values[0] if key_values else None
    )
    return NOT_DONE_YET


class Upgrade:
    """
    Takes an upgraded connection from its HTTP channel to its game session.

    @ivar reader: reads the browser's frames.
    @ivar stream: what the session writes to.
    """

    def __init__(
        self,
        door: FrontDoor,
        request: Request,
        connection: Connection,
        *,
        text: bool,
        pool: str = GAME_POOL,
    ) -> None:
        self.door = door
        self.pool = pool
        self._request = request
        transport = door.transport
        settings = door.factory.settings
        self.stream = MessageStream(transport, connection, text=text)
        self.reader = MessageReader(
            self.stream,
            connection,
            door.factory.clock,
            max_message=settings.websocket_max_message,
            ping_interval=settings.websocket_ping,
            sink=self._first_message,
        )
        self._early: list[bytes] = []
        self._first = b""
        self._key_call: IDelayedCall | None = None
        self._waiting_key = False
        self._lost = False

    def begin(self, response: bytes, key: bytes | None) -> None:
        """
        Send the C{101}; take the connection from the channel once the
        channel's current call is over (it may still be parsing the bytes
        that came with the request).
        """
        door = self.door
        assert door.transport is not None
        door.transport.write(response)
        door.upgrading(self)
        door.forward_to(self._early.append)
        door.factory.clock.callLater(0, self._take_over, key)

    def _take_over(self, key: bytes | None) -> None:
        door = self.door
        if self._lost or door.transport is None:
            return  # gone before the channel let go
        leftover = door.leave_http(self._request)
        door.forward_to(self.reader.dataReceived)
        target = door.factory.target(self.pool)
        chooser, settings = target if target is not None else (None, door.factory.settings)
        # A waiting-room class may match the first message, as a key may.
        room = getattr(chooser, "room", None)
        wants_line = room is not None and room.wants_first_line
        if chooser is None or not (chooser.needs_key or wants_line):
            self._launch(None)
        elif key is not None:
            self._launch(key)
        elif settings.session_key is not None or wants_line:
            self._waiting_key = True
            door.factory.pending.add(door)
            self._key_call = door.factory.clock.callLater(settings.sniff_timeout, self._key_found)
        else:
            self._launch(self._address_key())
        door.transport.resumeProducing()  # type: ignore[attr-defined]
        early, self._early = self._early, []
        for data in [leftover, *early]:
            if data and door.transport is not None:
                self.reader.dataReceived(data)

    def _first_message(self, chunk: bytes, finished: bool) -> None:
        """
        Payload before the session exists (while its key is awaited).
        """
        self._first += chunk
        if self._waiting_key and (finished or len(self._first) >= KEY_MESSAGE_LIMIT):
            self._key_found(complete=finished)

    def _key_found(self, complete: bool = False) -> None:
        if not self._waiting_key:
            return
        self._waiting_key = False
        self.stop_timer()
        door = self.door
        door.factory.pending.discard(door)
        target = door.factory.target(self.pool)
        if target is None or not target[0].needs_key:
            self._launch(None)  # the first message was awaited for the class only
            return
        pattern = target[1].session_key
        match = pattern.search(self._first[:KEY_MESSAGE_LIMIT]) if pattern and complete else None
        if match is not None and match.group(1) is not None:
            self._launch(match.group(1))
            return
        counters = door.factory.counters
        if counters is not None and pattern is not None:
            counters.key_fallbacks += 1
        self._launch(self._address_key())

    def _address_key(self) -> bytes:
        transport = self.door.transport
        host = getattr(transport.getPeer(), "host", None) if transport is not None else None
        return address_key(host).encode() if isinstance(host, str) else b""

    def _launch(self, key: bytes | None) -> None:
        door = self.door
        factory = door.factory
        assert door.transport is not None
        # A pool a reload removed meanwhile: a session with no backend to
        # choose (refused, 1013, as when none is up).
        chooser, settings = factory.target(self.pool) or (Pool(name=self.pool), factory.settings)
        session = GameSession(
            self.stream,  # type: ignore[arg-type]
            chooser,
            factory.clock,
            settings,
            peer=describe_peer(door.transport.getPeer()),
            key=key,
            refusals=factory.refusals,
            kind="websocket",
        )
        door.take_session(session)
        first, self._first = self._first, b""
        self.reader.attach(session)
        session.start(first)
        if self.reader.finished and not session.client_gone:
            session.client_eof()

    def stop_timer(self) -> None:
        """
        Stop waiting for the session key.
        """
        if self._key_call is not None and self._key_call.active():
            self._key_call.cancel()
        self._key_call = None

    def connection_lost(self) -> None:
        """
        The browser's connection is gone.
        """
        self._lost = True
        self._waiting_key = False
        self.stop_timer()
        self.door.factory.pending.discard(self.door)
        self.reader.connection_lost()
