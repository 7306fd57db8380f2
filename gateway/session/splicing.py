"""
A game session that splices: L{SessionSplicing}, the part of
L{gateway.session.relay.GameSession} that hands its two sockets to a
L{gateway.session.splice.SpliceRelay}, hears from it (bytes moved, an end of
stream passed on, the sockets handed back) and takes the sockets back.

It also decides the TCP fast path (L{SessionSplicing._fast_path_allowed}): a
session that will splice has its backend connected as a bare socket
(L{gateway.session.leanlink.LeanLink}) where the backend allows it, and the
relay gets that socket as it is.  The session turns it into a Twisted
transport (L{SessionSplicing._full_server}) the first time it needs one: a
first write the fresh socket did not take whole, or the relay handing the
sockets back.  From then on the session is like any other, so the fast path
changes how a session connects and how its common ending runs (both
directions ended, passed on by the relay), nothing else.

A mixin over the session's slots, like L{gateway.session.ending}.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

from gateway.session.leanlink import LeanLink
from gateway.session.lifecycle import CloseReason, Phase
from gateway.session.splice import SpliceRelay, splice_available, spliceable
from gateway.session.stream import Stream, send_now
from gateway.session.waiting import SessionWaiting

__all__ = ["SessionSplicing"]


class SessionSplicing(SessionWaiting):
    """
    Splicing (see the module's docstring; the attributes are
    L{GameSession}'s).

    @ivar spliced: whether some of its bytes moved with splice(2).
    """

    # The slots of what the splicing steps set (the session's others are its own).
    __slots__ = (
        "_ended_by",
        "_server",
        "_splice",
        "bytes_in",
        "bytes_out",
    )

    _ended_by: CloseReason | None
    _server: Stream | None
    _splice: SpliceRelay | None
    bytes_in: int
    bytes_out: int

    if TYPE_CHECKING:

        def _pair_transports(self, *, end_passed: bool = False) -> None: ...

    def _splice_allowed(self) -> bool:
        """
        Whether the relay mode, the platform, the client's connection and
        the reactor allow splicing (the backend's connection aside).
        """
        return (
            self._settings.relay_mode != "copy"
            and splice_available()
            and spliceable(self.client)
            and hasattr(self._clock, "addReader")
        )

    def _fast_path_allowed(self) -> bool:
        """
        Whether this session's backend may be connected on the TCP fast path
        (a game session that will splice, with the fast path on).
        """
        return self._settings.tcp_fast_path and self.kind == "game" and self._splice_allowed()

    def _full_server(self) -> Stream | None:
        """
        The backend's connection as a Twisted transport: a lean link is
        adopted into one now (once).

        @return: the transport; L{None} if the connection is gone already
            (a reset socket cannot be adopted: it has no peer any more),
            and then the lean link is closed, which ends the session as a
            lost transport would.
        """
        server = self._server
        assert server is not None
        if isinstance(server, LeanLink):
            try:
                server = self._server = cast(Stream, server.adopt())
            except OSError:
                server.loseConnection()  # the session hears link_lost
                return None
        return server

    def _mark_ended(self, client: bool) -> None:
        """
        The client's (C{client}) or the backend's sending side ended; the
        first to end is the close reason.
        """
        if client:
            self._client_eof = True
            first = CloseReason.CLIENT_CLOSED
        else:
            self._backend_eof = True
            first = CloseReason.BACKEND_CLOSED
        if self._ended_by is None:
            self._ended_by = first

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
        lean = isinstance(server, LeanLink)
        if self._client_eof or not (lean or (self._splice_allowed() and spliceable(server))):
            return False
        first = header + b"".join(held)
        sent = send_now(server.socket, first)  # type: ignore[union-attr]
        if sent is None:
            return False  # the copy path writes it all, and sees the error
        self.bytes_in += len(first) - len(header)
        if sent < len(first):
            # Rare: a fresh socket that does not take a few KiB, or a backend
            # already gone.  The rest goes through the transport (which sees
            # any error), and this session is copied.
            full = self._full_server()
            if full is not None:
                full.write(first[sent:])
                self._pair_transports()
            return True
        self._splice = SpliceRelay(self._clock, self)
        self._enter(Phase.SPLICING)
        self._splice.start(cast(Any, client), cast(Any, server))
        return True

    def splice_moved(self, up: int, down: int) -> None:
        """
        The relay delivered bytes (L{gateway.session.splice.SpliceOwner}).
        """
        self.spliced = True
        self.bytes_in += up
        self.bytes_out += down

    def splice_passed_end(self, name: str, both: bool) -> None:
        """
        The relay passed on an end of stream (C{name}: C{"client"} or
        C{"server"}) as a half-close of the other side; with both ended,
        the session closes.
        """
        self._mark_ended(name == "client")
        if not both:
            self.quiet_restart()  # the fin timeout applies from now
            return
        self._splice = None
        self._close_both()

    def splice_handed_back(self, up: bytes, down: bytes) -> None:
        """
        Splicing ended (an error, an end of stream with bytes in flight, or
        the session closing): the transports relay again, from where the
        kernel stopped.
        """
        self._splice = None
        if down:
            self.client.write(down)
            self.bytes_out += len(down)
        server = self._full_server()
        if server is None:
            return  # the backend's connection was gone: the session closed
        if up:
            server.write(up)
            self.bytes_in += len(up)
        if self._client_gone or self._backend_gone:
            return  # the caller closes the session
        # While splicing, the client's transport reads nothing: a client end
        # of stream known now was read by the relay, which passed it on.
        self._pair_transports(end_passed=self._client_eof)
        # A side whose end of stream the relay passed on is not read again
        # (as Twisted stops reading a half-closed connection).
        for transport, ended in ((self.client, self._client_eof), (server, self._backend_eof)):
            if not ended and not getattr(transport, "disconnecting", False):
                transport.startReading()  # type: ignore[attr-defined]

    def _stop_splicing(self) -> None:
        """
        Hand the sockets back to the transports now (the session closes).
        """
        if self._splice is not None:
            self._splice.finish("the session closes")
