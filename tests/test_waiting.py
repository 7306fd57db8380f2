"""
Tests for game sessions in the waiting room (L{GameSession} with its pool's
L{gateway.pool.room.WaitingRoom} open): waiting instead of being refused,
bytes held while waiting delivered first and in order, the room's refusals,
a player who leaves, a stop, and a WebSocket player told its place in a text
message.  The room's ordering itself is tested in C{tests/test_room.py}.
"""

from __future__ import annotations

from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogLevel, formatEvent
from twisted.python.failure import Failure

from gateway.front.limits import Refusal
from gateway.ops.registry import Counters, RefusalLog
from gateway.pool.backends import Pool
from gateway.pool.balance import make_balancer
from gateway.pool.room import KICK_RETRY, RoomSettings
from gateway.session.lifecycle import CloseReason, Phase
from gateway.session.relay import WAIT_HOLD_LIMIT, GameSession
from gateway.session.settings import SessionSettings
from tests.test_relay import (
    CONNECT_TIMEOUT,
    PEER,
    FakeTransport,
    HalfCloseableTransport,
    memory_backends,
    written,
)

BUSY = "full, try later"
MESSAGE = "place {position} of {length}, about {eta} s"


def phase(session: GameSession) -> Phase:
    """
    The session's phase now (a call, so that a type checker does not carry
    an earlier assertion about it past the events that change it).
    """
    return session.phase


class Room:
    """
    One pool of backends with a session limit, its waiting room open, and
    the sessions started on it.
    """

    def __init__(
        self,
        *,
        backends: int = 1,
        max_sessions: int = 1,
        size: int = 2,
        timeout: float = 10.0,
        message: str | None = MESSAGE,
    ) -> None:
        self.reactor = MemoryReactorClock()
        self.backends = memory_backends(self.reactor, backends)
        for backend in self.backends:
            backend.max_sessions = max_sessions
        self.pool = Pool(self.backends)
        self.pool.room.configure(
            RoomSettings(size=size, timeout=timeout, update=5.0, message=message), self.reactor
        )
        self.counters = Counters()
        self.refusals = RefusalLog(self.reactor, self.counters)
        self.settings = SessionSettings(
            sniff_timeout=2.0,
            connect_timeout=CONNECT_TIMEOUT,
            idle_timeout=0.0,
            fin_timeout=0.0,
            busy_message=BUSY,
        )

    def start(
        self, first: bytes = b"hello\n", *, wait: bool = True, key: bytes | None = None
    ) -> tuple[GameSession, FakeTransport]:
        """
        A new session from a client that sent C{first}.
        """
        client = HalfCloseableTransport()
        session = GameSession(
            client,
            self.pool,
            self.reactor,
            self.settings,
            peer=PEER,
            refusals=self.refusals,
            wait=wait,
            key=key,
        )
        client.on_lost = lambda reason: session.client_lost()
        session.start(first)
        return session, client

    def accept(self, attempt: int = -1) -> tuple[FakeTransport, object]:
        """
        Complete a connection attempt (the last by default).
        """
        host, port, factory, _timeout, _bind = self.reactor.tcpClients[attempt]
        protocol = factory.buildProtocol(IPv4Address("TCP", host, port))
        assert protocol is not None
        transport = HalfCloseableTransport()
        transport.on_lost = protocol.connectionLost
        transport.protocol = protocol
        protocol.makeConnection(transport)
        return transport, protocol

    def connected(
        self, first: bytes = b"hello\n"
    ) -> tuple[GameSession, FakeTransport, FakeTransport]:
        """
        A session that found a free slot and is connected.
        """
        session, client = self.start(first)
        server, _protocol = self.accept()
        assert phase(session) is Phase.RELAYING
        return session, client, server


def test_waits_when_every_backend_is_full() -> None:
    """
    A session no backend has room for waits instead of being refused, and
    is told its place.
    """
    room = Room()
    room.connected()
    session, client = room.start()
    assert phase(session) is Phase.WAITING
    assert len(room.pool.room) == 1 and session.ticket is not None
    assert written(client) == b"place 1 of 1, about ? s\r\n"
    assert not client.disconnecting
    assert len(room.reactor.tcpClients) == 1  # no attempt while waiting
    assert room.counters.refused[Refusal.QUEUE_FULL] == 0
    assert room.pool.unserved == 0


def test_admitted_when_a_slot_frees_with_its_bytes_in_order() -> None:
    """
    When the session on the backend ends, the waiting session connects, and
    the bytes it sent while waiting reach the backend first, in order.
    """
    room = Room()
    _first, _client1, server1 = room.connected()
    session, client = room.start(b"first line\n")
    session.client_data(b"sent while waiting")
    server1.connection_lost(Failure(ConnectionError()))
    assert phase(session) is Phase.CONNECTING
    assert len(room.reactor.tcpClients) == 2
    server, _protocol = room.accept()
    assert written(server) == b"first line\nsent while waiting"
    assert phase(session) is Phase.RELAYING
    assert room.backends[0].active == 1
    assert room.pool.room.admitted == 1 and len(room.pool.room) == 0


def test_room_full_refuses_with_busy_line() -> None:
    """
    With the room full, the next session is refused (queue-full), gets the
    busy line and is closed.
    """
    room = Room(size=1)
    room.connected()
    room.start()
    session, client = room.start()
    assert session.close_reason is CloseReason.QUEUE_FULL
    assert written(client) == (BUSY + "\r\n").encode()
    assert client.disconnecting
    assert room.counters.refused[Refusal.QUEUE_FULL] == 1
    assert room.pool.room.full == 1 and room.pool.unserved == 1


def test_wait_times_out() -> None:
    """
    Past the queue timeout the waiting session is refused (queue-timeout)
    with the busy line; not before.
    """
    room = Room(timeout=10.0, message=None)
    room.connected()
    session, client = room.start()
    room.reactor.advance(9.9)
    assert phase(session) is Phase.WAITING and not client.disconnecting
    room.reactor.advance(0.1)
    assert session.close_reason is CloseReason.QUEUE_TIMEOUT
    assert written(client) == (BUSY + "\r\n").encode()
    assert client.disconnecting
    assert room.counters.refused[Refusal.QUEUE_TIMEOUT] == 1
    assert len(room.pool.room) == 0 and room.pool.room.timed_out == 1


def test_leaver_leaves_at_once() -> None:
    """
    A client that leaves while waiting is out of the room at once: the next
    free slot goes to the one behind it.
    """
    room = Room(size=3)
    _first, _client1, server1 = room.connected()
    leaver, leaver_client = room.start(b"leaver\n")
    stayer, _stayer_client = room.start(b"stayer\n")
    leaver_client.connection_lost(Failure(ConnectionError()))
    assert leaver.close_reason is CloseReason.CLIENT_LEFT_EARLY
    assert len(room.pool.room) == 1 and room.pool.room.left == 1
    server1.connection_lost(Failure(ConnectionError()))
    assert phase(stayer) is Phase.CONNECTING and phase(leaver) is Phase.CLOSED
    server, _protocol = room.accept()
    assert written(server) == b"stayer\n"


def test_holds_little_while_waiting() -> None:
    """
    A waiting client's reading is paused once it sent WAIT_HOLD_LIMIT bytes,
    and resumed once its session relays; nothing is lost.
    """
    room = Room()
    _first, _client1, server1 = room.connected()
    session, client = room.start(b"")
    chunk = b"x" * 1024
    sent = 0
    while "pause" not in client.flow:
        session.client_data(chunk)
        sent += len(chunk)
        assert sent <= WAIT_HOLD_LIMIT
    server1.connection_lost(Failure(ConnectionError()))
    server, _protocol = room.accept()
    assert written(server) == b"x" * sent
    assert client.flow == ["pause", "resume"]


def test_stop_turns_waiting_players_away() -> None:
    """
    The gateway stopping (drain or shutdown) tells a waiting player the busy
    line and closes it; the room is empty.
    """
    room = Room(message=None)
    room.connected()
    session, client = room.start()
    session.close(CloseReason.SHUTDOWN)
    assert written(client) == (BUSY + "\r\n").encode()
    assert client.disconnecting and len(room.pool.room) == 0
    assert session.close_reason is CloseReason.SHUTDOWN


def refuse_last_attempt(room: Room) -> None:
    """
    Fail the last connection attempt as refused.
    """
    factory = room.reactor.tcpClients[-1][2]
    factory.clientConnectionFailed(room.reactor.connectors[-1], Failure(ConnectionRefusedError()))


def test_failed_admission_goes_back_to_its_place() -> None:
    """
    A waiter admitted to a backend that refuses the connection, while the
    other backend is full, waits again at its own place, ahead of those who
    came after it; the seat it gave back is offered again after KICK_RETRY
    seconds (not at once: a backend that refuses everyone is not hammered).
    """
    room = Room(backends=2, size=3, message=None)
    _first, _client1, server1 = room.connected()
    room.connected()
    early, _c2 = room.start(b"early\n")
    late, _c3 = room.start(b"late\n")
    server1.connection_lost(Failure(ConnectionError()))
    assert phase(early) is Phase.CONNECTING
    refuse_last_attempt(room)
    assert phase(early) is Phase.WAITING and phase(late) is Phase.WAITING
    assert room.backends[0].active == 0
    positions = room.pool.room.positions()
    assert early.ticket is not None and late.ticket is not None
    assert positions[early.ticket.seq] == 1 and positions[late.ticket.seq] == 2
    attempts = len(room.reactor.tcpClients)
    room.reactor.advance(KICK_RETRY - 0.01)
    assert len(room.reactor.tcpClients) == attempts
    room.reactor.advance(0.01)
    assert phase(early) is Phase.CONNECTING and phase(late) is Phase.WAITING
    assert room.reactor.tcpClients[-1][1] == 7000  # b0 again, its seat free


def test_arrival_does_not_pass_waiters() -> None:
    """
    A seat that freed before the room looked again (a failed admission)
    goes to the longest waiter when the next player arrives, not to the
    newcomer.
    """
    room = Room(backends=2, size=3, message=None)
    _first, _client1, server1 = room.connected()
    room.connected()
    waiter, _c2 = room.start(b"waiter\n")
    server1.connection_lost(Failure(ConnectionError()))
    refuse_last_attempt(room)
    assert phase(waiter) is Phase.WAITING
    newcomer, _c3 = room.start(b"newcomer\n")
    assert phase(waiter) is Phase.CONNECTING
    assert phase(newcomer) is Phase.WAITING


def test_a_failing_backend_is_no_reason_to_wait() -> None:
    """
    A session whose attempts all failed while no backend is full (a backend
    that refuses connections) is refused at once, no-backend, as without a
    waiting room: waiting in front of an empty backend would be for nothing.
    """
    room = Room(backends=1, size=3)
    session, client = room.start()
    refuse_last_attempt(room)
    assert session.close_reason is CloseReason.NO_BACKEND
    assert len(room.pool.room) == 0
    assert written(client) == (BUSY + "\r\n").encode()


def test_hash_with_the_room_full_overflows() -> None:
    """
    With balance hash, a player whose own backend is full waits for it; but
    with the room full it takes another backend with a free seat rather than
    be refused.
    """
    room = Room(backends=2, max_sessions=1, size=1, message=None)
    room.pool.reconfigure(balancer=make_balancer("hash"), fall=0)
    first, _c1 = room.start(b"", key=b"k")
    room.accept()
    own = first.backend
    assert own is not None
    keys = (b"k%d" % n for n in range(1000))
    same = [k for k in keys if room.pool.choose((), k, 0, True) is None][:2]
    waiter, _c2 = room.start(b"", key=same[0])
    assert phase(waiter) is Phase.WAITING
    overflow, _c3 = room.start(b"", key=same[1])
    assert phase(overflow) is Phase.CONNECTING
    other = room.backends[1] if own is room.backends[0] else room.backends[0]
    assert room.reactor.tcpClients[-1][1] == other.endpoint._port  # type: ignore[attr-defined]


def test_a_waiting_browser_that_fails_closes_with_its_own_code() -> None:
    """
    A waiting session closed for its own fault (a WebSocket protocol error,
    a message too big, no pong) leaves the room and closes as any session
    does, not with the busy line; only a stopping gateway turns waiters away.
    """
    room = Room(message=None)
    room.connected()
    session, client = room.start()
    session.close(CloseReason.PROTOCOL_ERROR)
    assert client.disconnecting and written(client) == b""
    assert len(room.pool.room) == 0 and room.pool.room.left == 1
    stopped, stopped_client = room.start()
    stopped.close(CloseReason.SHUTDOWN)
    assert written(stopped_client) == (BUSY + "\r\n").encode()
    assert room.pool.room.left == 1  # turned away, not left


def test_closed_room_refuses_as_before(log_events: object) -> None:
    """
    With the room closed (size 0) a full pool refuses with no-backend, as
    without a waiting room.
    """
    room = Room(size=0)
    room.connected()
    session, client = room.start()
    assert session.close_reason is CloseReason.NO_BACKEND
    assert room.counters.refused[Refusal.NO_BACKEND] == 1
    assert written(client) == (BUSY + "\r\n").encode()


def test_messages_follow_the_position() -> None:
    """
    A waiter is told again when its position changed, at the next update.
    """
    room = Room(size=3, timeout=60.0)
    _first, _client1, server1 = room.connected()
    _ahead, _c2 = room.start()
    behind, client = room.start()
    assert written(client) == b"place 2 of 2, about ? s\r\n"
    room.reactor.advance(5.0)
    assert written(client) == b"place 2 of 2, about ? s\r\n"  # unchanged: not told
    server1.connection_lost(Failure(ConnectionError()))
    room.reactor.advance(5.0)
    assert written(client).endswith(b"place 1 of 1, about ? s\r\n")
    assert phase(behind) is Phase.WAITING


def test_no_refusal_logged_as_error_when_waiting(log_events: list[dict[str, object]]) -> None:
    """
    Waiting is not a failure: nothing is logged at error level.
    """
    room = Room()
    room.connected()
    room.start()
    errors = [formatEvent(e) for e in log_events if e["log_level"] is LogLevel.error]
    assert errors == []


def test_a_session_that_may_not_wait_is_refused() -> None:
    """
    A session made not to wait (a WebSocket upgrade passed through to an
    HTTP pool) is refused at once with no-backend, the room open or not.
    """
    room = Room()
    room.connected()
    session, client = room.start(wait=False)
    assert session.close_reason is CloseReason.NO_BACKEND
    assert len(room.pool.room) == 0
    assert written(client) == (BUSY + "\r\n").encode()


def test_end_of_stream_while_waiting_is_leaving() -> None:
    """
    A waiting client whose sending side ends (a normal close looks the same
    as a half-close) has left: its connection is closed and it is out of
    the room at once; the seat goes to the one behind it.
    """
    room = Room(size=3, message=None)
    _first, _client1, server1 = room.connected()
    leaver, leaver_client = room.start(b"leaver\n")
    stayer, _c3 = room.start(b"stayer\n")
    leaver.client_eof()
    assert leaver_client.disconnecting
    leaver_client.connection_lost(Failure(ConnectionError()))
    assert len(room.pool.room) == 1 and room.pool.room.left == 1
    assert leaver.close_reason is CloseReason.CLIENT_LEFT_EARLY
    server1.connection_lost(Failure(ConnectionError()))
    assert phase(stayer) is Phase.CONNECTING
    assert len(room.reactor.tcpClients) == 2
