"""
End-to-end tests of the HTTP defects found from outside (issue 11): range
requests that leaked connection slots or loaded whole files, slow request
bodies, the admin endpoint's missing request timeout, HTTP/1.0 keep-alive.

Each test starts its own C{twistd -n gateway} on loopback ephemeral ports
(L{GatewayProcess}) and talks to it with raw sockets; every wait is bounded.
C{ab} (Debian's apache2-utils) runs one test; CI installs it and sets
C{GATEWAY_REQUIRE_TOOLS=1}, so there it fails rather than skips.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import (
    Backend,
    GatewayProcess,
    admin_url,
    connect,
    echo,
    recv_until_eof,
    rss_kib,
)

# Every test with the lean static path on and off (conftest.http_path).
pytestmark = pytest.mark.usefixtures("http_path")

MIB = 1 << 20
TIMEOUT = 10.0
AB = shutil.which("ab")


@pytest.fixture
def backend() -> Iterator[Backend]:
    """
    An echo backend (the gateway needs one; these tests speak HTTP only).
    """
    with Backend(echo) as started:
        yield started


def write_file(path: Path, size: int) -> None:
    """
    A file of C{size} bytes (a repeating pattern), written a MiB at a time.
    """
    block = bytes(range(256)) * (MIB // 256)
    with open(path, "wb") as file:
        for offset in range(0, size, MIB):
            file.write(block[: min(MIB, size - offset)])


def read_head(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """
    Read a response's status and headers; return them and the body bytes
    already read.
    """
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before a response head: {data[:200]!r}"
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(lines[0].split()[1]), headers, rest


def read_to_close(sock: socket.socket, within: float) -> bytes:
    """
    Read until the gateway closes (FIN or reset), which must happen within
    C{within} seconds.
    """
    sock.settimeout(within)
    data = b""
    try:
        data = recv_until_eof(sock)
    except ConnectionResetError:
        pass
    except TimeoutError:
        pytest.fail(f"the gateway did not close the connection within {within} s")
    return data


def get_status(port: int, target: bytes = b"/small.txt") -> int:
    """
    The status a fresh HTTP/1.0 GET gets (the gateway closes after it).
    """
    with connect(port, timeout=TIMEOUT) as sock:
        sock.sendall(b"GET " + target + b" HTTP/1.0\r\n\r\n")
        status, _, _ = read_head(sock)
        read_to_close(sock, TIMEOUT)
    return status


def test_many_ranges_then_half_close_leak_no_slot(tmp_path: Path, backend: Backend) -> None:
    """
    The finding: a GET with 1,500 one-byte ranges, then a half-close, made
    Twisted's multi-range producer fail mid-response and the connection wait
    for ever, holding its slot; three filled C{--max-connections 3} and
    C{--max-per-ip 3}.  Now such a request gets the whole file (too many
    ranges), its connection is closed, and a later client is served.
    """
    root = tmp_path / "www"
    root.mkdir()
    size = 4 * MIB
    write_file(root / "big.bin", size)
    (root / "small.txt").write_bytes(b"small\n")
    ranges = b",".join(b"%d-%d" % (i, i) for i in range(1500))
    request = b"GET /big.bin HTTP/1.1\r\nHost: x\r\nRange: bytes=" + ranges + b"\r\n\r\n"
    with GatewayProcess(
        [
            "--backend",
            backend.endpoint,
            "--http-root",
            str(root),
            "--max-connections",
            "3",
            "--max-per-ip",
            "3",
        ],
        tmp_path,
    ) as gateway:
        for _ in range(2):
            clients = [connect(gateway.port, timeout=TIMEOUT) for _ in range(3)]
            for sock in clients:
                sock.sendall(request)
                sock.shutdown(socket.SHUT_WR)
            for sock in clients:
                with sock:
                    status, headers, body = read_head(sock)
                    body += read_to_close(sock, TIMEOUT)
                    assert status == 200
                    assert int(headers["content-length"]) == len(body) == size
        assert get_status(gateway.port) == 200
        assert "Traceback" not in gateway.log()


def test_file_cut_mid_response_closes_the_connection(tmp_path: Path, backend: Backend) -> None:
    """
    A response that cannot finish (its file cut while it is being sent) ends
    its connection at once, even a keep-alive one, and frees its slot under
    C{--max-connections 1}; before, the response ended short and the client
    waited for the rest until the 60 s idle timeout.
    """
    root = tmp_path / "www"
    root.mkdir()
    size = 64 * MIB  # more than the kernel's socket buffers hold
    write_file(root / "big.bin", size)
    (root / "small.txt").write_bytes(b"small\n")
    with GatewayProcess(
        ["--backend", backend.endpoint, "--http-root", str(root), "--max-connections", "1"],
        tmp_path,
    ) as gateway:
        sock = connect(gateway.port, timeout=TIMEOUT)
        with sock:
            sock.sendall(b"GET /big.bin HTTP/1.1\r\nHost: x\r\n\r\n")
            status, headers, body = read_head(sock)
            assert status == 200 and int(headers["content-length"]) == size
            os.truncate(root / "big.bin", MIB)
            received = len(body) + len(read_to_close(sock, TIMEOUT))
        assert received < size
        assert get_status(gateway.port) == 200
        assert "failed mid-response" in gateway.log()


def test_two_ranges_keep_memory_bounded(tmp_path: Path, backend: Backend) -> None:
    """
    The finding: C{Range: bytes=0-65328,100-199} made Twisted's producer
    read the whole file at once; ten such requests for a 64 MiB file grew
    the gateway from 56 to 712 MB.  Now ten of them, held unread for a
    second, grow it by far less than one file, and each gets its bytes.
    """
    root = tmp_path / "www"
    root.mkdir()
    size = 64 * MIB
    write_file(root / "big.bin", size)
    with GatewayProcess(
        ["--backend", backend.endpoint, "--http-root", str(root)], tmp_path
    ) as gateway:
        warm = connect(gateway.port, timeout=TIMEOUT)
        with warm:
            warm.sendall(b"GET /big.bin HTTP/1.0\r\nRange: bytes=0-0,5-5\r\n\r\n")
            read_to_close(warm, TIMEOUT)
        baseline = rss_kib(gateway.pid)
        request = b"GET /big.bin HTTP/1.0\r\nRange: bytes=0-65328,100-199\r\n\r\n"
        clients = [connect(gateway.port, timeout=TIMEOUT) for _ in range(10)]
        try:
            for sock in clients:
                sock.sendall(request)
            time.sleep(1.0)
            growth_mib = (rss_kib(gateway.pid) - baseline) / 1024
            print(f"ten two-range requests: gateway RSS grew by {growth_mib:.1f} MiB")
            assert growth_mib < 32, f"gateway RSS grew by {growth_mib:.1f} MiB"
            for sock in clients:
                status, headers, body = read_head(sock)
                body += read_to_close(sock, TIMEOUT)
                assert status == 206
                assert len(body) == int(headers["content-length"])
        finally:
            for sock in clients:
                sock.close()


def _trickle(sock: socket.socket, piece: bytes, what: str) -> bytes:
    """
    Send C{piece} every 0.2 s (a slow client) until the gateway answers and
    closes; what it answered.  Fails if the connection is still held after
    5 s.
    """
    sock.settimeout(0.2)
    answer = b""
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        try:
            sock.send(piece)
            chunk = sock.recv(4096)
        except TimeoutError:
            continue
        except (BrokenPipeError, ConnectionResetError):
            return answer
        if not chunk:
            return answer
        answer += chunk
    pytest.fail(f"{what} still held the connection after 5 s")


def test_slow_body_is_cut_by_request_timeout(tmp_path: Path, backend: Backend) -> None:
    """
    C{slowhttptest -B}: a request body sent a byte at a time no longer holds
    its connection: the whole request must arrive within C{--header-timeout}
    of its first byte, else C{408} and close.
    """
    with GatewayProcess(
        ["--backend", backend.endpoint, "--header-timeout", "1"], tmp_path
    ) as gateway:
        with connect(gateway.port, timeout=TIMEOUT) as sock:
            sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4096\r\n\r\n")
            answer = _trickle(sock, b"a", "a slow body")
        assert answer.startswith(b"HTTP/1.1 408 ")
        wait = time.monotonic() + 5
        while "request body not complete" not in gateway.log() and time.monotonic() < wait:
            time.sleep(0.05)
        assert "request body not complete within 1 s" in gateway.log()


def test_admin_endpoint_has_a_request_timeout(tmp_path: Path, backend: Backend) -> None:
    """
    C{slowhttptest -H} on the admin endpoint: headers sent a line at a time
    no longer hold a connection for ever; the admin endpoint closes it after
    C{--header-timeout} with C{408}, like the front.
    """
    with GatewayProcess(
        [
            "--backend",
            backend.endpoint,
            "--admin",
            "tcp:0:interface=127.0.0.3",
            "--header-timeout",
            "1",
        ],
        tmp_path,
    ) as gateway:
        port = int(admin_url(gateway).rsplit(":", 1)[1])
        with connect(port, host="127.0.0.3", timeout=TIMEOUT) as sock:
            sock.sendall(b"GET /status.json HTTP/1.1\r\nHost: 127.0.0.3\r\n")
            answer = _trickle(sock, b"X-a: b\r\n", "slow admin headers")
        assert answer.startswith(b"HTTP/1.1 408 ")


def test_http10_keep_alive_on_one_connection(tmp_path: Path, backend: Backend) -> None:
    """
    HTTP/1.0 requests with C{Connection: keep-alive} are answered on one
    connection, each response saying C{Connection: keep-alive} and giving
    its length; the last one, without keep-alive, closes it.
    """
    root = tmp_path / "www"
    root.mkdir()
    (root / "small.txt").write_bytes(b"small\n")
    with GatewayProcess(
        ["--backend", backend.endpoint, "--http-root", str(root)], tmp_path
    ) as gateway:
        with connect(gateway.port, timeout=TIMEOUT) as sock:
            for _ in range(3):
                sock.sendall(b"GET /small.txt HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
                status, headers, body = read_head(sock)
                while len(body) < int(headers["content-length"]):
                    body += sock.recv(65536)
                assert (status, body) == (200, b"small\n")
                assert headers["connection"].lower() == "keep-alive"
            sock.sendall(b"GET /small.txt HTTP/1.0\r\n\r\n")
            status, headers, body = read_head(sock)
            assert "connection" not in headers
            assert body + read_to_close(sock, TIMEOUT) == b"small\n"


@pytest.mark.skipif(
    AB is None and os.environ.get("GATEWAY_REQUIRE_TOOLS") != "1",
    reason="no ab (apt-get install apache2-utils); CI installs it and requires this test",
)
def test_ab_keep_alive_requests_are_kept_alive(tmp_path: Path, backend: Backend) -> None:
    """
    C{ab -k} (HTTP/1.0 with C{Connection: Keep-Alive}) gets every one of
    its requests kept alive (the finding: 0 of 500).
    """
    assert AB is not None, "ab is missing (apt-get install apache2-utils)"
    root = tmp_path / "www"
    root.mkdir()
    (root / "small.txt").write_bytes(b"small\n")
    with GatewayProcess(
        ["--backend", backend.endpoint, "--http-root", str(root)], tmp_path
    ) as gateway:
        run = subprocess.run(
            [AB, "-k", "-n", "200", "-c", "2", f"http://127.0.0.1:{gateway.port}/small.txt"],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
    kept = re.search(r"Keep-Alive requests:\s+(\d+)", run.stdout)
    failed = re.search(r"Failed requests:\s+(\d+)", run.stdout)
    assert kept is not None and failed is not None, run.stdout
    assert (int(kept.group(1)), int(failed.group(1))) == (200, 0), run.stdout
