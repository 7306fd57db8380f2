"""
The WebSocket bridge end to end: a real C{twistd -n gateway --websocket /play},
real TCP backends, and a real WebSocket client (the C{websockets} library),
all on loopback.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import signal
import socket
import ssl
import struct
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect as async_connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from tests.pki import make_pki
from tests.support import (
    DEADLINE,
    Backend,
    GatewayProcess,
    admin_url,
    banner_then_echo,
    echo,
    pattern,
    recv_exactly,
    rss_kib,
    wait_for,
)

MIB = 1024 * 1024


def ws_url(gateway: GatewayProcess, path: str = "/play") -> str:
    return f"ws://127.0.0.1:{gateway.port}{path}"


def open_ws(gateway: GatewayProcess, path: str = "/play", **options: Any) -> ClientConnection:
    """
    A WebSocket client connected through the gateway (no size limit of its own).
    """
    options.setdefault("max_size", None)
    options.setdefault("open_timeout", DEADLINE)
    client: ClientConnection = connect(ws_url(gateway, path), **options)
    return client


def receive_bytes(ws: ClientConnection, count: int) -> bytes:
    """
    Messages until C{count} bytes have arrived (message boundaries do not
    survive a byte stream).
    """
    data = b""
    while len(data) < count:
        message = ws.recv(timeout=DEADLINE)
        data += message if isinstance(message, bytes) else message.encode()
    return data


def status(gateway: GatewayProcess) -> dict[str, Any]:
    with urllib.request.urlopen(admin_url(gateway) + "/status.json", timeout=DEADLINE) as reply:
        document: dict[str, Any] = json.load(reply)
    return document


def base_args(*backends: Backend, extra: tuple[str, ...] = ()) -> list[str]:
    args = [
        "--websocket",
        "/play",
        "--health-interval",
        "0",
        "--admin",
        "tcp:0:interface=127.0.0.3",
    ]
    for backend in backends:
        args += ["--backend", backend.endpoint]
    return [*args, *extra]


@pytest.fixture
def echo_gateway(tmp_path: Path) -> Iterator[GatewayProcess]:
    with Backend(echo) as backend, GatewayProcess(base_args(backend), tmp_path) as gateway:
        yield gateway


def test_twenty_megabytes_each_way_byte_exact(echo_gateway: GatewayProcess) -> None:
    """
    20 MB sent in messages of varied sizes come back from an echo backend
    byte for byte, while the client sends and reads at once.

    The client is the asyncio one: the sync client's C{send} holds the lock
    its reading thread needs while its socket is full, so with a backend
    that echoes under flow control the client itself would stop reading.
    """
    data = pattern(20 * MIB, seed=13)
    sizes = [1, 100, 4096, 65536, 300_000, 1 << 20]

    async def run() -> bytes:
        async with async_connect(ws_url(echo_gateway), max_size=None) as ws:

            async def send() -> None:
                offset, index = 0, 0
                while offset < len(data):
                    size = sizes[index % len(sizes)]
                    await ws.send(data[offset : offset + size])
                    offset += size
                    index += 1

            sender = asyncio.create_task(send())
            received = bytearray()
            while len(received) < len(data):
                message = await asyncio.wait_for(ws.recv(), DEADLINE)
                assert isinstance(message, bytes)
                received += message
            await asyncio.wait_for(sender, DEADLINE)
            return bytes(received)

    received = asyncio.run(run())
    assert len(received) == len(data)
    assert hashlib.sha256(received).digest() == hashlib.sha256(data).digest()


def test_one_byte_messages_in_order(echo_gateway: GatewayProcess) -> None:
    """
    A thousand one-byte messages reach the backend as one stream, in order.
    """
    data = bytes(range(256)) * 4
    with open_ws(echo_gateway) as ws:
        for byte in data:
            ws.send(bytes([byte]))
        assert receive_bytes(ws, len(data)) == data


def test_text_messages_and_the_text_subprotocol(echo_gateway: GatewayProcess) -> None:
    """
    Text messages are relayed as their UTF-8 bytes; under the C{text}
    subprotocol the backend's bytes come back as text messages, a UTF-8
    sequence cut between two reads intact, bytes that are not UTF-8 as U+FFFD.
    """
    with open_ws(echo_gateway, subprotocols=["text", "binary"]) as ws:
        assert ws.subprotocol == "binary"  # preferred when both are offered
    with open_ws(echo_gateway, subprotocols=["text"]) as ws:
        assert ws.subprotocol == "text"
        ws.send("héllo ✓")
        got = ""
        while len(got) < len("héllo ✓"):
            message = ws.recv(timeout=DEADLINE)
            assert isinstance(message, str)
            got += message
        assert got == "héllo ✓"
        ws.send(b"\xe2\x9c")  # the first two bytes of a check mark, as binary
        ws.send(b"\x93 \xff")  # its last byte, then a byte that is never UTF-8
        got = ""
        while len(got) < 3:
            message = ws.recv(timeout=DEADLINE)
            assert isinstance(message, str)
            got += message
        assert got == "✓ \ufffd"


def test_message_at_the_limit_passes_and_one_over_it_is_closed_1009(tmp_path: Path) -> None:
    """
    With C{--websocket-max-message}, a message of exactly the limit is
    relayed; one byte more closes the session with code 1009, logged as
    C{message-too-big}.
    """
    limit = MIB
    with Backend(echo) as backend, GatewayProcess(base_args(backend), tmp_path) as gateway:
        with open_ws(gateway) as ws:
            data = pattern(limit, seed=3)
            ws.send(data)
            assert receive_bytes(ws, limit) == data
        with open_ws(gateway) as ws:
            ws.send(b"x" * (limit + 1))
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    ws.recv(timeout=DEADLINE)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
        wait_for(lambda: "(message-too-big)" in gateway.log(), "the access line")
        assert "websocket session from 127.0.0.1:" in gateway.log()


def test_origin(tmp_path: Path) -> None:
    """
    A browser's upgrade from another site is refused 403 and counted; from
    the request's own host, or an origin given with --websocket-origin, or
    without Origin (not a browser), it is taken.
    """
    with Backend(echo) as backend:
        args = base_args(backend, extra=("--websocket-origin", "https://game.example"))
        with GatewayProcess(args, tmp_path) as gateway:
            own = f"http://127.0.0.1:{gateway.port}"
            for origin in (own, "https://game.example", "HTTPS://Game.Example", None):
                with open_ws(gateway, origin=origin) as ws:
                    ws.send(b"ok")
                    assert receive_bytes(ws, 2) == b"ok"
            with pytest.raises(InvalidStatus) as refused:
                open_ws(gateway, origin="https://evil.example")
            assert refused.value.response.status_code == 403
            assert status(gateway)["counters"]["refused"]["origin"] == 1
            assert gateway.process is not None and gateway.process.poll() is None


def test_upgrade_refused_at_the_total_cap_gets_503_with_retry_after(tmp_path: Path) -> None:
    """
    At C{--max-connections}, an upgrade is refused before the handshake like
    any HTTP request: 503 with C{Retry-After}.
    """
    with Backend(echo) as backend:
        args = base_args(backend, extra=("--max-connections", "1"))
        with GatewayProcess(args, tmp_path) as gateway, open_ws(gateway) as first:
            first.send(b"in")
            assert receive_bytes(first, 2) == b"in"
            with pytest.raises(InvalidStatus) as refused:
                open_ws(gateway)
            response = refused.value.response
            assert response.status_code == 503
            assert response.headers.get("Retry-After") is not None
            assert status(gateway)["counters"]["refused"]["total-cap"] >= 1


def test_affinity_by_key_parameter(tmp_path: Path) -> None:
    """
    With C{--balance hash}, the C{key} query parameter keeps a player on
    one backend; different keys spread over both.
    """
    with Backend(banner_then_echo) as a, Backend(banner_then_echo) as b:
        args = base_args(a, b, extra=("--balance", "hash"))
        with GatewayProcess(args, tmp_path) as gateway:

            def banner(key: str) -> bytes:
                with open_ws(gateway, f"/play?key={key}") as ws:
                    return receive_bytes(ws, len(f"HELLO from {a.port}\r\n"))

            seen = {banner(f"player-{n}") for n in range(12)}
            assert len(seen) == 2
            for n in range(4):
                assert len({banner(f"player-{n}") for _ in range(3)}) == 1


def test_proxy_v2_header_carries_the_browsers_address(tmp_path: Path) -> None:
    """
    With C{--proxy-protocol v2}, the backend's first bytes are a PROXY v2
    header with the browser's own address and port, then the payload.
    """
    received: list[bytes] = []

    def record(sock: socket.socket, backend: Backend) -> None:
        head = recv_exactly(sock, 16)
        rest = recv_exactly(sock, struct.unpack("!H", head[14:16])[0])
        received.append(head + rest)
        echo(sock, backend)

    with Backend(record) as backend:
        args = base_args(backend, extra=("--proxy-protocol", "v2"))
        with GatewayProcess(args, tmp_path) as gateway:
            raw = socket.create_connection(("127.0.0.1", gateway.port), DEADLINE, ("127.0.0.5", 0))
            client_port = raw.getsockname()[1]
            with connect(ws_url(gateway), sock=raw, open_timeout=DEADLINE) as ws:
                ws.send(b"after the header")
                assert receive_bytes(ws, 16) == b"after the header"
    [header] = received
    assert header[:12] == b"\r\n\r\n\x00\r\nQUIT\n"
    assert header[12] == 0x21 and header[13] == 0x11  # PROXY, TCP over IPv4
    source, _dest, source_port, dest_port = struct.unpack("!4s4sHH", header[16:28])
    assert socket.inet_ntoa(source) == "127.0.0.5"
    assert source_port == client_port
    assert dest_port == gateway.port


def test_a_slow_browser_holds_back_the_backend(tmp_path: Path) -> None:
    """
    A backend that sends as fast as it can to a browser that reads nothing
    is held back: what it got to send stays bounded (socket buffers, not the
    gateway's memory), and everything arrives once the browser reads.
    """
    total = 200 * MIB
    sent = [0]
    block = pattern(MIB, seed=5)

    def flood(sock: socket.socket, backend: Backend) -> None:
        sock.settimeout(60)
        # Read the client's bytes first: a socket closed with unread bytes
        # resets the connection, and the kernel drops what was in flight.
        assert recv_exactly(sock, 2) == b"go"
        while sent[0] < total:
            sock.sendall(block)
            sent[0] += len(block)

    with Backend(flood) as backend, GatewayProcess(base_args(backend), tmp_path) as gateway:
        rss_before = rss_kib(gateway.pid)
        with open_ws(gateway) as ws:
            ws.send(b"go")
            time.sleep(2.0)  # the browser reads nothing
            held = sent[0]
            rss_held = rss_kib(gateway.pid)
            print(
                f"slow browser: the backend got {held / MIB:.1f} MiB out; "
                f"gateway RSS {rss_before} KiB before, {rss_held} KiB while held"
            )
            assert held < 64 * MIB, (
                f"the backend sent {held / MIB:.0f} MiB to a browser reading nothing"
            )
            assert rss_held - rss_before < 64 * 1024, (rss_before, rss_held)
            got = 0
            digest = hashlib.sha256()
            while got < total:
                message = ws.recv(timeout=DEADLINE)
                assert isinstance(message, bytes)
                digest.update(message)
                got += len(message)
    assert got == total
    assert digest.digest() == hashlib.sha256(block * (total // MIB)).digest()


def test_a_browser_that_does_not_answer_pings_is_closed(tmp_path: Path) -> None:
    """
    With C{--websocket-ping 0.3}, a client that completes the handshake and
    then never reads (so never answers a ping) is closed, logged as
    C{ping-timeout}; one that answers stays.
    """
    with Backend(echo) as backend:
        args = base_args(backend, extra=("--websocket-ping", "0.3"))
        with GatewayProcess(args, tmp_path) as gateway:
            with open_ws(gateway, ping_interval=None) as alive:
                raw = socket.create_connection(("127.0.0.1", gateway.port), DEADLINE)
                raw.sendall(
                    b"GET /play HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                    b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                    b"Sec-WebSocket-Version: 13\r\n\r\n"
                )
                wait_for(lambda: "(ping-timeout)" in gateway.log(), "the ping timeout")
                # The answering client (websockets answers pings itself) is still relayed.
                alive.send(b"still here")
                assert receive_bytes(alive, 10) == b"still here"
                raw.close()
            assert "no answer to a ping" in gateway.log()


def test_backend_close_and_browser_close(tmp_path: Path) -> None:
    """
    The backend closing ends the WebSocket with a normal close frame (1000);
    the browser closing gives the backend an end of stream.
    """
    ended = threading.Event()

    def speak_then_close(sock: socket.socket, backend: Backend) -> None:
        data = sock.recv(100)
        if data == b"bye":
            sock.sendall(b"bye to you")
            sock.close()
            return
        while sock.recv(100):
            pass
        ended.set()

    with Backend(speak_then_close) as backend:
        with GatewayProcess(base_args(backend), tmp_path) as gateway:
            with open_ws(gateway) as ws:
                ws.send(b"bye")
                assert receive_bytes(ws, 10) == b"bye to you"
                with pytest.raises(ConnectionClosed) as closed:
                    ws.recv(timeout=DEADLINE)
                assert closed.value.rcvd is not None and closed.value.rcvd.code == 1000
            with open_ws(gateway) as ws:
                ws.send(b"hello")
                time.sleep(0.2)
            assert ended.wait(DEADLINE), "the backend never saw the end of stream"


def test_no_backend_closes_1013_with_the_busy_line(tmp_path: Path) -> None:
    """
    When no backend takes the session, the browser gets close code 1013
    (try again later) with the busy line as the reason, and the refusal is
    counted as no-backend.
    """
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    port = dead.getsockname()[1]
    dead.close()
    args = [
        "--websocket",
        "/play",
        "--backend",
        f"tcp:127.0.0.1:{port}",
        "--health-interval",
        "0",
        "--busy-message",
        "full, come back soon",
        "--admin",
        "tcp:0:interface=127.0.0.3",
    ]
    with GatewayProcess(args, tmp_path) as gateway, open_ws(gateway) as ws:
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=DEADLINE)
        assert closed.value.rcvd is not None
        assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (1013, "full, come back soon")
        assert status(gateway)["counters"]["refused"]["no-backend"] == 1


def test_sessions_listed_as_websocket_and_drained_on_sigterm(tmp_path: Path) -> None:
    """
    A live session is listed with C{kind: "websocket"}; on SIGTERM the
    gateway stops accepting but the session goes on until it ends, then the
    gateway exits 0.
    """
    with Backend(echo) as backend:
        args = base_args(backend, extra=("--drain-timeout", "30"))
        with GatewayProcess(args, tmp_path) as gateway, open_ws(gateway) as ws:
            ws.send(b"one")
            assert receive_bytes(ws, 3) == b"one"
            document = status(gateway)
            assert [s["kind"] for s in document["sessions"]] == ["websocket"]
            assert document["counters"]["active_sessions"]["websocket"] == 1
            with urllib.request.urlopen(
                admin_url(gateway) + "/metrics", timeout=DEADLINE
            ) as reply:
                metrics = reply.read().decode()
            assert 'gateway_sessions_active{kind="websocket"} 1.0' in metrics
            assert 'gateway_sessions_total{kind="websocket"} 1.0' in metrics
            assert gateway.process is not None
            gateway.process.send_signal(signal.SIGTERM)
            wait_for(lambda: "draining" in gateway.log(), "the drain")
            ws.send(b"two")
            assert receive_bytes(ws, 3) == b"two"
            ws.close()
            assert gateway.process.wait(DEADLINE) == 0


def test_toml_and_other_paths(tmp_path: Path) -> None:
    """
    C{websocket = [...]} in the TOML file; a path not listed is served by
    the HTTP side as before (404 here), and a plain GET on a bridge path
    gets 426.
    """
    with Backend(echo) as backend:
        config = tmp_path / "gateway.toml"
        config.write_text(
            f'websocket = ["/ws/a", "/ws/b"]\nhealth-interval = 0\n'
            f'[[backend]]\nendpoint = "{backend.endpoint}"\n'
        )
        with GatewayProcess(["--config", str(config)], tmp_path) as gateway:
            for path in ("/ws/a", "/ws/b"):
                with open_ws(gateway, path) as ws:
                    ws.send(path.encode())
                    assert receive_bytes(ws, len(path)) == path.encode()
            with pytest.raises(InvalidStatus) as other:
                open_ws(gateway, "/ws/c")
            assert other.value.response.status_code == 404
            with pytest.raises(urllib.error.HTTPError) as plain:
                urllib.request.urlopen(f"http://127.0.0.1:{gateway.port}/ws/a", timeout=DEADLINE)
            assert plain.value.code == 426


def test_through_workers(tmp_path: Path) -> None:
    """
    With C{--workers 2}, a WebSocket session is served by a worker like a TCP one.
    """
    with Backend(echo) as backend:
        args = base_args(backend, extra=("--workers", "2"))
        with GatewayProcess(args, tmp_path) as gateway:
            wait_for(lambda: "worker 2" in gateway.log() and "ready" in gateway.log(), "workers")
            for n in range(4):
                with open_ws(gateway) as ws:
                    data = pattern(100_000, seed=n)
                    ws.send(data)
                    assert receive_bytes(ws, len(data)) == data


def test_wss_on_a_tls_front(tmp_path: Path) -> None:
    """
    On a C{tls:} front the bridge is C{wss://}: a client that verifies the
    certificate relays byte-exact.
    """
    pki = make_pki(tmp_path / "pki")
    folder = tmp_path / "certs"
    folder.mkdir()
    (folder / "localhost.pem").write_bytes(pki.bundle("key", "leaf", "intermediate", "root"))
    with Backend(echo) as backend:
        args = [
            "--listen",
            f"tls:{folder}:port=0:interface=127.0.0.1",
            *base_args(backend),
        ]
        with GatewayProcess(args, tmp_path) as gateway:
            context = ssl.create_default_context(cafile=str(pki.root))
            url = f"wss://localhost:{gateway.port}/play"
            with connect(url, ssl=context, open_timeout=DEADLINE, max_size=None) as ws:
                data = pattern(3 * MIB, seed=9)
                for offset in range(0, len(data), MIB):
                    ws.send(data[offset : offset + MIB])
                    assert receive_bytes(ws, MIB) == data[offset : offset + MIB]


def test_haproxy_front_gives_the_backend_the_address_from_the_header(tmp_path: Path) -> None:
    """
    Behind an L4 balancer (a C{haproxy:} front), the PROXY header the
    backend gets carries the address the balancer's header gave, not the
    balancer's own.
    """
    received: list[bytes] = []

    def record(sock: socket.socket, backend: Backend) -> None:
        head = recv_exactly(sock, 16)
        received.append(head + recv_exactly(sock, struct.unpack("!H", head[14:16])[0]))
        echo(sock, backend)

    with Backend(record) as backend:
        args = [
            "--listen",
            "haproxy:tcp:0:interface=127.0.0.1",
            *base_args(backend, extra=("--proxy-protocol", "v2")),
        ]
        with GatewayProcess(args, tmp_path) as gateway:
            raw = socket.create_connection(("127.0.0.1", gateway.port), DEADLINE)
            raw.sendall(b"PROXY TCP4 198.51.100.7 127.0.0.1 40000 443\r\n")
            with connect(ws_url(gateway), sock=raw, open_timeout=DEADLINE) as ws:
                ws.send(b"from far away")
                assert receive_bytes(ws, 13) == b"from far away"
    [header] = received
    source, _dest, source_port, _dest_port = struct.unpack("!4s4sHH", header[16:28])
    assert (socket.inet_ntoa(source), source_port) == ("198.51.100.7", 40000)


def test_sighup_changes_the_bridge(tmp_path: Path) -> None:
    """
    SIGHUP applies a changed C{websocket} list and limits from the file: the
    new path is bridged, the old one is not any more, and a session open
    across the reload goes on.
    """
    with Backend(echo) as backend:
        config = tmp_path / "gateway.toml"

        def write(paths: str, max_message: int) -> None:
            config.write_text(
                f"websocket = {paths}\nwebsocket-max-message = {max_message}\n"
                f'health-interval = 0\n[[backend]]\nendpoint = "{backend.endpoint}"\n'
            )

        write('["/old"]', MIB)
        with GatewayProcess(["--config", str(config)], tmp_path) as gateway:
            with open_ws(gateway, "/old") as kept:
                write('["/new"]', 1000)
                assert gateway.process is not None
                gateway.process.send_signal(signal.SIGHUP)
                wait_for(lambda: "reloaded" in gateway.log(), "the reload")
                with open_ws(gateway, "/new") as ws:
                    ws.send(b"x" * 1000)
                    assert receive_bytes(ws, 1000) == b"x" * 1000
                    ws.send(b"x" * 1001)
                    with pytest.raises(ConnectionClosed) as closed:
                        while True:
                            ws.recv(timeout=DEADLINE)
                    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
                with pytest.raises(InvalidStatus) as gone:
                    open_ws(gateway, "/old")
                assert gone.value.response.status_code == 404
                # The session from before the reload keeps its settings.
                kept.send(b"y" * 5000)
                assert receive_bytes(kept, 5000) == b"y" * 5000


def test_a_slow_backend_holds_back_the_browser(tmp_path: Path) -> None:
    """
    A browser that sends as fast as it can to a backend that reads nothing
    is held back: what it got to send stays bounded and the gateway's
    memory does not grow; everything arrives once the backend reads.
    """
    total = 100 * MIB
    start_reading = threading.Event()
    digest = hashlib.sha256()
    read = [0]

    def slow_sink(sock: socket.socket, backend: Backend) -> None:
        sock.settimeout(60)
        start_reading.wait(60)
        while read[0] < total and (data := sock.recv(1 << 20)):
            digest.update(data)
            read[0] += len(data)
        sock.sendall(b"done")

    block = pattern(MIB, seed=21)
    with Backend(slow_sink) as backend, GatewayProcess(base_args(backend), tmp_path) as gateway:
        rss_before = rss_kib(gateway.pid)
        with open_ws(gateway) as ws:
            sent = [0]

            def send() -> None:
                while sent[0] < total:
                    ws.send(block)
                    sent[0] += len(block)

            sender = threading.Thread(target=send, daemon=True)
            sender.start()
            time.sleep(2.0)  # the backend reads nothing
            held, rss_held = sent[0], rss_kib(gateway.pid)
            print(
                f"slow backend: the browser got {held / MIB:.1f} MiB out; "
                f"gateway RSS {rss_before} KiB before, {rss_held} KiB while held"
            )
            assert held < 64 * MIB, (
                f"the browser sent {held / MIB:.0f} MiB to a backend reading nothing"
            )
            assert rss_held - rss_before < 64 * 1024, (rss_before, rss_held)
            start_reading.set()
            sender.join(60)
            assert receive_bytes(ws, 4) == b"done"
    assert read[0] == total
    assert digest.digest() == hashlib.sha256(block * (total // MIB)).digest()


UPGRADE = (
    b"GET /play HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


def test_clients_that_leave_during_the_upgrade_leave_nothing_behind(tmp_path: Path) -> None:
    """
    Clients that send the upgrade and leave at once (closed, or reset) leave
    no session, no backend connection and no pending connection behind.
    """
    with Backend(echo) as backend, GatewayProcess(base_args(backend), tmp_path) as gateway:
        for number in range(60):
            raw = socket.create_connection(("127.0.0.1", gateway.port), DEADLINE)
            raw.sendall(UPGRADE)
            if number % 2:
                raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            raw.close()

        def settled() -> bool:
            document = status(gateway)
            return (
                document["sessions"] == []
                and sum(document["counters"]["active_sessions"].values()) == 0
                and all(b["active"] == 0 for b in document["backends"])
            )

        wait_for(settled, "every connection to be gone")
        with open_ws(gateway) as ws:
            ws.send(b"still serving")
            assert receive_bytes(ws, 13) == b"still serving"
        assert "Traceback" not in gateway.log()


def test_hand_over_keeps_the_browsers_session(tmp_path: Path) -> None:
    """
    A new gateway started with the same C{--handover} takes the front over:
    a browser's session on the old one goes on while the old one drains,
    and new browsers reach the new one.
    """
    path = tmp_path / "h.sock"
    (tmp_path / "old").mkdir()
    (tmp_path / "new").mkdir()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with Backend(echo) as backend:
        args = [
            "--listen",
            f"tcp:{port}:interface=127.0.0.1",
            "--handover",
            str(path),
            *base_args(backend),
        ]
        args.remove("--admin")
        args.remove("tcp:0:interface=127.0.0.3")
        with GatewayProcess(args, tmp_path / "old") as old:
            wait_for(lambda: "waiting for a hand-over" in old.log(), "the old one at PATH")
            with open_ws(old) as kept:
                kept.send(b"before")
                assert receive_bytes(kept, 6) == b"before"
                with GatewayProcess(args, tmp_path / "new") as new:
                    wait_for(lambda: "no longer accepts" in new.log(), "the hand-over")
                    assert old.process is not None
                    old.process.send_signal(signal.SIGTERM)
                    with open_ws(new) as fresh:
                        fresh.send(b"new one")
                        assert receive_bytes(fresh, 7) == b"new one"
                    kept.send(b"after")
                    assert receive_bytes(kept, 5) == b"after"
                    kept.close()
                    assert old.process.wait(DEADLINE) == 0
                    wait_for(
                        lambda: "websocket session from" in new.log(), "the new one's session"
                    )
            assert old.log().count("websocket session from") == 1
