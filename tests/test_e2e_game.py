"""
End-to-end tests of game sessions: a real C{twistd -n gateway} subprocess on
loopback, real backends and blocking clients.
"""

from __future__ import annotations

import hashlib
import http.client
import socket
import threading
import time
from pathlib import Path

import pytest

from tests.support import (
    Backend,
    GatewayProcess,
    closed_port,
    connect,
    pattern,
    recv_exactly,
    recv_until_eof,
    rss_kib,
    wait_for,
)

pytestmark = pytest.mark.usefixtures("tcp_path")

MB = 1 << 20


def source_of(data: bytes) -> Backend:
    """
    A backend that sends C{data} and then closes the connection.
    """

    def send(sock: socket.socket, backend: Backend) -> None:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        recv_until_eof(sock)

    return Backend(send)


RELAYS = ["splice", "copy"]

RELAYS_AND_REACTORS = [("splice", None), ("copy", None), ("splice", "uvloop"), ("copy", "uvloop")]
"""The data path with Twisted's default reactor and with C{twistd -r uvloop}."""
"""The relay modes the data-path tests run with (splice: zero-copy; copy: through Python)."""


def relayed_by(gateway: GatewayProcess, relay: str) -> bool:
    """
    Whether a game session ended in the gateway's log, relayed by C{relay}.
    """
    return f" s, {relay}\n" in gateway.log()


@pytest.mark.parametrize(("relay", "reactor"), RELAYS_AND_REACTORS)
def test_one_byte_per_write_both_ways(
    tmp_path: Path, echo_backend: Backend, relay: str, reactor: str | None
) -> None:
    """
    A client writing one byte per send (with TCP_NODELAY) and reading each
    echo gets every byte back in order, whatever the relay.
    """
    data = pattern(3000, seed=9)
    with GatewayProcess(
        ["--backend", echo_backend.endpoint, "--sniff-timeout", "0.2", "--relay", relay],
        tmp_path,
        reactor=reactor,
    ) as gateway:
        client = connect(gateway.port)
        client.sendall(data[:1])
        assert recv_exactly(client, 1) == data[:1]
        for index in range(1, len(data)):
            client.send(data[index : index + 1])
        assert recv_exactly(client, len(data) - 1) == data[1:]
        client.close()
        wait_for(lambda: relayed_by(gateway, relay), f"the session's end ({relay})")


def test_http_and_game_on_one_port_at_once(tmp_path: Path, echo_backend: Backend) -> None:
    """
    One port serves an HTTP client and a game client at the same time: the game
    session stays open and keeps echoing while HTTP requests are answered.
    """
    root = tmp_path / "www"
    root.mkdir()
    (root / "index.html").write_text("<h1>game page</h1>")
    with GatewayProcess(
        ["--backend", echo_backend.endpoint, "--http-root", str(root)], tmp_path
    ) as gateway:
        game = connect(gateway.port)
        game.sendall(b"hello backend\n")
        assert recv_exactly(game, 14) == b"hello backend\n"

        web = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=10)
        web.request("GET", "/")
        response = web.getresponse()
        assert response.status == 200
        assert response.getheader("Content-Type", "").startswith("text/html")
        assert response.read() == b"<h1>game page</h1>"

        game.sendall(b"still here\n")
        assert recv_exactly(game, 11) == b"still here\n"
        web.request("GET", "/missing")
        missing = web.getresponse()
        missing.read()
        assert missing.status == 404
        game.close()
        web.close()


@pytest.mark.parametrize(("relay", "reactor"), RELAYS_AND_REACTORS)
def test_twenty_megabytes_each_way_at_once_byte_exact(
    tmp_path: Path, relay: str, reactor: str | None
) -> None:
    """
    20 MB from client to backend and 20 MB from backend to client, sent at
    the same time through one session, arrive byte-exact (same length, same
    SHA-256), and each side's end of stream arrives after its last byte.
    """
    upload = pattern(20 * MB, seed=1)
    download = pattern(20 * MB, seed=2)

    def duplex(sock: socket.socket, backend: Backend) -> None:
        def send() -> None:
            sock.sendall(download)
            sock.shutdown(socket.SHUT_WR)

        sender = threading.Thread(target=send)
        sender.start()
        backend.record(recv_until_eof(sock))
        sender.join(timeout=60)

    with (
        Backend(duplex) as backend,
        GatewayProcess(
            ["--backend", backend.endpoint, "--health-interval", "0", "--relay", relay],
            tmp_path,
            reactor=reactor,
        ) as gateway,
    ):
        client = connect(gateway.port)

        def upload_all() -> None:
            client.sendall(upload)
            client.shutdown(socket.SHUT_WR)

        uploader = threading.Thread(target=upload_all)
        uploader.start()
        received = recv_until_eof(client)
        uploader.join(timeout=60)
        client.close()
        wait_for(lambda: len(backend.received) == 1, "the backend to finish")
        wait_for(lambda: relayed_by(gateway, relay), f"the session's end ({relay})")
    assert len(received) == len(download)
    assert hashlib.sha256(received).digest() == hashlib.sha256(download).digest()
    assert len(backend.received[0]) == len(upload)
    assert hashlib.sha256(backend.received[0]).digest() == hashlib.sha256(upload).digest()


def test_backend_speaking_first_sends_twenty_megabytes(tmp_path: Path) -> None:
    """
    A backend that speaks first and sends 20 MB to a silent client (taken for a
    game client by the sniff timeout) delivers it byte-exact, then its close.
    """
    download = pattern(20 * MB, seed=5)
    with (
        source_of(download) as source,
        GatewayProcess(["--backend", source.endpoint, "--sniff-timeout", "0.3"], tmp_path) as gw,
    ):
        client = connect(gw.port)
        received = recv_until_eof(client)
        client.close()
    assert hashlib.sha256(received).digest() == hashlib.sha256(download).digest()


@pytest.mark.parametrize("relay", RELAYS)
def test_slow_reader_keeps_gateway_memory_bounded(tmp_path: Path, relay: str) -> None:
    """
    A backend sends 200 MB to a client that reads slowly: the backend is held
    back (flow control), the gateway's memory stays within a bound far below
    the data volume, and every byte arrives.
    """
    total = 200 * MB
    block = pattern(MB, seed=3)
    sent = [0]

    def flood(sock: socket.socket, backend: Backend) -> None:
        for _ in range(total // MB):
            sock.sendall(block)
            sent[0] += MB
        sock.shutdown(socket.SHUT_WR)
        recv_until_eof(sock)

    with (
        Backend(flood) as source,
        GatewayProcess(
            ["--backend", source.endpoint, "--sniff-timeout", "0.2", "--relay", relay], tmp_path
        ) as gateway,
    ):
        baseline = rss_kib(gateway.pid)
        client = connect(gateway.port)
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        wait_for(lambda: sent[0] > 0, "the backend to start sending")
        # Not reading at all for a while: the backend must stall.
        time.sleep(1.5)
        stalled_at = sent[0]
        peak = rss_kib(gateway.pid)
        assert stalled_at < 32 * MB, f"backend not held back: {stalled_at} bytes sent"

        # Now read slowly, 256 KiB at a time with pauses, sampling memory.
        received = 0
        digest = hashlib.sha256()
        deadline = time.monotonic() + 120
        while received < total:
            assert time.monotonic() < deadline
            chunk = client.recv(256 * 1024)
            if not chunk:
                break
            digest.update(chunk)
            received += len(chunk)
            if received % (8 * MB) < len(chunk):
                peak = max(peak, rss_kib(gateway.pid))
                time.sleep(0.01)
        assert client.recv(1) == b""
        client.close()
        wait_for(lambda: relayed_by(gateway, relay), f"the session's end ({relay})")

    assert received == total
    expected = hashlib.sha256(block * (total // MB)).digest()
    assert digest.digest() == expected
    growth_mib = (peak - baseline) / 1024
    print(
        f"slow reader: backend stalled at {stalled_at / MB:.2f} MiB, "
        f"gateway RSS {baseline} KiB -> peak {peak} KiB"
    )
    # The bound (docs/architecture.md): about one write buffer plus one read per
    # direction for this one session, i.e. well under 1 MiB of payload; 4 MiB
    # leaves room for the allocator.  Without flow control it would be ~200 MiB.
    assert growth_mib < 4, f"gateway RSS grew by {growth_mib:.1f} MiB"


def test_server_speaks_first_through_the_sniff_timeout(
    tmp_path: Path, banner_backend: Backend
) -> None:
    """
    A client that sends nothing is taken for a game client after the sniff
    timeout, so a backend that speaks first reaches it; the session then works
    both ways.
    """
    with GatewayProcess(
        ["--backend", banner_backend.endpoint, "--sniff-timeout", "0.3"], tmp_path
    ) as gateway:
        client = connect(gateway.port)
        started = time.monotonic()
        banner = recv_exactly(client, len(f"HELLO from {banner_backend.port}\r\n"))
        assert banner == f"HELLO from {banner_backend.port}\r\n".encode()
        assert time.monotonic() - started >= 0.25
        client.sendall(b"GET is not special mid-session\n")
        assert recv_exactly(client, 31) == b"GET is not special mid-session\n"
        client.close()


def test_failover_to_second_backend_loses_no_byte(tmp_path: Path, sink_backend: Backend) -> None:
    """
    With the first backend refusing connections, the session lands on the
    second, and every byte the client sent meanwhile (one byte per write)
    arrives in order.
    """
    dead = closed_port()
    message = b"player-42 joins\n" * 64
    with GatewayProcess(
        [
            "--backend",
            f"tcp:127.0.0.1:{dead}",
            "--backend",
            sink_backend.endpoint,
            "--health-interval",
            "0",
        ],
        tmp_path,
    ) as gateway:
        client = connect(gateway.port)
        for byte in message:
            client.send(bytes([byte]))
        client.shutdown(socket.SHUT_WR)
        reply = recv_until_eof(client).decode()
        client.close()
        assert reply == f"{len(message)} {hashlib.sha256(message).hexdigest()}\n"
        assert sink_backend.connections == 1
        wait_for(lambda: "failed for a session" in gateway.log(), "the failure log line")
        assert "Connection refused" in gateway.log()


def test_no_backend_reachable_closes_the_client(tmp_path: Path) -> None:
    """
    When every backend refuses, the client is closed (not left hanging) and the
    gateway logs why, and keeps serving.
    """
    with GatewayProcess(
        ["--backend", f"tcp:127.0.0.1:{closed_port()}", "--sniff-timeout", "0.2"], tmp_path
    ) as gateway:
        for _ in range(2):
            client = connect(gateway.port)
            client.sendall(b"hello\n")
            assert recv_until_eof(client) == b""
            client.close()
        wait_for(lambda: "no backend available" in gateway.log(), "the log line")
        assert gateway.process is not None and gateway.process.poll() is None


@pytest.mark.parametrize(("relay", "reactor"), RELAYS_AND_REACTORS)
def test_client_half_close_still_gets_the_whole_reply(
    tmp_path: Path, relay: str, reactor: str | None
) -> None:
    """
    A client that shuts down its sending side (as C{nc -N} does) still gets
    the whole reply: the part the backend sends before seeing the end of
    stream and the part it sends after.
    """
    reply = pattern(3 * MB, seed=4)

    def answer_after_eof(sock: socket.socket, backend: Backend) -> None:
        request = recv_exactly(sock, 5)
        sock.sendall(reply[:MB])
        backend.record(request + recv_until_eof(sock))
        time.sleep(0.2)
        sock.sendall(reply[MB:])

    with (
        Backend(answer_after_eof) as backend,
        GatewayProcess(
            ["--backend", backend.endpoint, "--health-interval", "0", "--relay", relay],
            tmp_path,
            reactor=reactor,
        ) as gateway,
    ):
        client = connect(gateway.port)
        client.sendall(b"quit\n")
        first = recv_exactly(client, MB)
        client.shutdown(socket.SHUT_WR)
        assert first + recv_until_eof(client) == reply
        client.close()
        assert backend.received == [b"quit\n"]
        wait_for(lambda: relayed_by(gateway, relay), f"the session's end ({relay})")


@pytest.mark.parametrize("relay", RELAYS)
def test_idle_timeout_closes_quiet_sessions_only(
    tmp_path: Path, echo_backend: Backend, relay: str
) -> None:
    """
    With --idle-timeout, a session with no traffic is closed after about that
    long, while a session that keeps talking stays open past it.
    """
    with GatewayProcess(
        ["--backend", echo_backend.endpoint, "--idle-timeout", "0.6", "--relay", relay], tmp_path
    ) as gateway:
        quiet = connect(gateway.port)
        busy = connect(gateway.port)
        for sock in (quiet, busy):
            sock.sendall(b"hi\n")
            assert recv_exactly(sock, 3) == b"hi\n"
        started = time.monotonic()
        closed_at: list[float] = []

        def watch() -> None:
            # A clean close (FIN), not a reset: recv() returns b"".
            if quiet.recv(1) == b"":
                closed_at.append(time.monotonic() - started)

        watcher = threading.Thread(target=watch)
        watcher.start()
        for _ in range(8):  # 1.6 s of traffic, well past the timeout
            time.sleep(0.2)
            busy.sendall(b"ping\n")
            assert recv_exactly(busy, 5) == b"ping\n"
        watcher.join(timeout=10)
        assert closed_at, "the quiet session was not closed"
        assert 0.5 <= closed_at[0] <= 3.0
        busy.sendall(b"last\n")
        assert recv_exactly(busy, 5) == b"last\n"
        quiet.close()
        busy.close()
        wait_for(
            lambda: "no traffic for 0.6 s (idle-timeout)" in gateway.log(), "the idle log line"
        )
        wait_for(lambda: relayed_by(gateway, relay), f"the sessions' ends ({relay})")


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--sniff-timeout", "-1"], "--sniff-timeout: must not be negative"),
        (["--health-interval", "1e-300"], "--health-interval: must be at least 0.1 seconds"),
        (["--listen", "nosuch:1234"], "--listen: cannot use 'nosuch:1234'"),
        (["--http-root", "/no/such/dir"], "--http-root: '/no/such/dir' does not exist"),
    ],
)
def test_bad_option_stops_start_up_with_one_line(
    tmp_path: Path, echo_backend: Backend, args: list[str], expected: str
) -> None:
    """
    A bad setting stops twistd before anything is bound: exit status 2 and one
    line on standard error that names the option.
    """
    import subprocess

    from tests.support import TWISTD

    result = subprocess.run(
        [TWISTD, "-n", "--pidfile=", "gateway", "--backend", echo_backend.endpoint, *args],
        capture_output=True,
        timeout=60,
        cwd=tmp_path,
    )
    lines = result.stderr.decode().splitlines()
    assert result.returncode == 2
    assert len(lines) == 1, lines
    assert lines[0].startswith("gateway: error: " + expected)
    assert result.stdout == b""


def test_port_in_use_stops_start_up_with_one_line(tmp_path: Path, echo_backend: Backend) -> None:
    """
    A front port that cannot be bound stops the gateway with a non-zero exit
    and one line naming the --listen value, not a traceback.
    """
    import subprocess

    from tests.support import TWISTD

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    front = f"tcp:{taken.getsockname()[1]}:interface=127.0.0.1"
    log = tmp_path / "gateway.log"
    result = subprocess.run(
        [TWISTD, "-n", "--pidfile=", "--logfile", str(log), "gateway"]
        + ["--backend", echo_backend.endpoint, "--listen", front],
        capture_output=True,
        timeout=60,
    )
    taken.close()
    assert result.returncode != 0
    text = log.read_text()
    assert f"gateway: error: --listen {front}: Couldn't listen on" in text
    assert "Address already in use" in text
    assert "Traceback" not in text


def test_connect_timeout_moves_on_to_the_next_backend(
    tmp_path: Path, sink_backend: Backend
) -> None:
    """
    A backend that never completes the TCP handshake (its accept queue is
    full, so the kernel drops the gateway's SYN) is given up after
    --connect-timeout, and the session lands on the next backend with every
    client byte.
    """
    blackhole = socket.socket()
    blackhole.bind(("127.0.0.1", 0))
    blackhole.listen(0)
    address = blackhole.getsockname()
    fillers = []
    # Fill the accept queue (backlog 0 admits one pending connection) and
    # confirm that a further connection really hangs.
    for _ in range(3):
        filler = socket.socket()
        filler.setblocking(False)
        filler.connect_ex(address)
        fillers.append(filler)
    probe = socket.socket()
    probe.settimeout(0.3)
    with pytest.raises(TimeoutError):
        probe.connect(address)
    probe.close()

    message = b"hello after a timeout\n"
    with GatewayProcess(
        [
            "--backend",
            f"tcp:127.0.0.1:{address[1]}",
            "--backend",
            sink_backend.endpoint,
            "--connect-timeout",
            "0.5",
        ],
        tmp_path,
    ) as gateway:
        client = connect(gateway.port)
        started = time.monotonic()
        client.sendall(message)
        client.shutdown(socket.SHUT_WR)
        reply = recv_until_eof(client).decode()
        elapsed = time.monotonic() - started
        client.close()
        assert reply == f"{len(message)} {hashlib.sha256(message).hexdigest()}\n"
        assert 0.4 <= elapsed < 10
        wait_for(lambda: "no connection within 0.5 s" in gateway.log(), "the timeout log line")
    for filler in fillers:
        filler.close()
    blackhole.close()


def test_backend_close_with_silent_client_ends_after_fin_timeout(
    tmp_path: Path,
) -> None:
    """
    When the backend closes and the client neither closes nor writes, the
    client gets the backend's last bytes and its end of stream, and the
    gateway closes the session after --fin-timeout instead of holding it.
    """

    def say_bye(sock: socket.socket, backend: Backend) -> None:
        sock.sendall(b"BYE\r\n")
        sock.close()

    with (
        Backend(say_bye) as backend,
        GatewayProcess(
            ["--backend", backend.endpoint, "--sniff-timeout", "0.2", "--fin-timeout", "0.5"],
            tmp_path,
        ) as gateway,
    ):
        client = connect(gateway.port)
        assert recv_until_eof(client) == b"BYE\r\n"
        wait_for(
            lambda: "no traffic for 0.5 s (fin-timeout)" in gateway.log(), "the fin-timeout log"
        )
        assert "ended (backend-closed)" not in gateway.log()
        assert "ended (fin-timeout)" in gateway.log()
        client.close()
