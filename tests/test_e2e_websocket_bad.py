"""
End-to-end tests of the WebSocket bridge with bad input (issue 13): broken
handshakes and broken frames, each written by hand on a raw socket so that
every case is exactly the bytes it says, against C{twistd -n gateway
--websocket /play} and an echo backend on loopback.

For each case the test checks the gateway's answer (the HTTP status of a
refused handshake, or the close code of a session whose frames break RFC
6455, followed by the end of the connection), what it counted and logged (the
C{websocket-handshake} refusal, the access event's C{protocol-error}),
that a well-behaved WebSocket session open all along still echoes
byte-exact, that the backend is not blamed for the browser's fault, and that
the process is still up with no traceback in its log.
"""

from __future__ import annotations

import base64
import json
import os
import re
import socket
import struct
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from websockets.sync.client import ClientConnection
from websockets.sync.client import connect as ws_connect

from tests.support import (
    Backend,
    GatewayProcess,
    admin_url,
    connect,
    recv_exactly,
    recv_until_eof,
    wait_for,
)
from tests.test_e2e_http_defects import read_head

TIMEOUT = 10.0
"""Seconds any single read in these tests may take."""

KEY = base64.b64encode(b"0123456789abcdef")
"""A well-formed Sec-WebSocket-Key (16 bytes in base64)."""

MASK = b"\x00\x00\x00\x00"
"""The masking key of the hand-written frames (a zero key leaves the payload as is)."""


def upgrade_request(
    *,
    method: bytes = b"GET",
    version: bytes = b"HTTP/1.1",
    key: bytes | None = KEY,
    ws_version: bytes = b"13",
    upgrade: bool = True,
) -> bytes:
    """
    An upgrade request for C{/play}, as a browser sends it unless told otherwise.

    @param key: the C{Sec-WebSocket-Key}, or L{None} for none.
    @param upgrade: whether to ask for the upgrade at all.
    """
    lines = [method + b" /play " + version, b"Host: 127.0.0.1"]
    if upgrade:
        lines += [b"Upgrade: websocket", b"Connection: Upgrade"]
        lines += [b"Sec-WebSocket-Key: " + key] if key is not None else []
        lines += [b"Sec-WebSocket-Version: " + ws_version]
    if method == b"POST":
        lines.append(b"Content-Length: 0")
    return b"\r\n".join(lines) + b"\r\n\r\n"


def frame(opcode: int, data: bytes, *, fin: bool = True, mask: bool = True) -> bytes:
    """
    One short frame (C{data} under 126 bytes), masked with L{MASK} unless told not to.
    """
    assert len(data) < 126
    head = bytes([opcode | (0x80 if fin else 0), (0x80 if mask else 0) | len(data)])
    return head + (MASK if mask else b"") + data


def parse_frames(data: bytes) -> tuple[list[tuple[int, bytes]], bytes]:
    """
    The opcode and payload of each whole frame the gateway sent (frames
    from a server are not masked), and the bytes of a frame not whole yet.
    """
    frames = []
    while len(data) >= 2:
        opcode, length = data[0] & 0x0F, data[1] & 0x7F
        assert not data[1] & 0x80, "a masked frame from the server"
        start = {126: 4, 127: 10}.get(length, 2)
        if len(data) < start:
            break
        if length == 126:
            (length,) = struct.unpack("!H", data[2:4])
        elif length == 127:
            (length,) = struct.unpack("!Q", data[2:10])
        if len(data) < start + length:
            break
        frames.append((opcode, data[start : start + length]))
        data = data[start + length :]
    return frames, data


def server_frames(data: bytes) -> list[tuple[int, bytes]]:
    """
    The frames in C{data}, which must end at a frame's end.
    """
    frames, rest = parse_frames(data)
    assert rest == b"", f"a cut frame: {rest!r}"
    return frames


def read_echo(sock: socket.socket, data: bytes, received: bytes) -> None:
    """
    Read binary messages until their payload is C{data} (the echo backend's
    writes may come back as several messages), starting with the bytes
    already C{received}; nothing else may come.
    """
    payload = b""
    while len(payload) < len(data):
        frames, received = parse_frames(received)
        assert {opcode for opcode, _ in frames} <= {0x2}, frames
        payload += b"".join(chunk for _, chunk in frames)
        if len(payload) < len(data):
            chunk = sock.recv(65536)
            assert chunk, "the connection ended before the echo"
            received += chunk
    assert (payload, received) == (data, b"")


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """
    Read one HTTP response (its body by C{Content-Length}).
    """
    status, headers, body = read_head(sock)
    length = int(headers.get("content-length", "0"))
    if len(body) < length:
        body += recv_exactly(sock, length - len(body))
    return status, headers, body


def status(gateway: GatewayProcess) -> dict[str, Any]:
    """
    The gateway's C{/status.json}.
    """
    url = admin_url(gateway) + "/status.json"
    document: dict[str, Any] = json.loads(urllib.request.urlopen(url, timeout=TIMEOUT).read())
    return document


class Player:
    """
    A well-behaved WebSocket client (the C{websockets} library), open
    through the gateway to the echo backend while a bad client misbehaves.
    """

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws

    def echoes(self, size: int) -> None:
        """
        Send C{size} random bytes in a few messages, and check the echo is
        byte-exact (the backend's writes may come back as other messages).
        """
        data = os.urandom(size)
        for start in range(0, size, 4096):
            self.ws.send(data[start : start + 4096])
        received = b""
        while len(received) < size:
            message = self.ws.recv(timeout=TIMEOUT)
            assert isinstance(message, bytes)
            received += message
        assert received == data


def open_player(port: int) -> ClientConnection:
    """
    A WebSocket connection to the bridge (use it as a context manager).
    """
    return ws_connect(f"ws://127.0.0.1:{port}/play", open_timeout=TIMEOUT, close_timeout=TIMEOUT)


@dataclass(frozen=True)
class Refused:
    """
    A handshake the gateway answers with an HTTP error.

    @ivar request: the request, byte for byte.
    @ivar status: the answer's status.
    @ivar header: a header the answer must carry (name in lower case, value).
    @ivar counted: whether it is a counted C{websocket-handshake} refusal.
    """

    request: bytes
    status: int
    header: tuple[str, str] | None
    counted: bool


REFUSED = {
    "missing-key": Refused(upgrade_request(key=None), 400, None, True),
    "key-not-16-bytes": Refused(upgrade_request(key=b"c2hvcnQga2V5"), 400, None, True),
    "key-twice": Refused(
        upgrade_request().replace(b"\r\n\r\n", b"\r\nSec-WebSocket-Key: " + KEY + b"\r\n\r\n"),
        400,
        None,
        True,
    ),
    "key-not-base64": Refused(upgrade_request(key=b"!!not*base64!!!!!!!!!=="), 400, None, True),
    "wrong-version": Refused(
        upgrade_request(ws_version=b"8"), 426, ("sec-websocket-version", "13"), True
    ),
    "http-1.0": Refused(upgrade_request(version=b"HTTP/1.0"), 400, None, True),
    "post": Refused(upgrade_request(method=b"POST"), 405, ("allow", "GET"), False),
    "no-upgrade": Refused(upgrade_request(upgrade=False), 426, ("upgrade", "websocket"), False),
}
"""The broken handshakes, by name."""


BROKEN = {
    "unmasked-frame": (frame(0x2, b"abc", mask=False), 1002),
    "fragmented-ping": (frame(0x9, b"ping", fin=False), 1002),
    "close-code-999": (frame(0x8, struct.pack("!H", 999)), 1002),
    "close-code-1005": (frame(0x8, struct.pack("!H", 1005)), 1002),
    "text-not-utf8": (frame(0x1, b"ok \xff\xfe"), 1007),
    "garbage": (b"\xff\xff\xff\xff GARBAGE \r\n\r\n", 1002),
}
"""Frames that break RFC 6455 after a good handshake, and the close code they get."""


@pytest.fixture
def gateway(tmp_path: Path, echo_backend: Backend) -> Iterator[GatewayProcess]:
    """
    A gateway with the bridge on C{/play} in front of an echo backend, its
    admin endpoint on 127.0.0.3.
    """
    args = ["--backend", echo_backend.endpoint, "--websocket", "/play"]
    args += ["--admin", "tcp:0:interface=127.0.0.3"]
    with GatewayProcess(args, tmp_path) as process:
        yield process


@pytest.fixture
def player(gateway: GatewayProcess) -> Iterator[Player]:
    """
    A good WebSocket session, open for the whole test, that echoes once now.
    """
    with open_player(gateway.port) as ws:
        good = Player(ws)
        good.echoes(100_000)
        yield good


def still_well(gateway: GatewayProcess, player: Player) -> dict[str, Any]:
    """
    Check what every bad case leaves unchanged: the good session echoes
    byte-exact, a new one does too, the backend is up and was not blamed,
    the process runs, and its log has no traceback.

    @return: the gateway's status document.
    """
    player.echoes(100_000)
    with open_player(gateway.port) as ws:
        Player(ws).echoes(10_000)
    assert gateway.process is not None and gateway.process.poll() is None
    document = status(gateway)
    [backend] = document["backends"]
    assert (backend["state"], backend["failures"]) == ("up", 0), backend
    assert document["counters"]["refused"]["no-backend"] == 0
    assert "Traceback" not in gateway.log()
    return document


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_broken_handshake_is_refused(case: str, gateway: GatewayProcess, player: Player) -> None:
    """
    A broken or unwanted handshake gets its HTTP error (with the header that
    says what would do), never a C{101}; a broken WebSocket handshake is a
    counted and logged C{websocket-handshake} refusal, while a POST or a
    plain GET on the bridge's path is an ordinary HTTP answer.
    """
    refused = REFUSED[case]
    with connect(gateway.port, timeout=TIMEOUT) as sock:
        sock.sendall(refused.request)
        code, headers, body = read_response(sock)
        peer = f"127.0.0.1:{sock.getsockname()[1]}"
    assert code == refused.status, body
    if refused.header is not None:
        name, value = refused.header
        assert headers.get(name) == value, headers
    assert "sec-websocket-accept" not in headers
    document = still_well(gateway, player)
    counted = document["counters"]["refused"]["websocket-handshake"]
    assert counted == (1 if refused.counted else 0)
    refusal_line = f"refused {peer}: websocket-handshake ("
    if refused.counted:
        wait_for(lambda: refusal_line in gateway.log(), "the refusal's log line")
    else:
        assert refusal_line not in gateway.log()
    assert f"http request from {peer}: " in gateway.log()


def _protocol_error_logged(gateway: GatewayProcess, peer: str) -> None:
    pattern = re.compile(
        rf"websocket session from {re.escape(peer)} to \S+ ended \(protocol-error\)"
    )
    wait_for(lambda: pattern.search(gateway.log()) is not None, "the access log line")


@pytest.mark.parametrize("when", ["with-the-request", "while-relaying"])
@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_frame_closes_the_session(
    case: str, when: str, gateway: GatewayProcess, player: Player
) -> None:
    """
    After a good handshake, a frame that breaks RFC 6455 gets a close frame
    with the code RFC 6455 gives for it (1002, or 1007 for text that is not
    UTF-8), then the end of the connection; the session ends as a
    C{protocol-error} in the access log, and nothing is refused.  The frame
    comes in the request's packet (the session's backend is still
    connecting), or once a message was echoed (the session relays).
    """
    data, code = BROKEN[case]
    with connect(gateway.port, timeout=TIMEOUT) as sock:
        if when == "with-the-request":
            sock.sendall(upgrade_request() + data)
            answer, _headers, rest = read_head(sock)
        else:
            sock.sendall(upgrade_request())
            answer, _headers, rest = read_head(sock)
            sock.sendall(frame(0x2, b"echo me"))
            read_echo(sock, b"echo me", rest)
            rest = b""
            sock.sendall(data)
        assert answer == 101
        sock.settimeout(TIMEOUT)
        frames = server_frames(rest + recv_until_eof(sock))
        assert [(opcode, body[:2]) for opcode, body in frames] == [(0x8, struct.pack("!H", code))]
        peer = f"127.0.0.1:{sock.getsockname()[1]}"
    _protocol_error_logged(gateway, peer)
    document = still_well(gateway, player)
    assert set(document["counters"]["refused"].values()) == {0}
