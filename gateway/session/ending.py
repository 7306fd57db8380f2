"""
How a game session ends: L{SessionEnding}, the part of
L{gateway.session.relay.GameSession} that closes, aborts, refuses and records
(its access event, or its refusal) once, whatever ended it first.

A mixin, not an object of its own: these steps read and change the session's
own state (its phase, which connections are gone, which transport produces
for which), and a session is the one object per player the gateway keeps
(docs/performance.md).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from gateway.front.limits import Refusal
from gateway.ops.access import log_game_session
from gateway.session.lifecycle import CloseReason, Fact, Phase
from gateway.session.quiet import QuietWatch
from gateway.session.stream import close_now

if TYPE_CHECKING:
    from gateway.ops.registry import RefusalLog
    from gateway.pool.backends import Backend
    from gateway.session.dialer import Dialer
    from gateway.session.settings import SessionSettings
    from gateway.session.stream import Stream

__all__ = ["CLOSE_GRACE", "SessionEnding"]

CLOSE_GRACE = 10.0
"""Seconds a timed-out session gets to flush before it is aborted."""

_STOPPING = frozenset({CloseReason.SHUTDOWN, CloseReason.DRAIN_TIMEOUT})
"""Why the gateway itself closes sessions: a waiting player then gets the busy line."""


class SessionEnding(QuietWatch):
    """
    Closing, aborting, refusing and recording a game session (see the
    module's docstring; the attributes are L{GameSession}'s).
    """

    # The slots of what only the ending sets (the session's others are its
    # own), and the session's facts (GameSession's docstring), as bits.
    __slots__ = ("_abort_call", "_facts", "close_reason")

    _abort_call: IDelayedCall | None
    _facts: int
    close_reason: CloseReason | None

    _backend_eof = Fact(1)
    _backend_gone = Fact(2)
    _client_eof = Fact(4)
    _client_feeds_server = Fact(8)
    _client_gone = Fact(16)
    _client_paused = Fact(32)
    _server_feeds_client = Fact(64)
    spliced = Fact(128)

    _log = Logger()

    if TYPE_CHECKING:
        client: Stream
        backend: Backend | None
        bytes_in: int
        bytes_out: int
        kind: str
        peer: str
        started: float
        _clock: IReactorTime
        _dialer: Dialer | None
        _phase: Phase
        _refusals: RefusalLog | None
        _server: Stream | None
        _settings: SessionSettings

        def _enter(self, phase: Phase) -> None: ...
        def _stop_splicing(self) -> None: ...
        def _leave_room(self, *, left: bool = True) -> None: ...

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
        self._enter(Phase.CLOSING)
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
        self._turn_away()

    def _turn_away(self) -> None:
        """
        Give the client the busy line, if one is set, and close it.
        """
        busy_message = self._settings.busy_message
        refuse = getattr(self.client, "refuse", None)  # a WebSocket's: a close frame
        if refuse is not None:
            return refuse(busy_message)  # type: ignore[no-any-return]
        if busy_message:
            self.client.write((busy_message + "\r\n").encode())
        self.client.loseConnection()

    def _close_both(self) -> None:
        """
        Close both connections once their buffers are flushed.
        """
        self._stop_splicing()
        if self._phase is Phase.CLOSED:
            return  # the relay's hand-back found a connection gone: closed
        self._enter(Phase.CLOSING)
        self._stop_server_feeding_client()
        self._stop_client_feeding_server()
        if not self._client_gone:
            # Closed at once when nothing waits to be sent: its session
            # hears client_lost (and closes the backend) before this returns.
            close_now(self.client)
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

    def went_quiet(self, limit: float, fin: bool) -> None:
        """
        No byte moved for C{limit} seconds: close the session (the idle
        timeout, or the fin timeout if C{fin}).
        """
        reason = CloseReason.FIN_TIMEOUT if fin else CloseReason.IDLE_TIMEOUT
        self._log.info(
            "session from {peer} had no traffic for {timeout:g} s ({reason}); closing it",
            peer=self.peer,
            timeout=limit,
            reason=reason.value,
        )
        self._finish(reason)
        self._close_both()
        self._arm_abort_timer()

    def close(self, reason: CloseReason) -> None:
        """
        End the session now (the gateway is shutting down): both connections
        are closed once what is in flight is flushed, and aborted after
        L{CLOSE_GRACE} seconds if a peer does not read it.
        """
        if self._client_gone:
            return
        self._finish(reason)
        if self._phase is Phase.WAITING and reason in _STOPPING:
            # A waiting player hears why it is turned away.
            self._leave_room(left=False)
            self._enter(Phase.CLOSING)
            self._turn_away()
        else:
            # A waiting session that failed (a WebSocket protocol error, a
            # message too big, no pong) closes as any session does, with its
            # own close code.
            if self._phase in (Phase.CONNECTING, Phase.WAITING):
                self._leave_room()
            self._close_both()
        self._arm_abort_timer()

    def _arm_abort_timer(self) -> None:
        """
        Abort what is still open after L{CLOSE_GRACE} seconds (nothing, if
        both connections closed at once: L{close_now}).
        """
        if self._abort_call is None and self._still_open():
            self._abort_call = self._clock.callLater(CLOSE_GRACE, self._abort_both)

    def _still_open(self) -> bool:
        """
        Whether a connection of the session is still open (a backend never
        connected is not).
        """
        return not self._client_gone or (self._server is not None and not self._backend_gone)

    def _stop_abort_timer(self) -> None:
        if self._abort_call is not None and not self._still_open():
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
        self.quiet_stop()
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
            kind=self.kind,
        )
