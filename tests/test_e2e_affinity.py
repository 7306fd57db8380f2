"""
The shared affinity end to end (C{--affinity-ttl}): a real
C{redis-server}, three backends and two gateway nodes started the way users
start them, on 127.0.0.1 and 127.0.0.2 (L{tests.test_e2e_cluster.node}),
with C{--balance hash} and a C{--session-key}, whose views of the pool
differ.

Times are printed, never asserted: waits are bounded by L{wait_for}.
"""

from __future__ import annotations

import socket
import threading
import time
from contextlib import ExitStack
from pathlib import Path
from types import SimpleNamespace

from gateway.cluster.affinity import affinity_key
from gateway.pool.balance import RendezvousHash
from tests.redisserver import RedisServer, require_redis
from tests.support import Backend, _BacklogServer, banner_then_echo, connect
from tests.test_e2e_cluster import node, state_of, status, wait_for
from tests.test_e2e_pool import banner_port

POOL_ARGS = (
    "--balance",
    "hash",
    "--session-key",
    r"^(\w+)",
    "--health-interval",
    "0.2",
)
"""Hash on the first word of the first line; health checks on."""


def unused_port() -> int:
    """
    A loopback port nothing listens on now (and that is not kept bound).
    """
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def backend_on(port: int) -> Backend:
    """
    A banner backend that will listen on C{port} once made (a gateway may
    have been told of it before).
    """
    backend = Backend(banner_then_echo)
    handler = backend._server.RequestHandlerClass
    backend._server.server_close()
    backend._server = _BacklogServer(("127.0.0.1", port), handler)
    backend._server.daemon_threads = True
    backend.port = port
    backend._thread = threading.Thread(target=backend._server.serve_forever, daemon=True)
    return backend


def key_for(target: str, names: list[str]) -> str:
    """
    A session key that the hash sends to C{target} among C{names}.
    """
    candidates = [SimpleNamespace(name=name, weight=1) for name in names]
    for number in range(10_000):
        key = f"player{number}"
        if RendezvousHash().choose(candidates, key.encode()).name == target:  # type: ignore[arg-type]
            return key
    raise AssertionError("no key found")


def session_port(port: int, host: str, key: str) -> int:
    """
    Start a session with C{key} through the front C{host}:C{port}; the port
    of the backend that answers.
    """
    with connect(port, host) as sock:
        sock.sendall(key.encode() + b"\n")
        return banner_port(sock)


def test_a_returning_key_reaches_its_backend_through_another_node(tmp_path: Path) -> None:
    """
    Node 1 sees backend A down (its health checks ran before A listened),
    so key K, which the hash gives A when all three are up, goes to B or C
    through node 1.  Node 2 sees all three up, and its hash would give A;
    yet K through node 2 reaches the backend node 1 used, as Redis
    remembers it.  With Redis stopped, K through node 2 gets the hash's
    choice, A, without waiting.
    """
    require_redis()
    with ExitStack() as stack:
        redis = stack.enter_context(RedisServer(tmp_path))
        b = stack.enter_context(Backend(banner_then_echo))
        c = stack.enter_context(Backend(banner_then_echo))
        a_port = unused_port()
        a_name = f"tcp:127.0.0.1:{a_port}"
        names = [a_name, b.endpoint, c.endpoint]
        key = key_for(a_name, names)
        n1 = stack.enter_context(node(redis, 1, tmp_path, extra=_args(names)))
        wait_for(lambda: state_of(n1, 1, a_name) == "down", "A down on node 1")

        first = session_port(n1.port, "127.0.0.1", key)
        assert first in (b.port, c.port)
        used = b if first == b.port else c
        redis_key = affinity_key("gateway", "game", key.encode())
        wait_for(lambda: redis.command("GET", redis_key) == used.endpoint.encode(), "remembered")
        ttl = redis.command("PTTL", redis_key)
        assert isinstance(ttl, int) and 3_000_000 < ttl <= 3_600_000

        a = stack.enter_context(backend_on(a_port))
        n2 = stack.enter_context(node(redis, 2, tmp_path, extra=_args(names)))
        wait_for(lambda: status(n2, 2)["cluster"]["redis_up"] is True, "node 2 reaches Redis")
        assert [state_of(n2, 2, name) for name in names] == ["up", "up", "up"]
        # Not A, which node 2's hash gives (A's connections are health checks too).
        assert session_port(n2.port, "127.0.0.2", key) == used.port
        affinity = status(n2, 2)["cluster"]["affinity"]
        assert (affinity["used"], affinity["ttl"]) == (1, 3600.0)
        # Another key, which nobody remembers, goes where node 2's hash sends it.
        other = key_for(b.endpoint, names)
        assert session_port(n2.port, "127.0.0.2", other) == b.port
        assert status(n2, 2)["cluster"]["affinity"]["none"] == 1

        redis.stop()
        start = time.monotonic()
        assert session_port(n2.port, "127.0.0.2", key) == a.port
        print(f"K through node 2 with Redis stopped: {time.monotonic() - start:.3f} s")
        assert status(n2, 2)["cluster"]["affinity"]["failed"] >= 1


def test_affinity_ttl_zero_shares_nothing(tmp_path: Path) -> None:
    """
    With C{--affinity-ttl 0} a node neither asks Redis nor tells it: the
    key goes where the hash sends it, and Redis has no affinity key.
    """
    require_redis()
    with ExitStack() as stack:
        redis = stack.enter_context(RedisServer(tmp_path))
        a = stack.enter_context(Backend(banner_then_echo))
        b = stack.enter_context(Backend(banner_then_echo))
        names = [a.endpoint, b.endpoint]
        key = key_for(a.endpoint, names)
        n1 = stack.enter_context(
            node(redis, 1, tmp_path, extra=(*_args(names), "--affinity-ttl", "0"))
        )
        wait_for(lambda: status(n1, 1)["cluster"]["redis_up"] is True, "node 1 reaches Redis")
        redis.command("SET", affinity_key("gateway", "game", key.encode()), b.endpoint)
        assert session_port(n1.port, "127.0.0.1", key) == a.port
        assert status(n1, 1)["cluster"]["affinity"] is None
        assert redis.command("GET", affinity_key("gateway", "game", key.encode())) == (
            b.endpoint.encode()
        )


def _args(names: list[str]) -> tuple[str, ...]:
    """
    The pool's options and backends, in this order (the names are endpoints).
    """
    backends = tuple(arg for name in names for arg in ("--backend", name))
    return (*POOL_ARGS, *backends)
