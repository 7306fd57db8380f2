"""
The cluster's shared seats end to end: a real C{redis-server} and gateway
nodes on 127.0.0.1, .2 and .3 (admin endpoints on 127.0.1.N, see
L{tests.test_e2e_cluster}) in front of one backend whose C{max-sessions}
counts its sessions through every node, and C{--cluster-max-sessions}.

Times are printed, never asserted.
"""

from __future__ import annotations

import socket
import time
from contextlib import ExitStack
from pathlib import Path

from tests.redisserver import RedisServer, require_redis
from tests.support import DEADLINE, Backend, GatewayProcess, banner_then_echo
from tests.test_e2e_cluster import names, node, status, wait_for
from tests.test_e2e_cluster_limits import echoes, refusals, session

ROOM = ("--queue-size", "10", "--queue-update", "0.2", "--queue-message", "place {position}")


def waiting(gateway: GatewayProcess, number: int) -> socket.socket:
    """
    A player through node C{number} told its place in the waiting room.
    """
    sock = socket.create_connection((f"127.0.0.{number}", gateway.port), timeout=DEADLINE)
    sock.sendall(b"hi\r\n")
    line = sock.recv(64)
    assert line.startswith(b"place 1"), line
    return sock


def test_max_sessions_across_nodes_and_the_waiting_room(tmp_path: Path) -> None:
    """
    A backend of two seats: a session through node 1 and one through node 2
    fill it; a player through node 3 waits in its room, and gets the seat
    (the backend's banner, then its own bytes) once node 1's session ends.
    A node without a room refuses the next player (no-backend).
    """
    require_redis()
    with ExitStack() as stack:
        redis = stack.enter_context(RedisServer(tmp_path))
        backend = stack.enter_context(Backend(banner_then_echo))
        seats = ("--max-sessions", "2")
        n1 = stack.enter_context(node(redis, 1, tmp_path, backend, extra=seats))
        n2 = stack.enter_context(node(redis, 2, tmp_path, backend, extra=seats))
        n3 = stack.enter_context(node(redis, 3, tmp_path, backend, extra=(*seats, *ROOM)))
        wait_for(lambda: names(n1, 1) == ["n1", "n2", "n3"], "three nodes listed")
        first = stack.enter_context(session(n1, 1))
        second = stack.enter_context(session(n2, 2, "127.0.0.10"))
        player = stack.enter_context(waiting(n3, 3))
        with socket.create_connection(("127.0.0.1", n1.port), timeout=DEADLINE) as late:
            late.sendall(b"hi\r\n")
            assert late.recv(64) == b""
        assert refusals(n1, 1, "no-backend") == 1
        entries = {e["name"]: e for e in status(n3, 3, "node")["backends"]}
        assert entries[backend.endpoint]["elsewhere"] == 2
        start = time.monotonic()
        first.close()
        seen = b""
        while b"HELLO" not in seen:
            chunk = player.recv(64)
            assert chunk, seen
            seen += chunk
        print(
            f"the waiting player on node 3 seated {time.monotonic() - start:.2f} s after the end"
        )
        player.sendall(b"ping\n")
        while not seen.endswith(b"ping\n"):
            seen += player.recv(64)
        assert echoes(second)
        assert backend.connections == 3


def test_cluster_max_sessions(tmp_path: Path) -> None:
    """
    C{--cluster-max-sessions 2} on three nodes: two sessions through nodes 1
    and 2, the third through node 3 is refused C{cluster-cap}; once one
    ends, node 3 admits again.
    """
    require_redis()
    with ExitStack() as stack:
        redis = stack.enter_context(RedisServer(tmp_path))
        backend = stack.enter_context(Backend(banner_then_echo))
        cap = ("--cluster-max-sessions", "2")
        gateways = [
            stack.enter_context(node(redis, n, tmp_path, backend, extra=cap)) for n in (1, 2, 3)
        ]
        wait_for(lambda: names(gateways[0], 1) == ["n1", "n2", "n3"], "three nodes listed")
        first = stack.enter_context(session(gateways[0], 1))
        stack.enter_context(session(gateways[1], 2))
        with socket.create_connection(("127.0.0.3", gateways[2].port), timeout=DEADLINE) as sock:
            sock.sendall(b"hi\r\n")
            assert sock.recv(64) == b""
        assert refusals(gateways[2], 3, "cluster-cap") == 1
        summary = status(gateways[2], 3)["cluster"]
        assert summary["max_sessions"] == 2
        first.close()
        wait_for(lambda: _admitted(gateways[2], 3), "a place through node 3 after the end")


def _admitted(gateway: GatewayProcess, number: int) -> bool:
    with socket.create_connection((f"127.0.0.{number}", gateway.port), timeout=DEADLINE) as sock:
        sock.sendall(b"hi\r\n")
        return sock.recv(64).startswith(b"HELLO")
