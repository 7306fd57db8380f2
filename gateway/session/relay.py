"""
Game sessions: a client connection relayed byte for byte to one backend.

A L{GameSession} is created by the front door once it has decided that a
connection is a game client.  It is a plain object that takes events from the
two protocols around it (the front door on the client side, a L{BackendLink}
on the backend side) and decides what happens:

  1. B{Connecting.}  The session asks the pool for a backend and connects with
     a timeout that covers the TCP connection and, for a C{tls:} backend, the
     TLS handshake (certificate and hostname checks included).  A refused,
     failed or timed-out attempt is counted on that backend, logged with its
     reason, and the next backend is tried, until every backend was tried
     once; then the client is refused (C{no-backend}).  An attempt that
     fails for a reason of the gateway's own (L{LOCAL_ERRNOS}: out of file
     descriptors, buffers, memory or local ports) says nothing about the
     backend: it is not counted on it, and the session is refused at once
     (C{local-resources}), since every other backend would need the same
     resources.  Meanwhile the client's bytes are held
     in order; past L{HOLD_LIMIT} bytes its reading is paused, so the hold is
     bounded.  The client is still watched, so one that leaves cancels the
     attempt.
  2. B{Relaying.}  The held bytes are written to the backend first, in order,
     then each transport is registered as the other's streaming producer (as
     in C{twisted.protocols.portforward}): when one side's write buffer passes
     its high-water mark, the transport filling it stops reading.  So a slow
     reader on either side slows the other side down, and the gateway holds at
     most about one write buffer plus one read per direction (see
     docs/architecture.md for the measured figure).
  3. B{Closing.}  An end of stream from one side (a half-close, or the read
     side of a full close) is passed on as a half-close of the other side
     (C{shutdown(SHUT_WR)}), after what was in flight is flushed; so a client
     that half-closes still gets the whole reply.  When both directions have
     ended, or when either connection is lost, the other is closed after
     flushing.  The side whose end of stream came first is the close reason.
     A session where one direction has ended is closed when no byte has moved
     for the fin timeout (like HAProxy's client-fin/server-fin), so a peer
     that never closes its side cannot hold the session forever.  With an idle
     timeout, a session where no byte moved either way for that long is closed
     the same way.  A clean close that has not completed after L{CLOSE_GRACE}
     more seconds (a peer that never reads) is aborted.

The per-chunk work is a C{write} and an integer addition per direction; the
idle and fin timeouts are checked by a timer that compares the byte counters,
never by touching a timer per chunk.
"""

from __future__ import annotations

import errno
import os
from enum import Enum
from typing import TYPE_CHECKING, Any, cast
from typing import Protocol as Structural

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import ConnectError, ConnectingCancelledError
from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IHalfCloseableDescriptor,
    IHalfCloseableProtocol,
    IHandshakeListener,
    INegotiated,
    IProtocol,
    IReactorTime,
    ITransport,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from typing_extensions import override
from zope.interface import alsoProvides, implementer

from gateway.front.limits import Refusal
from gateway.front.proxyheader import proxy_header
from gateway.interfaces import IBackendChooser
from gateway.ops.access import log_game_session
from gateway.session.splice import SpliceRelay, splice_available, spliceable

if TYPE_CHECKING:
    from gateway.ops.registry import RefusalLog
    from gateway.pool.backends import Backend

__all__ = [
    "CLOSE_GRACE",
    "HOLD_LIMIT",
    "LOCAL_ERRNOS",
    "BackendLink",
    "CloseReason",
    "GameSession",
    "local_shortage",
]

CLOSE_GRACE = 10.0
"""Seconds a timed-out session gets to flush before it is aborted."""

HOLD_LIMIT = 64 * 1024
"""Client bytes held while connecting before the client's reading is paused."""


class CloseReason(Enum):
    """
    Why a game session ended: the closed vocabulary used in logs (and later
    on the admin endpoint and in counters).
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


class Stream(Structural):
    """
    What the relay uses of a connected transport: ITransport, IConsumer and
    IPushProducer at once, which Twisted's stream transports all are, though
    no single interface of theirs says so.
    """

    def write(self, data: bytes) -> None: ...
    def loseConnection(self) -> None: ...
    def abortConnection(self) -> None: ...
    def pauseProducing(self) -> None: ...
    def resumeProducing(self) -> None: ...
    def registerProducer(self, producer: object, streaming: bool) -> None: ...
    def unregisterProducer(self) -> None: ...


def _half_close(transport: Stream) -> None:
    """
    Shut down the sending side of C{transport} once its buffer is flushed, or
    close it if it cannot half-close (TLS transports cannot).
    """
    if IHalfCloseableDescriptor.providedBy(transport):
        transport.loseWriteConnection()  # type: ignore[attr-defined]
    else:
        transport.loseConnection()


def _restore_half_close(transport: object) -> None:
    """
    Make sure the protocol that C{transport} calls hears of half-closes.

    Twisted's client endpoints put our protocol inside their own wrapper
    (C{endpoints._WrappingProtocol}), which copies our interfaces with
    C{directlyProvides} in a loop, so only the last one survives: a protocol
    that is both an L{IHalfCloseableProtocol} and an L{IHandshakeListener}
    loses its half-close notifications, and an end of stream from the backend
    becomes a full close.  The wrapper does forward C{readConnectionLost} and
    C{writeConnectionLost}, so declaring the interface on it again is enough.
    """
    outer = getattr(transport, "protocol", None)
    if (
        outer is not None
        and not IHalfCloseableProtocol.providedBy(outer)
        and hasattr(outer, "readConnectionLost")
        and hasattr(outer, "writeConnectionLost")
    ):
        alsoProvides(outer, IHalfCloseableProtocol)


def describe_failure(failure: Failure) -> str:
    """
    A one-line reason for a failed backend connection, readable for TLS errors
    too (OpenSSL reports a list of (library, function, reason) tuples).
    """
    value = failure.value
    args = getattr(value, "args", ())
    if args and isinstance(args[0], list) and args[0] and isinstance(args[0][0], tuple):
        reasons = [str(item[-1]) for item in args[0] if item and item[-1]]
        return "TLS error: " + ", ".join(reasons or [repr(args[0])])
    if type(value).__name__ == "VerificationError":
        wanted = []
        for error in getattr(value, "errors", None) or []:
            ident = getattr(error, "mismatched_id", None)
            name = getattr(ident, "hostname", None) or getattr(ident, "ip", None) or ident
            wanted.append(name.decode() if isinstance(name, bytes) else str(name))
        if wanted:
            return "TLS certificate does not match the host name " + ", ".join(wanted)
        return f"TLS certificate does not match the host name: {value}"
    return failure.getErrorMessage()


LOCAL_ERRNOS = frozenset(
    {
        errno.EMFILE,
        errno.ENFILE,
        errno.ENOBUFS,
        errno.ENOMEM,
        errno.EADDRNOTAVAIL,
        errno.EADDRINUSE,
    }
)
"""Errors of a connection attempt that are the gateway's own shortage (file
descriptors of the process or the system, socket buffers, memory, local
ports), whatever the backend's health."""


def _local_errno(error: object, depth: int = 0) -> bool:
    """
    Whether C{error} (an exception, or a failure or text inside one) carries
    an errno of L{LOCAL_ERRNOS}.
    """
    if isinstance(error, Failure):
        error = error.value
    if isinstance(error, OSError):
        return error.errno in LOCAL_ERRNOS
    if not isinstance(error, ConnectError) or depth > 3:
        return False
    # Twisted puts the errno in osError (ConnectBindError(24, "Too many open
    # files") when socket() fails; getConnectError(...) when connect() does),
    # or wraps what it got (a Failure, an exception, or only its text).
    code = error.osError
    if isinstance(code, int) and not isinstance(code, bool):
        return code in LOCAL_ERRNOS
    for nested in (code, *error.args):
        if isinstance(nested, (Failure, BaseException)) and _local_errno(nested, depth + 1):
            return True
    text = str(error)
    return any(os.strerror(number) in text for number in LOCAL_ERRNOS)


def local_shortage(failure: Failure) -> bool:
    """
    Whether a failed connection attempt failed for the gateway's own want of
    resources (L{LOCAL_ERRNOS}) rather than because of the backend.

    Twisted reports a C{socket()} that fails for want of descriptors as
    C{ConnectBindError} ("Couldn't bind: 24: Too many open files."), and a
    C{connect()} that finds no free local port as a C{ConnectError} with
    C{EADDRNOTAVAIL}.
    """
    return _local_errno(failure)


@implementer(IHalfCloseableProtocol, IHandshakeListener)
class BackendLink(Protocol):
    """
    The backend side of one game session: passes every event to the session.

    @ivar backend: the backend this connection goes to.
    @ivar ready: whether the connection is usable (connected, and for TLS,
        the handshake done).
    @ivar failure_reason: set when the session gives up on this connection
        before it was ready (a handshake timeout), for the log.
    """

    def __init__(self, session: GameSession, backend: Backend) -> None:
        self.session = session
        self.backend = backend
        self.ready = False
        self.failure_reason: str | None = None

    @override
    def connectionMade(self) -> None:
        if INegotiated.providedBy(self.transport):
            # TLS: usable once handshakeCompleted is called (TLS transports
            # cannot half-close, so the workaround below does not apply).
            return
        _restore_half_close(self.transport)
        self.session.link_ready(self)

    def handshakeCompleted(self) -> None:
        """
        The TLS handshake succeeded (the certificate and host name verified).
        """
        if getattr(self.transport, "disconnecting", False):
            # Twisted before 25 reports the handshake done even when the host
            # name check failed and aborted the connection: connectionLost
            # follows with the reason, and that is a failed attempt.
            return
        self.session.link_ready(self)

    @override
    def dataReceived(self, data: bytes) -> None:
        self.session.backend_data(data)

    def readConnectionLost(self) -> None:
        """
        The backend ended its sending side.
        """
        self.session.backend_eof()

    def writeConnectionLost(self) -> None:
        """
        Our half-close towards the backend completed; nothing to do.
        """

    @override
    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:  # noqa: B008
        self.session.link_lost(self, reason)


class _LinkFactory(Factory):
    """
    Hands one L{BackendLink} to an endpoint's connection attempt, quietly
    (Twisted's own one-shot factory logs two lines per attempt).
    """

    noisy = False

    def __init__(self, link: BackendLink) -> None:
        self._link = link

    @override
    def buildProtocol(self, addr: IAddress | None) -> BackendLink:
        return self._link


class GameSession:
    """
    One client relayed to one backend.

    @ivar backend: the backend this session is connected to, once connected.
    @ivar bytes_in: bytes from the client written towards the backend.
    @ivar bytes_out: bytes from the backend written towards the client.
    @ivar close_reason: why the session ended, once it has.
    @ivar kind: C{"game"} (for the registry of live sessions).
    @ivar spliced: whether some of its bytes moved with splice(2).
    @ivar started: when it started, in the clock's seconds.
    """

    # Slots, not a dict per session: a live session is mostly idle, and
    # thousands of them are what the gateway holds (docs/performance.md).
    __slots__ = (
        "_abort_call",
        "_attempt",
        "_attempt_timer",
        "_backend_eof",
        "_backend_gone",
        "_busy_message",
        "_chooser",
        "_client_eof",
        "_client_feeds_server",
        "_client_gone",
        "_client_paused",
        "_clock",
        "_connect_timeout",
        "_ended_by",
        "_fin_timeout",
        "_held",
        "_held_size",
        "_idle_call",
        "_idle_seen",
        "_idle_since",
        "_idle_timeout",
        "_pending",
        "_proxy_version",
        "_refusals",
        "_relay_mode",
        "_retries",
        "_server",
        "_server_feeds_client",
        "_splice",
        "_tried",
        "backend",
        "bytes_in",
        "bytes_out",
        "client",
        "close_reason",
        "key",
        "kind",
        "peer",
        "spliced",
        "started",
    )

    _log = Logger()

    def __init__(
        self,
        client: ITransport,
        chooser: IBackendChooser,
        clock: IReactorTime,
        *,
        connect_timeout: float,
        idle_timeout: float,
        fin_timeout: float,
        peer: str,
        key: bytes | None = None,
        retries: int = 2,
        proxy_version: str = "off",
        refusals: RefusalLog | None = None,
        busy_message: str | None = None,
        relay: str = "copy",
    ) -> None:
        """
        @param client: the client's transport (also an IPushProducer and IConsumer).
        @param chooser: picks backends (the pool).
        @param clock: for the connect, idle and fin timeouts.
        @param connect_timeout: seconds per backend attempt (TLS handshake included).
        @param idle_timeout: seconds without traffic before closing; 0 for never.
        @param fin_timeout: seconds without traffic before closing once one
            direction has ended; 0 for never.
        @param peer: the client's address, for logs.
        @param key: the session's affinity key, for a balancer that uses one.
        @param retries: other backends tried after a failed attempt.
        @param proxy_version: C{"v1"} or C{"v2"} to send each backend a PROXY
            header (the client's addresses) before any client byte; C{"off"}.
        @param refusals: where a session no backend could take is counted and
            logged (sampled, like every refusal); without it, it is logged
            as an error every time.
        @param busy_message: the line sent to such a client before closing it.
        @param relay: C{"copy"} (bytes through Python), or C{"auto"}/C{"splice"}:
            with splice(2) when both sides are plain sockets (then C{clock}
            must be the reactor, which watches the sockets).
        """
        self.client = cast(Stream, client)
        self._chooser = chooser
        self._clock = clock
        self._connect_timeout = connect_timeout
        self._idle_timeout = idle_timeout
        self._fin_timeout = fin_timeout
        self.peer = peer
        self.key = key
        self._retries = retries
        self._proxy_version = proxy_version
        self._refusals = refusals
        self._busy_message = busy_message
        self._relay_mode = relay
        self._splice: SpliceRelay | None = None
        self.spliced = False
        self.backend: Backend | None = None
        self.bytes_in = 0
        self.bytes_out = 0
        self.kind = "game"
        self.started = clock.seconds()
        self.close_reason: CloseReason | None = None
        self._held: list[bytes] = []
        self._held_size = 0
        self._client_paused = False
        self._tried: list[Backend] = []
        self._pending: BackendLink | None = None
        self._attempt: Deferred[IProtocol] | None = None
        self._attempt_timer: IDelayedCall | None = None
        self._server: Stream | None = None
        self._client_eof = False
        self._backend_eof = False
        self._client_gone = False
        self._backend_gone = False
        self._client_feeds_server = False
        self._server_feeds_client = False
        self._ended_by: CloseReason | None = None
        self._idle_call: IDelayedCall | None = None
        self._abort_call: IDelayedCall | None = None
        self._idle_seen = 0
        self._idle_since = 0.0

    @property
    def backend_name(self) -> str | None:
        """
        The name of the backend this session is connected to, once connected.
        """
        return self.backend.name if self.backend is not None else None

    def start(self, first_bytes: bytes) -> None:
        """
        Begin: hold the client's first bytes and connect to a backend.

        @param first_bytes: what the front door read while sniffing.
        """
        if first_bytes:
            self._hold(first_bytes)
        self._connect_next()

    def _hold(self, data: bytes) -> None:
        self._held.append(data)
        self._held_size += len(data)
        if self._held_size >= HOLD_LIMIT and not self._client_paused:
            self._client_paused = True
            self.client.pauseProducing()

    # Connecting

    def _connect_next(self) -> None:
        backend = None
        if len(self._tried) <= self._retries:
            backend = self._chooser.choose(self._tried, self.key)
        if backend is None:
            self._give_up()
            return
        self._tried.append(backend)
        link = BackendLink(self, backend)
        self._pending = link
        self._attempt_timer = self._clock.callLater(
            self._connect_timeout, self._attempt_timed_out, link
        )
        attempt = backend.endpoint.connect(_LinkFactory(link))
        if self._pending is link:
            # Still pending: the endpoint did not answer synchronously.
            self._attempt = attempt
        attempt.addErrback(self._connect_failed, link)

    def _attempt_timed_out(self, link: BackendLink) -> None:
        self._attempt_timer = None
        if link.transport is None:
            # Still connecting at the TCP level: cancelling fails the attempt.
            if self._attempt is not None:
                self._attempt.cancel()
        else:
            link.failure_reason = f"TLS handshake not done within {self._connect_timeout:g} s"
            link.transport.abortConnection()  # type: ignore[attr-defined]

    def _connect_failed(self, failure: Failure, link: BackendLink) -> None:
        if failure.check(CancelledError, ConnectingCancelledError):
            reason = f"no connection within {self._connect_timeout:g} s"
        elif local_shortage(failure):
            self._short_of_resources(link, describe_failure(failure))
            return
        else:
            reason = describe_failure(failure)
        self._attempt_failed(link, reason)

    def _short_of_resources(self, link: BackendLink, reason: str) -> None:
        """
        The attempt on C{link} failed for want of the gateway's own resources:
        refuse the session, and leave the backend's state and counters alone
        (the shortage says nothing about it; counting it would take healthy
        backends down).  Other backends are not tried: they would need the
        same descriptor, buffer or port.
        """
        if not self._stop_attempt(link) or self._client_gone:
            return
        self._refuse(
            Refusal.LOCAL_RESOURCES,
            CloseReason.LOCAL_RESOURCES,
            f"the gateway is short of resources; backend {link.backend.name}: {reason}",
        )

    def _stop_attempt(self, link: BackendLink) -> bool:
        """
        Forget the pending attempt on C{link}.

        @return: whether C{link} was the pending attempt.
        """
        if self._pending is not link:
            return False
        self._pending = None
        self._attempt = None
        if self._attempt_timer is not None:
            if self._attempt_timer.active():
                self._attempt_timer.cancel()
            self._attempt_timer = None
        return True

    def _attempt_failed(self, link: BackendLink, reason: str) -> None:
        if not self._stop_attempt(link) or self._client_gone:
            # A stale attempt, or one we gave up ourselves because the client left.
            return
        self._chooser.attempt_failed(link.backend)
        self._log.warn(
            "backend {backend} failed for a session from {peer}: {reason}",
            backend=link.backend.name,
            peer=self.peer,
            reason=reason,
        )
        self._connect_next()

    def link_ready(self, link: BackendLink) -> None:
        """
        A backend connection is usable: connected, and for TLS, verified.
        """
        if not self._stop_attempt(link):
            return
        if self._client_gone:
            link.transport.loseConnection()  # type: ignore[union-attr]
            return
        link.ready = True
        backend = link.backend
        self._chooser.attempt_succeeded(backend)
        self.backend = backend
        server = cast(Stream, link.transport)
        self._server = server
        backend.active += 1
        backend.total += 1
        held, self._held = self._held, []
        self._held_size = 0
        version = backend.proxy_protocol or self._proxy_version
        header = b""
        if version != "off":
            # Before any client byte; not counted in bytes_in (not the client's).
            client = cast(ITransport, self.client)
            header = proxy_header(version, client.getPeer(), client.getHost())
        if self._try_splice(header, held):
            self._idle_seen = self.bytes_in
            self._idle_since = self._clock.seconds()
            self._schedule_idle_check()
            return
        if header:
            server.write(header)
        for chunk in held:
            server.write(chunk)
            self.bytes_in += len(chunk)
        self._pair_transports()

    def _pair_transports(self) -> None:
        """
        Relay through the transports: each produces for the other's, so a
        full write buffer on one side pauses reading on the other (flow
        control end to end).
        """
        server = self._server
        assert server is not None
        server.registerProducer(self.client, True)
        self.client.registerProducer(server, True)
        self._client_feeds_server = self._server_feeds_client = True
        if self._client_eof:
            self._stop_client_feeding_server()
            _half_close(server)
        elif self._client_paused:
            self._client_paused = False
            self.client.resumeProducing()
        self._idle_seen = self.bytes_in + self.bytes_out
        self._idle_since = self._clock.seconds()
        self._schedule_idle_check()

    def _try_splice(self, header: bytes, held: list[bytes]) -> bool:
        """
        Relay with splice(2) if the mode allows and both sides are plain
        sockets: the first bytes (PROXY header, held client bytes) are sent
        straight to the fresh backend socket, then the kernel moves the rest.

        @return: whether the first bytes were sent (then the session relays,
            by splice(2) or, rarely, through the transports); else nothing
            was sent.
        """
        server, client = self._server, self.client
        if (
            self._relay_mode == "copy"
            or self._client_eof
            or not splice_available()
            or not spliceable(server)
            or not spliceable(client)
            or not hasattr(self._clock, "addReader")
        ):
            return False
        first = header + b"".join(held)
        sock = server.socket  # type: ignore[union-attr]
        sent = 0
        try:
            while sent < len(first):
                sent += sock.send(first[sent:])
        except BlockingIOError:
            pass
        except OSError:
            if not sent:
                return False  # the copy path writes it all, and sees the error
        self.bytes_in += len(first) - len(header)
        if sent < len(first):
            # Rare: a fresh socket that does not take a few KiB, or a backend
            # already gone.  The rest goes through the transport (which sees
            # any error), and this session is copied.
            server.write(first[sent:])  # type: ignore[union-attr]
            self._pair_transports()
            return True
        self._splice = SpliceRelay(
            self._clock,
            cast(Any, client),
            cast(Any, server),
            on_moved=self._spliced,
            on_finished=self._splice_finished,
        )
        self._splice.start()
        return True

    def _spliced(self, up: int, down: int) -> None:
        self.spliced = True
        self.bytes_in += up
        self.bytes_out += down

    def _splice_finished(self, up: bytes, down: bytes) -> None:
        """
        Splicing ended (an end of stream, an error, or the session closing):
        the transports relay again, from where the kernel stopped.
        """
        self._splice = None
        server = self._server
        assert server is not None
        if up:
            server.write(up)
            self.bytes_in += len(up)
        if down:
            self.client.write(down)
            self.bytes_out += len(down)
        if self._client_gone or self._backend_gone:
            return
        self._pair_transports()
        for transport in (self.client, server):
            if not getattr(transport, "disconnecting", False):
                transport.startReading()  # type: ignore[attr-defined]

    def _stop_splicing(self) -> None:
        """
        Hand the sockets back to the transports now (the session closes).
        """
        if self._splice is not None:
            self._splice.finish("the session closes")

    def link_lost(self, link: BackendLink, reason: Failure) -> None:
        """
        A backend connection is gone: before it was ready (a failed attempt,
        e.g. a TLS verification error) or during the session.
        """
        if link.ready:
            self._backend_lost()
        else:
            self._attempt_failed(link, link.failure_reason or describe_failure(reason))

    def _give_up(self) -> None:
        self._chooser.nothing_available()
        tried = ", ".join(b.name for b in self._tried) or "none up"
        self._refuse(
            Refusal.NO_BACKEND,
            CloseReason.NO_BACKEND,
            f"no backend available; tried: {tried}",
            tried=tried,
        )

    def _refuse(
        self, refusal: Refusal, reason: CloseReason, detail: str, **fields: object
    ) -> None:
        """
        Refuse the session before it reached a backend: a refusal like the
        others (counted by reason and logged with sampling, so a flood while
        every backend is down, or while the gateway is out of descriptors,
        cannot flood the log), and like them not an access event.  The client
        gets the busy line, if one is set, and is closed.

        @param fields: more fields for the error logged when there is no
            refusal log (a session used from Python).
        """
        if self._refusals is not None:
            self._refusals.refused(refusal, self.peer, detail)
        else:
            self._log.error(
                "refused {peer}: {reason} ({detail})",
                peer=self.peer,
                reason=refusal.value,
                detail=detail,
                **fields,
            )
        self._finish(reason, access=False)
        if self._busy_message:
            self.client.write((self._busy_message + "\r\n").encode())
        self.client.loseConnection()

    # Events from the client side (the front door)

    def client_data(self, data: bytes) -> None:
        """
        Bytes from the client.
        """
        server = self._server
        if server is None:
            self._hold(data)
            return
        server.write(data)
        self.bytes_in += len(data)

    def client_eof(self) -> None:
        """
        The client half-closed (or closed) its sending side.
        """
        self._client_eof = True
        if self._ended_by is None:
            self._ended_by = CloseReason.CLIENT_CLOSED
        server = self._server
        if server is None:
            return  # passed on once connected
        self._stop_client_feeding_server()
        if self._backend_eof:
            self._close_both()
        else:
            _half_close(server)
            self._restart_quiet_clock()

    def client_lost(self) -> None:
        """
        The client connection is gone.
        """
        self._client_gone = True
        self._stop_splicing()
        self._stop_abort_timer()
        link = self._pending
        if link is not None:
            self._finish(CloseReason.CLIENT_LEFT_EARLY)
            if link.transport is not None:
                link.transport.abortConnection()  # type: ignore[attr-defined]
            elif self._attempt is not None:
                self._attempt.cancel()
            return
        self._finish(self._ended_by or CloseReason.CLIENT_CLOSED)
        server = self._server
        if server is not None and not self._backend_gone:
            self._stop_client_feeding_server()
            server.loseConnection()

    # Events from the backend side

    def backend_data(self, data: bytes) -> None:
        """
        Bytes from the backend.
        """
        self.client.write(data)
        self.bytes_out += len(data)

    def backend_eof(self) -> None:
        """
        The backend half-closed (or closed) its sending side.
        """
        self._backend_eof = True
        if self._ended_by is None:
            self._ended_by = CloseReason.BACKEND_CLOSED
        self._stop_server_feeding_client()
        if self._client_eof:
            self._close_both()
        else:
            _half_close(self.client)
            self._restart_quiet_clock()

    def _backend_lost(self) -> None:
        """
        The backend connection is gone, during the session.
        """
        self._backend_gone = True
        self._stop_splicing()
        self._stop_abort_timer()
        backend = self.backend
        if backend is not None:
            backend.active -= 1
        self._finish(self._ended_by or CloseReason.BACKEND_CLOSED)
        if not self._client_gone:
            self._stop_server_feeding_client()
            self.client.loseConnection()

    # Ending

    def _close_both(self) -> None:
        """
        Close both connections once their buffers are flushed.
        """
        self._stop_splicing()
        self._stop_server_feeding_client()
        self._stop_client_feeding_server()
        if not self._client_gone:
            self.client.loseConnection()
        if self._server is not None and not self._backend_gone:
            self._server.loseConnection()

    def _stop_client_feeding_server(self) -> None:
        """
        Undo the pairing in which the client's transport produces for the
        backend's (once: the pairing is undone on EOF and again on close).
        """
        if self._client_feeds_server and self._server is not None:
            self._client_feeds_server = False
            self._server.unregisterProducer()

    def _stop_server_feeding_client(self) -> None:
        """
        Undo the pairing in which the backend's transport produces for the
        client's (once).
        """
        if self._server_feeds_client:
            self._server_feeds_client = False
            self.client.unregisterProducer()

    def _abort_both(self) -> None:
        """
        Abort what is still open: a peer that reads nothing cannot hold its
        connection open forever by never letting the gateway flush.
        """
        self._abort_call = None
        self._stop_splicing()
        if not self._client_gone:
            self.client.abortConnection()
        if not self._backend_gone and self._server is not None:
            self._server.abortConnection()

    def _quiet_limit(self) -> tuple[float, CloseReason]:
        """
        How long the session may go without traffic now, and the close reason
        if it does: the idle timeout, or the fin timeout once a direction has
        ended, whichever is shorter (0: no limit).
        """
        limit, reason = self._idle_timeout, CloseReason.IDLE_TIMEOUT
        if self._fin_timeout and (self._client_eof or self._backend_eof):
            if not limit or self._fin_timeout < limit:
                limit, reason = self._fin_timeout, CloseReason.FIN_TIMEOUT
        return limit, reason

    def _restart_quiet_clock(self) -> None:
        """
        Count quiet time from now (an end of stream: the fin timeout gives the
        other side its full time from this moment, as HAProxy's does).
        """
        self._idle_seen = self.bytes_in + self.bytes_out
        self._idle_since = self._clock.seconds()
        self._schedule_idle_check()

    def _schedule_idle_check(self) -> None:
        """
        (Re)start the quiet-time check at the current limit's pace.
        """
        if self._idle_call is not None:
            self._idle_call.cancel()
            self._idle_call = None
        limit, _reason = self._quiet_limit()
        if limit and self.close_reason is None:
            self._idle_call = self._clock.callLater(limit / 4, self._check_idle)

    def _check_idle(self) -> None:
        self._idle_call = None
        limit, reason = self._quiet_limit()
        now = self._clock.seconds()
        seen = self.bytes_in + self.bytes_out
        if seen != self._idle_seen:
            # Traffic since the last check: it was quiet at most since now.
            self._idle_seen = seen
            self._idle_since = now
            delay = limit / 4
        else:
            # Check again within a quarter of the limit even when the
            # deadline is further: traffic seen at a check is dated to that
            # check, so the gap between checks is the close's only lateness.
            delay = min(self._idle_since + limit - now, limit / 4)
            if delay <= 0:
                self._log.info(
                    "session from {peer} had no traffic for {timeout:g} s ({reason}); closing it",
                    peer=self.peer,
                    timeout=limit,
                    reason=reason.value,
                )
                self._finish(reason)
                self._close_both()
                self._abort_call = self._clock.callLater(CLOSE_GRACE, self._abort_both)
                return
        self._idle_call = self._clock.callLater(delay, self._check_idle)

    def close(self, reason: CloseReason) -> None:
        """
        End the session now (the gateway is shutting down): both connections
        are closed once what is in flight is flushed, and aborted after
        L{CLOSE_GRACE} seconds if a peer does not read it.
        """
        if self._client_gone:
            return
        self._finish(reason)
        self._close_both()
        if self._abort_call is None:
            self._abort_call = self._clock.callLater(CLOSE_GRACE, self._abort_both)

    def _stop_abort_timer(self) -> None:
        if self._abort_call is not None and self._client_gone and self._backend_gone:
            self._abort_call.cancel()
            self._abort_call = None

    def _finish(self, reason: CloseReason, *, access: bool = True) -> None:
        """
        Record how the session ended; the first reason wins.

        @param access: whether to write its access event (not for a refused
            session: the refusal log counts and samples those).
        """
        if self.close_reason is not None:
            return
        self.close_reason = reason
        if self._idle_call is not None:
            self._idle_call.cancel()
            self._idle_call = None
        if not access:
            return
        log_game_session(
            peer=self.peer,
            backend=self.backend.name if self.backend is not None else None,
            bytes_in=self.bytes_in,
            bytes_out=self.bytes_out,
            duration=self._clock.seconds() - self.started,
            reason=reason.value,
            relay="splice" if self.spliced else "copy",
        )
