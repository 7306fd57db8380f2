"""
Game sessions: a client connection relayed byte for byte to one backend.

A L{GameSession} is created by the front door once it has decided that a
connection is a game client.  It is a plain object that takes events from the
two protocols around it (the front door on the client side, a
L{gateway.session.backendlink.BackendLink} on the backend side) and decides
what happens, in phases (L{gateway.session.lifecycle.Phase}) it changes in one
place, L{GameSession._enter}:

  1. B{Connecting.}  A L{gateway.session.dialer.Dialer} tries backends in
     turn; if none can take the session, the client is refused (C{no-backend}
     or C{local-resources}) and gets the busy line if one is set.  Meanwhile
     the client's bytes are held in order; past L{HOLD_LIMIT} bytes its
     reading is paused, so the hold is bounded.  A client that leaves cancels
     the attempt.
     B{Waiting.}  With the pool's waiting room open
     (L{gateway.pool.room.WaitingRoom}) and every backend that could take
     the session full, the session waits there instead of being refused
     (C{queue-full} if the room is full), holding at most L{WAIT_HOLD_LIMIT}
     bytes before its reading is paused, until the room admits it to a
     backend (connecting again), its wait times out (C{queue-timeout}) or
     the client leaves (it leaves the room at once).
  2. B{Relaying} (or B{splicing}).  A PROXY header, if one is due, and the
     held bytes are written to the backend first, in order, then each
     transport is registered as the other's streaming producer (as in
     C{twisted.protocols.portforward}): a slow reader on either side slows the
     other side down, and the gateway holds at most about one write buffer
     plus one read per direction (docs/architecture.md has the figure).  With
     the C{auto} or C{splice} relay mode and two plain sockets, the kernel
     moves the bytes instead (L{gateway.session.splice}, driven by
     L{gateway.session.splicing}): it passes a clean end of stream on
     itself, and an error hands the sockets back to the transports.  Such a
     session connects its backend on the TCP fast path where it can: a bare
     socket, with no Twisted transport until one is needed
     (L{gateway.session.leanlink}).
  3. B{Closing.}  An end of stream from one side is passed on as a half-close
     of the other side (C{shutdown(SHUT_WR)}) after what was in flight is
     flushed, so a client that half-closes still gets the whole reply.  When
     both directions have ended, or when either connection is lost, the other
     is closed after flushing; the side whose end of stream came first is the
     close reason.  The idle and fin timeouts close a quiet session
     (L{gateway.session.quiet.QuietWatch}, which compares byte counters on a
     timer: the per-chunk work is a C{write} and an addition per direction).
     A clean close not completed L{CLOSE_GRACE} seconds later is aborted.
  4. B{Closed}: both connections are gone.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

from twisted.internet.interfaces import IDelayedCall, IReactorTime, ITransport
from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway.front.limits import Refusal
from gateway.front.proxyheader import proxy_header
from gateway.interfaces import IBackendChooser
from gateway.ops.access import log_session_start
from gateway.pool.room import DEFAULT, Standing, Ticket, WaitingRoom
from gateway.session.bareclient import BareClient
from gateway.session.dialer import Dialer
from gateway.session.ending import CLOSE_GRACE
from gateway.session.leanlink import LeanLink
from gateway.session.lifecycle import CloseReason, Phase, can_move
from gateway.session.splicing import SessionSplicing
from gateway.session.stream import Stream, close_now, half_close, write_now
from gateway.session.waiting import WAIT_HOLD_LIMIT

if TYPE_CHECKING:
    from gateway.ops.registry import RefusalLog
    from gateway.pool.backends import Backend
    from gateway.pool.seats import Seat
    from gateway.session.backendlink import Link
    from gateway.session.settings import SessionSettings

__all__ = ["CLOSE_GRACE", "HOLD_LIMIT", "WAIT_HOLD_LIMIT", "GameSession"]

HOLD_LIMIT = 64 * 1024
"""Client bytes held while connecting before the client's reading is paused."""


class GameSession(SessionSplicing):
    """
    One client relayed to one backend.

    Its L{Phase} changes only through L{_enter}.  Besides the phase it keeps
    flags that are not phases but independent facts, any combination of which
    can hold: per direction, whether it has ended (C{_client_eof},
    C{_backend_eof}) and whether one transport produces for the other
    (C{_client_feeds_server}, C{_server_feeds_client}); per connection,
    whether it is gone (C{_client_gone}, C{_backend_gone}; either may go
    first); whether the hold paused the client's reading (C{_client_paused});
    and whether some bytes moved with splice(2) (C{spliced}, for the log).

    @ivar backend: the backend this session is connected to, once connected.
    @ivar bytes_in: bytes from the client written towards the backend.
    @ivar bytes_out: bytes from the backend written towards the client.
    @ivar close_reason: why the session ended, once it has.
    @ivar kind: C{"game"} or C{"websocket"} (registry, access log, metrics).
    @ivar spliced: whether some of its bytes moved with splice(2).
    @ivar started: when it started, in the clock's seconds.
    """

    # Slots, not a dict per session: a live session is mostly idle, and
    # thousands of them are what the gateway holds (docs/performance.md).
    __slots__ = (
        "_chooser",
        "_clock",
        "_held",
        "_held_size",
        "_phase",
        "_refusals",
        "_seat",
        "_settings",
        "backend",
        "client",
        "key",
        "kind",
        "peer",
        "started",
    )

    _log = Logger()

    def __init__(
        self,
        client: ITransport,
        chooser: IBackendChooser,
        clock: IReactorTime,
        settings: SessionSettings,
        *,
        peer: str,
        key: bytes | None = None,
        refusals: RefusalLog | None = None,
        kind: str = "game",
        wait: bool = True,
    ) -> None:
        """
        @param client: the client's transport (also an IPushProducer and IConsumer).
        @param chooser: picks backends (the pool).
        @param clock: for the connect, idle and fin timeouts; with the
            C{auto} or C{splice} relay mode, the reactor (which watches the
            sockets while the kernel moves the bytes).
        @param settings: the timeouts, retries, PROXY header, busy line and
            relay mode (its sniff timeout and session key are the front
            door's).
        @param peer: the client's address, for logs.
        @param key: the session's affinity key, for a balancer that uses one.
        @param refusals: where a session no backend could take is counted and
            logged (sampled, like every refusal); without it, it is logged
            as an error every time.
        @param kind: C{"game"}, or C{"websocket"} (a MessageStream client).
        @param wait: whether it may wait in the pool's waiting room (not a
            WebSocket upgrade passed through to an HTTP pool: its client
            expects an HTTP response, not a line about its place).
        """
        # The facts (the class's docstring), all false: the bits of one int.
        self._facts = 0
        self.client = cast(Stream, client)
        self._clock = clock
        self._settings = settings
        self.peer = peer
        self.key = key
        self._refusals = refusals
        self._chooser = chooser
        self._room: WaitingRoom | None = getattr(chooser, "room", None) if wait else None
        self._standing: Standing = DEFAULT
        self._ticket: Ticket | None = None
        self._dialer: Dialer | None = None
        self._seat: Seat | None = None
        self.quiet_init()
        self._phase = Phase.CONNECTING
        self._splice = None
        self.backend: Backend | None = None
        self.bytes_in = 0
        self.bytes_out = 0
        self.kind = kind
        self.started = clock.seconds()
        self.close_reason: CloseReason | None = None
        # The client's bytes while connecting; none kept once connected (a
        # list per idle session is 56 bytes: docs/performance.md).
        self._held: list[bytes] | None = None
        self._held_size = 0
        self._server: Stream | None = None
        self._ended_by: CloseReason | None = None
        self._abort_call: IDelayedCall | None = None

    @property
    def backend_name(self) -> str | None:
        """
        The name of the backend this session is connected to, once connected.
        """
        return self.backend.name if self.backend is not None else None

    @property
    def phase(self) -> Phase:
        """
        Where the session is in its life.
        """
        return self._phase

    @property
    def client_gone(self) -> bool:
        """
        Whether the client connection is gone.
        """
        return self._client_gone

    def _enter(self, phase: Phase) -> None:
        """
        Move on to C{phase} (staying in the same phase is no change).  A move
        the phases do not allow is a bug: it is logged, and the session takes
        the new phase anyway, since the event that caused it has happened.
        """
        current = self._phase
        if phase is current:
            return
        if not can_move(current, phase):
            self._log.error(
                "session from {peer}: impossible change of phase from {old} to {new}",
                peer=self.peer,
                old=current.value,
                new=phase.value,
            )
        self._phase = phase

    def traffic(self) -> int:
        """
        The bytes relayed so far, both ways together.
        """
        return self.bytes_in + self.bytes_out

    def one_direction_ended(self) -> bool:
        """
        Whether the client or the backend has ended its sending side.
        """
        return self._client_eof or self._backend_eof

    def quiet_timeouts(self) -> tuple[float, float]:
        """
        The idle and fin timeouts the session started with.
        """
        settings = self._settings
        return settings.idle_timeout, settings.fin_timeout

    def start(self, first_bytes: bytes) -> None:
        """
        Begin: hold the client's first bytes and connect to a backend.

        @param first_bytes: what the front door read while sniffing.
        """
        if first_bytes:
            self._hold(first_bytes)
        room = self._room
        if room is not None and room.open:
            host = getattr(cast(ITransport, self.client).getPeer(), "host", None)
            self._standing = room.standing(
                host if isinstance(host, str) else None, first_bytes.partition(b"\n")[0]
            )
            # Players already waiting go first (the room admits them if a
            # slot is free), then this one, if a slot is left.
            room.kick()
        self._new_dialer().connect_next()

    def _new_dialer(self) -> Dialer:
        room = self._room
        dialer = Dialer(
            self,
            self._chooser,
            self._clock,
            self._settings,
            key=self.key,
            peer=self.peer,
            blocked=self._standing.blocked,
            patient=room is not None and (self._ticket is not None or room.has_space),
            fast_path=self._fast_path_allowed(),
        )
        self._dialer = dialer
        return dialer

    def _hold(self, data: bytes) -> None:
        if self._held is None:
            self._held = [data]
        else:
            self._held.append(data)
        self._held_size += len(data)
        self._bound_hold()

    def _bound_hold(self) -> None:
        """
        Pause the client's reading once the hold is at its limit (smaller
        while it waits in the waiting room).
        """
        limit = WAIT_HOLD_LIMIT if self._phase is Phase.WAITING else HOLD_LIMIT
        if self._held_size >= limit and not self._client_paused:
            self._client_paused = True
            self.client.pauseProducing()

    # Events from the dialer and the backend link

    def link_ready(self, link: Link) -> None:
        """
        A backend connection is usable: connected, and for TLS, verified.
        """
        dialer = self._dialer
        if dialer is None or not dialer.take(link):
            return
        # The attempts are over (a link lost from now on is a stale one's):
        # a live session does not keep its dialer, only its shared seat.
        self._seat = dialer.seat
        self._dialer = None
        link.ready = True
        backend = link.backend
        self.backend = backend
        self._server = cast(Stream, link.transport)
        if isinstance(link, LeanLink) and self._refusals is not None:
            self._refusals.counters.fast_path += 1
        backend.total += 1  # active: counted from its choice (the dialer)
        duration = self._clock.seconds() - self.started
        log_session_start(peer=self.peer, backend=backend.name, kind=self.kind, duration=duration)
        held, self._held = self._held or [], None
        self._held_size = 0
        version = backend.proxy_protocol or self._settings.proxy_version
        header = b""
        if version != "off":
            # Before any client byte; not counted in bytes_in (not the client's).
            client = cast(ITransport, self.client)
            header = proxy_header(version, client.getPeer(), client.getHost())
        if self._try_splice(header, held):
            self.quiet_restart()
            return
        server = self._full_server()
        if server is None:
            return  # gone already: the session closed
        if header:
            server.write(header)
        for chunk in held:
            server.write(chunk)
            self.bytes_in += len(chunk)
        self._pair_transports()

    def link_lost(self, link: Link, reason: Failure) -> None:
        """
        A backend connection is gone: before it was ready (a failed attempt,
        e.g. a TLS verification error) or during the session.
        """
        if link.ready:
            self._backend_lost()
        elif self._dialer is not None:
            self._dialer.link_failed(link, reason)

    def no_backend(self, detail: str, tried: str) -> None:
        """
        No backend could take the session: refuse it.

        @param detail: what happened, for the refusal log.
        @param tried: the names of the backends tried.
        """
        if self._wait(detail):
            return
        self._chooser.nothing_available()
        self._refuse(Refusal.NO_BACKEND, CloseReason.NO_BACKEND, detail, tried=tried)

    def short_of_resources(self, detail: str) -> None:
        """
        An attempt failed for want of the gateway's own resources: refuse the
        session (other backends would need the same resources).
        """
        self._refuse(Refusal.LOCAL_RESOURCES, CloseReason.LOCAL_RESOURCES, detail)

    def capped(self, detail: str) -> None:
        """
        The cluster's cap on game sessions is reached: refuse the session.
        """
        self._refuse(Refusal.CLUSTER_CAP, CloseReason.CLUSTER_CAP, detail)

    def _pair_transports(self, *, end_passed: bool = False) -> None:
        """
        Relay through the transports: each produces for the other's, so a
        full write buffer on one side pauses reading on the other (flow
        control end to end).

        @param end_passed: the client's end of stream was passed on to the
            backend's socket already (by the splice relay): its sending side
            is shut down, and a second half-close, through the transport,
            would fail as a lost connection and cut what the backend still
            sends.
        """
        server = self._server
        assert server is not None
        if isinstance(self.client, BareClient):
            # Twisted's transports relay: the client gets its own now.
            self.client = cast(Stream, self.client.full())
        self._enter(Phase.RELAYING)
        server.registerProducer(self.client, True)
        self.client.registerProducer(server, True)
        self._client_feeds_server = self._server_feeds_client = True
        if self._client_eof:
            self._stop_client_feeding_server()
            if not end_passed:
                half_close(server)
        elif self._client_paused:
            self._client_paused = False
            self.client.resumeProducing()
        self.quiet_restart()

    # Events from the client side (the front door)

    def client_data(self, data: bytes) -> None:
        """
        Bytes from the client.
        """
        server = self._server
        if server is None:
            self._hold(data)
            return
        write_now(server, data)
        self.bytes_in += len(data)

    def client_eof(self) -> None:
        """
        The client half-closed (or closed) its sending side.
        """
        if self._phase is Phase.WAITING:
            # A waiting player whose sending side ends has left: a normal
            # close looks the same on the wire as a half-close, a browser
            # does not half-close, and a seat given to it would be wasted
            # (as HAProxy's queue with option abortonclose).  Out at once.
            self._finish(CloseReason.CLIENT_LEFT_EARLY)
            self._leave_room()
            self._enter(Phase.CLOSING)
            self.client.loseConnection()
            return
        if self._client_eof:
            return  # passed on already (by the splice relay)
        self._mark_ended(client=True)
        server = self._server
        if server is None:
            return  # passed on once connected
        self._stop_client_feeding_server()
        if self._backend_eof:
            self._close_both()
        else:
            half_close(server)
            self.quiet_restart()

    def client_lost(self) -> None:
        """
        The client connection is gone.
        """
        self._client_gone = True
        self._stop_splicing()
        self._stop_abort_timer()
        if self._phase in (Phase.CONNECTING, Phase.WAITING):
            self._finish(CloseReason.CLIENT_LEFT_EARLY)
            self._leave_room()
            self._enter(Phase.CLOSED)
            return
        self._finish(self._ended_by or CloseReason.CLIENT_CLOSED)
        server = self._server
        if server is not None and not self._backend_gone:
            self._enter(Phase.CLOSING)
            self._stop_client_feeding_server()
            server.loseConnection()
        else:
            self._enter(Phase.CLOSED)

    # Events from the backend side

    def backend_data(self, data: bytes) -> None:
        """
        Bytes from the backend.
        """
        write_now(self.client, data)
        self.bytes_out += len(data)

    def backend_eof(self) -> None:
        """
        The backend half-closed (or closed) its sending side.
        """
        if self._backend_eof:
            return  # passed on already (by the splice relay)
        self._mark_ended(client=False)
        self._stop_server_feeding_client()
        if self._client_eof:
            self._close_both()
        else:
            half_close(self.client)
            self.quiet_restart()

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
            seat, self._seat = self._seat, None
            if seat is not None:
                seat.release()
            if self._room is not None:
                self._room.kick()  # a slot freed
        self._finish(self._ended_by or CloseReason.BACKEND_CLOSED)
        if not self._client_gone:
            self._enter(Phase.CLOSING)
            self._stop_server_feeding_client()
            close_now(self.client)  # client_lost may run before this returns
        else:
            self._enter(Phase.CLOSED)
