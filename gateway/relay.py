"""
Game sessions: a client connection relayed byte for byte to one backend.

A L{GameSession} is created by the front door once it has decided that a
connection is a game client.  It is a plain object that takes events from the
two protocols around it (the front door on the client side, a L{BackendLink}
on the backend side) and decides what happens:

  1. B{Connecting.}  The client transport is paused, so the only client bytes
     held are those the front door read while sniffing (at most one read).  The
     session asks the pool for a backend and connects with a timeout; a refused
     or timed-out attempt is counted on that backend and the next backend is
     tried, until every backend was tried once.  Then the client is closed.
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
     With an idle timeout, a session where no byte moved either way for that
     long is closed cleanly, and aborted if it has not gone after
     L{CLOSE_GRACE} more seconds (a peer that never reads cannot hold it).

The per-chunk work is a C{write} and an integer addition per direction; the
idle timeout is checked by a timer that compares the byte counters, never by
touching a timer per chunk.
"""

from __future__ import annotations

from enum import Enum
from typing import TYPE_CHECKING, cast
from typing import Protocol as Structural

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.endpoints import connectProtocol
from twisted.internet.error import ConnectingCancelledError
from twisted.internet.interfaces import (
    IDelayedCall,
    IHalfCloseableDescriptor,
    IHalfCloseableProtocol,
    IReactorTime,
    ITransport,
)
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from typing_extensions import override
from zope.interface import implementer

from gateway.interfaces import IBackendChooser

if TYPE_CHECKING:
    from gateway.pool import Backend

__all__ = ["CLOSE_GRACE", "BackendLink", "CloseReason", "GameSession"]

CLOSE_GRACE = 10.0
"""Seconds an idle-timed-out session gets to flush before it is aborted."""


class CloseReason(Enum):
    """
    Why a game session ended: the closed vocabulary used in logs (and later
    on the admin endpoint and in counters).
    """

    CLIENT_CLOSED = "client-closed"
    BACKEND_CLOSED = "backend-closed"
    IDLE_TIMEOUT = "idle-timeout"
    NO_BACKEND = "no-backend"
    CLIENT_LEFT_EARLY = "client-left-before-connect"


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


@implementer(IHalfCloseableProtocol)
class BackendLink(Protocol):
    """
    The backend side of one game session: passes every event to the session.
    """

    def __init__(self, session: GameSession) -> None:
        self.session = session

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
        self.session.backend_lost(reason)


class GameSession:
    """
    One client relayed to one backend.

    @ivar backend: the backend this session is connected to, once connected.
    @ivar bytes_in: bytes from the client written towards the backend.
    @ivar bytes_out: bytes from the backend written towards the client.
    @ivar close_reason: why the session ended, once it has.
    """

    _log = Logger()

    def __init__(
        self,
        client: ITransport,
        chooser: IBackendChooser,
        clock: IReactorTime,
        *,
        connect_timeout: float,
        idle_timeout: float,
        peer: str,
    ) -> None:
        """
        @param client: the client's transport (also an IPushProducer and IConsumer).
        @param chooser: picks backends (the pool).
        @param clock: for the connect and idle timeouts.
        @param connect_timeout: seconds per backend attempt.
        @param idle_timeout: seconds without traffic before closing; 0 for never.
        @param peer: the client's address, for logs.
        """
        self.client = cast(Stream, client)
        self._chooser = chooser
        self._clock = clock
        self._connect_timeout = connect_timeout
        self._idle_timeout = idle_timeout
        self.peer = peer
        self.backend: Backend | None = None
        self.bytes_in = 0
        self.bytes_out = 0
        self.close_reason: CloseReason | None = None
        self._held: list[bytes] = []
        self._tried: list[Backend] = []
        self._attempt: Deferred[Protocol] | None = None
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

    def start(self, first_bytes: bytes) -> None:
        """
        Begin: hold the client's first bytes, stop reading from the client and
        connect to a backend.

        @param first_bytes: what the front door read while sniffing.
        """
        if first_bytes:
            self._held.append(first_bytes)
        self.client.pauseProducing()
        self._connect_next()

    # Connecting

    def _connect_next(self) -> None:
        backend = self._chooser.choose(self._tried)
        if backend is None:
            self._give_up()
            return
        self._tried.append(backend)
        link = BackendLink(self)
        attempt = connectProtocol(backend.endpoint, link)
        timer = self._clock.callLater(self._connect_timeout, attempt.cancel)

        def stop_timer(result: object) -> object:
            if timer.active():
                timer.cancel()
            return result

        attempt.addBoth(stop_timer)
        # Set before the callbacks: an endpoint may answer synchronously, and
        # then they run (and may start the next attempt) inside addCallbacks.
        self._attempt = attempt
        attempt.addCallbacks(
            self._connected,
            self._attempt_failed,
            callbackArgs=(backend, link),
            errbackArgs=(backend, timer),
        )

    def _attempt_failed(self, failure: Failure, backend: Backend, timer: IDelayedCall) -> None:
        self._attempt = None
        if self._client_gone:
            # We cancelled the attempt ourselves because the client left.
            return
        backend.failures += 1
        if failure.check(CancelledError, ConnectingCancelledError):
            reason = f"no connection within {self._connect_timeout:g} s"
        else:
            reason = failure.getErrorMessage()
        self._log.warn(
            "backend {backend} failed for a session from {peer}: {reason}",
            backend=backend.name,
            peer=self.peer,
            reason=reason,
        )
        self._connect_next()

    def _connected(self, _protocol: Protocol, backend: Backend, link: BackendLink) -> None:
        self._attempt = None
        self.backend = backend
        server = cast(Stream, link.transport)
        self._server = server
        backend.active += 1
        backend.total += 1
        held, self._held = self._held, []
        for chunk in held:
            server.write(chunk)
            self.bytes_in += len(chunk)
        # Each side's transport produces for the other's: a full write buffer
        # on one side pauses reading on the other (flow control end to end).
        server.registerProducer(self.client, True)
        self.client.registerProducer(server, True)
        self._client_feeds_server = self._server_feeds_client = True
        if self._client_eof:
            self._stop_client_feeding_server()
            _half_close(server)
        else:
            self.client.resumeProducing()
        if self._idle_timeout:
            self._idle_seen = self.bytes_in
            self._idle_since = self._clock.seconds()
            self._idle_call = self._clock.callLater(self._idle_timeout / 4, self._check_idle)
        self._log.debug(
            "session from {peer} connected to {backend}", peer=self.peer, backend=backend.name
        )

    def _give_up(self) -> None:
        tried = ", ".join(b.name for b in self._tried) or "none configured"
        self._log.error(
            "no backend available for a session from {peer} (tried: {tried}); closing it",
            peer=self.peer,
            tried=tried,
        )
        self._finish(CloseReason.NO_BACKEND)
        self.client.loseConnection()

    # Events from the client side (the front door)

    def client_data(self, data: bytes) -> None:
        """
        Bytes from the client.
        """
        server = self._server
        if server is None:
            self._held.append(data)
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

    def client_lost(self) -> None:
        """
        The client connection is gone.
        """
        self._client_gone = True
        self._stop_abort_timer()
        if self._attempt is not None:
            self._finish(CloseReason.CLIENT_LEFT_EARLY)
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

    def backend_lost(self, reason: Failure) -> None:
        """
        The backend connection is gone.
        """
        self._backend_gone = True
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
        if not self._client_gone:
            self.client.abortConnection()
        if not self._backend_gone and self._server is not None:
            self._server.abortConnection()

    def _check_idle(self) -> None:
        self._idle_call = None
        now = self._clock.seconds()
        seen = self.bytes_in + self.bytes_out
        if seen != self._idle_seen:
            # Traffic since the last check: it was idle at most since now.
            self._idle_seen = seen
            self._idle_since = now
            delay = self._idle_timeout / 4
        else:
            # Check again within a quarter of the timeout even when the
            # deadline is further: traffic seen at a check is dated to that
            # check, so the gap between checks is the close's only lateness.
            delay = min(self._idle_since + self._idle_timeout - now, self._idle_timeout / 4)
            if delay <= 0:
                self._log.info(
                    "session from {peer} idle for {timeout:g} s; closing it",
                    peer=self.peer,
                    timeout=self._idle_timeout,
                )
                self._finish(CloseReason.IDLE_TIMEOUT)
                self._close_both()
                self._abort_call = self._clock.callLater(CLOSE_GRACE, self._abort_both)
                return
        self._idle_call = self._clock.callLater(delay, self._check_idle)

    def _stop_abort_timer(self) -> None:
        if self._abort_call is not None and self._client_gone and self._backend_gone:
            self._abort_call.cancel()
            self._abort_call = None

    def _finish(self, reason: CloseReason) -> None:
        """
        Record how the session ended; the first reason wins.
        """
        if self.close_reason is not None:
            return
        self.close_reason = reason
        if self._idle_call is not None:
            self._idle_call.cancel()
            self._idle_call = None
        self._log.info(
            "game session from {peer} to {backend} ended ({reason}): "
            "{bytes_in} bytes in, {bytes_out} bytes out",
            peer=self.peer,
            backend=self.backend.name if self.backend is not None else "-",
            reason=reason.value,
            bytes_in=self.bytes_in,
            bytes_out=self.bytes_out,
        )
