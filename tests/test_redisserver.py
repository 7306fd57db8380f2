"""
The real-Redis fixture the cluster tests stand on (tests/redisserver.py): a
C{redis-server} started by PID on an ephemeral loopback port, with a
password, an ACL user, a UNIX socket or TLS, stopped and started again on the
same port, or killed.
"""

from __future__ import annotations

import os
import socket
import ssl
from pathlib import Path

import pytest

from tests.redisserver import RedisError, RedisServer, free_port
from tests.support import listening_ports


def test_ping_set_get(redis_server: RedisServer) -> None:
    """
    The fixture's server answers PING and keeps a value, over the RESP client
    and through redis-cli, on the port its URL names.
    """
    assert redis_server.url == f"redis://127.0.0.1:{redis_server.port}/0"
    assert redis_server.port in listening_ports(redis_server.pid)["127.0.0.1"]
    assert redis_server.command("PING") == b"PONG"
    assert redis_server.command("SET", "player", "ada") == b"OK"
    assert redis_server.command("GET", "player") == b"ada"
    assert redis_server.command("INCR", "count") == 1
    assert redis_server.command("GET", "nobody") is None
    assert redis_server.cli("GET", "player") == "ada"


def test_nothing_is_persisted(redis_server: RedisServer) -> None:
    """
    The server saves no snapshot and keeps no append-only file.
    """
    assert redis_server.command("CONFIG", "GET", "save") == [b"save", b""]
    assert redis_server.command("CONFIG", "GET", "appendonly") == [b"appendonly", b"no"]
    assert redis_server.command("CONFIG", "GET", "dir") == [
        b"dir",
        str(redis_server.folder).encode(),
    ]


def test_password_required(tmp_path: Path) -> None:
    """
    With a password, a command without AUTH is refused, a wrong password is
    refused, and the right one (as in the URL) is accepted.
    """
    with RedisServer(tmp_path, password="s3cret") as server:
        assert server.url == f"redis://:s3cret@127.0.0.1:{server.port}/0"
        with pytest.raises(RedisError, match="^NOAUTH"):
            server.command("GET", "k", auth=False)
        with server.connect(auth=False) as connection:
            with pytest.raises(RedisError, match="^WRONGPASS"):
                connection.command("AUTH", "wrong")
            assert connection.command("AUTH", "s3cret") == b"OK"
            assert connection.command("SET", "k", "v") == b"OK"
        assert server.command("GET", "k") == b"v"
        assert server.cli("GET", "k") == "v"


def test_acl_user(tmp_path: Path) -> None:
    """
    An ACL user logs in with its own name and password, and not with the
    default user's.
    """
    with RedisServer(tmp_path, password="root-pw", user=("node", "node-pw")) as server:
        assert server.command("ACL", "WHOAMI") == b"node"
        assert server.cli("ACL", "WHOAMI") == "node"
        with server.connect(auth=False) as connection:
            with pytest.raises(RedisError, match="^WRONGPASS"):
                connection.command("AUTH", "node", "root-pw")


def test_stop_and_start_on_same_port(redis_server: RedisServer) -> None:
    """
    Stopped, the server refuses connections; started again, it is back on
    the same URL (with no data: nothing was persisted).
    """
    url, first_pid = redis_server.url, redis_server.pid
    redis_server.command("SET", "k", "v")
    assert redis_server.stop() == 0
    assert not redis_server.running
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", redis_server.port), timeout=5).close()
    redis_server.start()
    assert redis_server.url == url
    assert redis_server.pid != first_pid
    assert redis_server.command("PING") == b"PONG"
    assert redis_server.command("GET", "k") is None


def test_kill(redis_server: RedisServer) -> None:
    """
    kill() ends the server with SIGKILL; it can be started again.
    """
    pid = redis_server.pid
    assert redis_server.kill() == -9
    assert not os.path.exists(f"/proc/{pid}") or _zombie_or_gone(pid)
    with pytest.raises(ConnectionRefusedError):
        redis_server.command("PING")
    redis_server.start()
    assert redis_server.command("PING") == b"PONG"


def _zombie_or_gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ", 1)[1].startswith("Z")
    except FileNotFoundError:
        return True


def test_busy_port_is_skipped(tmp_path: Path) -> None:
    """
    When the chosen port is taken before Redis binds it, the server starts
    on another one.
    """
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    ports = iter([int(taken.getsockname()[1]), free_port()])
    try:
        with RedisServer(tmp_path, ports=lambda: next(ports)) as server:
            assert server.port != taken.getsockname()[1]
            assert server.command("PING") == b"PONG"
            assert "Address already in use" in server.log()
    finally:
        taken.close()


def test_unix_socket(tmp_path: Path) -> None:
    """
    With unix=True the server also listens on a UNIX socket in the tmp dir,
    with the same password.
    """
    with RedisServer(tmp_path, unix=True, password="pw") as server:
        assert server.socket_path is not None
        assert server.socket_path.is_relative_to(tmp_path)
        assert server.unix_url == f"unix://:pw@{server.socket_path}?db=0"
        with server.connect(unix=True) as connection:
            assert connection.command("SET", "k", "over unix") == b"OK"
        assert server.command("GET", "k") == b"over unix"
        assert server.cli("GET", "k", unix=True) == "over unix"


def test_tls(tmp_path: Path) -> None:
    """
    With tls=True the port speaks TLS only, with a certificate for localhost
    that the PKI's root verifies; plain RESP gets no answer.
    """
    with RedisServer(tmp_path, tls=True, password="pw") as server:
        assert server.pki is not None
        assert server.url == f"rediss://:pw@localhost:{server.port}/0"
        assert server.command("SET", "k", "secure") == b"OK"
        assert server.cli("GET", "k") == "secure"
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as plain:
            plain.sendall(b"*1\r\n$4\r\nPING\r\n")
            try:
                answer = plain.recv(100)
            except ConnectionResetError:
                answer = b""
            assert answer == b""  # Redis drops a connection that does not speak TLS
        untrusting = ssl.create_default_context()  # the system's CAs: not ours
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as raw:
            with pytest.raises(ssl.SSLCertVerificationError):
                untrusting.wrap_socket(raw, server_hostname="localhost")


def test_unix_socket_under_a_long_path(tmp_path: Path) -> None:
    """
    When the tmp dir is too long for a UNIX socket's address, the socket goes
    to a short folder of its own, removed when the server is done.
    """
    deep = tmp_path / ("d" * 90)
    deep.mkdir()
    with RedisServer(deep, unix=True) as server:
        assert server.socket_path is not None
        assert len(str(server.socket_path)) <= 100
        assert server.cli("PING", unix=True) == "PONG"
    assert not server.socket_path.parent.exists()
