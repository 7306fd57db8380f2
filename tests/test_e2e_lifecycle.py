"""
The gateway's lifecycle on real subprocesses: SIGTERM drains (stop accepting,
finish HTTP, let game sessions go on up to --drain-timeout, exit 0), and a
second signal stops at once.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.support import Backend as ServerBackend
from tests.support import (
    GatewayProcess,
    admin_url,
    banner_then_echo,
    connect,
    echo,
    listening_ports,
    recv_exactly,
    recv_until_eof,
    wait_for,
)

pytestmark = pytest.mark.usefixtures("tcp_path")


def _refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


def _exit_status(gateway: GatewayProcess, timeout: float) -> int:
    assert gateway.process is not None
    return gateway.process.wait(timeout=timeout)


def _options(backend: ServerBackend, site: Path, drain: str) -> list[str]:
    return [
        "--backend",
        backend.endpoint,
        "--http-root",
        str(site),
        "--sniff-timeout",
        "0.2",
        "--health-interval",
        "0",
        "--drain-timeout",
        drain,
    ]


def _site(tmp_path: Path) -> Path:
    site = tmp_path / "www"
    site.mkdir()
    (site / "index.html").write_bytes(b"<p>drain</p>")
    return site


def test_sigterm_drains_then_exits_zero(tmp_path: Path) -> None:
    """
    On SIGTERM the front stops accepting at once; an idle HTTP keep-alive
    connection is closed; a game session goes on (bytes still flow both
    ways) and, once its client closes it, the gateway exits with status 0,
    well before the drain timeout.
    """
    with (
        ServerBackend(echo) as backend,
        GatewayProcess(_options(backend, _site(tmp_path), "30"), tmp_path) as gateway,
    ):
        game = connect(gateway.port)
        game.sendall(b"before\n")
        assert recv_exactly(game, 7) == b"before\n"
        http = connect(gateway.port)
        http.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        response = http.recv(4096)
        assert response.startswith(b"HTTP/1.1 200") and response.endswith(b"<p>drain</p>")
        assert gateway.process is not None
        gateway.process.send_signal(signal.SIGTERM)
        wait_for(lambda: _refused(gateway.port), "the front to stop accepting")
        # The keep-alive connection was idle: closed, not cut mid-response.
        assert recv_until_eof(http) == b""
        game.sendall(b"during the drain\n")
        assert recv_exactly(game, 17) == b"during the drain\n"
        assert gateway.process.poll() is None
        began = time.monotonic()
        game.close()
        assert _exit_status(gateway, 10) == 0
        assert time.monotonic() - began < 5
        log = gateway.log()
        # (The probes that check that the port is closed may have been
        # accepted just before: "not classified yet".)
        assert re.search(
            r"draining: stopped accepting; 1 game sessions, 1 HTTP connections and "
            r"\d connections not classified yet open",
            log,
        )
        assert "drained: every session has ended" in log
        assert "Traceback" not in log


def test_drain_timeout_closes_what_is_left(tmp_path: Path) -> None:
    """
    A game session still open when the drain timeout passes is closed by
    the gateway (its client sees the end of stream), the close is counted in
    the log and the access log says why, and the exit status is 0.
    """
    with (
        ServerBackend(echo) as backend,
        GatewayProcess(_options(backend, _site(tmp_path), "1"), tmp_path) as gateway,
    ):
        game = connect(gateway.port)
        game.sendall(b"hello\n")
        assert recv_exactly(game, 6) == b"hello\n"
        assert gateway.process is not None
        began = time.monotonic()
        gateway.process.send_signal(signal.SIGTERM)
        assert recv_until_eof(game) == b""
        waited = time.monotonic() - began
        assert _exit_status(gateway, 10) == 0
        assert waited >= 0.9, f"closed after {waited:.2f} s, before the 1 s drain timeout"
        log = gateway.log()
        assert "drain timeout (1 s): closing 1 game sessions still open" in log
        assert "ended (drain-timeout)" in log
        game.close()


def test_second_signal_stops_at_once(tmp_path: Path) -> None:
    """
    While draining (with a long drain timeout), a second SIGTERM, or a
    SIGINT, closes the remaining sessions and the gateway exits at once.
    """
    site = _site(tmp_path)
    for second in (signal.SIGTERM, signal.SIGINT):
        run = tmp_path / second.name
        run.mkdir()
        with (
            ServerBackend(echo) as backend,
            GatewayProcess(_options(backend, site, "300"), run) as gateway,
        ):
            game = connect(gateway.port)
            game.sendall(b"x\n")
            assert recv_exactly(game, 2) == b"x\n"
            assert gateway.process is not None
            gateway.process.send_signal(signal.SIGTERM)
            wait_for(lambda: "draining:" in gateway.log(), "the drain to start")
            began = time.monotonic()
            gateway.process.send_signal(second)
            assert recv_until_eof(game) == b""
            assert _exit_status(gateway, 10) == 0
            assert time.monotonic() - began < 5
            assert f"stopping now (a second {second.name})" in gateway.log()
            game.close()


def test_twist_drains_too(tmp_path: Path) -> None:
    """
    Under `twist` (the foreground runner) SIGTERM drains the same way.
    """
    twist = Path(GatewayProcess([], tmp_path).argv[0]).with_name("twist")
    with ServerBackend(echo) as backend:
        process = subprocess.Popen(
            [
                str(twist),
                "gateway",
                "--listen",
                "tcp:0:interface=127.0.0.4",
                "--admin",
                "none",
                *_options(backend, _site(tmp_path), "30"),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            wait_for(lambda: "127.0.0.4" in listening_ports(process.pid), "twist to listen")
            port = listening_ports(process.pid)["127.0.0.4"][0]
            game = socket.create_connection(("127.0.0.4", port), timeout=10)
            game.sendall(b"y\n")
            assert recv_exactly(game, 2) == b"y\n"
            process.send_signal(signal.SIGTERM)
            time.sleep(0.5)
            game.sendall(b"z\n")
            assert recv_exactly(game, 2) == b"z\n"
            game.close()
            assert process.wait(timeout=10) == 0
            assert process.stdout is not None
            assert b"drained: every session has ended" in process.stdout.read()
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()


def test_http_response_in_flight_is_finished(tmp_path: Path) -> None:
    """
    An HTTP response being sent when SIGTERM arrives (a large file to a
    client that reads slowly) is sent whole, then the connection is closed
    and the gateway exits 0.
    """
    site = _site(tmp_path)
    body = bytes(range(256)) * 16384  # 4 MiB
    (site / "big.bin").write_bytes(body)
    with (
        ServerBackend(echo) as backend,
        GatewayProcess(_options(backend, site, "30"), tmp_path) as gateway,
    ):
        http = connect(gateway.port)
        http.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
        http.sendall(b"GET /big.bin HTTP/1.1\r\nHost: x\r\n\r\n")
        first = http.recv(1024)
        assert first.startswith(b"HTTP/1.1 200")
        assert gateway.process is not None
        gateway.process.send_signal(signal.SIGTERM)
        wait_for(lambda: "draining:" in gateway.log(), "the drain to start")
        rest = recv_until_eof(http)
        received = (first + rest).split(b"\r\n\r\n", 1)[1]
        assert received == body
        assert _exit_status(gateway, 10) == 0
        http.close()


def _status(gateway: GatewayProcess) -> dict[str, Any]:
    url = admin_url(gateway) + "/status.json"
    document: dict[str, Any] = json.loads(urllib.request.urlopen(url, timeout=10).read())
    return document


def _first_line(sock: socket.socket) -> bytes:
    line = b""
    while not line.endswith(b"\n"):
        line += sock.recv(1)
    return line


def test_sighup_adds_and_removes_backends_under_live_sessions(tmp_path: Path) -> None:
    """
    With --config, SIGHUP re-reads the file: a backend added takes new
    sessions (with its own PROXY setting), one removed drains while its live
    session goes on, and leaves the pool once that session ends; a bad file
    on a later SIGHUP is refused in the log and changes nothing.
    """
    config = tmp_path / "gateway.toml"
    with ServerBackend(echo) as first, ServerBackend(echo) as second:
        config.write_text(
            f"sniff-timeout = 0.2\nhealth-interval = 0\n"
            f'[[backend]]\nname = "one"\nendpoint = "{first.endpoint}"\n'
        )
        # The fronts on the command line (which wins over the file), as the
        # test helper puts them on ephemeral ports.
        with GatewayProcess(
            ["--config", str(config), "--admin", "tcp:0:interface=127.0.0.3"], tmp_path
        ) as gateway:
            assert gateway.process is not None
            kept = connect(gateway.port)
            kept.sendall(b"on one\n")
            assert recv_exactly(kept, 7) == b"on one\n"
            config.write_text(
                config.read_text().split("[[backend]]")[0]
                + f'[[backend]]\nname = "two"\nendpoint = "{second.endpoint}"\n'
                + 'proxy-protocol = "v1"\nweight = 2\n'
            )
            gateway.process.send_signal(signal.SIGHUP)
            wait_for(lambda: "reloaded" in gateway.log(), "the reload")
            states = {b["name"]: b["state"] for b in _status(gateway)["backends"]}
            assert states == {"one": "draining", "two": "up"}
            # A new session goes to the added backend, with its PROXY header.
            new = connect(gateway.port)
            new.sendall(b"on two\n")
            header = _first_line(new)
            assert header.startswith(b"PROXY TCP4 127.0.0.1 127.0.0.1 "), header
            assert recv_exactly(new, 7) == b"on two\n"
            new.close()
            # The live session on the removed backend goes on.
            kept.sendall(b"still\n")
            assert recv_exactly(kept, 6) == b"still\n"
            assert first.connections == 1
            kept.close()
            wait_for(
                lambda: [b["name"] for b in _status(gateway)["backends"]] == ["two"],
                "the removed backend to leave",
            )
            # A typo: refused, the running configuration stays.
            config.write_text("max-connections = -1\n" + config.read_text())
            gateway.process.send_signal(signal.SIGHUP)
            wait_for(lambda: "reload refused" in gateway.log(), "the refused reload")
            assert "max-connections: must not be negative" in gateway.log()
            again = connect(gateway.port)
            again.sendall(b"x\n")
            assert _first_line(again).startswith(b"PROXY TCP4")
            assert recv_exactly(again, 2) == b"x\n"
            again.close()
            assert gateway.process.poll() is None


class _Stream(threading.Thread):
    """
    A steady stream of new connections: each connects, sends a line, reads
    its echo and closes; every failure is kept.  Bounded in count and time.
    """

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.done = 0
        self.failures: list[str] = []
        self.halt = threading.Event()

    def run(self) -> None:
        deadline = time.monotonic() + 60
        while not self.halt.is_set() and self.done < 20000 and time.monotonic() < deadline:
            try:
                sock = socket.create_connection(("127.0.0.1", self.port), timeout=10)
                sock.sendall(b"stream\n")
                assert recv_exactly(sock, 7) == b"stream\n"
                sock.close()
                self.done += 1
            except (OSError, AssertionError) as error:
                self.failures.append(repr(error))


def test_handover_refuses_nothing_and_cuts_nothing(tmp_path: Path) -> None:
    """
    The upgrade procedure: with long game sessions open and a steady stream
    of new connections, a new gateway started with the same --handover takes
    over the listening socket, the old one gets SIGTERM and drains; no
    connection attempt fails, no session is cut, and the old process exits 0.
    """
    (tmp_path / "old").mkdir()
    (tmp_path / "new").mkdir()
    with ServerBackend(echo) as backend:
        args = [
            "--listen",
            "tcp:0:interface=127.0.0.1",
            "--backend",
            backend.endpoint,
            "--handover",
            str(tmp_path / "handover.sock"),
            "--sniff-timeout",
            "0.2",
            "--health-interval",
            "0",
            "--drain-timeout",
            "20",
        ]
        with GatewayProcess(args, tmp_path / "old") as old:
            assert old.process is not None
            sessions = [connect(old.port) for _ in range(3)]
            for number, session in enumerate(sessions):
                session.sendall(b"long %d\n" % number)
                assert recv_exactly(session, 7) == b"long %d\n" % number
            stream = _Stream(old.port)
            stream.start()
            wait_for(lambda: stream.done >= 50, "the stream to flow")
            with GatewayProcess(args, tmp_path / "new") as new:
                assert new.port == old.port
                wait_for(lambda: "no longer accepts" in new.log(), "the hand-over")
                handed_over_at = old.log().count("game session from")
                served_before = stream.done
                wait_for(lambda: stream.done >= served_before + 50, "the new process to serve")
                old.process.send_signal(signal.SIGTERM)
                wait_for(lambda: "draining:" in old.log(), "the old one to drain")
                # The long sessions, on the old process, go on while it drains.
                for round_ in range(3):
                    for session in sessions:
                        session.sendall(b"round %d\n" % round_)
                        assert recv_exactly(session, 8) == b"round %d\n" % round_
                    time.sleep(0.2)
                for session in sessions:
                    session.close()
                assert _exit_status(old, 15) == 0
                # The old process took no new connection after the hand-over:
                # its log ends sessions only for the long ones and those it
                # had accepted before.
                old_sessions = old.log().count("game session from")
                assert old_sessions <= len(sessions) + handed_over_at + 5, old_sessions
                after_old = stream.done
                wait_for(lambda: stream.done >= after_old + 50, "the stream after the old exit")
                stream.halt.set()
                stream.join(timeout=20)
                print(f"hand-over: {stream.done} connections, {len(stream.failures)} failed")
                assert stream.failures == [], stream.failures[:5]
                assert new.process is not None and new.process.poll() is None
            old_log = old.log()
            assert "handed over to process" in old_log
            assert "drained: every session has ended" in old_log
            assert "drain timeout" not in old_log


def test_drain_waits_for_connections_not_classified_yet(tmp_path: Path) -> None:
    """
    A client that connected just before SIGTERM and has not spoken yet (a
    server-speaks-first game) is not cut: once the sniff timeout makes it a
    game session it gets the backend's banner and its echo, and the gateway
    exits 0 when it leaves.
    """
    with ServerBackend(banner_then_echo) as backend:
        options = _options(backend, _site(tmp_path), "30")
        options[options.index("--sniff-timeout") + 1] = "1.0"
        with GatewayProcess(options, tmp_path) as gateway:
            assert gateway.process is not None
            silent = connect(gateway.port)
            time.sleep(0.2)
            gateway.process.send_signal(signal.SIGTERM)
            wait_for(lambda: "draining:" in gateway.log(), "the drain to start")
            assert "1 connections not classified yet" in gateway.log()
            banner = _first_line(silent)
            assert banner == f"HELLO from {backend.port}\r\n".encode()
            silent.sendall(b"late\n")
            assert recv_exactly(silent, 5) == b"late\n"
            silent.close()
            assert _exit_status(gateway, 10) == 0


def test_request_arriving_at_sigterm_is_answered(tmp_path: Path) -> None:
    """
    An HTTP request whose headers are still arriving when SIGTERM comes is
    answered once complete, then the connection is closed.
    """
    with (
        ServerBackend(echo) as backend,
        GatewayProcess(_options(backend, _site(tmp_path), "30"), tmp_path) as gateway,
    ):
        assert gateway.process is not None
        http = connect(gateway.port)
        http.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
        time.sleep(0.3)
        gateway.process.send_signal(signal.SIGTERM)
        wait_for(lambda: "draining:" in gateway.log(), "the drain to start")
        http.sendall(b"\r\n")
        response = recv_until_eof(http)
        assert response.startswith(b"HTTP/1.1 200 OK") and response.endswith(b"<p>drain</p>")
        assert _exit_status(gateway, 10) == 0
