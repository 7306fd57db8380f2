"""
End-to-end tests of the backend pool: balancing, affinity, health checks and
failover, a TLS front with SNI, and PROXY headers read by a real HAProxy.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import socketserver
import ssl
import subprocess
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.certs import make_ca
from tests.support import (
    DEADLINE,
    Backend,
    GatewayProcess,
    admin_url,
    banner_then_echo,
    connect,
    listening_ports,
    recv_exactly,
    recv_until_eof,
    wait_for,
)

pytestmark = pytest.mark.usefixtures("tcp_path")


def banner_port(sock: socket.socket) -> int:
    """
    Read a banner backend's first line and return the port it names.
    """
    line = b""
    while not line.endswith(b"\r\n"):
        chunk = sock.recv(1)
        assert chunk, f"closed before the banner: {line!r}"
        line += chunk
    match = re.fullmatch(rb"HELLO from (\d+)\r\n", line)
    assert match is not None, line
    return int(match.group(1))


@pytest.fixture
def two_banners() -> Iterator[tuple[Backend, Backend]]:
    """
    Two backends that name themselves (by port) first, then echo.
    """
    with Backend(banner_then_echo) as first, Backend(banner_then_echo) as second:
        yield first, second


def test_round_robin_uses_both_backends(
    tmp_path: Path, two_banners: tuple[Backend, Backend]
) -> None:
    """
    Round-robin over two backends: six sessions, three on each, alternating.
    """
    first, second = two_banners
    with GatewayProcess(
        ["--backend", first.endpoint, "--backend", second.endpoint, "--sniff-timeout", "0.2"],
        tmp_path,
    ) as gateway:
        ports = []
        for _ in range(6):
            client = connect(gateway.port)
            client.sendall(b"hi\n")
            ports.append(banner_port(client))
            client.close()
        assert ports == [first.port, second.port] * 3


def test_least_connections_fills_the_emptier_backend(
    tmp_path: Path, two_banners: tuple[Backend, Backend]
) -> None:
    """
    With leastconn, while one backend holds a long session, the next two
    sessions go to the other one.
    """
    first, second = two_banners
    with GatewayProcess(
        [
            "--backend",
            first.endpoint,
            "--backend",
            second.endpoint,
            "--balance",
            "leastconn",
            "--sniff-timeout",
            "0.2",
        ],
        tmp_path,
    ) as gateway:
        long = connect(gateway.port)
        long.sendall(b"stay\n")
        busy = banner_port(long)
        others = []
        for _ in range(2):
            client = connect(gateway.port)
            client.sendall(b"x\n")
            others.append(banner_port(client))
            client.close()
            wait_for(lambda: "ended (client-closed)" in gateway.log(), "the session end")
        assert busy not in others
        long.close()


def test_session_key_affinity(tmp_path: Path, two_banners: tuple[Backend, Backend]) -> None:
    """
    With --balance hash and --session-key, every session of a player (the
    first group of the pattern in the first line) reaches the same backend,
    different players spread over both, and a first line without a match
    falls back to the client address.
    """
    first, second = two_banners
    with GatewayProcess(
        [
            "--backend",
            first.endpoint,
            "--backend",
            second.endpoint,
            "--balance",
            "hash",
            "--session-key",
            r"^LOGIN (\w+)",
        ],
        tmp_path,
    ) as gateway:
        seen: dict[str, set[int]] = {}
        # 24 players: all on one of two backends by chance has odds 2**-23.
        players = [f"player{number:02d}" for number in range(24)]
        for _round in range(2):
            for player in players:
                client = connect(gateway.port)
                # The line split in two writes: the gateway waits for all of it.
                client.sendall(b"LOGIN " + player[:2].encode())
                time.sleep(0.01)
                client.sendall(player[2:].encode() + b" v1.0\r\n")
                seen.setdefault(player, set()).add(banner_port(client))
                assert recv_exactly(client, len(player) + 13) == (
                    f"LOGIN {player} v1.0\r\n".encode()
                )
                client.close()
        assert all(len(ports) == 1 for ports in seen.values()), seen
        assert {port for ports in seen.values() for port in ports} == {first.port, second.port}
        for _ in range(3):
            client = connect(gateway.port)
            client.sendall(b"no key here\n")
            port = banner_port(client)
            client.close()
            seen.setdefault("by address", set()).add(port)
        assert len(seen["by address"]) == 1


def make_tls_front(folder: Path) -> tuple[Path, dict[str, Path]]:
    """
    A folder of PEM files for two host names (the tls: endpoint's SNI map),
    and each name's CA certificate for the client.
    """
    certs = folder / "certs"
    certs.mkdir()
    cas = {}
    for name in ("alpha.example", "beta.example"):
        ca = make_ca(folder / name, name)
        shutil.copy(ca.server_pem, certs / f"{name}.pem")
        cas[name] = ca.trust_dir / "ca.pem"
    return certs, cas


def test_tls_front_with_sni_serves_http_and_game(tmp_path: Path, echo_backend: Backend) -> None:
    """
    A tls: front serves two host names from one port (each with its own
    certificate, chosen by SNI), and behind TLS the front door still tells
    HTTP from game sessions.
    """
    certs, cas = make_tls_front(tmp_path)
    www = tmp_path / "www"
    www.mkdir()
    (www / "index.html").write_text("secure page")
    with GatewayProcess(
        [
            "--listen",
            "tcp:0:interface=127.0.0.1",
            "--listen",
            f"tls:{certs}:port=0:interface=\\:\\:1",
            "--backend",
            echo_backend.endpoint,
            "--http-root",
            str(www),
        ],
        tmp_path,
    ) as gateway:
        wait_for(lambda: "::1" in listening_ports(gateway.pid), "the TLS front")
        tls_port = listening_ports(gateway.pid)["::1"][0]
        for name, ca in cas.items():
            context = ssl.create_default_context(cafile=str(ca))
            raw = socket.create_connection(("::1", tls_port), timeout=DEADLINE)
            with context.wrap_socket(raw, server_hostname=name) as tls:
                cert = tls.getpeercert()
                assert cert is not None
                assert ("commonName", name) in [pair for rdn in cert["subject"] for pair in rdn]
                tls.sendall(
                    f"GET / HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n".encode()
                )
                response = recv_until_eof(tls)
                assert response.startswith(b"HTTP/1.1 200 OK\r\n")
                assert response.endswith(b"secure page")
            raw = socket.create_connection(("::1", tls_port), timeout=DEADLINE)
            with context.wrap_socket(raw, server_hostname=name) as tls:
                tls.sendall(b"game over tls\n")
                assert recv_exactly(tls, 14) == b"game over tls\n"


class _Restartable(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True


class _BannerHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        sock = self.request
        assert isinstance(sock, socket.socket)
        port = self.server.server_address[1]  # type: ignore[index]
        try:
            sock.sendall(f"HELLO from {port}\r\n".encode())
            while data := sock.recv(65536):
                sock.sendall(data)
        except OSError:
            pass


def serve(port: int = 0) -> tuple[_Restartable, threading.Thread]:
    """
    A banner-then-echo server on loopback (on C{port}, to restart one).
    """
    server = _Restartable(("127.0.0.1", port), _BannerHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server, thread


def stop(server: _Restartable) -> None:
    """
    Stop a server and close its listening socket.
    """
    server.shutdown()
    server.server_close()


def test_dead_backend_is_marked_down_and_comes_back(tmp_path: Path) -> None:
    """
    Two backends; one is stopped: it is marked down within the health
    interval and new sessions all go to the survivor, with no client turned
    away; restarted, it is marked up again and gets sessions again.
    """
    survivor, _ = serve()
    flaky, _ = serve()
    flaky_port = int(flaky.server_address[1])
    survivor_port = int(survivor.server_address[1])
    try:
        with GatewayProcess(
            [
                "--backend",
                f"tcp:127.0.0.1:{survivor_port}",
                "--backend",
                f"tcp:127.0.0.1:{flaky_port}",
                "--health-interval",
                "0.3",
                "--sniff-timeout",
                "0.2",
            ],
            tmp_path,
        ) as gateway:
            stop(flaky)
            wait_for(
                lambda: f"backend tcp:127.0.0.1:{flaky_port} is down" in gateway.log(),
                "the down transition",
                # 3 failed probes, the last two a quarter interval apart: about
                # 0.5 s at most here; 2 s leaves room for a loaded machine.
                timeout=2,
            )
            ports: Counter[int] = Counter()
            for _ in range(6):
                client = connect(gateway.port)
                client.sendall(b"hi\n")
                ports[banner_port(client)] += 1
                client.close()
            assert ports == {survivor_port: 6}

            flaky, _ = serve(flaky_port)
            wait_for(
                lambda: f"backend tcp:127.0.0.1:{flaky_port} is up" in gateway.log(),
                "the up transition",
                timeout=5,
            )
            ports.clear()
            for _ in range(6):
                client = connect(gateway.port)
                client.sendall(b"hi\n")
                ports[banner_port(client)] += 1
                client.close()
            assert ports[flaky_port] >= 2
    finally:
        stop(survivor)
        stop(flaky)


def test_every_backend_down_refuses_clearly(tmp_path: Path) -> None:
    """
    When every backend is down, a game client gets the busy line and is
    closed at once (not left hanging); the refusal is counted under its own
    reason (no-backend) and logged like other refusals: a burst of such
    clients is logged 5 at a time, then summarised, not one line each.
    """
    server, _ = serve()
    port = int(server.server_address[1])
    with GatewayProcess(
        [
            "--backend",
            f"tcp:127.0.0.1:{port}",
            "--health-interval",
            "0.2",
            "--sniff-timeout",
            "0.2",
            "--busy-message",
            "BUSY try later",
            "--admin",
            "tcp:0:interface=127.0.0.3",
        ],
        tmp_path,
    ) as gateway:
        stop(server)
        wait_for(lambda: "is down" in gateway.log(), "the down transition", timeout=5)
        for _ in range(12):
            client = connect(gateway.port)
            client.sendall(b"hi\n")
            started = time.monotonic()
            assert recv_until_eof(client) == b"BUSY try later\r\n"
            assert time.monotonic() - started < 2
            client.close()
        admin = admin_url(gateway)
        document = json.loads(urllib.request.urlopen(admin + "/status.json", timeout=10).read())
        assert document["counters"]["refused"]["no-backend"] == 12
        assert document["counters"]["unserved"] == 12
        log = gateway.log()
        assert log.count("no backend available; tried: none up") == 5


HAPROXY = shutil.which("haproxy")


@pytest.mark.skipif(HAPROXY is None and not os.environ.get("CI"), reason="haproxy not installed")
@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
@pytest.mark.parametrize("version", ["v1", "v2"])
def test_proxy_header_read_by_haproxy(tmp_path: Path, version: str, family: str) -> None:
    """
    With --proxy-protocol, a real HAProxy (bind ... accept-proxy) in front of
    the game server sees the gateway's client, not the gateway: its log names
    the client's source address and port (127.0.0.7, or ::1 through an IPv6
    front) and the address the client connected to.  The health probes send
    a LOCAL/UNKNOWN header, so HAProxy logs no protocol errors.
    """
    assert HAPROXY is not None, "CI installs haproxy (.ci/run)"
    with Backend(banner_then_echo) as game:
        front = socket.socket()
        front.bind(("127.0.0.1", 0))
        haproxy_port = front.getsockname()[1]
        front.close()
        config = tmp_path / "haproxy.cfg"
        config.write_text(
            "global\n"
            "  log stdout format raw local0\n"
            "defaults\n"
            "  mode tcp\n"
            "  log global\n"
            '  log-format "client=%ci:%cp front=%fi:%fp"\n'
            "  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n"
            "frontend game\n"
            f"  bind 127.0.0.1:{haproxy_port} accept-proxy\n"
            "  default_backend game\n"
            "backend game\n"
            f"  server game 127.0.0.1:{game.port}\n"
        )
        proxy = subprocess.Popen(
            [HAPROXY, "-db", "-f", str(config)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            wait_for(
                lambda: haproxy_port in listening_ports(proxy.pid).get("127.0.0.1", []),
                "haproxy to listen",
            )
            extra = []
            if family == "ipv6":
                extra = ["--listen", "tcp6:0:interface=\\:\\:1"]
            with GatewayProcess(
                [
                    "--listen",
                    "tcp:0:interface=127.0.0.1",
                    *extra,
                    "--backend",
                    f"tcp:127.0.0.1:{haproxy_port}",
                    "--proxy-protocol",
                    version,
                    "--sniff-timeout",
                    "0.2",
                    "--health-interval",
                    "0.2",
                ],
                tmp_path,
            ) as gateway:
                if family == "ipv6":
                    wait_for(lambda: "::1" in listening_ports(gateway.pid), "the IPv6 front")
                    front_port = listening_ports(gateway.pid)["::1"][0]
                    client = socket.socket(socket.AF_INET6)
                    client.settimeout(DEADLINE)
                    client.connect(("::1", front_port))
                    expected_front = f"front=::1:{front_port}"
                else:
                    client = socket.socket()
                    client.settimeout(DEADLINE)
                    client.bind(("127.0.0.7", 0))
                    client.connect(("127.0.0.1", gateway.port))
                    expected_front = f"front=127.0.0.1:{gateway.port}"
                source = client.getsockname()
                client.sendall(b"hello\n")
                assert banner_port(client) == game.port
                assert recv_exactly(client, 6) == b"hello\n"
                client.close()
                time.sleep(0.3)
        finally:
            proxy.terminate()
            output, _ = proxy.communicate(timeout=10)
        assert f"client={source[0]}:{source[1]} {expected_front}".encode() in output, output
        # No header errors from the probes (every 0.2 s, several during the
        # test), except at most one: a probe whose connection the kernel had
        # completed when the gateway stopped is closed before its header.
        assert output.count(b"PROXY protocol") <= 1, output


def header_then_echo(sock: socket.socket, backend: Backend) -> None:
    """
    Record the first line (a PROXY v1 header, CRLF included, if the gateway
    sent one), then echo every byte after it.
    """
    data = b""
    while b"\n" not in data:
        chunk = sock.recv(1 << 16)
        if not chunk:
            backend.record(data)
            return
        data += chunk
    end = data.index(b"\n") + 1
    backend.record(data[:end])
    if data[end:]:
        sock.sendall(data[end:])
    while data := sock.recv(1 << 16):
        sock.sendall(data)


def test_client_address_from_proxy_front_passed_to_backend(tmp_path: Path) -> None:
    """
    Behind a haproxy: front, the address in the client's PROXY v1 header is
    the session's client everywhere: a backend with --proxy-protocol v1 gets
    a header naming 203.0.113.7 port 4444 as the source (and the header's
    destination as the destination), then the game bytes that followed the
    client's header, and /status.json on the admin endpoint lists the session
    with peer 203.0.113.7:4444.
    """
    with (
        Backend(header_then_echo) as backend,
        GatewayProcess(
            [
                # The only port on 127.0.0.1 (the admin is on 127.0.0.3), so
                # GatewayProcess finds it as the front.
                "--listen",
                "haproxy:tcp:0:interface=127.0.0.1",
                "--backend",
                backend.endpoint,
                "--proxy-protocol",
                "v1",
                "--admin",
                "tcp:0:interface=127.0.0.3",
                # No probes: their PROXY UNKNOWN connections would reach the backend too.
                "--health-interval",
                "0",
                "--sniff-timeout",
                "0.2",
            ],
            tmp_path,
        ) as gateway,
    ):
        admin = admin_url(gateway)
        client = connect(gateway.port)
        # The header and the first game bytes in one write, as a balancer may send them.
        client.sendall(b"PROXY TCP4 203.0.113.7 198.51.100.9 4444 443\r\nhello\n")
        wait_for(lambda: bool(backend.received), "the backend's first line")
        assert backend.received == [b"PROXY TCP4 203.0.113.7 198.51.100.9 4444 443\r\n"]
        assert recv_exactly(client, 6) == b"hello\n"
        document = json.loads(urllib.request.urlopen(admin + "/status.json", timeout=10).read())
        [session] = [s for s in document["sessions"] if s["kind"] == "game"]
        assert session["peer"] == "203.0.113.7:4444"
        assert session["backend"] == backend.endpoint
        client.close()


def test_send_expect_health_check_marks_a_mute_backend_down(tmp_path: Path) -> None:
    """
    A backend that accepts connections and closes them at once passes a
    plain connect check; with --health-send/--health-expect it fails the
    check, is marked down (with the reason in the log), while a backend
    that answers PONG stays up.
    """

    def mute(sock: socket.socket, backend: Backend) -> None:
        sock.close()

    def pong(sock: socket.socket, backend: Backend) -> None:
        data = b""
        while b"PING\r\n" not in data:
            chunk = sock.recv(100)
            if not chunk:
                return
            data += chunk
        sock.sendall(b"PONG\r\n")

    with (
        Backend(mute) as broken,
        Backend(pong) as healthy,
        GatewayProcess(
            [
                "--backend",
                broken.endpoint,
                "--backend",
                healthy.endpoint,
                "--health-interval",
                "0.4",
                "--health-send",
                "PING\\r\\n",
                "--health-expect",
                "PONG",
            ],
            tmp_path,
        ) as gateway,
    ):
        wait_for(lambda: f"backend {broken.endpoint} is down" in gateway.log(), "down", 5)
        assert "connection closed before" in gateway.log()
        time.sleep(1)
        assert f"backend {healthy.endpoint} is down" not in gateway.log()
