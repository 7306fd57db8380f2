"""
End-to-end tests of other endpoint kinds and of start-up: TLS backends
(verified, untrusted, wrong host name, stalled handshake), UNIX sockets on both
sides, and a front that cannot be bound in daemon mode.
"""

from __future__ import annotations

import os
import signal
import socket
import socketserver
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.certs import ScratchCA, make_ca
from tests.support import (
    TWISTD,
    Backend,
    GatewayProcess,
    connect,
    echo,
    recv_exactly,
    recv_until_eof,
    wait_for,
)

pytestmark = pytest.mark.usefixtures("tcp_path")


@pytest.fixture
def ca(tmp_path: Path) -> ScratchCA:
    """
    A test CA with a server certificate for C{localhost}.
    """
    return make_ca(tmp_path / "pki")


@pytest.fixture
def tls_echo(ca: ScratchCA) -> Iterator[Backend]:
    """
    A TLS echo backend with the test CA's certificate for C{localhost}.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(ca.server_cert, ca.server_key)

    def serve(sock: socket.socket, backend: Backend) -> None:
        with context.wrap_socket(sock, server_side=True) as tls:
            while data := tls.recv(65536):
                tls.sendall(data)

    with Backend(serve) as backend:
        yield backend


def test_tls_backend_verified_and_relayed(
    tmp_path: Path, ca: ScratchCA, tls_echo: Backend
) -> None:
    """
    A tls: backend whose certificate chains to trustRoots and names the host
    is used: bytes go through TLS and back unchanged.
    """
    backend = f"tls:localhost:{tls_echo.port}:trustRoots={ca.trust_dir}"
    with GatewayProcess(["--backend", backend], tmp_path) as gateway:
        client = connect(gateway.port)
        client.sendall(b"over tls\n")
        assert recv_exactly(client, 9) == b"over tls\n"
        client.close()


def test_reload_adds_a_tls_backend(
    tmp_path: Path, ca: ScratchCA, tls_echo: Backend, echo_backend: Backend
) -> None:
    """
    A reload that replaces a plain backend with a tls: one relays the next
    session over TLS: nothing at start keeps a configuration without TLS from
    taking TLS on at a reload (issue 18, start-up memory).
    """
    config = tmp_path / "gateway.toml"
    config.write_text(f'health-interval = 0\nbackend = ["{echo_backend.endpoint}"]\n')
    with GatewayProcess(["--config", str(config)], tmp_path) as gateway:
        client = connect(gateway.port)
        client.sendall(b"plain\n")
        assert recv_exactly(client, 6) == b"plain\n"
        client.close()
        backend = f"tls:localhost:{tls_echo.port}:trustRoots={ca.trust_dir}"
        config.write_text(f'health-interval = 0\nbackend = ["{backend}"]\n')
        os.kill(gateway.pid, signal.SIGHUP)
        wait_for(lambda: f"backend {backend} added" in gateway.log(), "the reload")
        client = connect(gateway.port)
        client.sendall(b"over tls\n")
        assert recv_exactly(client, 9) == b"over tls\n"
        client.close()
        assert tls_echo.connections == 1


@pytest.mark.parametrize(
    ("describe", "expected"),
    [
        # No trustRoots: the platform's CAs do not know the test CA.
        (lambda port, ca: f"tls:localhost:{port}", "certificate verify failed"),
        # Trusted CA, but the certificate names localhost, not 127.0.0.1.
        (
            lambda port, ca: f"tls:127.0.0.1:{port}:trustRoots={ca.trust_dir}",
            "does not match the host name",
        ),
    ],
    ids=["untrusted", "wrong-host"],
)
def test_tls_backend_failing_verification_fails_over(
    tmp_path: Path,
    ca: ScratchCA,
    tls_echo: Backend,
    echo_backend: Backend,
    describe: object,
    expected: str,
) -> None:
    """
    A TLS backend that fails verification is never used: the failure is logged
    with its reason and the session fails over, with its bytes, to the next
    backend.
    """
    assert callable(describe)
    first = describe(tls_echo.port, ca)
    with GatewayProcess(
        # No health checks: the test counts the backend's connections.
        ["--backend", first, "--backend", echo_backend.endpoint, "--health-interval", "0"],
        tmp_path,
    ) as gateway:
        client = connect(gateway.port)
        client.sendall(b"fail over\n")
        assert recv_exactly(client, 10) == b"fail over\n"
        client.close()
        wait_for(lambda: expected in gateway.log(), f"'{expected}' in the log")
        assert f"backend {first} failed for a session" in gateway.log()
        assert echo_backend.connections == 1


def test_stalled_tls_handshake_times_out_and_fails_over(
    tmp_path: Path, ca: ScratchCA, echo_backend: Backend
) -> None:
    """
    A TLS backend that accepts TCP but never answers the handshake is given up
    after --connect-timeout, and the session goes to the next backend.
    """

    def stall(sock: socket.socket, backend: Backend) -> None:
        recv_until_eof(sock)

    with (
        Backend(stall) as stalled,
        GatewayProcess(
            [
                "--backend",
                f"tls:localhost:{stalled.port}:trustRoots={ca.trust_dir}",
                "--backend",
                echo_backend.endpoint,
                "--connect-timeout",
                "0.5",
            ],
            tmp_path,
        ) as gateway,
    ):
        client = connect(gateway.port)
        client.sendall(b"hello\n")
        assert recv_exactly(client, 6) == b"hello\n"
        client.close()
        wait_for(lambda: "TLS handshake not done within 0.5 s" in gateway.log(), "the timeout log")


class _UnixEcho(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True


def test_unix_front_and_unix_backend(tmp_path: Path) -> None:
    """
    A unix: front and a unix: backend work like TCP ones, half-close included,
    and the UNIX peer is named readably in the log.
    """

    class Handler(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            sock = self.request
            assert isinstance(sock, socket.socket)
            data = recv_until_eof(sock)
            sock.sendall(data.upper())

    game_path = str(tmp_path / "game.sock")
    front_path = str(tmp_path / "front.sock")
    server = _UnixEcho(game_path, Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with GatewayProcess(
            [
                "--listen",
                "tcp:0:interface=127.0.0.1",
                "--listen",
                f"unix:{front_path}",
                "--backend",
                f"unix:{game_path}",
                "--sniff-timeout",
                "0.2",
            ],
            tmp_path,
        ) as gateway:
            wait_for(lambda: os.path.exists(front_path), "the unix front")
            client = socket.socket(socket.AF_UNIX)
            client.settimeout(10)
            client.connect(front_path)
            client.sendall(b"shout this\n")
            client.shutdown(socket.SHUT_WR)
            assert recv_until_eof(client) == b"SHOUT THIS\n"
            client.close()
            wait_for(lambda: "game session from unix to unix:" in gateway.log(), "the log line")
    finally:
        server.shutdown()
        server.server_close()


def test_bind_failure_in_daemon_mode_exits(tmp_path: Path) -> None:
    """
    Without -n (twistd daemonizes), a front that cannot be bound makes twistd
    exit non-zero with the reason, promptly, and leaves no pid file.
    """
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    front = f"tcp:{taken.getsockname()[1]}:interface=127.0.0.1"
    pidfile = tmp_path / "gw.pid"
    with Backend(echo) as backend:
        started = time.monotonic()
        result = subprocess.run(
            [TWISTD, "--pidfile", str(pidfile), "--logfile", str(tmp_path / "gw.log")]
            + ["gateway", "--listen", front, "--backend", backend.endpoint],
            capture_output=True,
            timeout=60,
            cwd=tmp_path,
        )
    taken.close()
    assert result.returncode != 0
    assert time.monotonic() - started < 30
    # twistd's parent prints the first 100 characters of the child's error...
    output = (result.stdout + result.stderr).decode()
    assert f"gateway: error: --listen {front}" in output
    # ...and the log has all of it.
    log = (tmp_path / "gw.log").read_text()
    assert f"--listen {front}: Couldn't listen on" in log
    assert "Address already in use" in log
    assert not pidfile.exists()
