"""
The waiting room end to end: a real C{twistd -n gateway} with backends at
their C{max-sessions}, real raw TCP and WebSocket players on loopback, and
the admin endpoint's C{/status.json} read as an operator reads it.

Players are told their place with C{--queue-message "{position} of
{length}"} (a line on raw TCP, a text message on WebSocket), so each test
reads what a player sees: its place counting down, then the echo of what it
sent while it waited, proving those bytes reached the backend first and
intact.  Waits are bounded by the socket timeouts and L{wait_for}; no assert
depends on how long anything took.
"""

from __future__ import annotations

import json
import re
import resource
import signal
import socket
import statistics
import struct
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed

from gateway.config import DEMO_QUEUE_MESSAGE
from tests.queueplayers import PLACE, Player, TcpPlayer, WsPlayer, new_player, round_trip
from tests.support import (
    DEADLINE,
    Backend,
    GatewayProcess,
    admin_url,
    banner_then_echo,
    connect,
    echo,
    rss_kib,
    wait_for,
)

pytestmark = pytest.mark.usefixtures("tcp_path")


def status(url: str) -> dict[str, Any]:
    """
    The gateway's C{/status.json}.
    """
    with urllib.request.urlopen(url + "/status.json", timeout=DEADLINE) as reply:
        document: dict[str, Any] = json.load(reply)
    return document


def waiting(document: dict[str, Any]) -> list[dict[str, Any]]:
    """
    The waiting sessions of a status document, in arrival order.
    """
    return sorted(
        (s for s in document["sessions"] if s.get("state") == "waiting"), key=lambda s: s["id"]
    )


def room(url: str, pool: str = "game") -> dict[str, Any]:
    """
    One pool's waiting room as C{counters.queues} shows it.
    """
    rooms: dict[str, Any] = status(url)["counters"]["queues"]
    return dict(rooms[pool])


def refused(url: str) -> dict[str, int]:
    """
    The refusal counters, by reason.
    """
    counts: dict[str, int] = status(url)["counters"]["refused"]
    return counts


def room_args(*backends: Backend, extra: tuple[str, ...] = ()) -> list[str]:
    """
    A gateway in front of C{backends}, with a waiting room that tells its
    place every 0.2 s at most, its admin endpoint on 127.0.0.3.
    """
    args = [
        "--health-interval",
        "0",
        "--admin",
        "tcp:0:interface=127.0.0.3",
        "--queue-size",
        "10",
        "--queue-update",
        "0.2",
        "--queue-message",
        PLACE,
        "--busy-message",
        "busy",
    ]
    for backend in backends:
        args += ["--backend", backend.endpoint]
    return [*args, *extra]


def test_six_players_two_slots_positions_count_down_in_order(tmp_path: Path) -> None:
    """
    Two of six players (raw TCP and WebSocket) get the backend's two slots;
    the other four wait, each told its place on entering ("k of k"), and
    status.json lists them waiting at positions 1 to 4.  As admitted
    sessions close one by one, the head of the queue is admitted each time
    (and only it), the others are told their place one lower, and what each
    sent while it waited reaches the backend first and intact (the echo
    starts with it).
    """
    with Backend(echo) as backend:
        args = room_args(backend, extra=("--max-sessions", "2", "--websocket", "/play"))
        with GatewayProcess(args, tmp_path) as gateway:
            url = admin_url(gateway)
            players: list[Player] = []
            try:
                for number, kind in enumerate(["tcp", "ws"]):
                    players.append(new_player(gateway, kind))
                    round_trip(players[-1], b"first %d\n" % number)
                held: list[bytes] = []
                for number, kind in enumerate(["tcp", "ws", "ws", "tcp"], start=2):
                    early = b"early %d\n" % number
                    player = new_player(gateway, kind, early)
                    players.append(player)
                    # Entering the room tells its place: it waits behind the earlier ones.
                    place = number - 1
                    assert player.place() == (place, place)
                    late = b"late %d " % number + bytes(range(256)) + b"\n"
                    player.send(late)
                    held.append(early + late)
                entries = waiting(status(url))
                assert [(e["position"], e["class"]) for e in entries] == [
                    (1, "default"),
                    (2, "default"),
                    (3, "default"),
                    (4, "default"),
                ]
                assert room(url)["length"] == 4
                waiters = players[2:]
                for step in range(4):
                    players[step].close()  # an admitted session ends: one slot frees
                    head = waiters[step]
                    assert head.data(len(held[step])) == held[step]
                    round_trip(head, b"after %d\n" % step)
                    for behind in waiters[step + 1 :]:
                        position, length = behind.place()
                        assert position == waiters.index(behind) - step
                        assert length == 3 - step
                for number, player in enumerate(waiters, start=1):
                    assert [p for p, _ in player.places] == list(range(number, 0, -1))
                counters = room(url)
                assert (counters["length"], counters["admitted"], counters["left"]) == (0, 4, 0)
                assert backend.connections == 6
            finally:
                for player in players:
                    player.close()


def test_players_who_leave_are_removed_at_once(tmp_path: Path) -> None:
    """
    A waiting player whose connection goes (a raw TCP player whose
    connection is reset, a WebSocket player who closes) leaves the room at
    once: its length drops, C{left} counts it, it never reaches the
    backend, and the player behind it moves up and takes the next slot.
    """
    with Backend(echo) as backend:
        args = room_args(backend, extra=("--max-sessions", "1", "--websocket", "/play"))
        with GatewayProcess(args, tmp_path) as gateway:
            url = admin_url(gateway)
            admitted = TcpPlayer(gateway.port)
            round_trip(admitted, b"in\n")
            leaver = TcpPlayer(gateway.port, b"leaver\n")
            assert leaver.place() == (1, 1)
            browser = WsPlayer(gateway)
            assert browser.place() == (2, 2)
            stayer = TcpPlayer(gateway.port, b"stayer\n")
            assert stayer.place() == (3, 3)
            assert room(url)["length"] == 3
            # A reset, as when the player's program dies or its network drops.
            leaver.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            leaver.close()
            wait_for(lambda: room(url)["length"] == 2, "the TCP leaver to leave the room")
            assert room(url)["left"] == 1
            browser.close()
            wait_for(lambda: room(url)["length"] == 1, "the WebSocket leaver to leave the room")
            assert room(url)["left"] == 2
            assert stayer.place() == (1, 1)
            assert [e["position"] for e in waiting(status(url))] == [1]
            admitted.close()
            assert stayer.data(len(b"stayer\n")) == b"stayer\n"
            assert backend.connections == 2  # the leavers never reached it
            stayer.close()


@pytest.mark.parametrize("how", ["close", "half-close"])
def test_a_waiter_that_closes_leaves_at_once(tmp_path: Path, how: str) -> None:
    """
    A raw TCP player that ends its sending side while it waits, by closing
    normally or by C{shutdown(SHUT_WR)} (the two look the same on the
    wire), has left: it is out of the room at once, never reaches the
    backend, and the player behind it moves up.
    """
    with Backend(echo) as backend:
        args = room_args(backend, extra=("--max-sessions", "1"))
        with GatewayProcess(args, tmp_path) as gateway:
            url = admin_url(gateway)
            admitted = TcpPlayer(gateway.port)
            round_trip(admitted, b"in\n")
            leaver = TcpPlayer(gateway.port, b"leaver\n")
            assert leaver.place() == (1, 1)
            behind = TcpPlayer(gateway.port, b"behind\n")
            assert behind.place() == (2, 2)
            if how == "close":
                leaver.close()
            else:
                leaver.sock.shutdown(socket.SHUT_WR)
            wait_for(lambda: room(url)["length"] == 1, "the leaver to leave the room")
            assert room(url)["left"] == 1
            assert behind.place() == (1, 1)
            if how == "half-close":
                assert leaver.rest() == b""  # closed by the gateway, nothing more sent
                leaver.close()
            admitted.close()
            assert behind.data_after_places(len(b"behind\n")) == b"behind\n"
            assert backend.connections == 2  # the leaver never reached it
            behind.close()


def test_the_queue_timeout_sends_the_busy_line(tmp_path: Path) -> None:
    """
    With C{--queue-timeout 1} a waiting player gets the busy line and is
    closed, counted as a C{queue-timeout} refusal; the gateway serves on.
    """
    with Backend(echo) as backend:
        args = room_args(backend, extra=("--max-sessions", "1", "--queue-timeout", "1"))
        with GatewayProcess(args, tmp_path) as gateway:
            url = admin_url(gateway)
            admitted = TcpPlayer(gateway.port)
            round_trip(admitted, b"in\n")
            waiter = TcpPlayer(gateway.port, b"waiting\n")
            assert waiter.place() == (1, 1)
            assert waiter.rest() == b"busy\r\n"
            assert refused(url)["queue-timeout"] == 1
            counters = room(url)
            assert (counters["length"], counters["timed_out"]) == (0, 1)
            round_trip(admitted, b"still here\n")
            admitted.close()
            wait_for(lambda: status(url)["backends"][0]["active"] == 0, "the slot to free")
            newcomer = TcpPlayer(gateway.port)
            round_trip(newcomer, b"served\n")
            newcomer.close()
            assert backend.connections == 2  # the waiter never reached it


def test_a_full_room_refuses_at_once(tmp_path: Path) -> None:
    """
    With C{--queue-size 1} and one player waiting, the next gets the busy
    line at once (the queue timeout is 300 s), counted as C{queue-full};
    the waiter keeps its place and is admitted when the slot frees.
    """
    with Backend(echo) as backend:
        args = room_args(backend, extra=("--max-sessions", "1", "--queue-size", "1"))
        with GatewayProcess(args, tmp_path) as gateway:
            url = admin_url(gateway)
            admitted = TcpPlayer(gateway.port)
            round_trip(admitted, b"in\n")
            waiter = TcpPlayer(gateway.port, b"waiting\n")
            assert waiter.place() == (1, 1)
            extra = TcpPlayer(gateway.port, b"one too many\n")
            assert extra.rest() == b"busy\r\n"
            assert refused(url)["queue-full"] == 1
            counters = room(url)
            assert (counters["length"], counters["full"]) == (1, 1)
            admitted.close()
            assert waiter.data(len(b"waiting\n")) == b"waiting\n"
            waiter.close()


def find_keys(port: int, ports: list[int]) -> dict[int, list[bytes]]:
    """
    Session keys by the backend (port) they hash to, two or more for the
    first backend and one or more for the second, found by trying.
    """
    keys: dict[int, list[bytes]] = {p: [] for p in ports}
    for number in range(64):
        key = b"k%d" % number
        player = TcpPlayer(port, b"KEY " + key + b"\n")
        line = player.line()
        while line[:1].isdigit():  # a place line: the last try's slot is still freeing
            line = player.line()
        landed = int(line.split()[-1])
        keys[landed].append(key)
        player.close()
        if len(keys[ports[0]]) >= 2 and keys[ports[1]]:
            return keys
    raise AssertionError(f"64 keys and still not enough on each backend: {keys}")


def test_hash_a_player_for_a_free_backend_passes_a_waiter(tmp_path: Path) -> None:
    """
    With C{balance hash} a player waits for its own backend even though the
    other has a free slot, and a later player whose key maps to that free
    backend passes it; the waiter is admitted to its own backend when its
    slot frees.
    """
    with Backend(banner_then_echo) as one, Backend(banner_then_echo) as two:
        extra = ("--max-sessions", "1", "--balance", "hash", "--session-key", r"^KEY (\S+)")
        with GatewayProcess(room_args(one, two, extra=extra), tmp_path) as gateway:
            url = admin_url(gateway)
            keys = find_keys(gateway.port, [one.port, two.port])
            wait_for(
                lambda: all(b["active"] == 0 for b in status(url)["backends"]), "the tries to end"
            )
            first = TcpPlayer(gateway.port, b"KEY " + keys[one.port][0] + b"\n")
            assert first.line() == b"HELLO from %d\r\n" % one.port
            waiter = TcpPlayer(gateway.port, b"KEY " + keys[one.port][1] + b"\n")
            assert waiter.place() == (1, 1)
            later = TcpPlayer(gateway.port, b"KEY " + keys[two.port][0] + b"\n")
            assert later.line() == b"HELLO from %d\r\n" % two.port
            document = status(url)
            assert [e["position"] for e in waiting(document)] == [1]
            assert [b["active"] for b in document["backends"]] == [1, 1]
            first.close()
            assert waiter.line() == b"HELLO from %d\r\n" % one.port
            for player in (waiter, later):
                player.close()


def test_a_queue_class_waits_ahead(tmp_path: Path) -> None:
    """
    A player matching a C{[[queue-class]]} (first line C{^VIP }) waits
    ahead of default players who came before it: it is told place 1, they
    move down, status.json shows its class, and it is admitted first.
    """
    with Backend(echo) as backend:
        config = tmp_path / "gateway.toml"
        config.write_text(
            "max-sessions = 1\nqueue-size = 10\nqueue-update = 0.2\n"
            f'queue-message = "{PLACE}"\nhealth-interval = 0\n'
            f'[[backend]]\nendpoint = "{backend.endpoint}"\n'
            '[[queue-class]]\nname = "vip"\npriority = 10\nfirst-line = "^VIP "\n'
        )
        args = ["--config", str(config), "--admin", "tcp:0:interface=127.0.0.3"]
        with GatewayProcess(args, tmp_path) as gateway:
            url = admin_url(gateway)
            admitted = TcpPlayer(gateway.port)
            round_trip(admitted, b"in\n")
            plain = []
            for number in (1, 2):
                plain.append(TcpPlayer(gateway.port, b"plain %d\n" % number))
                assert plain[-1].place() == (number, number)
            vip = TcpPlayer(gateway.port, b"VIP v\n")
            assert vip.place() == (1, 3)
            assert [p.place() for p in plain] == [(2, 3), (3, 3)]
            entries = sorted(waiting(status(url)), key=lambda e: e["position"])
            assert [e["class"] for e in entries] == ["vip", "default", "default"]
            admitted.close()
            assert vip.data(len(b"VIP v\n")) == b"VIP v\n"
            assert [p.place() for p in plain] == [(1, 2), (2, 2)]
            vip.close()
            assert plain[0].data(len(b"plain 1\n")) == b"plain 1\n"
            for player in plain:
                player.close()


def test_sigterm_turns_waiting_players_away(tmp_path: Path) -> None:
    """
    On SIGTERM, players waiting get the busy line at once (a WebSocket
    player a 1013 close with it), while the admitted session still relays;
    once it ends the gateway exits 0.
    """
    with Backend(echo) as backend:
        extra = ("--max-sessions", "1", "--websocket", "/play", "--drain-timeout", "10")
        with GatewayProcess(room_args(backend, extra=extra), tmp_path) as gateway:
            url = admin_url(gateway)
            admitted = TcpPlayer(gateway.port)
            round_trip(admitted, b"in\n")
            waiter = TcpPlayer(gateway.port, b"waiting\n")
            assert waiter.place() == (1, 1)
            browser = WsPlayer(gateway)
            assert browser.place() == (2, 2)
            assert [e["position"] for e in waiting(status(url))] == [1, 2]
            assert gateway.process is not None
            gateway.process.send_signal(signal.SIGTERM)
            assert waiter.rest() == b"busy\r\n"
            with pytest.raises(ConnectionClosed) as closed:
                browser.ws.recv(timeout=DEADLINE)
            assert closed.value.rcvd is not None
            assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (1013, "busy")
            round_trip(admitted, b"draining\n")
            admitted.close()
            assert gateway.process.wait(timeout=DEADLINE) == 0
            assert "drained: every session has ended" in gateway.log()
            assert backend.connections == 1


def open_files_limit(pid: int) -> int:
    """
    The soft limit on open files of process C{pid}.
    """
    with open(f"/proc/{pid}/limits") as limits:
        for line in limits:
            if line.startswith("Max open files"):
                return int(line.split()[3])
    raise AssertionError(f"no open files limit for {pid}")


WAITERS = 1000
"""The waiting players of the load test."""


def test_a_thousand_waiting_players(tmp_path: Path) -> None:
    """
    A thousand raw TCP players wait for one backend's two slots: the
    gateway's memory grows by a bounded amount per waiter, status.json
    shows all of them, and the two admitted sessions' round trips keep
    completing while the players arrive and wait.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = 2 * WAITERS + 200  # ours and the gateway's (it inherits the limit)
    if hard != resource.RLIM_INFINITY and hard < needed:
        pytest.skip(f"the hard limit on open files ({hard}) is below {needed}")
    if soft != resource.RLIM_INFINITY and soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        with Backend(echo) as backend:
            extra = ("--max-sessions", "2", "--queue-size", str(WAITERS), "--queue-update", "5")
            with GatewayProcess(room_args(backend, extra=extra), tmp_path) as gateway:
                assert open_files_limit(gateway.pid) >= needed
                run_thousand_waiters(gateway)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def run_thousand_waiters(gateway: GatewayProcess) -> None:
    """
    The body of L{test_a_thousand_waiting_players}.
    """
    url = admin_url(gateway)
    admitted = [TcpPlayer(gateway.port) for _ in range(2)]
    waiters: list[socket.socket] = []

    def round_trips(count: int) -> list[float]:
        times = []
        for number in range(count):
            for player in admitted:
                start = time.perf_counter()
                round_trip(player, b"ping %d\n" % number)
                times.append(time.perf_counter() - start)
        return times

    try:
        before = round_trips(50)
        document = status(url)  # the admin side's first use costs memory too
        rss_before = rss_kib(gateway.pid)
        during: list[float] = []
        for _batch in range(10):
            for _ in range(WAITERS // 10):
                sock = connect(gateway.port)
                sock.sendall(b"waiting\n")
                waiters.append(sock)
            during += round_trips(10)  # while the gateway takes them in

            def all_wait(expected: int = len(waiters)) -> bool:
                return bool(room(url)["length"] == expected)

            wait_for(all_wait, f"{len(waiters)} players to wait")
        during += round_trips(50)
        document = status(url)
        assert document["counters"]["queues"]["game"]["length"] == WAITERS
        positions = [e["position"] for e in waiting(document)]
        assert positions == list(range(1, WAITERS + 1))
        growth = rss_kib(gateway.pid) - rss_before
        per_waiter = growth / WAITERS
        print(
            f"\n{WAITERS} waiters: RSS grew {growth} KiB, {per_waiter:.1f} KiB per waiter; "
            f"round trip p50 before {statistics.median(before) * 1e3:.2f} ms, "
            f"during {statistics.median(during) * 1e3:.2f} ms ({len(during)} round trips)"
        )
        assert per_waiter < 30
    finally:
        for sock in waiters:
            sock.close()
        for player in admitted:
            player.close()
    wait_for(lambda: room(url)["length"] == 0, "the waiters to leave")


DEMO_HOST = "127.0.0.2"
"""The demo front's address (its game servers listen on 127.0.0.1)."""

_WELCOME = re.compile(rb"Welcome to Hi-Lo, the gateway demo game, on server demo-[ab]!\r\n")


def test_the_demo_queues_the_fifth_player(tmp_path: Path) -> None:
    """
    C{twistd -n gateway --demo}: four raw TCP players fill the two demo
    servers (two each), the fifth is told its place in the demo's words,
    and is welcomed into the game when one of the four quits.  The players
    speak only when spoken to, as C{nc} users do: the gateway takes each for
    a game client after the sniff timeout.
    """
    with GatewayProcess(["--demo", "--sniff-timeout", "0.2"], tmp_path, host=DEMO_HOST) as gateway:
        players = []
        try:
            for _ in range(4):
                player = TcpPlayer(gateway.port, host=DEMO_HOST)
                players.append(player)
                assert _WELCOME.fullmatch(player.line())
            fifth = TcpPlayer(gateway.port, host=DEMO_HOST)
            players.append(fifth)
            told = DEMO_QUEUE_MESSAGE.format(position=1, length=1, eta="?")
            assert fifth.line() == told.encode() + b"\r\n"
            players[1].send(b"quit\n")
            # The server says goodbye and closes; the player's nc ends too.
            assert players[1].rest().endswith(b"Goodbye!\r\n")
            players[1].close()
            assert _WELCOME.fullmatch(fifth.line())
        finally:
            for player in players:
                player.close()
