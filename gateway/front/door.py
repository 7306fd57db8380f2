"""
The front door: every connection on the public port starts here.

The L{FrontDoor} reads the client's first bytes and classifies the connection
with L{classify}:

  - the bytes begin with an HTTP request line (a known method, then a space):
    the connection is handed to a C{twisted.web} channel;
  - the bytes cannot begin one: it is a game session (L{gateway.session.relay});
  - the bytes so far could still begin one (C{"GE"}): wait for more.

A client that sends nothing (or only the start of a method) for the sniff
timeout is a game session too, so that protocols where the server speaks first
work.  The decision never depends on how the client split its bytes: the
sniffer buffers until L{classify} can decide (at most L{SNIFF_LIMIT} bytes), and
the buffered bytes are replayed to the chosen side unchanged.

When the pool's balancer uses a key and a session-key pattern is set, a game
client that has sent bytes but no whole first line yet is given up to the
sniff timeout and L{KEY_LINE_LIMIT} bytes to complete it; the key is the
pattern's first group in that line, else the client's address (the fallback
is counted).

After the decision the front door stays the transport's protocol and forwards
each event to the chosen side (one method call per chunk), except for a game
session on a bare client (the TCP fast path): there its part is over, and a
slotted L{gateway.front.sessionend.SessionEnd} takes its place.  Its settings are
the factory's L{gateway.session.settings.SessionSettings}: a front door reads
them when it needs them, a game session keeps those it started with, and a
reload replaces them in one step.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from enum import Enum
from typing import TYPE_CHECKING, cast
from typing import Protocol as Structural

from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IHalfCloseableProtocol,
    IReactorTime,
    ITransport,
)
from twisted.internet.protocol import Protocol, ServerFactory
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel
from twisted.web.server import Site
from typing_extensions import override
from zope.interface import implementer

from gateway.connection import CloseHooks, describe_peer
from gateway.front.limits import address_key
from gateway.front.passthrough import pass_through
from gateway.front.proxyheader import ProxyHeaderProtocol
from gateway.front.sessionend import SessionEnd
from gateway.interfaces import IBackendChooser
from gateway.pool.backend import GAME_POOL
from gateway.session.bareclient import BareClient
from gateway.session.relay import GameSession
from gateway.session.stream import Stream

if TYPE_CHECKING:
    from twisted.web.server import Request

    from gateway.http.lean import LeanStatic
    from gateway.ops.registry import Counters, LiveSession, RefusalLog, SessionRegistry
    from gateway.session.settings import SessionSettings

__all__ = [
    "HTTP_METHODS",
    "CloseHooks",
    "SNIFF_LIMIT",
    "FrontDoor",
    "GatewayFactory",
    "Verdict",
    "classify",
    "describe_peer",
]

HTTP_METHODS = (b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"OPTIONS", b"PATCH", b"TRACE")
"""Request methods that mark a connection as HTTP (CONNECT is not served)."""

_STARTS = tuple(method + b" " for method in HTTP_METHODS)

SNIFF_LIMIT = max(len(start) for start in _STARTS)
"""The most bytes L{classify} ever needs to decide."""

_FIRST_BYTES = frozenset(start[0] for start in _STARTS)
"""The bytes an HTTP request line can start with."""

KEY_LINE_LIMIT = 4096
"""The most bytes waited for to find the session key in the first line."""


class WebSocketEnd(Structural):
    """
    What the front door knows of a connection a WebSocket upgrade took
    (L{gateway.front.websocket.Upgrade}).
    """

    def connection_lost(self) -> None:
        """
        The connection is gone.
        """


def _closing(data: bytes) -> None:
    """
    Bytes read after the response that closes the connection: dropped (as
    C{twisted.web} drops them once it closes).
    """


class Verdict(Enum):
    """
    What L{classify} concluded from a connection's first bytes.
    """

    HTTP = "http"
    GAME = "game"
    UNDECIDED = "undecided"


def classify(prefix: bytes) -> Verdict:
    """
    Classify a connection from the bytes it sent so far.

    @param prefix: every byte received so far, in order.
    @return: L{Verdict.HTTP} if C{prefix} starts with a known method and a
        space, L{Verdict.UNDECIDED} if more bytes could still make it so
        (including the empty prefix), L{Verdict.GAME} otherwise.
    """
    head = prefix[:SNIFF_LIMIT]
    if head and head[0] not in _FIRST_BYTES:
        return Verdict.GAME  # most game protocols: one test, not sixteen
    for start in _STARTS:
        if head.startswith(start):
            return Verdict.HTTP
        if start.startswith(head):
            return Verdict.UNDECIDED
    return Verdict.GAME


def _behind_proxy(transport: object) -> bool:
    """
    Whether a connection came through a C{haproxy:} front (its transport,
    or the transport under its TLS, reads the PROXY header): then the
    forwarding fields of its requests came from a trusted hop.
    """
    for _ in range(3):
        if isinstance(transport, ProxyHeaderProtocol):
            return True
        transport = getattr(transport, "transport", None)
    return False


class GatewayFactory(ServerFactory):
    """
    Builds a L{FrontDoor} for each accepted connection.

    Its settings change in one step, through L{reconfigure}: a connection
    reads them when it needs them, so one classified or started after a
    reload uses the new ones, and a game session keeps the settings it was
    started with.

    @ivar site: the public HTTP site.
    @ivar chooser: picks backends for game sessions.
    @ivar clock: for the sniff, connect and idle timeouts.
    @ivar settings: the front door's and the game sessions' settings.
    @ivar counters: where key fallbacks are counted, if anywhere.
    @ivar registry: where live sessions are listed, if anywhere.
    @ivar refusals: where game sessions that no backend could take are
        counted and logged (sampled), if anywhere.
    @ivar pending: connections not classified yet (sniffing, or waiting for
        the session key's line): the drain waits for them too.
    @ivar upgrade: answers a request on a C{--websocket} path, given the
        front door and the request (L{gateway.front.websocket.answer_upgrade}).
    """

    noisy = False

    def __init__(
        self,
        *,
        site: Site,
        chooser: IBackendChooser,
        clock: IReactorTime,
        settings: SessionSettings,
        counters: Counters | None = None,
        registry: SessionRegistry | None = None,
        refusals: RefusalLog | None = None,
        upgrade: Callable[[FrontDoor, Request, str], bytes | int] | None = None,
        pools: Callable[[str], IBackendChooser | None] | None = None,
        pool_settings: Mapping[str, SessionSettings] | None = None,
    ) -> None:
        """
        @param chooser: the game pool.
        @param pools: finds a pool by name, for bridges to named pools (by
            default there is only the game pool, C{chooser}).
        @param pool_settings: the settings of sessions to each named pool
            (by default C{settings}).
        """
        self.site = site
        self.upgrade = upgrade
        self.pending: set[FrontDoor] = set()
        self.refusals = refusals
        self.registry = registry
        self.counters = counters
        self.chooser = chooser
        self.clock = clock
        self._settings = settings
        self._pools = pools
        self._pool_settings = dict(pool_settings or {})

    @property
    def settings(self) -> SessionSettings:
        """
        The settings connections use from now on.
        """
        return self._settings

    def reconfigure(
        self,
        settings: SessionSettings,
        pool_settings: Mapping[str, SessionSettings] | None = None,
    ) -> None:
        """
        Use C{settings} (and C{pool_settings} for sessions to named pools)
        from now on (a reload): for connections not yet classified, and
        game sessions not yet started.
        """
        self._settings = settings
        if pool_settings is not None:
            self._pool_settings = dict(pool_settings)

    def target(self, pool: str) -> tuple[IBackendChooser, SessionSettings] | None:
        """
        The pool called C{pool} and the settings of a session to it; L{None}
        if no such pool exists (any more).
        """
        if pool == GAME_POOL:
            return self.chooser, self._settings
        chooser = self._pools(pool) if self._pools is not None else None
        if chooser is None:
            return None
        return chooser, self._pool_settings.get(pool, self._settings)

    @override
    def buildProtocol(self, addr: IAddress | None) -> FrontDoor:
        return FrontDoor(self)


@implementer(IHalfCloseableProtocol)
class FrontDoor(CloseHooks, Protocol):
    """
    Sniffs one public connection, then forwards it to HTTP or a game session.
    """

    _log = Logger()

    def __init__(self, factory: GatewayFactory) -> None:
        CloseHooks.__init__(self)
        self.factory = factory
        self._sniffed = b""
        self._sniff_over = False
        self._sniff_call: IDelayedCall | None = None
        self._forward: Callable[[bytes], None] | None = None
        self.http: HTTPChannel | None = None
        self.session: GameSession | None = None
        self.websocket: WebSocketEnd | None = None
        self._key_wait = b""
        self._key_call: IDelayedCall | None = None
        self.registry_id: int | None = None
        self.assigned_id: int | None = None
        self.kind = "sniffing"
        self.peer = ""
        self.started = 0.0
        self._http_in = 0
        self._http_out = 0
        self._lean: LeanStatic | None = None

    def replace_transport(self, transport: ITransport) -> None:
        """
        Use C{transport} from now on: the Twisted transport a bare client
        built on its socket (L{gateway.session.bareclient.BareClient.full}),
        for this connection and the game session relaying it.
        """
        old, self.transport = self.transport, transport
        session = self.session
        if session is not None and session.client is cast(object, old):
            session.client = cast(Stream, transport)

    def number_as(self, number: int) -> None:
        """
        List this connection in the registry under C{number} (the number an
        acceptor gave it), not one of the registry's own.
        """
        self.assigned_id = number

    @override
    def connectionMade(self) -> None:
        self.factory.pending.add(self)
        if isinstance(self.transport, BareClient):
            # What the client sent already is classified now: the sniff
            # timer is armed only if that did not decide (or end) it.
            self.transport.read_first()
            if self._sniff_over:
                return
        self._sniff_call = self.factory.clock.callLater(
            self.factory.settings.sniff_timeout, self._sniff_timed_out
        )

    @override
    def dataReceived(self, data: bytes) -> None:
        forward = self._forward
        if forward is not None:
            forward(data)
            return
        session = self.session
        if session is not None:
            # A game session (others forward): no bound method kept per
            # session for it (docs/performance.md).
            session.client_data(data)
            return
        self._sniffed += data
        verdict = classify(self._sniffed)
        if verdict is Verdict.HTTP:
            self._start_http()
        elif verdict is Verdict.GAME:
            self._start_game()

    def _sniff_timed_out(self) -> None:
        self._sniff_call = None
        self._start_game()

    def _stop_sniffing(self) -> bytes:
        self._sniff_over = True
        if self._sniff_call is not None and self._sniff_call.active():
            self._sniff_call.cancel()
        self._sniff_call = None
        sniffed, self._sniffed = self._sniffed, b""
        return sniffed

    def _start_http(self) -> None:
        sniffed = self._stop_sniffing()
        assert self.transport is not None
        self.kind = "http"
        self.peer = describe_peer(self.transport.getPeer())
        self.started = self.factory.clock.seconds()
        self._register(self)
        lean_static = getattr(self.factory.site, "lean_static", None)
        self._lean = lean_static() if lean_static is not None else None
        if isinstance(self.transport, BareClient):
            # One request that closes the connection, on a bare client: the
            # lean path answers it with no channel at all (gateway.http.lean).
            if self._lean is not None:
                self._http_in = len(sniffed)
                self._forward = _closing
                if self._lean.answer_alone(self, sniffed):
                    return
                self._http_in = 0
            self.transport.full()  # twisted.web's channel needs a transport
        channel = self.factory.site.buildProtocol(self.transport.getPeer())
        assert isinstance(channel, HTTPChannel)
        self.http = channel
        self._forward = self._http_data
        channel.makeConnection(self.transport)
        channel.serve_front(  # type: ignore[attr-defined]
            websocket_upgrade=self._websocket_upgrade,
            pass_through=self._pass_through,
            trusted_forwarded=_behind_proxy(self.transport),
        )
        self._http_data(sniffed)

    def _pass_through(self, request: Request, pool: IBackendChooser, head: bytes) -> bytes | int:
        """
        A WebSocket upgrade on a proxied route: the connection becomes a
        byte stream to a backend of C{pool} (L{gateway.front.passthrough}).
        """
        return pass_through(self, request, pool, head)

    def _websocket_upgrade(self, request: Request, pool: str = GAME_POOL) -> bytes | int:
        """
        A request on a bridge's path: the factory's C{upgrade} answers it
        (L{gateway.front.websocket.answer_upgrade}) with a session to
        C{pool}, or, without one, a 404.
        """
        upgrade = self.factory.upgrade
        if upgrade is None:
            request.setResponseCode(404)
            return b""
        answer: bytes | int = upgrade(self, request, pool)
        return answer

    def forward_to(self, forward: Callable[[bytes], None]) -> None:
        """
        From now on, give the connection's bytes to C{forward}.
        """
        self._forward = forward

    def leave_http(self, request: Request) -> bytes:
        """
        The connection is no longer HTTP (a WebSocket upgrade took it, after
        C{request}): the channel stops, its registry entry goes, and its kind
        is C{websocket} from now.

        @return: the bytes the channel had read past the request.
        """
        channel, self.http = self.http, None
        self.kind = "websocket"
        leftover = b""
        if channel is not None:
            leftover = channel.let_go(request)  # type: ignore[attr-defined]
        registry = self.factory.registry
        if self.registry_id is not None and registry is not None:
            registry.remove(self.registry_id)
            self.registry_id = None
        return leftover

    def _http_data(self, data: bytes) -> None:
        self._http_in += len(data)
        assert self.http is not None
        lean = self._lean
        if lean is not None:
            # The lean path answers what it can (gateway.http.lean); from
            # the first request it leaves, twisted.web reads the connection.
            rest = lean.feed(self, data)
            if rest is None:
                return
            self._lean = None
            data = rest
        self.http.dataReceived(data)

    def upgrading(self, handler: WebSocketEnd) -> None:
        """
        A WebSocket upgrade (the bridge's, or a pass-through's C{handler})
        is taking this connection: it hears of the connection's end.
        """
        self.websocket = handler

    def take_session(self, session: GameSession) -> None:
        """
        C{session} (a WebSocket one) relays this connection from now: it
        hears of the connection's end, and is listed in the registry as this
        connection's entry.
        """
        self.session = session
        self._register(session)

    def _register(self, session: LiveSession) -> None:
        self.factory.pending.discard(self)
        registry = self.factory.registry
        if registry is not None:
            self.registry_id = registry.add(session, self.assigned_id)

    # What the registry reads of an HTTP connection (a game session is its
    # own entry).

    @property
    def backend_name(self) -> str | None:
        """
        HTTP is served here: no backend.
        """
        return None

    @property
    def bytes_in(self) -> int:
        """
        Bytes received from the HTTP client.
        """
        return self._http_in

    @property
    def bytes_out(self) -> int:
        """
        Bytes of the responses' bodies sent to the HTTP client.
        """
        return self._http_out + int(getattr(self.http, "bytes_out", 0))

    def count_out(self, size: int) -> None:
        """
        A response's body of C{size} bytes was sent with no channel (the
        lean path's C{answer_alone}).
        """
        self._http_out += size

    def _start_game(self, *, client_eof: bool = False) -> None:
        sniffed = self._stop_sniffing()
        factory = self.factory
        settings = factory.settings
        room = getattr(factory.chooser, "room", None)
        wants_line = (settings.session_key is not None and factory.chooser.needs_key) or (
            room is not None and room.wants_first_line
        )
        if (
            wants_line
            and sniffed
            and not client_eof
            and b"\n" not in sniffed
            and len(sniffed) < KEY_LINE_LIMIT
        ):
            # The key (or the waiting-room class) is in the first line:
            # wait for it (at most the sniff timeout and KEY_LINE_LIMIT
            # bytes).  A silent client (server speaks first) is not kept
            # waiting: it has no first line.
            self._key_wait = sniffed
            self._forward = self._key_data
            self._key_call = factory.clock.callLater(settings.sniff_timeout, self._key_done)
            return
        self._launch(sniffed, client_eof)

    def _key_data(self, data: bytes) -> None:
        self._key_wait += data
        if b"\n" in self._key_wait or len(self._key_wait) >= KEY_LINE_LIMIT:
            self._key_done()

    def _key_done(self, client_eof: bool = False) -> None:
        if self._key_call is not None and self._key_call.active():
            self._key_call.cancel()
        self._key_call = None
        first, self._key_wait = self._key_wait, b""
        self._launch(first, client_eof)

    def _session_key(self, first: bytes) -> bytes:
        """
        The session's affinity key: the first group of --session-key in the
        first line, else the client's address (by its limits key, so an IPv6
        client keeps its affinity across the addresses of its /64).
        """
        pattern = self.factory.settings.session_key
        if pattern is not None:
            line, newline, _rest = first.partition(b"\n")
            # Only a whole first line: a cut one (timeout, 4 KiB) could give
            # a cut key and send the player to the wrong backend unnoticed.
            match = pattern.search(line) if newline else None
            if match is not None and match.group(1) is not None:
                key: bytes = match.group(1)
                return key
            if self.factory.counters is not None:
                self.factory.counters.key_fallbacks += 1
        assert self.transport is not None
        host = getattr(self.transport.getPeer(), "host", None)
        return address_key(host).encode() if isinstance(host, str) else b""

    def _launch(self, first: bytes, client_eof: bool) -> None:
        assert self.transport is not None
        factory = self.factory
        session = GameSession(
            self.transport,
            factory.chooser,
            factory.clock,
            factory.settings,
            peer=describe_peer(self.transport.getPeer()),
            key=self._session_key(first) if factory.chooser.needs_key else None,
            refusals=factory.refusals,
        )
        self.session = session
        self._forward = None  # to the session, from now (dataReceived)
        self._register(session)
        if isinstance(self.transport, BareClient):
            # The front door's part is over: a slotted SessionEnd keeps its
            # end duties for the session's life (gateway.front.sessionend).
            self.transport.protocol = SessionEnd(session, factory.registry, self.registry_id, self)
            self.registry_id = None
        session.start(first)
        if client_eof:
            session.client_eof()

    def readConnectionLost(self) -> None:
        """
        The client half-closed its sending side (or closed the connection).
        """
        if self.session is not None:
            self.session.client_eof()
        elif self.websocket is not None:
            self.transport.loseConnection()  # type: ignore[union-attr]
        elif self._key_call is not None:
            self._key_done(client_eof=True)
        elif self.http is not None:
            self._http_client_eof(self.http)
        elif self._sniffed:
            # Some bytes, then the end: not HTTP, so a game client that has
            # said all it will say and waits for the reply.
            self._start_game(client_eof=True)
        else:
            self._stop_sniffing()
            self.transport.loseConnection()  # type: ignore[union-attr]

    def _http_client_eof(self, channel: HTTPChannel) -> None:
        # An HTTP client may half-close after its request (curl does not, nc -N
        # does): answer what it asked, then close.  Requests still queued are
        # answered; a keep-alive connection ends after the last response.
        # HTTPChannel sets _handlingRequest once a whole request was received;
        # a request cut short by the end of stream can never complete.
        channel.persistent = False
        if not getattr(channel, "_handlingRequest", False):
            channel.loseConnection()

    def drain(self) -> None:
        """
        The gateway is shutting down: an HTTP connection answers the request
        it is handling (and those already queued), then closes; an idle
        keep-alive connection closes now.
        """
        channel = self.http
        if channel is None or self.transport is None:
            return
        if getattr(channel, "receiving", False) or getattr(channel, "_buffer", b""):
            # A request is arriving: answer it, then close (the request
            # timeout bounds a client that never finishes it).
            channel.persistent = False
            return
        self._http_client_eof(channel)

    def writeConnectionLost(self) -> None:
        """
        Our half-close towards the client completed; nothing to do.
        """

    @override
    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:  # noqa: B008
        self.factory.pending.discard(self)
        self._stop_sniffing()
        if self._key_call is not None and self._key_call.active():
            self._key_call.cancel()
        self._key_call = None
        self._forward = None
        if self.http is not None:
            self.http.connectionLost(reason)
        if self.websocket is not None:
            self.websocket.connection_lost()
        if self.session is not None:
            self.session.client_lost()
        if self.registry_id is not None and self.factory.registry is not None:
            self.factory.registry.remove(self.registry_id)
        self.run_close_hooks()
