"""
The cluster's shared per-address limits end to end: a real C{redis-server}
and three gateway nodes (fronts on 127.0.0.1, .2 and .3, admin endpoints on
127.0.1.N, see L{tests.test_e2e_cluster}), each client bound to an address
of its own (127.0.0.9 and up) so that its connections through every node
come from one address.

Times are printed, never asserted.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from tests.redisserver import RedisServer, require_redis
from tests.support import DEADLINE, Backend, GatewayProcess, banner_then_echo
from tests.test_e2e_cluster import metrics, names, node, status, wait_for

CLIENT = "127.0.0.9"
"""The client whose connections the tests count."""


@contextmanager
def session(gateway: GatewayProcess, number: int, source: str = CLIENT) -> Iterator[socket.socket]:
    """
    A connection from C{source} through node C{number}, admitted (the
    backend's banner read).
    """
    sock = _connect(gateway, number, source)
    try:
        # A game client speaking first: no wait for the sniffing's timeout.
        sock.sendall(b"hi\r\n")
        seen = b""
        while not seen.endswith(b"hi\r\n"):
            chunk = sock.recv(64)
            assert chunk, f"refused through node {number}: {seen!r}"
            seen += chunk
        assert seen.startswith(b"HELLO"), f"refused through node {number}: {seen!r}"
        yield sock
    finally:
        sock.close()


def refused(gateway: GatewayProcess, number: int, source: str = CLIENT) -> bool:
    """
    Whether a connection from C{source} through node C{number} is refused
    (closed without the backend's banner).
    """
    with _connect(gateway, number, source) as sock:
        sock.sendall(b"hi\r\n")  # a game client: refused at once, not after a wait
        try:
            first = sock.recv(64)
        except ConnectionResetError:
            first = b""
    return not first.startswith(b"HELLO")


def _connect(gateway: GatewayProcess, number: int, source: str) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(DEADLINE)
    sock.bind((source, 0))
    sock.connect((f"127.0.0.{number}", gateway.port))
    return sock


def echoes(sock: socket.socket) -> bool:
    """
    Whether an admitted session still relays.
    """
    sock.sendall(b"ping\n")
    return sock.recv(64) == b"ping\n"


def three_nodes(
    stack: ExitStack, tmp_path: Path, *limits: str
) -> tuple[RedisServer, list[GatewayProcess]]:
    """
    Redis, a backend, and three nodes with C{limits}, all listed.
    """
    require_redis()
    redis = stack.enter_context(RedisServer(tmp_path))
    backend = stack.enter_context(Backend(banner_then_echo))
    gateways = [
        stack.enter_context(node(redis, number, tmp_path, backend, extra=limits))
        for number in (1, 2, 3)
    ]
    wait_for(lambda: names(gateways[0], 1) == ["n1", "n2", "n3"], "three nodes listed")
    return redis, gateways


def refusals(gateway: GatewayProcess, number: int, reason: str) -> int:
    """
    Node C{number}'s count of refusals for C{reason}.
    """
    counted: int = status(gateway, number, "node")["counters"]["refused"].get(reason, 0)
    return counted


def test_max_per_ip_holds_across_nodes(tmp_path: Path) -> None:
    """
    C{--max-per-ip 3} on three nodes: three connections from one address,
    one through each node, are admitted; a fourth through any node is
    refused; another address is not affected; when one ends, one more is
    admitted through another node.
    """
    with ExitStack() as stack:
        _, (n1, n2, n3) = three_nodes(stack, tmp_path, "--max-per-ip", "3")
        gateways = {1: n1, 2: n2, 3: n3}
        held = [stack.enter_context(session(g, number)) for number, g in gateways.items()]
        for number, gateway in gateways.items():
            assert refused(gateway, number), f"a fourth admitted through node {number}"
        assert sum(refusals(g, n, "address-cap") for n, g in gateways.items()) == 3
        with session(n1, 1, "127.0.0.10"):
            pass
        held[1].close()
        wait_for(lambda: not refused(n3, 3), "a place freed through node 2 used through node 3")
        assert all(echoes(sock) for sock in (held[0], held[2]))
        summary = status(n1, 1)["cluster"]
        assert summary["local_admissions"] == 0 and summary["limits_alone"] is False


def test_rate_holds_across_nodes(tmp_path: Path) -> None:
    """
    C{--rate-per-ip} with a burst of 3 on three nodes: three arrivals from
    one address, one through each node, then the next through any node is
    refused for the rate.
    """
    with ExitStack() as stack:
        _, gateways = three_nodes(stack, tmp_path, "--rate-per-ip", "0.05", "--rate-burst", "3")
        for number, gateway in enumerate(gateways, 1):
            with session(gateway, number):
                pass
        for number, gateway in enumerate(gateways, 1):
            assert refused(gateway, number)
            assert refusals(gateway, number, "rate") == 1


def test_killed_node_counts_expire(tmp_path: Path) -> None:
    """
    C{--max-per-ip 2}: two connections through node 2, which is then killed
    with SIGKILL; its counts stop counting once its TTL has passed, without
    anything from node 2.
    """
    with ExitStack() as stack:
        _, (n1, n2, _n3) = three_nodes(stack, tmp_path, "--max-per-ip", "2")
        first = stack.enter_context(session(n2, 2))
        second = stack.enter_context(session(n2, 2))
        assert refused(n1, 1)
        os.kill(n2.pid, signal.SIGKILL)
        start = time.monotonic()
        wait_for(lambda: not refused(n1, 1), "the killed node's counts expired")
        print(f"admitted again {time.monotonic() - start:.2f} s after the kill (TTL 3 s)")
        del first, second


def test_redis_stopped_during_a_flood(tmp_path: Path) -> None:
    """
    Redis stops while three nodes admit a flood: every node keeps admitting
    with its share of the limits (3 per address over 3 nodes: 1 per node),
    counts and shows it; no running session is cut; once Redis is back the
    counts made meanwhile are written back and the shared limit holds again.
    """
    with ExitStack() as stack:
        redis, gateways = three_nodes(stack, tmp_path, "--max-per-ip", "3")
        held = [stack.enter_context(session(g, n)) for n, g in enumerate(gateways, 1)]
        redis.stop()
        start = time.monotonic()
        admitted = 0
        for attempt in range(60):
            number = attempt % 3 + 1
            with session(gateways[number - 1], number, f"127.0.0.{20 + attempt}"):
                admitted += 1
        print(f"60 admissions with Redis away: {time.monotonic() - start:.2f} s")
        assert admitted == 60
        # The client already has one session through each node: its share.
        assert all(refused(g, n) for n, g in enumerate(gateways, 1))
        alone = held.pop()
        assert all(echoes(sock) for sock in [*held, alone])
        summary = status(gateways[0], 1)["cluster"]
        assert summary["limits_alone"] is True and summary["local_admissions"] >= 20
        assert metrics(gateways[0], 1)["gateway_cluster_local_admissions_total"] >= 20
        # A session admitted alone, with Redis away, and still running.
        extra = stack.enter_context(session(gateways[1], 2, "127.0.0.99"))
        redis.start()
        for number, gateway in enumerate(gateways, 1):
            wait_for(
                lambda g=gateway, n=number: status(g, n)["cluster"]["limits_alone"] is False,
                f"node {number} sharing the limits again",
            )
        assert all(echoes(sock) for sock in [*held, alone, extra])
        # 3 sessions of the client through 3 nodes, written back: a fourth
        # is refused through any node, with Redis deciding.
        assert all(refused(g, n) for n, g in enumerate(gateways, 1))
        after = [status(g, n)["cluster"]["local_admissions"] for n, g in enumerate(gateways, 1)]
        assert all(refused(g, n) for n, g in enumerate(gateways, 1))
        assert [
            status(g, n)["cluster"]["local_admissions"] for n, g in enumerate(gateways, 1)
        ] == after
        # The session admitted alone counts too: 127.0.0.99 may have two more.
        with session(gateways[0], 1, "127.0.0.99"), session(gateways[2], 3, "127.0.0.99"):
            assert refused(gateways[0], 1, "127.0.0.99")


def test_workers_share_the_limits(tmp_path: Path) -> None:
    """
    A node with C{--workers 2} (its acceptor decides admissions) and a
    single-process node hold C{--max-per-ip 2} together.
    """
    require_redis()
    with ExitStack() as stack:
        redis = stack.enter_context(RedisServer(tmp_path))
        backend = stack.enter_context(Backend(banner_then_echo))
        limit = ("--max-per-ip", "2")
        n1 = stack.enter_context(
            node(redis, 1, tmp_path, backend, extra=(*limit, "--workers", "2"))
        )
        n2 = stack.enter_context(node(redis, 2, tmp_path, backend, extra=limit))
        wait_for(lambda: names(n1, 1) == ["n1", "n2"], "two nodes listed")
        first = stack.enter_context(session(n1, 1))
        second = stack.enter_context(session(n2, 2))
        assert refused(n1, 1) and refused(n2, 2)
        assert echoes(first) and echoes(second)
        first.close()
        wait_for(lambda: not refused(n2, 2), "the place freed on the workers' node")
