"""
The waiting room as operators see it: the waiting sessions' state, place,
wait and class in C{/status.json} (built, streamed and merged from worker
processes), each pool's C{queues} entry, and the C{gateway_queue_*} metrics
with the waiting room's refusals among the others.  Real pools, rooms and
game sessions on L{StringTransport} and L{MemoryReactorClock}.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.testing import MemoryReactorClock, StringTransport

from gateway.ops.admin import STREAM_CHUNK
from gateway.ops.metrics import metrics_text, render_metrics
from gateway.ops.registry import Counters, RefusalLog, SessionRegistry
from gateway.ops.status import (
    AdminState,
    WaitingPlaces,
    gather_status,
    session_entry,
    session_json,
    status,
)
from gateway.pool.backends import Backend, Pool
from gateway.pool.pools import Pools
from gateway.pool.room import RoomSettings
from gateway.process.wire import StatusReply
from gateway.session.lifecycle import Phase
from gateway.session.relay import GameSession
from gateway.session.settings import SessionSettings
from tests.test_admin import FakeSession
from tests.test_admin_actions import request
from tests.test_metrics import FakeWorkers, at, samples_of

SETTINGS = SessionSettings(
    sniff_timeout=1.0, connect_timeout=5.0, idle_timeout=0.0, fin_timeout=5.0
)
"""The sessions' settings (no idle timeout: nothing runs but the room's timers)."""

VIP = "198.51.100.9"
"""The address of the one player of class C{vip}."""


@dataclass(frozen=True)
class AddressClass:
    """
    A queue class that takes the players from one address.
    """

    name: str
    priority: int
    reserved: int
    address: str
    first_line: re.Pattern[bytes] | None = None

    def matches(self, host: str | None, first_line: bytes) -> bool:
        return host == self.address


@dataclass
class Room:
    """
    A gateway's parts around one full backend and its pool's waiting room.
    """

    clock: MemoryReactorClock
    backend: Backend
    pool: Pool
    registry: SessionRegistry
    state: AdminState
    sessions: list[GameSession]

    def arrive(self, host: str) -> GameSession:
        """
        A player from C{host} connects (it waits, or is refused, if the
        backend is full) and is registered as a live session.
        """
        client = StringTransport(peerAddress=IPv4Address("TCP", host, 4000))
        session = GameSession(
            client,
            self.pool,
            self.clock,
            SETTINGS,
            peer=f"{host}:4000",
            refusals=RefusalLog(self.clock, self.state.counters),
        )
        session.start(b"hello\n")
        self.registry.add(session)
        self.sessions.append(session)
        return session


def make_room(size: int = 3, timeout: float = 60.0) -> Room:
    """
    A pool whose one backend is full (max-sessions 1, one session on it)
    and whose waiting room holds C{size} players for C{timeout} seconds;
    players from L{VIP} are of class C{vip}, ahead of the others.
    """
    clock = MemoryReactorClock()
    clock.advance(1000.0)
    backend = Backend(
        "b", "tcp:127.0.0.1:7000", TCP4ClientEndpoint(clock, "127.0.0.1", 7000), max_sessions=1
    )
    backend.active = 1
    pool = Pool([backend], clock=clock)
    vip = AddressClass("vip", 10, 0, VIP)
    pool.room.configure(RoomSettings(size=size, timeout=timeout, classes=(vip,)), clock)
    registry = SessionRegistry(clock)
    state = AdminState(Pools(pool), registry, Counters(), clock=clock)
    return Room(clock, backend, pool, registry, state, [])


def fill(room: Room) -> None:
    """
    Three players wait: two of no class (at 1000 and 1002), then the vip
    (at 1005); the clock stops at 1010.  A fourth player finds the room full.
    """
    room.arrive("192.0.2.1")
    room.clock.advance(2.0)
    room.arrive("192.0.2.2")
    room.clock.advance(3.0)
    room.arrive(VIP)
    room.clock.advance(5.0)
    assert [s.phase for s in room.sessions] == [Phase.WAITING] * 3
    room.arrive("192.0.2.4")
    assert room.sessions[-1].phase is not Phase.WAITING


def test_waiting_sessions_show_their_place() -> None:
    """
    Each waiting session lists its state, its position (the vip first,
    then the others in arrival order), how long it has waited and its
    class; an HTTP connection, which has no state, lists none.  The pool's
    queue shows its length, size, oldest wait and the player it turned
    away, who is a queue-full refusal like any other.
    """
    room = make_room()
    fill(room)
    room.registry.add(FakeSession("http", "192.0.2.9:6000", 1010.0, None, 1, 2))

    document = status(room.state)

    waiting = [
        (s["peer"], s["state"], s["position"], s["waited"], s["class"])
        for s in document["sessions"]
        if "position" in s
    ]
    assert waiting == [
        ("192.0.2.1:4000", "waiting", 2, 10.0, "default"),
        ("192.0.2.2:4000", "waiting", 3, 8.0, "default"),
        (f"{VIP}:4000", "waiting", 1, 5.0, "vip"),
    ]
    refused, http = document["sessions"][3:]
    assert refused["state"] == "closing" and "position" not in refused
    assert "state" not in http and "position" not in http
    queue = document["counters"]["queues"]["game"]
    assert {k: v for k, v in queue.items() if k != "waits"} == {
        "length": 3,
        "size": 3,
        "timeout": 60.0,
        "oldest_wait": 10.0,
        "admitted": 0,
        "timed_out": 0,
        "full": 1,
        "left": 0,
    }
    assert document["counters"]["refused"]["queue-full"] == 1
    json.dumps(document)


def test_a_closed_room_is_not_listed() -> None:
    """
    A pool whose waiting room is closed (the default) and never counted
    anything has no entry in C{queues}, and no queue metrics.
    """
    room = make_room(size=0)
    assert status(room.state)["counters"]["queues"] == {}
    assert not [k for k in samples_of(render_metrics(room.state)) if "queue_" in k[0]]


def test_session_json_is_the_entry() -> None:
    """
    The streamed form of a session (JSON text built from strings) says
    what the built entry says, waiting or not.
    """
    room = make_room()
    fill(room)
    places = WaitingPlaces(room.state.pool, room.clock.seconds())
    for number, session in enumerate(room.sessions, 1):
        assert json.loads(session_json(number, session, places=places)) == session_entry(
            number, session, places
        )
    assert json.loads(session_json(1, room.sessions[0], worker=2))["worker"] == 2


def test_streamed_status_lists_every_place() -> None:
    """
    A list longer than one streaming step (written by the cooperator) still
    gives every waiting session its state and position.
    """
    count = STREAM_CHUNK + 20
    room = make_room(size=count)
    for number in range(count):
        room.arrive(f"10.0.{number // 250}.{number % 250 + 1}")
    document = request(room.state, "GET", "/status.json").json()
    sessions = document["sessions"]
    assert isinstance(sessions, list)
    assert [(s["state"], s["position"]) for s in sessions] == [
        ("waiting", n) for n in range(1, count + 1)
    ]


def test_queue_metrics_after_admissions_and_timeouts() -> None:
    """
    When the backend frees a slot the longest-waiting player (the vip) is
    admitted; later the others time out.  The metrics show the queue's
    length and size, the admission, the waits in their buckets and the
    timeouts as queue-timeout refusals.
    """
    room = make_room(size=3, timeout=20.0)
    fill(room)
    samples = samples_of(render_metrics(room.state))
    assert at(samples, "gateway_queue_length", pool="game") == 3
    assert at(samples, "gateway_queue_size", pool="game") == 3
    assert at(samples, "gateway_queue_oldest_wait_seconds", pool="game") == 10.0
    assert at(samples, "gateway_connections_refused_total", reason="queue-full") == 1

    room.backend.active = 0
    room.pool.room.kick()
    assert room.sessions[2].phase is Phase.CONNECTING
    # The backend accepts the vip's connection.
    [(_, _, factory, _, _)] = room.clock.tcpClients
    link = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 7000))
    assert link is not None
    link.makeConnection(StringTransport())
    phase: Phase = room.sessions[2].phase  # moved on by the link
    assert phase is Phase.RELAYING
    room.clock.advance(10.0)  # the first player's 20 s are over
    room.clock.advance(2.0)  # and the second's

    samples = samples_of(render_metrics(room.state))
    assert at(samples, "gateway_queue_length", pool="game") == 0
    assert at(samples, "gateway_queue_oldest_wait_seconds", pool="game") == 0
    assert at(samples, "gateway_queue_admitted_total", pool="game") == 1
    assert at(samples, "gateway_queue_left_total", pool="game") == 0
    assert at(samples, "gateway_connections_refused_total", reason="queue-timeout") == 2
    wait = "gateway_queue_wait_seconds"
    assert at(samples, f"{wait}_count", pool="game") == 3
    assert at(samples, f"{wait}_sum", pool="game") == 5.0 + 20.0 + 20.0
    assert at(samples, f"{wait}_bucket", pool="game", le="5.0") == 1
    assert at(samples, f"{wait}_bucket", pool="game", le="15.0") == 1
    assert at(samples, f"{wait}_bucket", pool="game", le="30.0") == 3


def test_a_player_who_leaves_is_counted() -> None:
    """
    A waiting player whose client goes leaves the room at once: the length
    drops, C{left} counts it, and the others move up.
    """
    room = make_room()
    fill(room)
    room.sessions[2].client_lost()
    document = status(room.state)
    queue = document["counters"]["queues"]["game"]
    assert (queue["length"], queue["left"]) == (2, 1)
    assert [s.get("position") for s in document["sessions"][:2]] == [1, 2]


def reply_with_queue(number: int, room: Room) -> StatusReply:
    """
    A worker's reply whose counters carry C{room}'s queue.
    """
    counters: dict[str, Any] = status(room.state, limit=0)["counters"]
    return StatusReply(number=number, live=0, counters=counters, backends={}, sessions=())


def test_workers_queues_are_added_up() -> None:
    """
    With worker processes each has its own room: the acceptor's document
    adds the lengths, sizes and counts up and keeps the longest wait.
    """
    first, second = make_room(), make_room(size=5)
    fill(first)
    second.arrive("192.0.2.1")
    second.clock.advance(3.0)
    acceptor = AdminState(
        Pools(Pool([])),
        SessionRegistry(),
        Counters(),
        workers=FakeWorkers([reply_with_queue(1, first), reply_with_queue(2, second)]),
    )
    found: list[dict[str, Any]] = []
    gather_status(acceptor, 0).addCallback(lambda result: found.append(result[0]))
    [document] = found
    queue = document["counters"]["queues"]["game"]
    assert (queue["length"], queue["size"], queue["full"], queue["oldest_wait"]) == (4, 8, 1, 10.0)
    samples = samples_of(metrics_text(document, acceptor))
    assert at(samples, "gateway_queue_length", pool="game") == 4
