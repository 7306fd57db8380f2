"""
The TCP fast path end to end: which sessions take it (counted in
C{/status.json}'s C{counters.fast_path}), and that they relay byte for byte,
half-close included, to TCP (IPv4, IPv6) and UNIX backends; C{--no-tcp-fast-path}
and a reload that sets it turn it off for new sessions.

The data-path modules run their tests over both paths as well (the
C{tcp_path} fixture in conftest.py); this module checks that the default
configuration those tests use does take the fast path.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import socketserver
import struct
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import (
    DEADLINE,
    Backend,
    GatewayProcess,
    admin_url,
    connect,
    echo,
    pattern,
    recv_exactly,
    recv_until_eof,
    wait_for,
)

ADMIN = ["--admin", "tcp:0:interface=127.0.0.3", "--sniff-timeout", "0.1"]


def counters(gateway: GatewayProcess) -> dict[str, Any]:
    """
    The gateway's C{/status.json} counters.
    """
    with urllib.request.urlopen(f"{admin_url(gateway)}/status.json", timeout=DEADLINE) as reply:
        document: dict[str, Any] = json.load(reply)
    result: dict[str, Any] = document["counters"]
    return result


def round_trip(port: int, data: bytes, host: str = "127.0.0.1") -> None:
    """
    One session: C{data} sent, half-closed, echoed whole, then ended by the
    backend (whose echo loop ends at the client's end of stream).
    """
    with connect(port, host) as sock:
        sock.sendall(data)
        assert recv_exactly(sock, len(data)) == data
        sock.shutdown(socket.SHUT_WR)
        assert recv_until_eof(sock) == b""


class _StreamEcho(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        sock = self.request
        sock.settimeout(DEADLINE)
        while data := sock.recv(65536):
            sock.sendall(data)


class _UnixEcho(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True


class _V6Echo(socketserver.ThreadingTCPServer):
    address_family = socket.AF_INET6
    daemon_threads = True
    allow_reuse_address = True


def _serving(server: socketserver.BaseServer) -> Iterator[socketserver.BaseServer]:
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def echo_backend() -> Iterator[Backend]:
    with Backend(echo) as backend:
        yield backend


@pytest.mark.parametrize(
    ("args", "taken"),
    [
        ([], True),
        (["--no-tcp-fast-path"], False),
        (["--relay", "copy"], False),
    ],
    ids=["default", "switched-off", "copy-relay"],
)
def test_which_sessions_take_it(
    tmp_path: Path, echo_backend: Backend, args: list[str], taken: bool
) -> None:
    """
    With the default settings, game sessions to a C{tcp:} backend given by
    IP address take the fast path; not with C{--no-tcp-fast-path}, nor with
    C{--relay copy}.  Either way every byte comes back and the half-close
    is passed on.
    """
    data = pattern(300_000, seed=3)
    with GatewayProcess([*ADMIN, "--backend", echo_backend.endpoint, *args], tmp_path) as gateway:
        for _ in range(3):
            round_trip(gateway.port, data)
        wait_for(lambda: gateway.log().count("game session from") >= 3, "three access events")
        assert counters(gateway)["fast_path"] == (3 if taken else 0)
        assert ", splice\n" in gateway.log() if "copy" not in args else ", copy\n" in gateway.log()


def test_a_host_name_takes_the_endpoint(tmp_path: Path, echo_backend: Backend) -> None:
    """
    A backend given by host name is connected through its endpoint (which
    resolves it), and still spliced.
    """
    with GatewayProcess(
        [*ADMIN, "--backend", f"tcp:localhost:{echo_backend.port}"], tmp_path
    ) as gateway:
        round_trip(gateway.port, b"ping\n" * 100)
        wait_for(lambda: "game session from" in gateway.log(), "the access event")
        assert counters(gateway)["fast_path"] == 0
        assert ", splice\n" in gateway.log()


def test_unix_backend(tmp_path: Path) -> None:
    """
    A C{unix:} backend takes the fast path.
    """
    path = str(tmp_path / "game.sock")
    for _ in _serving(_UnixEcho(path, _StreamEcho)):
        with GatewayProcess([*ADMIN, "--backend", f"unix:{path}"], tmp_path) as gateway:
            round_trip(gateway.port, pattern(100_000, seed=5))
            wait_for(lambda: "game session from" in gateway.log(), "the access event")
            assert counters(gateway)["fast_path"] == 1


def test_ipv6_backend(tmp_path: Path) -> None:
    """
    A C{tcp:} backend given by an IPv6 address takes the fast path.
    """
    try:
        server = _V6Echo(("::1", 0), _StreamEcho)
    except OSError as error:
        pytest.skip(f"no IPv6 loopback here: {error}")
    port = server.server_address[1]
    for _ in _serving(server):
        with GatewayProcess([*ADMIN, "--backend", rf"tcp:\:\:1:{port}"], tmp_path) as gateway:
            round_trip(gateway.port, pattern(100_000, seed=6))
            wait_for(lambda: "game session from" in gateway.log(), "the access event")
            assert counters(gateway)["fast_path"] == 1


def test_refused_backend_fails_over(tmp_path: Path, echo_backend: Backend) -> None:
    """
    A refused fast-path connect is a failed attempt like any other: counted
    on that backend, logged, and the next backend is tried.
    """
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
    dead_port = dead.getsockname()[1]
    try:
        with GatewayProcess(
            [
                *ADMIN,
                "--backend",
                f"tcp:127.0.0.1:{dead_port}",
                "--backend",
                echo_backend.endpoint,
                "--health-interval",
                "0",
            ],
            tmp_path,
        ) as gateway:
            # Round robin: one of the two sessions tries the dead one first.
            round_trip(gateway.port, b"hello\n")
            round_trip(gateway.port, b"again\n")
            wait_for(lambda: gateway.log().count("game session from") >= 2, "two access events")
            assert "Connection refused" in gateway.log()
            assert counters(gateway)["fast_path"] == 2
            assert counters(gateway)["backend_failures"] >= 1
    finally:
        dead.close()


def test_reload_turns_it_off_for_new_sessions(tmp_path: Path, echo_backend: Backend) -> None:
    """
    C{no-tcp-fast-path = true} in the file, on SIGHUP, applies to the
    sessions that start after it; a session already running keeps relaying.
    """
    config = tmp_path / "gateway.toml"
    config.write_text(f'backend = ["{echo_backend.endpoint}"]\n')
    with GatewayProcess([*ADMIN, "--config", str(config)], tmp_path) as gateway:
        running = connect(gateway.port)
        running.sendall(b"before\n")
        assert recv_exactly(running, 7) == b"before\n"
        config.write_text(f'backend = ["{echo_backend.endpoint}"]\nno-tcp-fast-path = true\n')
        os.kill(gateway.pid, signal.SIGHUP)
        wait_for(lambda: "reload" in gateway.log().lower(), "the reload")
        round_trip(gateway.port, b"after\n")
        running.sendall(b"still\n")
        assert recv_exactly(running, 6) == b"still\n"
        running.close()
        wait_for(lambda: gateway.log().count("game session from") >= 2, "two access events")
        assert counters(gateway)["fast_path"] == 1


def _reset_after_line(sock: socket.socket, backend: Backend) -> None:
    """
    Read one line, then reset the connection (a backend that crashes).
    """
    while not sock.recv(1 << 16).endswith(b"\n"):
        pass
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


@pytest.mark.parametrize("reactor", [None, "uvloop"])
def test_backend_reset_while_spliced(tmp_path: Path, reactor: str | None) -> None:
    """
    A backend that resets a spliced fast-path session ends it at once, as a
    backend that resets a transport does: the client's connection is
    closed, the access event says C{backend-closed}, the backend counts no
    active session and the gateway holds no socket of it.  (A reset socket
    has no peer address, so it cannot become a Twisted transport: the lean
    link itself tells the session it is gone.)
    """
    if reactor is not None:
        pytest.importorskip(reactor)
    with (
        Backend(_reset_after_line) as backend,
        GatewayProcess(
            [*ADMIN, "--backend", backend.endpoint], tmp_path, reactor=reactor
        ) as gateway,
    ):
        before = _sockets(gateway.pid)
        with connect(gateway.port) as sock:
            sock.sendall(b"crash\n")
            try:
                assert recv_until_eof(sock) == b""
            except ConnectionResetError:
                pass
        wait_for(lambda: "(backend-closed)" in gateway.log(), "the access event")
        wait_for(lambda: _sockets(gateway.pid) == before, "the session's sockets closed")
        assert counters(gateway)["fast_path"] == 1
        assert "Unhandled Error" not in gateway.log()
        with urllib.request.urlopen(
            f"{admin_url(gateway)}/status.json", timeout=DEADLINE
        ) as reply:
            assert [b["active"] for b in json.load(reply)["backends"]] == [0]


def _sockets(pid: int) -> int:
    """
    How many sockets process C{pid} has open.
    """
    count = 0
    for name in os.listdir(f"/proc/{pid}/fd"):
        try:
            count += os.readlink(f"/proc/{pid}/fd/{name}").startswith("socket:")
        except FileNotFoundError:
            pass
    return count
